//! Fair sharing of one pool between tenants (issue: the noisy neighbour). A heavy tenant
//! with many clients of slow statements saturates a small pool; a light tenant's short
//! statements must still be served after about one of the heavy tenant's transactions, not
//! behind every one of its waiting clients — and the heavy tenant still gets the rest.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const HEAVY_CLIENTS: usize = 60;
const LIGHT_CLIENTS: usize = 3;
const RUN: Duration = Duration::from_secs(4);
const SLEEP_S: f64 = 0.05;
const POOL: usize = 4;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_tenant_is_served_while_a_heavy_one_saturates_the_pool() {
    let h = Arc::new(
        Harness::start(Opts {
            size: POOL,
            checkout_timeout: "30s",
            extra: TENANTS.to_string(),
            ..Opts::default()
        })
        .await,
    );
    let mut heavy = Vec::new();
    for _ in 0..HEAVY_CLIENTS {
        heavy.push(h.connect("app_user", "acme").await);
    }
    let mut light = Vec::new();
    for _ in 0..LIGHT_CLIENTS {
        light.push(h.connect("app_user", "globex").await);
    }
    let start = Instant::now();
    let heavy_tasks: Vec<_> = heavy
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < RUN {
                    c.simple_query(&format!("SELECT pg_sleep({SLEEP_S})"))
                        .await
                        .expect("heavy statement");
                    n += 1;
                }
                n
            })
        })
        .collect();
    // Let the heavy tenant fill the queue first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let light_tasks: Vec<_> = light
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while start.elapsed() < RUN {
                    let t = Instant::now();
                    let v = scalar(&c, "SELECT current_setting('app.tenant_id')").await;
                    assert_eq!(v, "globex");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut light_lat = Vec::new();
    for t in light_tasks {
        light_lat.extend(t.await.unwrap());
    }
    let mut heavy_done = 0;
    for t in heavy_tasks {
        heavy_done += t.await.unwrap();
    }
    let light_done = light_lat.len();
    let p50 = median(&mut light_lat);
    let p99 = light_lat[(light_lat.len() * 99 / 100).min(light_lat.len() - 1)];
    // Everything the pool can do for the heavy tenant: POOL connections, each busy SLEEP_S
    // per statement.
    let heavy_max = (RUN.as_secs_f64() / SLEEP_S) as u64 * POOL as u64;
    eprintln!(
        "light tenant: {light_done} statements, p50 {p50:?}, p99 {p99:?}; \
         heavy tenant: {heavy_done} statements (at most {heavy_max})"
    );
    // FIFO would put each light statement behind the heavy tenant's ~56 queued clients:
    // ~0.7 s each (the issue measured p50 707 ms). Fair: about one heavy transaction
    // (50 ms) at worst.
    assert!(
        p50 < Duration::from_millis(150),
        "the light tenant waited behind the heavy one: p50 {p50:?}"
    );
    assert!(
        light_done >= 30,
        "the light tenant got too little: {light_done}"
    );
    assert!(
        heavy_done * 2 >= heavy_max,
        "the heavy tenant did not get what nobody else wanted: {heavy_done} of {heavy_max}"
    );
}

const LIMITED_TENANTS: &str = r#"
[[tenants]]
id = "acme"
database = "app"
search_path = ["acme", "public"]
settings = { "app.tenant_id" = "acme", statement_timeout = "3s" }
max_server_connections = 1
max_client_connections = 4

[[tenants]]
id = "globex"
database = "app"
search_path = ["globex", "public"]
settings = { "app.tenant_id" = "globex" }
role = "tenant_globex"
weight = 2
"#;

/// `max_server_connections = 1`: the tenant's four concurrent statements run one after the
/// other while the rest of the pool serves another tenant at once; the fifth client is
/// refused at login naming the tenant; a per-tenant statement_timeout is one more setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_limits_bound_what_one_tenant_takes() {
    let h = Arc::new(
        Harness::start(Opts {
            size: 4,
            extra: LIMITED_TENANTS.to_string(),
            ..Opts::default()
        })
        .await,
    );
    let mut acme = Vec::new();
    for _ in 0..4 {
        acme.push(Arc::new(h.connect("app_user", "acme").await));
    }
    let Err(refused) = connect(&h.url("app_user", "acme")).await else {
        panic!("a fifth client of acme was let in");
    };
    let db = refused.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300");
    assert!(
        db.message().contains(
            "too many client connections for tenant \"acme\" (max_client_connections = 4)"
        ),
        "{}",
        db.message()
    );
    let globex = h.connect("app_user", "globex").await;
    let start = Instant::now();
    let sleepers: Vec<_> = acme
        .iter()
        .map(|c| {
            let c = c.clone();
            tokio::spawn(async move { c.simple_query("SELECT pg_sleep(0.2)").await.map(|_| ()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    assert_eq!(
        scalar(&globex, "SELECT current_setting('app.tenant_id')").await,
        "globex"
    );
    let globex_took = t.elapsed();
    let admin = h.connect("admin", "pgward").await;
    let row = admin
        .simple_query("SHOW TENANTS")
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get("tenant") == Some("acme") => Some(
                [
                    "clients",
                    "waiting",
                    "server_connections",
                    "max_server_connections",
                ]
                .map(|c| r.get(c).unwrap_or("").to_string()),
            ),
            _ => None,
        })
        .expect("acme in SHOW TENANTS");
    for s in sleepers {
        s.await.unwrap().expect("acme statement");
    }
    let acme_took = start.elapsed();
    eprintln!("acme: 4 × 0.2 s took {acme_took:?}; globex meanwhile {globex_took:?}; SHOW TENANTS acme {row:?}");
    assert!(
        acme_took >= Duration::from_millis(750),
        "acme held more than one server connection: {acme_took:?}"
    );
    assert!(
        globex_took < Duration::from_millis(150),
        "globex waited behind acme: {globex_took:?}"
    );
    assert_eq!(row[0], "4");
    assert_eq!(row[2], "1", "acme holds one server connection");
    assert_eq!(row[3], "1");
    assert_eq!(row[1], "3", "three acme clients wait");
    let Err(e) = acme[0].simple_query("SELECT pg_sleep(10)").await else {
        panic!("the tenant's statement_timeout did not fire");
    };
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("57014"));
}

/// `reserved_server_connections = 1` for globex on a pool of 2: acme's three concurrent
/// statements share the one connection nobody reserved, and globex is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_connection_stays_free_for_its_tenant() {
    let extra = TENANTS.replace(
        "role = \"tenant_globex\"",
        "role = \"tenant_globex\"\nreserved_server_connections = 1",
    );
    let h = Arc::new(
        Harness::start(Opts {
            size: 2,
            extra,
            ..Opts::default()
        })
        .await,
    );
    let mut acme = Vec::new();
    for _ in 0..3 {
        acme.push(h.connect("app_user", "acme").await);
    }
    let globex = h.connect("app_user", "globex").await;
    let start = Instant::now();
    let sleepers: Vec<_> = acme
        .into_iter()
        .map(|c| {
            tokio::spawn(async move { c.simple_query("SELECT pg_sleep(0.3)").await.map(|_| ()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    assert_eq!(
        scalar(&globex, "SELECT current_setting('app.tenant_id')").await,
        "globex"
    );
    let globex_took = t.elapsed();
    let admin = h.connect("admin", "pgward").await;
    let reserved = admin
        .simple_query("SHOW TENANTS")
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get("tenant") == Some("globex") => {
                r.get("reserved_server_connections").map(str::to_string)
            }
            _ => None,
        });
    for s in sleepers {
        s.await.unwrap().expect("acme statement");
    }
    let acme_took = start.elapsed();
    eprintln!("acme: 3 × 0.3 s took {acme_took:?}; globex meanwhile {globex_took:?}");
    assert_eq!(reserved.as_deref(), Some("1"));
    assert!(
        globex_took < Duration::from_millis(150),
        "globex waited for its reserved connection: {globex_took:?}"
    );
    assert!(
        acme_took >= Duration::from_millis(850),
        "acme used the reserved connection: {acme_took:?}"
    );
}
