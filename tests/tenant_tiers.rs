//! Tenants in tiers behind one entry point: a tenant with a database of its own (`upstream`
//! in the tenant table) reaches it through the same pgward port, database name and tenant
//! selection as the shared tenants; moving a tenant is a table update and one refresh; its
//! pool opens on use and closes when idle; a per-tenant queue timeout refuses with 53300
//! naming the tenant; per-tenant checkout waits are in /metrics.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio_postgres::SimpleQueryMessage;

const PLACEHOLDER: &str = "postgres://nobody@127.0.0.1:1/none?sslmode=disable";

async fn rows(c: &tokio_postgres::Client, sql: &str) -> Vec<tokio_postgres::SimpleQueryRow> {
    c.simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// `database|tenant id` as the server sees it.
async fn place(c: &tokio_postgres::Client) -> String {
    scalar(
        c,
        "SELECT current_database() || '|' || current_setting('app.tenant_id')",
    )
    .await
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 10 s");
}

async fn server_connections_to(direct: &tokio_postgres::Client, db: &str) -> i64 {
    scalar(
        direct,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"),
    )
    .await
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_tenants_move_between_tiers_through_one_entry_point() {
    let h = Harness::start(Opts {
        size: 4,
        pool_extra: "idle_timeout = \"1s\"".into(),
        extra: format!(
            "{TENANTS}\n[tenant_query]\nupstream = \"{PLACEHOLDER}\"\nrefresh = \"300ms\"\nquery = \"SELECT * FROM pgward_tenants\"\n"
        ),
        ..Opts::default()
    })
    .await;
    let direct = h.connect_direct().await;
    direct.batch_execute("CREATE DATABASE big").await.unwrap();
    let big_url = h.direct_url("big");
    // A table the login role owns in big only: the T5 check of bigco's own upstream must say so.
    let big = connect(&big_url).await.unwrap();
    big.batch_execute("CREATE TABLE only_in_big (id int)")
        .await
        .unwrap();
    drop(big);
    direct
        .batch_execute(&format!(
            "CREATE TABLE pgward_tenants (id text, database text, search_path text, settings text, role text, users text, \
               upstream text, pool_size text, queue_timeout text, max_server_connections text);
             INSERT INTO pgward_tenants VALUES
               ('bigco', 'app', 'public', '{{\"app.tenant_id\": \"bigco\"}}', NULL, NULL, '{big_url}', '2', NULL, NULL),
               ('small', 'app', 'public', '{{\"app.tenant_id\": \"small\"}}', NULL, NULL, NULL, NULL, '200ms', '1');"
        ))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace(PLACEHOLDER, &h.direct_url("app"));
    std::fs::write(&h.config_path, text).unwrap();
    let (ok, _, err) = tokio::task::block_in_place(|| h.psql("admin", "pgward", &["-c", "RELOAD"]));
    assert!(ok, "{err}");
    eventually("tenant bigco loaded", || async {
        connect(&h.url("app_user", "bigco")).await.is_ok()
    })
    .await;
    let bigco = h.connect("app_user", "bigco").await;
    // Same port, same way of choosing the tenant; different databases behind it.
    assert_eq!(place(&bigco).await, "big|bigco");
    let prepared = bigco
        .prepare("SELECT current_database()::text, $1::int")
        .await
        .unwrap();
    let row = bigco.query_one(&prepared, &[&7i32]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "big");
    let small = h.connect("app_user", "small").await;
    assert_eq!(place(&small).await, "app|small");
    let acme = h.connect("app_user", "acme").await;
    assert_eq!(place(&acme).await, "app|acme");
    // …and with a tenant selected by the user-name suffix, through psql.
    let (ok, out, err) = tokio::task::block_in_place(|| {
        h.psql(
            "app_user.bigco",
            "app",
            &["-c", "SELECT current_database()"],
        )
    });
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "big");

    let admin = h.connect("admin", "pgward").await;
    let pools = rows(&admin, "SHOW POOLS").await;
    assert!(
        pools.iter().any(|r| r.get("tenant") == Some("bigco")),
        "bigco's own pool in SHOW POOLS"
    );
    let tenants = rows(&admin, "SHOW TENANTS").await;
    let t = |id: &str| {
        tenants
            .iter()
            .find(|r| r.get("tenant") == Some(id))
            .unwrap_or_else(|| panic!("{id} in SHOW TENANTS"))
    };
    assert!(t("bigco").get("upstream").unwrap_or("").ends_with("/big"));
    assert_eq!(
        t("small").get("role_check"),
        None,
        "a shared tenant has its database's"
    );
    eventually("bigco's own upstream checked (T5)", || async {
        let rows = rows(&admin, "SHOW TENANTS").await;
        let v = rows
            .iter()
            .find(|r| r.get("tenant") == Some("bigco"))
            .and_then(|r| r.get("role_check").map(str::to_string))
            .unwrap_or_default();
        v.contains("role pgward") && v.contains("owns 1 table(s)")
    })
    .await;
    let ready = tokio::task::block_in_place(|| http_get(h.proxy.http_addr.unwrap(), "/ready").1);
    assert!(
        ready.contains("warning: database app/bigco: role pgward"),
        "{ready}"
    );
    assert_eq!(t("small").get("upstream"), None);
    assert_eq!(t("small").get("queue_timeout"), Some("200ms"));

    // small may hold one server connection and wait 200 ms for it: a second statement while
    // the first sleeps is refused with 53300 naming the tenant; acme is not affected.
    let small2 = h.connect("app_user", "small").await;
    let sleeper = tokio::spawn(async move {
        small
            .simple_query("SELECT pg_sleep(1)")
            .await
            .map(|_| small)
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let t0 = Instant::now();
    let e = small2
        .simple_query("SELECT 1")
        .await
        .expect_err("small's second statement waited past its queue_timeout");
    let waited = t0.elapsed();
    assert_eq!(sqlstate(&e), "53300");
    let msg = e.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("tenant \"small\""), "{msg}");
    assert!(
        waited >= Duration::from_millis(180) && waited < Duration::from_millis(800),
        "refused after {waited:?}, queue_timeout is 200ms"
    );
    assert_eq!(place(&acme).await, "app|acme");
    let small = sleeper.await.unwrap().expect("small's sleeper");
    assert_eq!(
        place(&small2).await,
        "app|small",
        "still usable after the refusal"
    );

    let metrics =
        tokio::task::block_in_place(|| http_get(h.proxy.http_addr.unwrap(), "/metrics").1);
    for want in [
        "pgward_tenant_checkout_wait_seconds_count{database=\"app\",tenant=\"bigco\"}",
        "pgward_tenant_refusals_total{tenant=\"small\",reason=\"queue_timeout\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} not in /metrics");
    }

    // Move: bigco back to the shared database, small to its own. A transaction open during
    // the move finishes where it began.
    let bigco_tx = h.connect("app_user", "bigco").await;
    bigco_tx.batch_execute("BEGIN").await.unwrap();
    assert_eq!(place(&bigco_tx).await, "big|bigco");
    direct
        .batch_execute(&format!(
            "UPDATE pgward_tenants SET upstream = NULL, pool_size = NULL WHERE id = 'bigco';
             UPDATE pgward_tenants SET upstream = '{big_url}' WHERE id = 'small';"
        ))
        .await
        .unwrap();
    eventually("bigco moved to the shared database", || async {
        place(&bigco).await == "app|bigco"
    })
    .await;
    eventually("small moved to its own database", || async {
        place(&small).await == "big|small"
    })
    .await;
    // A statement the client prepared on the old database works on the new one.
    let row = bigco.query_one(&prepared, &[&8i32]).await.unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        ("app".into(), 8)
    );
    assert_eq!(
        place(&bigco_tx).await,
        "big|bigco",
        "open transaction stays"
    );
    bigco_tx.batch_execute("COMMIT").await.unwrap();
    assert_eq!(place(&bigco_tx).await, "app|bigco");
    assert_eq!(place(&small2).await, "big|small");
    assert_eq!(place(&acme).await, "app|acme");

    // Unused, small's pool closes its connections and leaves SHOW POOLS; its clients stay,
    // and their next statement opens it again.
    eventually("no server connection to big once idle", || async {
        server_connections_to(&direct, "big").await == 0
    })
    .await;
    eventually("small's pool closed", || async {
        !rows(&admin, "SHOW POOLS")
            .await
            .iter()
            .any(|r| r.get("tenant") == Some("small"))
    })
    .await;
    assert_eq!(place(&small).await, "big|small");
    // (≥: the T5 check may be connecting to big at the same moment.)
    assert!(server_connections_to(&direct, "big").await >= 1, "reopened");
}
