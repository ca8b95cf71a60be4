// PostgreSQL JDBC (pgjdbc) through pgward in transaction mode.
//
// Usage: java -cp postgresql.jar JdbcCheck.java PLAIN_URL ACME_URL GLOBEX_URL [bulk-context]
//
// With `bulk-context`: CopyManager copyIn/copyOut and a batch as tenant globex, each followed
// by checks of the tenant context (search_path, app.tenant_id, role) and that tenant acme's
// table is not readable.
//
// The URLs are postgres:// URLs (plain dbname `app`, tenants acme and globex by database
// alias). Checks server-side prepared statements (prepareThreshold=1: every statement is a
// named `S_n` statement, also after the server connection changed), batches, transactions
// with autocommit off, an error inside a transaction (22012, then 25P02 until ROLLBACK),
// cursor fetches (fetchSize: a suspended portal), metadata queries, a session SET read back,
// the tenant guard (42501), an invalid startup option refused at login (22023, FATAL), and
// many threads of tenant connections and plain ones with a startup search_path sharing one
// statement text over a small pool, each seeing only its own schema's rows. Exits 1 listing
// the failures; prints one summary line on success.

import java.net.URI;
import java.sql.*;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.AtomicInteger;

public class JdbcCheck {
    static final List<String> failures = Collections.synchronizedList(new ArrayList<>());
    static final AtomicInteger queries = new AtomicInteger();
    static volatile String driver = "pgjdbc";

    /** jdbc:postgresql URL for a postgres:// URL, with extra parameters. */
    static String jdbc(String url, String extra) {
        URI u = URI.create(url);
        String[] cred = u.getRawUserInfo().split(":", 2);
        return "jdbc:postgresql://" + u.getHost() + ":" + u.getPort() + u.getPath()
                + "?user=" + cred[0] + "&password=" + cred[1] + "&sslmode=disable" + extra;
    }

    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    interface Body { void run() throws Exception; }

    static void run(String name, Body b) {
        try {
            b.run();
        } catch (Throwable e) {
            String state = e instanceof SQLException ? " (SQLSTATE " + ((SQLException) e).getSQLState() + ")" : "";
            failures.add(name + ": " + e + state);
            e.printStackTrace();
        }
    }

    static String one(Statement s, String sql) throws SQLException {
        queries.incrementAndGet();
        try (ResultSet rs = s.executeQuery(sql)) {
            check(rs.next(), "a row from " + sql);
            return rs.getString(1);
        }
    }

    static void expectState(Statement s, String sql, String state) {
        try {
            queries.incrementAndGet();
            s.execute(sql);
            throw new AssertionError(sql + " succeeded, expected " + state);
        } catch (SQLException e) {
            check(state.equals(e.getSQLState()), sql + ": " + e.getSQLState() + " " + e.getMessage() + ", expected " + state);
        }
    }

    static void plain(String url) throws Exception {
        try (Connection c = DriverManager.getConnection(jdbc(url, "&prepareThreshold=1"))) {
            PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1, current_setting('app.tenant_id', true)");
            for (int i = 0; i < 50; i++) {
                ps.setInt(1, i);
                queries.incrementAndGet();
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next() && rs.getInt(1) == i + 1, "prepared answer " + i);
                    String t = rs.getString(2);
                    check(t == null || t.isEmpty(), "plain client sees tenant " + t);
                }
            }
            Statement s = c.createStatement();
            c.setAutoCommit(false);
            s.execute("CREATE TEMP TABLE jdbc_batch (x int) ON COMMIT DROP");
            PreparedStatement ins = c.prepareStatement("INSERT INTO jdbc_batch VALUES (?)");
            for (int i = 0; i < 200; i++) {
                ins.setInt(1, i);
                ins.addBatch();
            }
            check(ins.executeBatch().length == 200, "batch of 200");
            check(one(s, "SELECT count(*) FROM jdbc_batch").equals("200"), "batch rows in the transaction");
            c.commit();
            expectState(s, "SELECT 1/0", "22012");
            expectState(s, "SELECT 1", "25P02");
            c.rollback();
            check(one(s, "SELECT 42").equals("42"), "works after ROLLBACK");
            c.commit();
            s.setFetchSize(10);
            int n = 0;
            queries.incrementAndGet();
            try (ResultSet rs = s.executeQuery("SELECT g FROM generate_series(1, 95) g")) {
                while (rs.next()) n++;
            }
            check(n == 95, "cursor fetch rows " + n);
            c.commit();
            c.setAutoCommit(true);
            driver = c.getMetaData().getDriverName() + " " + c.getMetaData().getDriverVersion();
            try (ResultSet rs = c.getMetaData().getTables(null, "public", "orders", new String[] {"TABLE"})) {
                check(rs.next(), "metadata finds public.orders");
            }
            s.execute("SET application_name = 'jdbc-check'");
            check(one(s, "SHOW application_name").equals("jdbc-check"), "session SET read back");
            check(one(s, "SELECT count(*) FROM orders").equals("0"), "RLS: a plain client sees no orders");
        }
    }

    static void tenant(String url, String name, String items, String role, String order) throws Exception {
        try (Connection c = DriverManager.getConnection(jdbc(url, "&prepareThreshold=1"))) {
            Statement s = c.createStatement();
            PreparedStatement ps = c.prepareStatement(
                    "SELECT (SELECT string_agg(name, ',' ORDER BY id) FROM items), current_setting('app.tenant_id'), current_user, (SELECT string_agg(item, ',') FROM orders)");
            for (int i = 0; i < 10; i++) {
                queries.incrementAndGet();
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "a row");
                    check(items.equals(rs.getString(1)), name + " items: " + rs.getString(1));
                    check(name.equals(rs.getString(2)), name + " app.tenant_id: " + rs.getString(2));
                    check(role.equals(rs.getString(3)), name + " current_user: " + rs.getString(3));
                    check(order.equals(rs.getString(4)), name + " orders (RLS): " + rs.getString(4));
                }
            }
            expectState(s, "SET search_path = public", "42501");
            c.setAutoCommit(false);
            check(name.equals(one(s, "SELECT current_setting('app.tenant_id')")), name + " in an explicit transaction");
            c.commit();
        }
    }

    static void badStartupOption(String url) {
        try (Connection c = DriverManager.getConnection(jdbc(url, "&options=-c%20work_mem%3Dnot-a-size"))) {
            throw new AssertionError("an invalid work_mem was accepted at login");
        } catch (SQLException e) {
            check("22023".equals(e.getSQLState()), "invalid startup option: " + e.getSQLState() + " " + e.getMessage());
            check(e.getMessage().contains("work_mem"), "the error names the parameter: " + e.getMessage());
        }
    }

    static void concurrent(String plain, String acme, String globex) throws Exception {
        // a plain client whose startup search_path names acme's schema, and the two tenants
        String[][] who = {
            {plain, "acme-one,acme-two", "&options=-c%20search_path%3Dacme"},
            {acme, "acme-one,acme-two", ""},
            {globex, "globex-one", ""}};
        ExecutorService ex = Executors.newFixedThreadPool(18);
        List<Future<String>> fs = new ArrayList<>();
        for (int t = 0; t < 18; t++) {
            final String[] w = who[t % 3];
            fs.add(ex.submit(() -> {
                try (Connection c = DriverManager.getConnection(jdbc(w[0], "&prepareThreshold=1" + w[2]))) {
                    // the same text for every tenant: each must see its own schema's table
                    PreparedStatement ps = c.prepareStatement(
                            "SELECT (SELECT string_agg(name, ',' ORDER BY id) FROM items), ?::int");
                    for (int i = 0; i < 150; i++) {
                        ps.setInt(1, i);
                        queries.incrementAndGet();
                        try (ResultSet rs = ps.executeQuery()) {
                            rs.next();
                            if (!w[1].equals(rs.getString(1)) || rs.getInt(2) != i)
                                return "wanted " + w[1] + "/" + i + ", got " + rs.getString(1) + "/" + rs.getInt(2);
                        }
                    }
                    return null;
                } catch (SQLException e) {
                    return e.getSQLState() + " " + e.getMessage();
                }
            }));
        }
        for (Future<String> f : fs) {
            String r = f.get(200, TimeUnit.SECONDS);
            check(r == null, "concurrent client: " + r);
        }
        ex.shutdown();
    }

    /** The statements after `after` run with tenant globex's context and cannot read acme's table. */
    static void contextHolds(Connection c, String after) throws Exception {
        try (Statement s = c.createStatement();
             ResultSet rs = s.executeQuery("SELECT current_setting('search_path'), current_user, current_setting('app.tenant_id', true)")) {
            check(rs.next(), "a context row");
            String got = rs.getString(1) + "|" + rs.getString(2) + "|" + rs.getString(3);
            check(got.equals("globex, public|tenant_globex|globex"), "after " + after + ": context " + got);
        }
        try (Statement s = c.createStatement()) {
            expectState(s, "SELECT count(*) FROM acme.items", "42501");
        }
        if (!c.getAutoCommit()) c.rollback();
        queries.addAndGet(2);
    }

    /** CopyManager copyIn/copyOut and a batch as tenant globex, each followed by the context checks. */
    static void bulkContext(String globex) throws Exception {
        try (Connection c = DriverManager.getConnection(jdbc(globex, "&prepareThreshold=1"))) {
            org.postgresql.copy.CopyManager cm = c.unwrap(org.postgresql.PGConnection.class).getCopyAPI();
            for (int round = 0; round < 3; round++) {
                StringBuilder rows = new StringBuilder();
                for (int i = 0; i < 40; i++) rows.append(1000 + i).append("\tjdbc\n");
                long n = cm.copyIn("COPY items (id, name) FROM STDIN", new java.io.StringReader(rows.toString()));
                check(n == 40, "copyIn rows " + n);
                contextHolds(c, "CopyManager.copyIn");
                java.io.StringWriter out = new java.io.StringWriter();
                cm.copyOut("COPY (SELECT current_user, id FROM items WHERE id >= 1000) TO STDOUT", out);
                check(out.toString().lines().count() == 40 && out.toString().lines().allMatch(l -> l.startsWith("tenant_globex\t")),
                        "copyOut ran without the context: " + out.toString().lines().findFirst().orElse(""));
                contextHolds(c, "CopyManager.copyOut");
                c.setAutoCommit(false);
                try (PreparedStatement ins = c.prepareStatement("INSERT INTO items (id, name) VALUES (?, ?)")) {
                    for (int i = 0; i < 50; i++) {
                        ins.setInt(1, 2000 + i);
                        ins.setString(2, "batch");
                        ins.addBatch();
                    }
                    check(ins.executeBatch().length == 50, "batch of 50");
                }
                c.commit();
                contextHolds(c, "a batch");
                c.setAutoCommit(true);
                try (Statement s = c.createStatement()) {
                    s.execute("DELETE FROM items WHERE id >= 1000");
                }
                contextHolds(c, "autocommit again");
                queries.addAndGet(6);
            }
        }
    }

    public static void main(String[] a) throws Exception {
        String plain = a[0], acme = a[1], globex = a[2];
        if (a.length > 3 && a[3].equals("bulk-context")) {
            run("bulk context", () -> bulkContext(globex));
            if (!failures.isEmpty()) {
                for (String f : failures) System.err.println("  " + f);
                System.exit(1);
            }
            System.out.println(driver + ": tenant context after CopyManager copyIn/copyOut and a batch, " + queries.get() + " queries");
            return;
        }
        run("plain", () -> plain(plain));
        run("acme", () -> tenant(acme, "acme", "acme-one,acme-two", "pgward", "anvil"));
        run("globex", () -> tenant(globex, "globex", "globex-one", "tenant_globex", "device"));
        run("bad startup option", () -> badStartupOption(plain));
        run("concurrent", () -> concurrent(plain, acme, globex));
        if (!failures.isEmpty()) {
            System.err.println(failures.size() + " failure(s):");
            for (String f : failures) System.err.println("  " + f);
            System.exit(1);
        }
        System.out.println(driver + ": all checks passed, " + queries.get() + " queries");
    }
}
