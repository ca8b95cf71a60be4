//! Real drivers through pgward in transaction mode: asyncpg and psycopg 3 (Python scripts
//! in tests/drivers/, run with `python3`), and tokio-postgres prepared statements over a
//! small pool.
//!
//! The Python tests need `python3 -m pip install asyncpg "psycopg[binary]"` (.ci/run does
//! this). Without them the tests print "SKIPPED: …" and pass, except when the `CI`
//! environment variable is set: then they fail and say what to install.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio_postgres::types::Type;

const PIP_INSTALL: &str = "python3 -m pip install asyncpg \"psycopg[binary]\"";

/// How long one driver script may run before it is killed and the test fails (a hang).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

fn driver_opts(size: usize) -> Opts {
    Opts {
        mode: "transaction",
        size,
        extra: TENANTS.to_string(),
        ..Opts::default()
    }
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// `Err(reason)` if `python3` or the module cannot be used.
fn python_module(module: &str) -> Result<String, String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            &format!("import sys, {module}; print(sys.version.split()[0], {module}.__version__)"),
        ])
        .output()
        .map_err(|e| format!("python3 could not be run ({e})"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "python3 has no usable module `{module}`: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ))
    }
}

/// True if the test should go on; false (after printing SKIPPED) if it should return.
/// Panics in CI when the driver is missing.
fn require_python_module(module: &str) -> bool {
    match python_module(module) {
        Ok(version) => {
            eprintln!("using python3 / {module}: {version}");
            true
        }
        Err(reason) if in_ci() => {
            panic!("{reason}. The driver tests need it in CI: install with `{PIP_INSTALL}`")
        }
        Err(reason) => {
            eprintln!("SKIPPED: {reason}; install with `{PIP_INSTALL}` to run this test");
            false
        }
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("drivers")
        .join(name)
}

/// Run a driver script against pgward with the plain, acme and globex URLs; panics unless it
/// exits with status 0 within SCRIPT_TIMEOUT. Its output is printed either way.
async fn run_script(h: &Harness, name: &str) {
    let path = script(name);
    let started = Instant::now();
    let child = tokio::process::Command::new("python3")
        .arg(&path)
        .arg(h.url("app_user", "app"))
        .arg(h.url("app_user", "acme"))
        .arg(h.url("app_user", "globex"))
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("run python3 {}: {e}", path.display()));
    let out = match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("wait for {name}: {e}")),
        Err(_) => panic!(
            "{name} did not finish within {SCRIPT_TIMEOUT:?} (killed): a hang through pgward?"
        ),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "--- {name} stdout ({:.1?}) ---\n{stdout}",
        started.elapsed()
    );
    if !stderr.trim().is_empty() {
        println!("--- {name} stderr ---\n{stderr}");
    }
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_prepared_statements_and_tenants() {
    if !require_python_module("asyncpg") {
        return;
    }
    let h = Harness::start(driver_opts(5)).await;
    run_script(&h, "asyncpg_check.py").await;
    // the pool stayed within its size
    assert!(h.upstream_connections().await <= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_copy_errors_and_tenants() {
    if !require_python_module("psycopg") {
        return;
    }
    let h = Harness::start(driver_opts(5)).await;
    run_script(&h, "psycopg_check.py").await;
    assert!(h.upstream_connections().await <= 5);
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
            let (bad, ok1, ok2) = tokio::join!(
                c.prepare("SELECT FROM WHERE"),
                c.query_one(&add, &[&r, &1i32]),
                c.query_one(&concat, &[&"p", &"q"]),
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
