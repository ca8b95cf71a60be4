//! The admin console as PgBouncer's tooling sees it: the same statements run against a real
//! PgBouncer (Debian's 1.18) and pgward give the same column names, types and order (pgward
//! may add columns at the end, and follows PgBouncer 1.25's additions), the same command
//! tags, and real values; and PgBouncer's process commands (KILL, KILL_CLIENT, RECONNECT,
//! WAIT_CLOSE, DISABLE/ENABLE, SET, SHOW HELP) work.
//!
//! Shapes are read with the raw protocol client (type OIDs are not visible through drivers'
//! simple-query APIs); everything else uses tokio-postgres and psql.

mod common;

use std::time::Duration;

use common::pgbouncer::PgBouncer;
use common::wire::{data_row, error_text, Read, Wire};
use common::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What one simple Query gave.
#[derive(Debug, Default)]
struct Answer {
    /// (name, type oid)
    columns: Vec<(String, u32)>,
    rows: Vec<Vec<Option<String>>>,
    tag: Option<String>,
    notices: usize,
    error: Option<String>,
}

impl Answer {
    fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.0.as_str()).collect()
    }
    /// The value of `column` in the first row whose first column is `key`.
    fn get(&self, key: &str, column: &str) -> Option<String> {
        let i = self.columns.iter().position(|c| c.0 == column)?;
        self.rows
            .iter()
            .find(|r| r[0].as_deref() == Some(key))
            .and_then(|r| r[i].clone())
    }
    fn num(&self, key: &str, column: &str) -> i64 {
        let v = self.get(key, column);
        v.as_deref()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key}.{column} = {v:?} in {self:?}"))
    }
}

fn row_description(body: &[u8]) -> Vec<(String, u32)> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        let end = at + body[at..].iter().position(|b| *b == 0).unwrap();
        let name = String::from_utf8_lossy(&body[at..end]).into_owned();
        at = end + 1;
        let oid = u32::from_be_bytes(body[at + 6..at + 10].try_into().unwrap());
        at += 18;
        cols.push((name, oid));
    }
    cols
}

async fn ask(w: &mut Wire, sql: &str) -> Answer {
    w.send(&common::wire::fe::query(sql)).await.unwrap();
    let mut a = Answer::default();
    loop {
        match w.read(Duration::from_secs(70)).await {
            Read::Msg(b'T', b) => a.columns = row_description(&b),
            Read::Msg(b'D', b) => a.rows.push(data_row(&b)),
            Read::Msg(b'C', b) => {
                a.tag = Some(String::from_utf8_lossy(&b[..b.len() - 1]).into_owned())
            }
            Read::Msg(b'N', _) => a.notices += 1,
            Read::Msg(b'E', b) => a.error = Some(error_text(&b)),
            Read::Msg(b'Z', _) => return a,
            Read::Msg(..) => {}
            other => panic!("{sql}: {other:?}"),
        }
    }
}

async fn admin(h: &Harness) -> Wire {
    Wire::tcp(h.port(), "admin", "pgward", PASSWORD)
        .await
        .expect("admin console")
}

const TEXT: u32 = 25;
const INT4: u32 = 23;
const INT8: u32 = 20;
const NUMERIC: u32 = 1700;

/// PgBouncer 1.25's layouts (its src/admin.c and src/stats.c): pgward's tables start with
/// exactly these columns and types.
fn pgbouncer_1_25(cmd: &str) -> Vec<(&'static str, u32)> {
    let typed = |types: &str, names: &[&'static str]| -> Vec<(&'static str, u32)> {
        assert_eq!(types.len(), names.len());
        types
            .bytes()
            .zip(names)
            .map(|(t, n)| {
                let oid = match t {
                    b'i' => INT4,
                    b'q' => INT8,
                    b'N' => NUMERIC,
                    _ => TEXT,
                };
                (*n, oid)
            })
            .collect()
    };
    let socket = [
        "type",
        "user",
        "database",
        "replication",
        "state",
        "addr",
        "port",
        "local_addr",
        "local_port",
        "connect_time",
        "request_time",
        "wait",
        "wait_us",
        "close_needed",
        "ptr",
        "link",
        "remote_pid",
        "tls",
        "application_name",
        "prepared_statements",
        "id",
    ];
    let counters = |p: &str| {
        [
            "server_assignment_count",
            "xact_count",
            "query_count",
            "bytes_received",
            "bytes_sent",
            "xact_time",
            "query_time",
            "wait_time",
            &format!("{p}client_parse_count"),
            &format!("{p}server_parse_count"),
            &format!("{p}bind_count"),
        ]
        .map(|s| &*Box::leak(s.to_string().into_boxed_str()))
    };
    match cmd {
        "STATS" => typed(
            "sNNNNNNNNNNNNNNNNNNNNNN",
            &[
                "database",
                "total_server_assignment_count",
                "total_xact_count",
                "total_query_count",
                "total_received",
                "total_sent",
                "total_xact_time",
                "total_query_time",
                "total_wait_time",
                "total_client_parse_count",
                "total_server_parse_count",
                "total_bind_count",
                "avg_server_assignment_count",
                "avg_xact_count",
                "avg_query_count",
                "avg_recv",
                "avg_sent",
                "avg_xact_time",
                "avg_query_time",
                "avg_wait_time",
                "avg_client_parse_count",
                "avg_server_parse_count",
                "avg_bind_count",
            ],
        ),
        "STATS_TOTALS" => typed("sNNNNNNNNNNN", &[&["database"][..], &counters("")].concat()),
        "STATS_AVERAGES" => typed(
            "sNNNNNNNNNNN",
            &[&["database"][..], &counters("avg_")].concat(),
        ),
        "TOTALS" => typed("sN", &["name", "value"]),
        "POOLS" => typed(
            "ssiiiiiiiiiiiiiss",
            &[
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active",
                "sv_active_cancel",
                "sv_being_canceled",
                "sv_idle",
                "sv_used",
                "sv_tested",
                "sv_login",
                "maxwait",
                "maxwait_us",
                "pool_mode",
                "load_balance_hosts",
            ],
        ),
        "DATABASES" => typed(
            "ssissiiiissiiiiii",
            &[
                "name",
                "host",
                "port",
                "database",
                "force_user",
                "pool_size",
                "min_pool_size",
                "reserve_pool_size",
                "server_lifetime",
                "pool_mode",
                "load_balance_hosts",
                "max_connections",
                "current_connections",
                "max_client_connections",
                "current_client_connections",
                "paused",
                "disabled",
            ],
        ),
        "LISTS" => typed("si", &["list", "items"]),
        "CONFIG" => typed("ssss", &["key", "value", "default", "changeable"]),
        "CLIENTS" | "SERVERS" => typed("ssssssisissiiississii", &socket),
        "USERS" => typed(
            "ssssiiii",
            &[
                "name",
                "pool_size",
                "reserve_pool_size",
                "pool_mode",
                "max_user_connections",
                "current_connections",
                "max_user_client_connections",
                "current_client_connections",
            ],
        ),
        "MEM" => typed("siiii", &["name", "size", "used", "free", "memtotal"]),
        "VERSION" => typed("s", &["version"]),
        "STATE" => typed("ss", &["key", "value"]),
        other => panic!("no layout for {other}"),
    }
}

const COMMANDS: &[&str] = &[
    "STATS",
    "STATS_TOTALS",
    "STATS_AVERAGES",
    "TOTALS",
    "POOLS",
    "DATABASES",
    "LISTS",
    "CONFIG",
    "CLIENTS",
    "SERVERS",
    "USERS",
    "MEM",
    "VERSION",
    "STATE",
];

/// Columns PgBouncer renamed after 1.18: (1.18 name, current name).
const RENAMED: &[(&str, &str)] = &[("reserve_pool", "reserve_pool_size")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_match_pgbouncer() {
    let _serial = SERIAL.lock().await;
    let Some(bin) = common::pgbouncer::require() else {
        return;
    };
    let h = Harness::start(Opts {
        extra: TENANTS.to_string(),
        ..Opts::default()
    })
    .await;
    let bouncer = PgBouncer::start(
        &bin,
        &format!(
            "app = host=127.0.0.1 port={} dbname=app user=pgward password={UPSTREAM_PASSWORD}",
            h.pg.port()
        ),
        "auth_type = plain\nadmin_users = admin\npool_mode = transaction",
        &[("admin", PASSWORD), ("app_user", PASSWORD)],
    );
    // A client on each, so that pools, clients and servers have rows.
    let c1 = h.connect("app_user", "app").await;
    c1.simple_query("SELECT 1").await.unwrap();
    let c2 = connect(&format!(
        "postgres://app_user:{PASSWORD}@127.0.0.1:{}/app?sslmode=disable",
        bouncer.port
    ))
    .await
    .expect("connect through pgbouncer");
    c2.simple_query("SELECT 1").await.unwrap();

    let mut theirs = Wire::tcp(bouncer.port, "admin", "pgbouncer", PASSWORD)
        .await
        .expect("pgbouncer admin console");
    let mut ours = admin(&h).await;
    let version = ask(&mut theirs, "SHOW VERSION").await;
    eprintln!("comparing with {:?}", version.rows);
    for cmd in COMMANDS {
        let sql = format!("SHOW {cmd}");
        let (b, p) = (ask(&mut theirs, &sql).await, ask(&mut ours, &sql).await);
        assert_eq!(p.error, None, "pgward: {sql}");
        assert_eq!(p.tag.as_deref(), Some("SHOW"), "{sql}: command tag");
        // The 1.25 layout first, exactly.
        let want = pgbouncer_1_25(cmd);
        let got: Vec<(&str, u32)> = p.columns.iter().map(|(n, o)| (n.as_str(), *o)).collect();
        assert!(
            got.len() >= want.len() && got[..want.len()] == want[..],
            "{sql}: pgward's columns\n{got:?}\ndo not start with PgBouncer 1.25's\n{want:?}"
        );
        // Commands newer than the running PgBouncer (SHOW STATE: 1.19) are checked above only.
        if b.error
            .as_deref()
            .is_some_and(|e| e.contains("invalid command"))
        {
            eprintln!("{sql}: not known to the running PgBouncer; checked against 1.25's layout");
            continue;
        }
        assert_eq!(b.error, None, "pgbouncer: {sql}");
        assert_eq!(p.tag, b.tag, "{sql}: command tag");
        // Every column of the running PgBouncer, with its type, in the same relative order.
        let mut last = 0;
        for (name, oid) in &b.columns {
            let name = RENAMED
                .iter()
                .find(|(old, _)| old == name)
                .map_or(name.as_str(), |(_, new)| new);
            let at = got
                .iter()
                .position(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("{sql}: pgward lacks PgBouncer's column {name}"));
            assert_eq!(got[at].1, *oid, "{sql}: type of {name}");
            assert!(at >= last, "{sql}: {name} is out of PgBouncer's order");
            last = at;
        }
    }
    // SHOW LISTS: every list PgBouncer reports is there.
    let (b, p) = (
        ask(&mut theirs, "SHOW LISTS").await,
        ask(&mut ours, "SHOW LISTS").await,
    );
    for r in &b.rows {
        let name = r[0].as_deref().unwrap();
        assert!(p.get(name, "items").is_some(), "SHOW LISTS lacks {name}");
    }
    // SHOW HELP: a notice and the SHOW tag, no rows; unknown commands: an error.
    for w in [&mut theirs, &mut ours] {
        let a = ask(w, "SHOW HELP").await;
        assert_eq!((a.notices, a.tag.as_deref()), (1, Some("SHOW")), "{a:?}");
        assert!(ask(w, "SHOW NONSENSE").await.error.is_some());
    }
    // Exporters connect to dbname "pgbouncer": pgward answers there too.
    let mut alias = Wire::tcp(h.port(), "admin", "pgbouncer", PASSWORD)
        .await
        .expect("pgward's console under PgBouncer's name");
    assert_eq!(ask(&mut alias, "SHOW VERSION").await.columns.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_pgwards_own_figures() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start(Opts {
        extra: TENANTS.to_string(),
        top_extra: "stats_period = \"1s\"".into(),
        ..Opts::default()
    })
    .await;
    let mut a = admin(&h).await;
    let c = h.connect("app_user", "acme").await;
    for i in 0..20i32 {
        c.query_one("SELECT $1::int", &[&i]).await.unwrap();
    }
    // A transaction held open: its server connection is linked to the client.
    c.simple_query("BEGIN").await.unwrap();
    let pid = scalar(&c, "SELECT pg_backend_pid()").await;

    let stats = ask(&mut a, "SHOW STATS_TOTALS").await;
    assert!(stats.num("app", "xact_count") >= 20, "{stats:?}");
    assert!(stats.num("app", "bind_count") >= 20, "{stats:?}");
    assert!(stats.num("app", "client_parse_count") >= 20, "{stats:?}");
    assert!(stats.num("app", "server_parse_count") >= 1, "{stats:?}");
    assert!(stats.num("app", "bytes_received") > 0);

    let clients = ask(&mut a, "SHOW CLIENTS").await;
    let me = clients
        .rows
        .iter()
        .find(|r| {
            r[clients.names().iter().position(|n| *n == "tenant").unwrap()].as_deref()
                == Some("acme")
        })
        .expect("the acme client");
    let col = |r: &Vec<Option<String>>, n: &str| {
        r[clients.names().iter().position(|c| *c == n).unwrap()].clone()
    };
    assert_eq!(col(me, "state").as_deref(), Some("active"));
    assert_eq!(col(me, "local_port"), Some(h.port().to_string()));
    assert!(col(me, "connect_time").unwrap().ends_with(" UTC"));
    let link = col(me, "link").unwrap();
    assert!(!link.is_empty(), "an active client is linked: {me:?}");

    let servers = ask(&mut a, "SHOW SERVERS").await;
    let scol = |r: &Vec<Option<String>>, n: &str| {
        r[servers.names().iter().position(|c| *c == n).unwrap()].clone()
    };
    let mine = servers
        .rows
        .iter()
        .find(|r| scol(r, "remote_pid") == Some(pid.clone()))
        .unwrap_or_else(|| panic!("no server with pid {pid}: {servers:?}"));
    assert_eq!(scol(mine, "state").as_deref(), Some("active"));
    assert_eq!(scol(mine, "ptr"), Some(link), "client.link = server.ptr");
    assert_eq!(
        scol(mine, "link"),
        col(me, "ptr"),
        "server.link = client.ptr"
    );
    c.simple_query("COMMIT").await.unwrap();

    let pools = ask(&mut a, "SHOW POOLS").await;
    assert!(pools.num("app", "cl_active") >= 1);
    assert!(pools.num("app", "sv_idle") >= 1, "{pools:?}");
    let dbs = ask(&mut a, "SHOW DATABASES").await;
    assert_eq!(dbs.num("app", "pool_size"), 5);
    assert_eq!(dbs.num("app", "current_client_connections"), 1);
    assert!(dbs.num("app", "current_connections") >= 1);
    let users = ask(&mut a, "SHOW USERS").await;
    assert_eq!(users.num("app_user", "current_client_connections"), 1);
    let lists = ask(&mut a, "SHOW LISTS").await;
    assert_eq!(lists.num("databases", "items"), 1);
    assert!(lists.num("used_clients", "items") >= 1);
    let config = ask(&mut a, "SHOW CONFIG").await;
    assert_eq!(config.num("max_client_conn", "value"), 10_000);
    assert_eq!(config.num("default_pool_size", "value"), 5);
    assert_eq!(config.get("pool.size", "default").as_deref(), Some("20"));

    // Averages of the last completed 1 s window.
    for _ in 0..30 {
        c.simple_query("SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let avg = ask(&mut a, "SHOW STATS_AVERAGES").await;
    assert!(avg.num("app", "xact_count") >= 1, "{avg:?}");
    assert!(avg.num("app", "xact_time") >= 1, "{avg:?}");
    let totals = ask(&mut a, "SHOW TOTALS").await;
    assert!(totals.num("total_xact_count", "value") >= 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_commands() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start(Opts::default()).await;
    let mut a = admin(&h).await;

    // KILL_CLIENT: that client gets 57P01, the others go on.
    let victim = h.connect("app_user", "app").await;
    let other = h.connect("app_user", "app").await;
    victim.simple_query("SELECT 1").await.unwrap();
    let clients = ask(&mut a, "SHOW CLIENTS").await;
    let id_at = clients.names().iter().position(|n| *n == "id").unwrap();
    let ids: Vec<String> = clients
        .rows
        .iter()
        .map(|r| r[id_at].clone().unwrap())
        .collect();
    let first = ids
        .iter()
        .min_by_key(|i| i.parse::<u64>().unwrap())
        .unwrap();
    let r = ask(&mut a, &format!("KILL_CLIENT {first}")).await;
    assert_eq!(r.tag.as_deref(), Some("KILL_CLIENT"), "{r:?}");
    let e = victim.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        e.to_string().contains("administrator command") || e.is_closed(),
        "{e}"
    );
    other.simple_query("SELECT 1").await.unwrap();
    assert!(ask(&mut a, "KILL_CLIENT 999999").await.error.is_some());

    // RECONNECT + WAIT_CLOSE: waits for the connection a transaction still holds.
    other.simple_query("BEGIN").await.unwrap();
    let before = scalar(&other, "SELECT pg_backend_pid()").await;
    assert!(ask(&mut a, "RECONNECT app").await.error.is_none());
    let port = h.port();
    let waiter = tokio::spawn(async move {
        let mut w = Wire::tcp(port, "admin", "pgward", PASSWORD).await.unwrap();
        ask(&mut w, "WAIT_CLOSE app").await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !waiter.is_finished(),
        "WAIT_CLOSE returned while a transaction holds an old connection"
    );
    other.simple_query("COMMIT").await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("WAIT_CLOSE returns once the old connection is closed")
        .unwrap();
    assert_eq!(done.tag.as_deref(), Some("WAIT_CLOSE"), "{done:?}");
    let after = scalar(&other, "SELECT pg_backend_pid()").await;
    assert_ne!(
        before, after,
        "RECONNECT: the old server connection was not reused"
    );

    // DISABLE refuses new clients of the database (PostgreSQL's 55000); ENABLE lets them in.
    assert!(ask(&mut a, "DISABLE app").await.error.is_none());
    let e = connect(&h.url("app_user", "app")).await.unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{e}");
    assert_eq!(
        ask(&mut a, "SHOW DATABASES").await.num("app", "disabled"),
        1
    );
    other.simple_query("SELECT 1").await.unwrap();
    assert!(ask(&mut a, "ENABLE app").await.error.is_none());
    h.connect("app_user", "app").await;

    // SET: a runtime setting, under pgward's or PgBouncer's name, validated.
    let r = ask(&mut a, "SET default_pool_size = 7").await;
    assert_eq!(r.tag.as_deref(), Some("SET"), "{r:?}");
    assert_eq!(
        ask(&mut a, "SHOW DATABASES").await.num("app", "pool_size"),
        7
    );
    assert!(ask(&mut a, "SET pool.checkout_timeout = '2s'")
        .await
        .error
        .is_none());
    let config = ask(&mut a, "SHOW CONFIG").await;
    assert_eq!(
        config.get("pool.checkout_timeout", "value").as_deref(),
        Some("2s")
    );
    assert_eq!(config.num("query_wait_timeout", "value"), 2);
    let e = ask(&mut a, "SET default_pool_size = 0")
        .await
        .error
        .unwrap();
    assert!(e.contains("pool.size"), "{e}");
    let e = ask(&mut a, "SET listen = '127.0.0.1:1'")
        .await
        .error
        .unwrap();
    assert!(e.contains("restart"), "{e}");
    other.simple_query("SELECT 1").await.unwrap();

    // KILL: the database's clients are disconnected and new transactions wait for RESUME.
    assert!(ask(&mut a, "KILL app").await.error.is_none());
    assert!(other.simple_query("SELECT 1").await.is_err());
    let state = ask(&mut a, "SHOW STATE").await;
    assert_eq!(state.get("paused", "value").as_deref(), Some("yes"));
    let late = h.connect("app_user", "app").await;
    let q = tokio::spawn(async move { late.simple_query("SELECT 1").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !q.is_finished(),
        "a killed database holds new transactions until RESUME"
    );
    assert!(ask(&mut a, "RESUME").await.error.is_none());
    tokio::time::timeout(Duration::from_secs(5), q)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(ask(&mut a, "SUSPEND").await.error.is_some());
}
