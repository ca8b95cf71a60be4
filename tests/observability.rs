//! Metrics, health/readiness and the admin console, through real clients.

mod common;

use std::time::Duration;

use common::*;

/// The metrics recorder is process-wide: tests that count samples must not overlap with
/// others recording under the same labels.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Value of the sample whose name matches and whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Value of a sample without labels (0 if absent).
fn unlabelled(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn count(text: &str, tenant: &str, command: &str) -> f64 {
    sample(
        text,
        "pgward_query_duration_seconds_count",
        &[
            ("database", "app"),
            ("tenant", tenant),
            ("command", command),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_statement_and_error() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start(Opts {
        extra: format!("{TENANTS}\n[metrics]\ntenant_label_cap = 1\n"),
        ..Opts::default()
    })
    .await;
    let http = h.proxy.http_addr.unwrap();
    let c = h.connect("app_user", "acme").await;
    // make the acme label exist first (the cap is 1)
    c.simple_query("SELECT 1").await.unwrap();
    let before = tokio::task::block_in_place(|| http_get(http, "/metrics").1);
    // simple
    for _ in 0..3 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    // multi-statement
    c.batch_execute(
        "SELECT 1; SELECT 2; CREATE TEMP TABLE IF NOT EXISTS m (x int); INSERT INTO m VALUES (1)",
    )
    .await
    .unwrap();
    // extended
    for i in 0..2i32 {
        c.query_one("SELECT $1::int", &[&i]).await.unwrap();
    }
    // pipelined
    let s = c.prepare("SELECT 42").await.unwrap();
    let (a, b, d) = tokio::join!(
        c.query_one(&s, &[]),
        c.query_one(&s, &[]),
        c.query_one(&s, &[])
    );
    a.unwrap();
    b.unwrap();
    d.unwrap();
    // failing: labelled by what the text says (no command tag); a failing statement after
    // the first of a multi-statement Query is OTHER
    for _ in 0..2 {
        assert!(c.simple_query("SELECT 1/0").await.is_err());
    }
    // (volatile, so it fails at Execute, not when Bind plans it)
    assert!(c
        .query_one("SELECT $1::int / (random() * 0)::int", &[&1i32])
        .await
        .is_err());
    assert!(c
        .simple_query("/* dup */ INSERT INTO items VALUES (1, 'dup')")
        .await
        .is_err());
    assert!(c.simple_query("SELECT 1; SELECT 1/0").await.is_err());
    // a second tenant beyond the cap
    let g = h.connect("app_user", "globex").await;
    g.simple_query("SELECT 1").await.unwrap();
    let after = tokio::task::block_in_place(|| http_get(http, "/metrics").1);
    let d = |t: &str, cmd: &str| count(&after, t, cmd) - count(&before, t, cmd);
    assert_eq!(
        d("acme", "SELECT"),
        3.0 + 2.0 + 2.0 + 3.0 + 2.0 + 1.0 + 1.0,
        "{after}"
    );
    assert_eq!(d("acme", "INSERT"), 1.0 + 1.0);
    assert_eq!(d("acme", "DDL"), 1.0);
    assert_eq!(d("acme", "OTHER"), 1.0, "failing statement after the first");
    let errs = |t: &str, class| sample(t, "pgward_errors_total", &[("sqlstate_class", class)]);
    assert_eq!(errs(&after, "22") - errs(&before, "22"), 4.0);
    assert_eq!(errs(&after, "23") - errs(&before, "23"), 1.0);
    assert!(
        count(&after, "other", "SELECT") >= 1.0,
        "globex folds into other"
    );
    assert_eq!(count(&after, "globex", "SELECT"), 0.0);
    assert!(after.contains("pgward_checkout_wait_seconds_bucket"));
    assert!(after.contains("pgward_transaction_duration_seconds_bucket"));
    assert!(after.contains("pgward_server_connections{"));
    assert!(
        unlabelled(&after, "pgward_prepared_statements_issued_total") >= 1.0,
        "{after}"
    );
    let hits = unlabelled(&after, "pgward_prepared_statement_cache_hits_total");
    assert!(
        hits >= 2.0,
        "pipelined executions of one prepared statement hit the cache"
    );
    // the guard counts rejections
    assert!(c.simple_query("SET search_path = globex").await.is_err());
    let last = tokio::task::block_in_place(|| http_get(http, "/metrics").1);
    assert!(
        sample(
            &last,
            "pgward_rejected_statements_total",
            &[("reason", "tenant_guard")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_upstream() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start(Opts::default()).await;
    let http = h.proxy.http_addr.unwrap();
    let c = h.connect("app_user", "app").await;
    c.simple_query("SELECT 1").await.unwrap();
    assert_eq!(
        tokio::task::block_in_place(|| http_get(http, "/health")).0,
        200
    );
    assert_eq!(
        tokio::task::block_in_place(|| http_get(http, "/ready")).0,
        200
    );
    let pg = &h.pg;
    tokio::task::block_in_place(|| pg.stop().unwrap());
    let mut status = (0, String::new());
    for _ in 0..50 {
        status = tokio::task::block_in_place(|| http_get(http, "/ready"));
        if status.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status.0, 503, "{}", status.1);
    assert!(status.1.contains("app"), "{}", status.1);
    assert_eq!(
        tokio::task::block_in_place(|| http_get(http, "/health")).0,
        200
    );
    tokio::task::block_in_place(|| pg.start_again().unwrap());
    for _ in 0..50 {
        status = tokio::task::block_in_place(|| http_get(http, "/ready"));
        if status.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status.0, 200, "{}", status.1);
}

fn admin(h: &Harness, sql: &str) -> (bool, String, String) {
    h.psql("admin", "pgward", &["-c", sql])
}

fn columns(h: &Harness, sql: &str) -> String {
    let out = std::process::Command::new(h.pg.bin_dir().join("psql"))
        .arg(h.url("admin", "pgward"))
        .args(["-X", "-A", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_commands() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start(Opts {
        extra: TENANTS.to_string(),
        ..Opts::default()
    })
    .await;
    let c = h.connect("app_user", "acme").await;
    c.simple_query("SELECT 1").await.unwrap();
    // the extended protocol gets a clear error (not an empty answer); simple queries go on
    let a = h.connect("admin", "pgward").await;
    let e = a.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e}");
    let rows = a.simple_query("SHOW POOLS").await.unwrap();
    assert!(rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
    let cols = tokio::task::block_in_place(|| columns(&h, "SHOW POOLS"));
    for want in [
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "maxwait",
        "pool_mode",
    ] {
        assert!(
            cols.split('|').any(|c| c == want),
            "SHOW POOLS lacks {want}: {cols}"
        );
    }
    let cols = tokio::task::block_in_place(|| columns(&h, "SHOW STATS"));
    for want in [
        "database",
        "total_xact_count",
        "total_query_count",
        "total_wait_time",
    ] {
        assert!(
            cols.split('|').any(|c| c == want),
            "SHOW STATS lacks {want}: {cols}"
        );
    }
    let cols = tokio::task::block_in_place(|| columns(&h, "SHOW CLIENTS"));
    for want in [
        "type", "user", "database", "state", "addr", "port", "tenant",
    ] {
        assert!(
            cols.split('|').any(|c| c == want),
            "SHOW CLIENTS lacks {want}: {cols}"
        );
    }
    let (ok, out, err) = tokio::task::block_in_place(|| admin(&h, "SHOW CLIENTS"));
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.ends_with("|acme")), "{out}");
    let (ok, out, _) = tokio::task::block_in_place(|| admin(&h, "SHOW TENANTS"));
    assert!(ok && out.contains("acme|app|acme, public"), "{out}");
    for cmd in [
        "SHOW SERVERS",
        "SHOW CONFIG",
        "SHOW VERSION",
        "SHOW DATABASES",
        "RELOAD",
    ] {
        let (ok, _, err) = tokio::task::block_in_place(|| admin(&h, cmd));
        assert!(ok, "{cmd}: {err}");
    }
    let (ok, _, err) = tokio::task::block_in_place(|| admin(&h, "SHOW NONSENSE"));
    assert!(!ok && err.contains("unknown SHOW command"), "{err}");
    // PAUSE holds new transactions, RESUME releases them without errors
    let (ok, _, err) = tokio::task::block_in_place(|| admin(&h, "PAUSE app"));
    assert!(ok, "{err}");
    let waiting = tokio::spawn(async move {
        let r = c
            .simple_query("SELECT 'resumed'")
            .await
            .map(|m| first_value(&m));
        (r, c)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "PAUSE did not hold the transaction");
    // as in PgBouncer, maxwait is how long the oldest client still waiting has waited
    let (cl_waiting, maxwait_us) = tokio::task::block_in_place(|| pool_waits(&h));
    assert_eq!(cl_waiting, 1);
    assert!(maxwait_us >= 400_000, "maxwait {maxwait_us} µs");
    let (ok, _, err) = tokio::task::block_in_place(|| admin(&h, "RESUME app"));
    assert!(ok, "{err}");
    let (r, _c) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.unwrap(), "resumed");
    let (cl_waiting, maxwait_us) = tokio::task::block_in_place(|| pool_waits(&h));
    assert_eq!((cl_waiting, maxwait_us), (0, 0), "nobody waits any more");
    // non-admin users are refused
    let (ok, _, err) =
        tokio::task::block_in_place(|| h.psql("app_user", "pgward", &["-c", "SHOW POOLS"]));
    assert!(!ok && err.contains("admin_users"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_queries_keeps_normalised_shapes_per_tenant() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start(Opts {
        extra: format!(
            "{TENANTS}\n[metrics]\nquery_stats = true\nslow_statement_threshold = \"1ms\"\n"
        ),
        ..Opts::default()
    })
    .await;
    let c = h.connect("app_user", "acme").await;
    for i in 0..5 {
        c.simple_query(&format!("SELECT 'shape-test', {i}"))
            .await
            .unwrap();
    }
    for i in 0..3i32 {
        c.query_one("SELECT 'prepared-shape', $1::int", &[&i])
            .await
            .unwrap();
    }
    c.simple_query("SELECT pg_sleep(0.01), 'slow-one'")
        .await
        .unwrap();
    let out = std::process::Command::new(h.pg.bin_dir().join("psql"))
        .arg(h.url("admin", "pgward"))
        .args(["-X", "-A", "-t", "-c", "SHOW QUERIES"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines().any(|l| l.starts_with("acme|SELECT ?, ?|5|")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("acme|SELECT ?, $1::int|3|")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("acme|SELECT pg_sleep(?), ?|1|")),
        "{text}"
    );
    assert!(
        !text.contains("shape-test"),
        "literals must not be kept: {text}"
    );
}

/// An admin console session outlives `client_login_timeout` (it bounds the login only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_session_outlives_the_login_timeout() {
    let h = Harness::start(Opts {
        top_extra: "client_login_timeout = \"1s\"".into(),
        ..Opts::default()
    })
    .await;
    let admin = h.connect("admin", "pgward").await;
    admin.simple_query("SHOW VERSION").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rows = admin.simple_query("SHOW VERSION").await.unwrap();
    assert!(first_value(&rows).starts_with("pgward"));
}
