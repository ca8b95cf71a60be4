//! The core pooler with real clients: queries, errors, transactions, pooling limits.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_work() {
    let h = Harness::start(Opts::default()).await;
    let c = h.connect("app_user", "app").await;
    assert_eq!(scalar(&c, "SELECT 1 + 1").await, "2");
    let row = c.query_one("SELECT $1::int + 1", &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    // the same statement again (named statement reuse) and a different one
    for i in 0..20i32 {
        let row = c.query_one("SELECT $1::int * 2", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i * 2);
    }
    let (ok, out, err) = h.psql("app_user", "app", &["-c", "SELECT 'psql works'"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "psql works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_leave_the_connection_usable() {
    let h = Harness::start(Opts::default()).await;
    let c = h.connect("app_user", "app").await;
    let e = c.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601");
    assert_eq!(scalar(&c, "SELECT 2").await, "2");
    c.batch_execute("BEGIN").await.unwrap();
    let e = c.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(scalar(&c, "SELECT 3").await, "3");
    // extended-protocol error, then the same connection goes on
    let e = c.query("SELECT 1/$1::int", &[&0i32]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    let row = c.query_one("SELECT $1::text", &[&"after"]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_few_server_connections() {
    let h = Harness::start(Opts {
        size: 3,
        ..Opts::default()
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let url = h.url("app_user", "app");
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await.unwrap();
            for j in 0..10 {
                let v = scalar(&c, &format!("SELECT {i} * 100 + {j}")).await;
                assert_eq!(v, (i * 100 + j).to_string());
                let row = c
                    .query_one("SELECT $1::int", &[&(i * 100 + j)])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i32>(0), i * 100 + j);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(h.upstream_connections().await <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_temp_tables() {
    let h = Harness::start(Opts {
        mode: "session",
        ..Opts::default()
    })
    .await;
    let c = h.connect("app_user", "app").await;
    c.batch_execute("CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (7)")
        .await
        .unwrap();
    assert_eq!(scalar(&c, "SELECT x FROM t").await, "7");
    c.batch_execute("BEGIN; INSERT INTO t VALUES (8); COMMIT")
        .await
        .unwrap();
    assert_eq!(scalar(&c, "SELECT sum(x) FROM t").await, "15");
    drop(c);
    // the next client on the (reset) connection sees no temp table
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c2 = h.connect("app_user", "app").await;
    let e = c2.simple_query("SELECT x FROM t").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failures_are_clear() {
    let h = Harness::start(Opts::default()).await;
    let wrong = format!(
        "postgres://app_user:nope@127.0.0.1:{}/app?sslmode=disable",
        h.port()
    );
    let e = connect(&wrong).await.unwrap_err();
    assert_eq!(sqlstate(&e), "28P01");
    let unknown = format!(
        "postgres://ghost:nope@127.0.0.1:{}/app?sslmode=disable",
        h.port()
    );
    let e2 = connect(&unknown).await.unwrap_err();
    assert_eq!(sqlstate(&e2), "28P01");
    assert_eq!(
        e.as_db_error().unwrap().message().replace("app_user", "X"),
        e2.as_db_error().unwrap().message().replace("ghost", "X")
    );
    let e = connect(&h.url("app_user", "nodb")).await.unwrap_err();
    assert_eq!(sqlstate(&e), "3D000");
    // md5 user works, with the right password only
    let c = h.connect("md5_user", "app").await;
    assert_eq!(scalar(&c, "SELECT 5").await, "5");
    let bad = format!(
        "postgres://md5_user:nope@127.0.0.1:{}/app?sslmode=disable",
        h.port()
    );
    assert_eq!(sqlstate(&connect(&bad).await.unwrap_err()), "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_size_is_kept_and_never_exceeded() {
    let h = Harness::start(Opts {
        size: 3,
        min_size: 2,
        ..Opts::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(h.upstream_connections().await, 2);
    let c = h.connect("app_user", "app").await;
    assert_eq!(scalar(&c, "SELECT 1").await, "1");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let n = h.upstream_connections().await;
    assert!((2..=3).contains(&n), "{n} server connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_new_pool_settings_moves_clients_to_the_new_pool() {
    let h = Harness::start(Opts::default()).await;
    let c = h.connect("app_user", "app").await;
    let pid1 = scalar(&c, "SELECT pg_backend_pid()").await;
    let text = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace("size = 5", "size = 4");
    std::fs::write(&h.config_path, text).unwrap();
    let (ok, _, err) = tokio::task::block_in_place(|| h.psql("admin", "pgward", &["-c", "RELOAD"]));
    assert!(ok, "{err}");
    let pid2 = scalar(&c, "SELECT pg_backend_pid()").await;
    let pid3 = scalar(&c, "SELECT pg_backend_pid()").await;
    assert_ne!(pid1, pid2, "the old pool was replaced");
    // Not necessarily pid2: the new pool's first readiness probe may have opened a second
    // idle connection meanwhile (most recently used first).
    assert_ne!(pid1, pid3, "the client stays on the new pool");
}
