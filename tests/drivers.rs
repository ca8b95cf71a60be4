//! Real drivers through pgward in transaction mode: asyncpg and psycopg 3 (Python scripts
//! in tests/drivers/, run with `python3`), pgjdbc (tests/drivers/JdbcCheck.java, run with
//! `java`'s source launcher), tokio-postgres prepared statements over a small
//! pool (Close, re-prepare, failed Parse, schema changes, tenants whose same-named tables
//! differ), and a raw-protocol client for what drivers pipeline (asyncpg's COPY data sent
//! behind the COPY Query without waiting for CopyInResponse).
//!
//! The Python tests need `python3 -m pip install asyncpg "psycopg[binary]"` (.ci/run does
//! this), the JDBC test a JRE and pgjdbc (`apt-get install default-jre-headless
//! libpostgresql-jdbc-java`, also in .ci/run). Without them the tests print "SKIPPED: …" and
//! pass, except when the `CI` environment variable is set: then they fail and say what to
//! install.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::python::{in_ci, require_python_module};
use common::*;
use tokio_postgres::types::Type;

/// How long one driver script may run before it is killed and the test fails (a hang).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(260);

fn driver_opts(size: usize) -> Opts {
    Opts {
        mode: "transaction",
        size,
        extra: TENANTS.to_string(),
        ..Opts::default()
    }
}

/// True if `node` and the packages of tests/drivers/node are installed; else as
/// [`require_python_module`]: SKIPPED, or a panic in CI.
fn require_node_pg() -> bool {
    let dir = script("node");
    let out = std::process::Command::new("node")
        .current_dir(&dir)
        .args([
            "-e",
            "for (const m of ['pg', 'pg-copy-streams', 'pg-cursor']) require(m); \
             console.log(process.version, 'pg', require('pg/package.json').version)",
        ])
        .output();
    let reason = match out {
        Err(e) => format!("node could not be run ({e})"),
        Ok(o) if o.status.success() => {
            eprintln!("using node {}", String::from_utf8_lossy(&o.stdout).trim());
            return true;
        }
        Ok(o) => format!(
            "node-postgres is not installed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("")
        ),
    };
    let install = "npm install --prefix tests/drivers/node";
    if in_ci() {
        panic!("{reason}. The node test needs it in CI: {install}");
    }
    eprintln!("SKIPPED: {reason}; run `{install}` to run this test");
    false
}

/// pgjdbc's jar: `PGJDBC_JAR`, else Debian's `libpostgresql-jdbc-java`.
fn pgjdbc_jar() -> PathBuf {
    std::env::var_os("PGJDBC_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/java/postgresql.jar"))
}

/// True if `java` (11 or later, for the source launcher) and pgjdbc are there; else as
/// [`require_python_module`]: SKIPPED, or a panic in CI.
fn require_java() -> bool {
    let java = std::process::Command::new("java").arg("-version").output();
    let reason = match java {
        Err(e) => format!("java could not be run ({e})"),
        Ok(_) if !pgjdbc_jar().is_file() => {
            format!("no pgjdbc jar at {}", pgjdbc_jar().display())
        }
        Ok(out) => {
            let v = String::from_utf8_lossy(&out.stderr);
            eprintln!(
                "using {} / {}",
                v.lines().next().unwrap_or("java"),
                pgjdbc_jar().display()
            );
            return true;
        }
    };
    let install =
        "apt-get install default-jre-headless libpostgresql-jdbc-java (or set PGJDBC_JAR)";
    if in_ci() {
        panic!("{reason}. The JDBC test needs it in CI: {install}");
    }
    eprintln!("SKIPPED: {reason}; {install} to run this test");
    false
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("drivers")
        .join(name)
}

/// Run a driver script against pgward with the plain, acme and globex URLs (and the script's
/// extra arguments); panics unless it exits with status 0 within SCRIPT_TIMEOUT. Its output
/// is printed either way.
async fn run_script(h: &Harness, name: &str, args: &[&str]) {
    use tokio::io::AsyncReadExt;
    let path = script(name);
    let started = Instant::now();
    let mut cmd = if name.ends_with(".java") {
        // the JDK's source launcher: compiled in memory, no build step
        let mut c = tokio::process::Command::new("java");
        c.arg("-cp").arg(pgjdbc_jar());
        c
    } else if name.ends_with(".js") {
        tokio::process::Command::new("node")
    } else {
        tokio::process::Command::new("python3")
    };
    let mut child = cmd
        .arg(&path)
        .arg(h.url("app_user", "app"))
        .arg(h.url("app_user", "acme"))
        .arg(h.url("app_user", "globex"))
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v).await;
        v
    });
    let err_reader = tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v).await;
        v
    });
    let status = match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait()).await {
        Ok(status) => Some(status.unwrap_or_else(|e| panic!("wait for {name}: {e}"))),
        Err(_) => {
            println!(
                "--- {name} still running after {SCRIPT_TIMEOUT:?}: state before killing it ---\n{}",
                hang_report(h).await
            );
            let _ = child.kill().await;
            None
        }
    };
    let stdout = String::from_utf8_lossy(&out_reader.await.unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.await.unwrap()).into_owned();
    println!(
        "--- {name} {} stdout ({:.1?}) ---\n{stdout}",
        args.join(" "),
        started.elapsed()
    );
    if !stderr.trim().is_empty() {
        println!("--- {name} stderr ---\n{stderr}");
    }
    // the script's own summary: its last lines (the full output is printed above)
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(12)..].join("\n");
    match status {
        None => panic!(
            "{name} {} did not finish within {SCRIPT_TIMEOUT:?} (killed): a hang through pgward?\n{tail}",
            args.join(" ")
        ),
        Some(s) if !s.success() => panic!("{name} {} failed ({s}):\n{tail}", args.join(" ")),
        Some(_) => {}
    }
}

/// pgward's and PostgreSQL's view of the connections, for a test that hangs.
async fn hang_report(h: &Harness) -> String {
    let mut report = String::new();
    for what in ["POOLS", "CLIENTS", "SERVERS"] {
        let (_, out, err) = tokio::task::block_in_place(|| {
            h.psql(
                "admin",
                "pgward",
                &["-P", "pager=off", "-c", &format!("SHOW {what}")],
            )
        });
        report.push_str(&format!("pgward SHOW {what}:\n{out}{err}\n"));
    }
    match tokio::time::timeout(Duration::from_secs(10), h.connect_direct()).await {
        Ok(c) => {
            let rows = c
                .simple_query(
                    "SELECT pid || ' ' || state || ' ' || coalesce(wait_event_type, '-') || ' ' || coalesce(wait_event, '-') || ' ' || left(query, 120) FROM pg_stat_activity WHERE usename = 'pgward' AND pid <> pg_backend_pid()",
                )
                .await;
            report.push_str("PostgreSQL pg_stat_activity (pid state wait query):\n");
            if let Ok(rows) = rows {
                for m in rows {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        report.push_str(&format!("  {}\n", r.get(0).unwrap_or("")));
                    }
                }
            }
        }
        Err(_) => report.push_str("PostgreSQL: direct connection timed out\n"),
    }
    report
}

/// A plain client and a client of tenant acme running short transactions in a loop, so the
/// checked client's transactions land on server connections someone else just used.
struct OtherClients {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl OtherClients {
    async fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("background client");
        }
    }
}

fn other_clients(h: &Harness) -> OtherClients {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = [h.url("app_user", "app"), h.url("app_user", "acme")]
        .into_iter()
        .map(|url| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = connect(&url).await.expect("background client");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    c.simple_query("SELECT 1").await.expect("background query");
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            })
        })
        .collect();
    OtherClients { stop, tasks }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_prepared_statements_and_tenants() {
    if !require_python_module("asyncpg") {
        return;
    }
    let h = Harness::start(driver_opts(5)).await;
    run_script(&h, "asyncpg_check.py", &["core", "features"]).await;
    // the pool stayed within its size
    assert!(h.upstream_connections().await <= 5);
}

/// pgjdbc (the Java driver): named server-side statements, batches, transactions, cursor
/// fetches, metadata, tenants and the guard, an invalid startup option refused at login, and
/// concurrent tenant and plain connections over a pool of 4 (tests/drivers/JdbcCheck.java).
/// pgjdbc's CopyManager (copyIn, copyOut) and a batch as a tenant with its own role, each
/// followed by the tenant context checks, over two server connections shared with others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_copy_and_batch_keep_the_tenant_context() {
    if !require_java() {
        return;
    }
    let h = Harness::start(driver_opts(2)).await;
    let noise = other_clients(&h);
    run_script(&h, "JdbcCheck.java", &["bulk-context"]).await;
    noise.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_prepared_statements_and_tenants() {
    if !require_java() {
        return;
    }
    let h = Harness::start(driver_opts(4)).await;
    run_script(&h, "JdbcCheck.java", &[]).await;
    assert!(h.upstream_connections().await <= 4);
}

/// asyncpg's COPY: CopyData and CopyDone are written right behind the COPY Query, before
/// the server's CopyInResponse has arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_copy_in_and_out() {
    if !require_python_module("asyncpg") {
        return;
    }
    let h = Harness::start(driver_opts(5)).await;
    run_script(&h, "asyncpg_check.py", &["copy"]).await;
}

/// Issue: after asyncpg's COPY (a prepared introspection query with Parse/Describe/Flush,
/// then a simple-protocol COPY) the next statement ran without the tenant context, as the
/// pooler's login role. Every bulk and streaming path of asyncpg, then the context and the
/// other tenant's table, over two server connections shared with other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_bulk_paths_keep_the_tenant_context() {
    if !require_python_module("asyncpg") {
        return;
    }
    let h = Harness::start(driver_opts(2)).await;
    let noise = other_clients(&h);
    run_script(&h, "asyncpg_check.py", &["bulk-context"]).await;
    noise.stop().await;
}

/// asyncpg's answer to "cached plan must not change result type" (after ALTER TABLE):
/// drop its statement cache, prepare the same text again under a new name and retry once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_statement_cache_after_schema_change() {
    if !require_python_module("asyncpg") {
        return;
    }
    let h = Harness::start(driver_opts(5)).await;
    run_script(&h, "asyncpg_check.py", &["schema-change"]).await;
}

/// An asyncpg Pool on a tenant URL: on release asyncpg runs its reset query
/// (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_pool_on_tenant_urls() {
    if !require_python_module("asyncpg") {
        return;
    }
    let h = Harness::start(driver_opts(5)).await;
    run_script(&h, "asyncpg_check.py", &["tenant-pool"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_copy_errors_and_tenants() {
    if !require_python_module("psycopg") {
        return;
    }
    let h = Harness::start(driver_opts(5)).await;
    run_script(&h, "psycopg_check.py", &[]).await;
    assert!(h.upstream_connections().await <= 5);
}

/// psycopg's COPY (text and binary, in and out, inside and outside a transaction), pipeline
/// mode (the pipeline whose first statement fails used to hang when other clients
/// shared the server connections) and server-side cursors, each followed by the tenant
/// context checks, over two server connections shared with other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_bulk_paths_keep_the_tenant_context() {
    if !require_python_module("psycopg") {
        return;
    }
    let h = Harness::start(driver_opts(2)).await;
    let noise = other_clients(&h);
    run_script(&h, "psycopg_check.py", &["bulk-context"]).await;
    noise.stop().await;
}

/// node-postgres: COPY in and out (pg-copy-streams) inside and outside a transaction, a
/// cursor (pg-cursor), named prepared statements, an error, a pg.Pool — each followed by
/// the tenant context checks, over two server connections shared with other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pg_bulk_paths_keep_the_tenant_context() {
    if !require_node_pg() {
        return;
    }
    let h = Harness::start(driver_opts(2)).await;
    let noise = other_clients(&h);
    run_script(&h, "node/node_check.js", &[]).await;
    noise.stop().await;
}

// ---- tokio-postgres: prepared statements over a small pool ---------------------------------

const CLIENTS: usize = 50;
const ROUNDS: i32 = 30;

async fn prepared_client(h: Arc<Harness>, n: i32) -> Result<u64, String> {
    let c = connect(&h.url("app_user", "app"))
        .await
        .map_err(|e| format!("client {n}: connect: {e}"))?;
    let err = |what: &str, e: tokio_postgres::Error| format!("client {n}: {what}: {e:?}");
    let mut queries = 0u64;

    // prepared once, used many times (each use may be on another server connection)
    let add = c
        .prepare("SELECT $1::int + $2::int")
        .await
        .map_err(|e| err("prepare add", e))?;
    let concat = c
        .prepare_typed("SELECT $1 || '/' || $2", &[Type::TEXT, Type::TEXT])
        .await
        .map_err(|e| err("prepare concat", e))?;
    let series = c
        .prepare("SELECT g, g * $2::int FROM generate_series(1, $1::int) g ORDER BY g")
        .await
        .map_err(|e| err("prepare series", e))?;
    // a second statement with the same text as `add` (same shared definition in pgward)
    let mut add2 = c
        .prepare("SELECT $1::int + $2::int")
        .await
        .map_err(|e| err("prepare add2", e))?;

    for r in 0..ROUNDS {
        let v: i32 = c
            .query_one(&add, &[&n, &r])
            .await
            .map_err(|e| err("query add", e))?
            .get(0);
        if v != n + r {
            return Err(format!("client {n}: add({n}, {r}) = {v}"));
        }
        let v: i32 = c
            .query_one(&add2, &[&r, &n])
            .await
            .map_err(|e| err("query add2", e))?
            .get(0);
        if v != n + r {
            return Err(format!("client {n}: add2({r}, {n}) = {v}"));
        }
        let s: String = c
            .query_one(&concat, &[&format!("c{n}"), &r.to_string()])
            .await
            .map_err(|e| err("query concat", e))?
            .get(0);
        if s != format!("c{n}/{r}") {
            return Err(format!("client {n}: concat = {s:?}"));
        }
        let len = r % 5 + 1;
        let rows = c
            .query(&series, &[&len, &n])
            .await
            .map_err(|e| err("query series", e))?;
        let got: Vec<(i32, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let want: Vec<(i32, i32)> = (1..=len).map(|g| (g, g * n)).collect();
        if got != want {
            return Err(format!("client {n}: series = {got:?}, want {want:?}"));
        }
        queries += 4;

        if r % 10 == 3 {
            // Close (drop the Statement) and prepare the same text again under a new name;
            // `add` (same definition) must keep working.
            drop(add2);
            add2 = c
                .prepare("SELECT $1::int + $2::int")
                .await
                .map_err(|e| err("re-prepare add2", e))?;
            let v: i32 = c
                .query_one(&add, &[&1i32, &2i32])
                .await
                .map_err(|e| err("add after closing add2", e))?
                .get(0);
            if v != 3 {
                return Err(format!("client {n}: add after close = {v}"));
            }
            // a throw-away statement: prepared, used, closed
            let tmp = c
                .prepare(&format!("SELECT $1::int * {}", n + 1))
                .await
                .map_err(|e| err("prepare tmp", e))?;
            let v: i32 = c
                .query_one(&tmp, &[&r])
                .await
                .map_err(|e| err("query tmp", e))?
                .get(0);
            if v != r * (n + 1) {
                return Err(format!("client {n}: tmp = {v}"));
            }
            drop(tmp);
            queries += 2;
        }
        if r % 10 == 5 {
            // a Parse that fails (syntax error), then a good one on the same connection
            match c.prepare("SELEC $1::int").await {
                Err(e) if e.code().map(|c| c.code()) == Some("42601") => {}
                Err(e) => return Err(err("bad prepare: wrong error", e)),
                Ok(_) => return Err(format!("client {n}: `SELEC $1::int` prepared")),
            }
            // a Parse that fails on an unknown table
            match c.prepare("SELECT * FROM no_such_table WHERE id = $1").await {
                Err(e) if e.code().map(|c| c.code()) == Some("42P01") => {}
                Err(e) => return Err(err("unknown table: wrong error", e)),
                Ok(_) => return Err(format!("client {n}: unknown table prepared")),
            }
            let good = c
                .prepare("SELECT $1::int - 1")
                .await
                .map_err(|e| err("good prepare after a failed one", e))?;
            let v: i32 = c
                .query_one(&good, &[&r])
                .await
                .map_err(|e| err("query good", e))?
                .get(0);
            if v != r - 1 {
                return Err(format!("client {n}: good = {v}"));
            }
            // existing statements are unaffected
            let v: i32 = c
                .query_one(&add, &[&r, &r])
                .await
                .map_err(|e| err("add after failed parse", e))?
                .get(0);
            if v != 2 * r {
                return Err(format!("client {n}: add after failed parse = {v}"));
            }
            // pipelined: a failing Parse and good queries in flight together
            let one = 1i32;
            let (p, q) = ("p", "q");
            let add_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&r, &one];
            let concat_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&p, &q];
            let (bad, ok1, ok2) = tokio::join!(
                c.prepare("SELECT FROM WHERE"),
                c.query_one(&add, &add_params),
                c.query_one(&concat, &concat_params),
            );
            if bad.is_ok() {
                return Err(format!("client {n}: `SELECT FROM WHERE` prepared"));
            }
            let v: i32 = ok1.map_err(|e| err("pipelined add", e))?.get(0);
            let s: String = ok2.map_err(|e| err("pipelined concat", e))?.get(0);
            if v != r + 1 || s != "p/q" {
                return Err(format!("client {n}: pipelined = {v}, {s:?}"));
            }
            queries += 5;
        }
        if r % 10 == 7 {
            // statements inside an explicit transaction (one server connection throughout),
            // including one prepared inside it and a failing Parse that aborts it
            c.batch_execute("BEGIN")
                .await
                .map_err(|e| err("BEGIN", e))?;
            let in_tx = c
                .prepare("SELECT txid_current() + $1::bigint")
                .await
                .map_err(|e| err("prepare in tx", e))?;
            let t1: i64 = c
                .query_one(&in_tx, &[&0i64])
                .await
                .map_err(|e| err("in tx", e))?
                .get(0);
            let v: i32 = c
                .query_one(&add, &[&n, &n])
                .await
                .map_err(|e| err("add in tx", e))?
                .get(0);
            let t2: i64 = c
                .query_one(&in_tx, &[&0i64])
                .await
                .map_err(|e| err("in tx again", e))?
                .get(0);
            if t1 != t2 || v != 2 * n {
                return Err(format!("client {n}: in tx: txids {t1} {t2}, add {v}"));
            }
            if c.prepare("SELEC 2").await.is_ok() {
                return Err(format!("client {n}: `SELEC 2` prepared in tx"));
            }
            match c.query_one(&add, &[&1i32, &1i32]).await {
                Err(e) if e.code().map(|c| c.code()) == Some("25P02") => {}
                other => {
                    return Err(format!(
                        "client {n}: after failed Parse in tx, want 25P02, got {other:?}"
                    ))
                }
            }
            c.batch_execute("ROLLBACK")
                .await
                .map_err(|e| err("ROLLBACK", e))?;
            // used again after the transaction, from another server connection perhaps
            let t3: i64 = c
                .query_one(&in_tx, &[&0i64])
                .await
                .map_err(|e| err("in_tx after tx", e))?
                .get(0);
            if t3 == t1 {
                return Err(format!("client {n}: same txid {t3} after ROLLBACK"));
            }
            queries += 5;
        }
        if r % 3 == 0 {
            tokio::task::yield_now().await;
        }
    }
    Ok(queries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepared_statements_over_a_small_pool() {
    let h = Arc::new(Harness::start(driver_opts(3)).await);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS as i32)
        .map(|n| tokio::spawn(prepared_client(h.clone(), n)))
        .collect();
    let mut failures = Vec::new();
    let mut queries = 0;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(180), t).await {
            Ok(Ok(Ok(q))) => queries += q,
            Ok(Ok(Err(e))) => failures.push(e),
            Ok(Err(panic)) => failures.push(format!("task panicked: {panic}")),
            Err(_) => failures.push("client did not finish within 180s (hang)".to_string()),
        }
    }
    println!(
        "tokio-postgres: {CLIENTS} clients over 3 server connections, {queries} statements ok, {} failed, {:.1?}",
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(h.upstream_connections().await <= 3);
    // the pool is still healthy
    let c = h.connect("app_user", "app").await;
    assert_eq!(scalar(&c, "SELECT 41 + 1").await, "42");
}

/// tokio-postgres' binary COPY in and out (extended protocol: a named statement, Bind,
/// Execute, the data, Sync), each followed by the tenant context checks, over two server
/// connections shared with other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_binary_copy_keeps_the_tenant_context() {
    use futures_util::{pin_mut, SinkExt, TryStreamExt};
    use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
    let h = Harness::start(driver_opts(2)).await;
    let noise = other_clients(&h);
    let c = h.connect("app_user", "globex").await;
    let holds = |after: &'static str| {
        let c = &c;
        async move {
            let row = c
                .query_one(
                    "SELECT current_setting('search_path'), current_user::text, current_setting('app.tenant_id', true)",
                    &[],
                )
                .await
                .unwrap();
            let got: (String, String, String) = (row.get(0), row.get(1), row.get(2));
            assert_eq!(
                got,
                (
                    "globex, public".into(),
                    "tenant_globex".into(),
                    "globex".into()
                ),
                "after {after}"
            );
            let e = c
                .simple_query("SELECT count(*) FROM acme.items")
                .await
                .expect_err("tenant globex read tenant acme's table");
            assert_eq!(sqlstate(&e), "42501", "after {after}: {e}");
        }
    };
    for round in 0..5 {
        let sink = c
            .copy_in("COPY items (id, name) FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        let writer = BinaryCopyInWriter::new(sink, &[Type::INT4, Type::TEXT]);
        pin_mut!(writer);
        for i in 0..30i32 {
            writer.as_mut().write(&[&(1000 + i), &"bin"]).await.unwrap();
        }
        assert_eq!(writer.finish().await.unwrap(), 30, "round {round}");
        holds("binary COPY FROM STDIN").await;
        let stream = c
            .copy_out("COPY (SELECT id, current_user::text FROM items WHERE id >= 1000) TO STDOUT (FORMAT binary)")
            .await
            .unwrap();
        let rows = BinaryCopyOutStream::new(stream, &[Type::INT4, Type::TEXT]);
        pin_mut!(rows);
        let mut n = 0;
        while let Some(r) = rows.try_next().await.unwrap() {
            assert_eq!(r.get::<&str>(1), "tenant_globex");
            n += 1;
        }
        assert_eq!(n, 30);
        holds("binary COPY TO STDOUT").await;
        // an aborted COPY: the sink dropped without finish sends CopyFail
        let mut sink = Box::pin(
            c.copy_in::<_, bytes::Bytes>("COPY items (id, name) FROM STDIN")
                .await
                .unwrap(),
        );
        sink.send(bytes::Bytes::from_static(b"5000\tx\n"))
            .await
            .unwrap();
        drop(sink);
        holds("a COPY abandoned (CopyFail)").await;
        c.execute("DELETE FROM items WHERE id >= 1000", &[])
            .await
            .unwrap();
    }
    noise.stop().await;
}

/// The tenant same-text case with tokio-postgres: named statements with identical text for
/// two tenants on a single server connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_same_statement_text_for_two_tenants() {
    let h = Harness::start(driver_opts(1)).await;
    let sql = "SELECT string_agg(name, ',' ORDER BY id) FROM items";
    let acme = h.connect("app_user", "acme").await;
    let globex = h.connect("app_user", "globex").await;
    let sa = acme.prepare(sql).await.unwrap();
    let sg = globex.prepare(sql).await.unwrap();
    for round in 0..100 {
        let (a, g) = tokio::join!(acme.query_one(&sa, &[]), globex.query_one(&sg, &[]));
        assert_eq!(
            a.unwrap().get::<_, String>(0),
            "acme-one,acme-two",
            "round {round}"
        );
        assert_eq!(
            g.unwrap().get::<_, String>(0),
            "globex-one",
            "round {round}"
        );
        let a: String = acme.query_one(sql, &[]).await.unwrap().get(0);
        let g: String = globex.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(
            (a.as_str(), g.as_str()),
            ("acme-one,acme-two", "globex-one")
        );
    }
}

/// A named statement prepared before a schema change: using it fails with 0A000 ("cached
/// plan must not change result type") exactly as on PostgreSQL itself, and preparing the same
/// text again (what asyncpg, psycopg and JDBC do on that error) must give a working statement
/// with the new row type, as it does on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_reprepare_after_schema_change() {
    let h = Harness::start(driver_opts(1)).await;
    let direct = h.connect_direct().await;
    direct
        .batch_execute("CREATE TABLE ddl_t (a int); INSERT INTO ddl_t VALUES (1)")
        .await
        .unwrap();
    let c = h.connect("app_user", "app").await;
    let other = h.connect("app_user", "app").await;
    let sql = "SELECT * FROM ddl_t";
    let s1 = c.prepare(sql).await.unwrap();
    assert_eq!(s1.columns().len(), 1);
    assert_eq!(c.query_one(&s1, &[]).await.unwrap().get::<_, i32>(0), 1);
    direct
        .batch_execute("ALTER TABLE ddl_t ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    // the stale statement fails like it does on PostgreSQL
    let e = c.query_one(&s1, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    drop(s1);
    // preparing the same text again works and sees the new columns
    let s2 = c
        .prepare(sql)
        .await
        .unwrap_or_else(|e| panic!("re-prepare `{sql}` after ALTER TABLE: {e:?}"));
    assert_eq!(s2.columns().len(), 2, "{:?}", s2.columns());
    let row = c
        .query_one(&s2, &[])
        .await
        .unwrap_or_else(|e| panic!("query the re-prepared statement: {e:?}"));
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (1, 7));
    // and so does another client that prepares it for the first time
    let s3 = other
        .prepare(sql)
        .await
        .unwrap_or_else(|e| panic!("another client preparing `{sql}` after ALTER: {e:?}"));
    assert_eq!(s3.columns().len(), 2);
    other.query_one(&s3, &[]).await.unwrap();
}

/// A type dropped and created again (a migration run twice, a test suite's setup): same name,
/// new OID. A statement whose parameter is that type, prepared before, must not be reused for
/// a client that prepares the text afterwards: on PostgreSQL a new Parse resolves the new type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepare_after_type_recreated() {
    let h = Harness::start(driver_opts(1)).await;
    let sql = "SELECT $1::rt_level::text";
    for round in 0..3 {
        let c = h.connect("app_user", "app").await;
        c.batch_execute(
            "DROP TYPE IF EXISTS rt_level; CREATE TYPE rt_level AS ENUM ('low', 'high')",
        )
        .await
        .unwrap();
        let s = c.prepare(sql).await.unwrap_or_else(|e| {
            panic!("round {round}: prepare `{sql}` after DROP TYPE + CREATE TYPE: {e:?}")
        });
        // the parameter is the type that exists now (tokio-postgres looked it up by OID)
        assert_eq!(s.params()[0].name(), "rt_level");
        let oid: u32 = c
            .query_one("SELECT 'rt_level'::regtype::oid", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(s.params()[0].oid(), oid, "round {round}: stale type OID");
    }
}

/// Schema-per-tenant where the tenants' tables differ (a migration applied to one tenant
/// first): the same statement text resolves to different tables with different columns.
/// Each tenant must get its own table's columns and rows, as it would on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_same_text_different_tenant_tables() {
    let h = Harness::start(driver_opts(1)).await;
    let direct = h.connect_direct().await;
    direct
        .batch_execute(
            "CREATE TABLE acme.widgets (id int, name text);
             INSERT INTO acme.widgets VALUES (1, 'acme-widget');
             CREATE TABLE globex.widgets (id int, label text, qty bigint);
             INSERT INTO globex.widgets VALUES (1, 'globex-widget', 5);
             GRANT ALL ON acme.widgets TO tenant_acme;
             GRANT ALL ON globex.widgets TO tenant_globex;",
        )
        .await
        .unwrap();
    let acme = h.connect("app_user", "acme").await;
    let globex = h.connect("app_user", "globex").await;
    let sql = "SELECT * FROM widgets ORDER BY id";
    let sa = acme.prepare(sql).await.unwrap();
    let sg = globex
        .prepare(sql)
        .await
        .unwrap_or_else(|e| panic!("globex prepares the text acme prepared: {e:?}"));
    assert_eq!(sa.columns().len(), 2);
    assert_eq!(sg.columns().len(), 3, "globex got {:?}", sg.columns());
    for round in 0..5 {
        let a = acme
            .query_one(&sa, &[])
            .await
            .unwrap_or_else(|e| panic!("acme round {round}: {e:?}"));
        assert_eq!(a.get::<_, String>(1), "acme-widget");
        let g = globex
            .query_one(&sg, &[])
            .await
            .unwrap_or_else(|e| panic!("globex round {round}: {e:?}"));
        assert_eq!(
            (g.get::<_, String>(1), g.get::<_, i64>(2)),
            ("globex-widget".to_string(), 5)
        );
    }
}

/// Like the above, for parameter types: `$1` is inferred from each tenant's own column type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_same_text_different_tenant_parameter_types() {
    let h = Harness::start(driver_opts(1)).await;
    let direct = h.connect_direct().await;
    let acme = h.connect("app_user", "acme").await;
    let globex = h.connect("app_user", "globex").await;
    direct
        .batch_execute(
            "CREATE TABLE acme.codes (code int, v text); INSERT INTO acme.codes VALUES (42, 'acme-42');
             CREATE TABLE globex.codes (code text, v text); INSERT INTO globex.codes VALUES ('x42', 'globex-x42');
             GRANT ALL ON acme.codes TO tenant_acme; GRANT ALL ON globex.codes TO tenant_globex;",
        )
        .await
        .unwrap();
    let sql = "SELECT v FROM codes WHERE code = $1";
    let pa = acme.prepare(sql).await.unwrap();
    assert_eq!(pa.params(), &[Type::INT4]);
    let pg = globex
        .prepare(sql)
        .await
        .unwrap_or_else(|e| panic!("globex prepares `{sql}`: {e:?}"));
    assert_eq!(
        pg.params(),
        &[Type::TEXT],
        "globex got acme's parameter types"
    );
    let v: String = globex
        .query_one(&pg, &[&"x42"])
        .await
        .unwrap_or_else(|e| panic!("globex codes: {e:?}"))
        .get(0);
    assert_eq!(v, "globex-x42");
    let v: String = acme.query_one(&pa, &[&42i32]).await.unwrap().get(0);
    assert_eq!(v, "acme-42");
}

// ---- raw protocol: what a driver may pipeline ---------------------------------------------

/// A minimal frontend over TCP: md5 login, then raw messages.
struct Raw {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Raw {
    async fn connect(port: u16, user: &str, db: &str) -> Raw {
        use tokio::io::AsyncWriteExt;
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut r = Raw {
            stream,
            buf: Vec::new(),
        };
        let mut body = 196608i32.to_be_bytes().to_vec();
        for kv in ["user", user, "database", db] {
            body.extend_from_slice(&cstr(kv));
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        r.stream.write_all(&startup).await.unwrap();
        let (tag, body) = r.next().await;
        assert_eq!(tag, b'R', "{}", String::from_utf8_lossy(&body));
        assert_eq!(
            &body[..4],
            &5i32.to_be_bytes(),
            "md5 authentication expected"
        );
        let inner = md5_hex(format!("{PASSWORD}{user}").as_bytes());
        let mut salted = inner.into_bytes();
        salted.extend_from_slice(&body[4..8]);
        let pw = format!("md5{}", md5_hex(&salted));
        r.send(&msg(b'p', &cstr(&pw))).await;
        let (tags, text) = r.until_ready().await;
        assert!(tags.starts_with(b"R"), "login: {tags:?} {text}");
        r
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn next(&mut self) -> (u8, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..1 + len].to_vec();
                    self.buf.drain(..1 + len);
                    return (tag, body);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "pgward closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Messages up to and including ReadyForQuery: their tags, and the text of
    /// CommandComplete / DataRow / ErrorResponse bodies.
    async fn until_ready(&mut self) -> (Vec<u8>, String) {
        let mut tags = Vec::new();
        let mut text = String::new();
        loop {
            let (tag, body) = self.next().await;
            tags.push(tag);
            match tag {
                b'C' | b'E' | b'D' => {
                    text.push_str(&String::from_utf8_lossy(&body).replace('\0', " "));
                    text.push('|');
                }
                b'Z' => return (tags, text),
                _ => {}
            }
        }
    }
}

/// asyncpg's way of COPY FROM STDIN, on the wire: Query, CopyData and CopyDone in one write,
/// before the server's CopyInResponse. PostgreSQL processes them in order; a proxy that
/// drops the CopyData/CopyDone leaves the server waiting for data forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_data_pipelined_behind_the_copy_query() {
    let h = Harness::start(driver_opts(2)).await;
    let direct = h.connect_direct().await;
    direct
        .batch_execute("CREATE TABLE raw_copy (id int, name text)")
        .await
        .unwrap();
    for round in 0..20 {
        let mut r = Raw::connect(h.port(), "md5_user", "app").await;
        let mut out = msg(b'Q', &cstr("COPY raw_copy FROM STDIN"));
        out.extend(msg(b'd', b"1\tone\n2\ttwo\n"));
        out.extend(msg(b'd', b"3\tthree\n"));
        out.extend(msg(b'c', b""));
        r.send(&out).await;
        let (tags, text) = tokio::time::timeout(Duration::from_secs(10), r.until_ready())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "round {round}: no ReadyForQuery within 10s after Query(COPY … FROM STDIN) + CopyData + CopyDone sent together: the CopyData/CopyDone were lost"
                )
            });
        assert_eq!(tags, b"GCZ", "round {round}: {text}");
        assert!(text.starts_with("COPY 3"), "round {round}: {text}");
        // the same with extended protocol: Parse/Bind/Execute/Sync, then the data
        let mut out = msg(
            b'P',
            &[cstr(""), cstr("COPY raw_copy FROM STDIN"), vec![0, 0]].concat(),
        );
        out.extend(msg(
            b'B',
            &[cstr(""), cstr(""), vec![0, 0, 0, 0, 0, 0]].concat(),
        ));
        out.extend(msg(b'E', &[cstr(""), vec![0, 0, 0, 0]].concat()));
        out.extend(msg(b'd', b"4\tfour\n"));
        out.extend(msg(b'c', b""));
        out.extend(msg(b'S', b""));
        r.send(&out).await;
        let (tags, text) = tokio::time::timeout(Duration::from_secs(10), r.until_ready())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "round {round}: extended COPY with pipelined data: no ReadyForQuery within 10s"
                )
            });
        assert_eq!(tags, b"12GCZ", "round {round}: {text}");
        r.send(&msg(b'X', b"")).await;
    }
    let n = scalar(&direct, "SELECT count(*) FROM raw_copy").await;
    assert_eq!(n, "80");
}
