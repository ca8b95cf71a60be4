//! High availability with a real primary and a streaming standby built by the test
//! (`pg_basebackup -R`, src/pgctl.rs): `target_session_attrs` picks the server, a failover
//! (primary stopped, standby promoted) and a switchover (primary made read-only, standby
//! promoted) are followed, and what a client sees is measured: no client reconnects; a
//! client whose transaction the failover cut gets one error, then ROLLBACK and its next
//! transaction work.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pgward::config::Config;
use pgward::pgctl::TempPostgres;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A primary with a table to write to, and its standby.
fn primary_and_standby() -> (TempPostgres, TempPostgres) {
    let primary = start_pg();
    primary
        .psql(
            "app",
            "CREATE TABLE public.ha_writes (id bigserial PRIMARY KEY, client int, at timestamptz DEFAULT now());\n\
             ALTER TABLE public.ha_writes OWNER TO pgward;",
        )
        .expect("table");
    let standby = primary.standby().expect("standby");
    (primary, standby)
}

/// pgward with databases `rw` and `ro` over the hosts `hosts` (in this order).
async fn start(primary: TempPostgres, hosts: &[u16], extra_pool: &str) -> Harness {
    start_with(primary, hosts, extra_pool, "").await
}

/// [`start`] with more lines for the `ro` database.
async fn start_with(
    primary: TempPostgres,
    hosts: &[u16],
    extra_pool: &str,
    ro_extra: &str,
) -> Harness {
    init_tracing();
    let list: Vec<String> = hosts.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let url = |attrs: &str| {
        format!(
            "postgres://pgward:{UPSTREAM_PASSWORD}@{}/app?sslmode=disable&target_session_attrs={attrs}",
            list.join(",")
        )
    };
    let text = config_text(
        primary.port(),
        &Opts {
            pool_extra: extra_pool.to_string(),
            extra: format!(
                "[[databases]]\nname = \"rw\"\nupstream = \"{}\"\n\n[[databases]]\nname = \"ro\"\nupstream = \"{}\"\n{ro_extra}\n",
                url("read-write"),
                url("prefer-standby")
            ),
            ..Opts::default()
        },
    );
    let config_path = std::env::temp_dir().join(format!("pgward-ha-{}.toml", std::process::id()));
    std::fs::write(&config_path, &text).unwrap();
    let cfg = Config::load(&config_path).expect("config");
    let proxy = pgward::run::start(cfg).await.expect("start pgward");
    Harness {
        pg: primary,
        proxy,
        config_path,
    }
}

async fn admin_value(h: &Harness, sql: &str, row: &str, column: &str) -> Option<String> {
    let a = h.connect("admin", "pgward").await;
    let mut cols = Vec::new();
    for m in a.simple_query(sql).await.unwrap() {
        match m {
            tokio_postgres::SimpleQueryMessage::RowDescription(c) => {
                cols = c.iter().map(|c| c.name().to_string()).collect()
            }
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some(row) => {
                let i = cols.iter().position(|c| c == column)?;
                return r.get(i).map(str::to_string);
            }
            _ => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_session_attrs_choose_the_server() {
    let _serial = SERIAL.lock().await;
    let (primary, standby) = tokio::task::spawn_blocking(primary_and_standby)
        .await
        .unwrap();
    let (pp, sp) = (primary.port(), standby.port());
    // The standby first: read-write must skip it, prefer-standby must take it.
    let h = start(primary, &[sp, pp], "").await;
    let rw = h.connect("app_user", "rw").await;
    assert_eq!(scalar(&rw, "SELECT pg_is_in_recovery()").await, "f");
    assert_eq!(
        scalar(&rw, "SELECT inet_server_port()").await,
        pp.to_string()
    );
    let ro = h.connect("app_user", "ro").await;
    assert_eq!(scalar(&ro, "SELECT pg_is_in_recovery()").await, "t");
    assert_eq!(
        admin_value(&h, "SHOW DATABASES", "rw", "current_host").await,
        Some(format!("127.0.0.1:{pp}"))
    );
    assert_eq!(
        admin_value(&h, "SHOW DATABASES", "rw", "host").await,
        Some("127.0.0.1,127.0.0.1".into())
    );
    // SHOW SERVERS: each connection's own host.
    let a = h.connect("admin", "pgward").await;
    let mut ports = Vec::new();
    for m in a.simple_query("SHOW SERVERS").await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            ports.push((r.get(2).unwrap().to_string(), r.get(6).unwrap().to_string()));
        }
    }
    assert!(ports.contains(&("rw".into(), pp.to_string())), "{ports:?}");
    assert!(ports.contains(&("ro".into(), sp.to_string())), "{ports:?}");
    // No standby left: prefer-standby falls back to the primary, without a reconnect.
    tokio::task::spawn_blocking(move || {
        standby.stop().unwrap();
        standby
    })
    .await
    .unwrap();
    let mut on_primary = false;
    for _ in 0..3 {
        match ro.simple_query("SELECT pg_is_in_recovery()").await {
            Ok(m) => {
                on_primary = first_value(&m) == "f";
                break;
            }
            Err(e) => eprintln!("the transaction cut by the standby's stop: {e}"),
        }
    }
    assert!(
        on_primary,
        "prefer-standby did not fall back to the primary"
    );
    assert!(!ro.is_closed(), "the client had to reconnect");
}

/// What one writer saw: (when, error SQLSTATE) per statement, and how often it had to
/// reconnect.
struct Writer {
    log: Vec<(Instant, Option<String>)>,
    reconnects: usize,
    client: tokio_postgres::Client,
}

/// Writers through `rw`: each loops transactions (BEGIN, INSERT, COMMIT) until `stop`; a connection pgward closed is
/// opened again (counted).
fn writers(
    h: &Harness,
    n: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Writer>> {
    (0..n)
        .map(|i| {
            let url = h.url("app_user", "rw");
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut w = Writer {
                    log: Vec::new(),
                    reconnects: 0,
                    client: connect(&url).await.expect("connect"),
                };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if w.client.is_closed() {
                        w.reconnects += 1;
                        match connect(&url).await {
                            Ok(c) => w.client = c,
                            Err(e) => {
                                w.log.push((Instant::now(), Some(sqlstate(&e))));
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                    }
                    // One transaction of three statements, so that failovers cut some in
                    // the middle; after an error the client rolls back, as an app would.
                    let insert = format!("INSERT INTO public.ha_writes (client) VALUES ({i})");
                    let mut outcome = None;
                    for sql in ["BEGIN", insert.as_str(), "COMMIT"] {
                        // Bounded: a hang is a failure, not a wait.
                        let r = tokio::time::timeout(
                            Duration::from_secs(10),
                            w.client.simple_query(sql),
                        )
                        .await
                        .expect("a statement hung during the failover");
                        if let Err(e) = r {
                            outcome = Some(sqlstate(&e));
                            if sql != "COMMIT" && !w.client.is_closed() {
                                let _ = w.client.simple_query("ROLLBACK").await;
                            }
                            break;
                        }
                    }
                    w.log.push((Instant::now(), outcome));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                w
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_is_followed() {
    let _serial = SERIAL.lock().await;
    let (primary, standby) = tokio::task::spawn_blocking(primary_and_standby)
        .await
        .unwrap();
    let (pp, sp) = (primary.port(), standby.port());
    let h = start(primary, &[pp, sp], "server_login_retry = \"250ms\"").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = writers(&h, 4, stop.clone());
    // And a client inside a transaction across the failover.
    let open = h.connect("app_user", "rw").await;
    open.simple_query("BEGIN").await.unwrap();
    open.simple_query("INSERT INTO public.ha_writes (client) VALUES (99)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Failover: the primary dies, the standby is promoted.
    let pg = &h.pg;
    let stopped = Instant::now();
    tokio::task::block_in_place(|| pg.stop_immediate()).unwrap();
    let standby = tokio::task::spawn_blocking(move || {
        standby.promote().expect("promote");
        standby
    })
    .await
    .unwrap();
    let promoted = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let (mut failed, mut reconnects) = (0, 0);
    let mut back_after = Duration::ZERO;
    for t in tasks {
        let w = t.await.unwrap();
        // Even a client whose transaction was cut keeps its connection.
        assert_eq!(w.reconnects, 0, "a client had to reconnect");
        reconnects += w.reconnects;
        let errors: Vec<&String> = w.log.iter().filter_map(|(_, e)| e.as_ref()).collect();
        failed += errors.len();
        for e in &errors {
            assert!(
                ["08006", "57P01", "57P02", "57P03", "53300"].contains(&e.as_str()),
                "unexpected SQLSTATE {e}"
            );
        }
        // When this client's writes worked again, counted from the promotion.
        let last_error = w
            .log
            .iter()
            .filter(|(_, e)| e.is_some())
            .map(|(t, _)| *t)
            .max();
        if let Some(t) = last_error {
            let ok_after = w
                .log
                .iter()
                .find(|(at, e)| *at > t && e.is_none())
                .map(|(at, _)| *at)
                .expect("writes never worked again");
            back_after = back_after.max(ok_after.saturating_duration_since(promoted));
        }
    }
    let rows = standby
        .psql("app", "SELECT count(*) FROM public.ha_writes")
        .unwrap();
    eprintln!(
        "failover: primary stopped, standby promoted {:.2}s later; writes again {:.2}s after the promotion; {failed} failed transactions, {reconnects} reconnects over 4 clients; {} rows on the new primary",
        promoted.duration_since(stopped).as_secs_f64(),
        back_after.as_secs_f64(),
        rows.trim()
    );
    assert!(
        back_after <= Duration::from_secs(2),
        "writes resumed {back_after:?} after the promotion (target: 2 s)"
    );
    // The cut transaction: one error, then it is answered as failed until it ends, and the
    // same connection works on the new primary.
    let e = open
        .simple_query("INSERT INTO public.ha_writes (client) VALUES (99)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "08006", "the cut transaction's error: {e}");
    let e = open.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02", "still the failed transaction");
    open.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(
        scalar(&open, "SELECT inet_server_port()").await,
        sp.to_string()
    );
    assert!(!open.is_closed());
    let c = h.connect("app_user", "rw").await;
    assert_eq!(
        scalar(&c, "SELECT inet_server_port()").await,
        sp.to_string()
    );
    assert_eq!(
        admin_value(&h, "SHOW DATABASES", "rw", "current_host").await,
        Some(format!("127.0.0.1:{sp}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_leaves_the_demoted_primary() {
    let _serial = SERIAL.lock().await;
    let (primary, standby) = tokio::task::spawn_blocking(primary_and_standby)
        .await
        .unwrap();
    let (pp, sp) = (primary.port(), standby.port());
    let h = start(primary, &[pp, sp], "").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = writers(&h, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Switchover: the old primary turns read-only, the standby is promoted.
    let pg = &h.pg;
    tokio::task::block_in_place(|| {
        pg.psql(
            "postgres",
            "ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf();",
        )
    })
    .unwrap();
    let standby = tokio::task::spawn_blocking(move || {
        standby.promote().expect("promote");
        standby
    })
    .await
    .unwrap();
    let switched = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut back_after = Duration::ZERO;
    for t in tasks {
        let w = t.await.unwrap();
        // Nothing died: every client keeps its connection.
        assert_eq!(w.reconnects, 0, "a client had to reconnect");
        assert!(!w.client.is_closed());
        let read_only = w
            .log
            .iter()
            .filter(|(_, e)| e.as_deref() == Some("25006"))
            .count();
        assert!(read_only <= 1, "a client got 25006 {read_only} times");
        let last = w.log.last().expect("a client wrote nothing");
        assert!(
            last.1.is_none(),
            "writes still fail at the end: {:?}",
            last.1
        );
        if let Some((t, _)) = w.log.iter().rev().find(|(_, e)| e.is_some()) {
            back_after = back_after.max(t.saturating_duration_since(switched));
        }
    }
    eprintln!(
        "switchover: last failed write {:.2}s after the promotion",
        back_after.as_secs_f64()
    );
    let c = h.connect("app_user", "rw").await;
    assert_eq!(
        scalar(&c, "SELECT inet_server_port()").await,
        sp.to_string()
    );
    let (status, body) = http_get(h.proxy.http_addr.unwrap(), "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.lines()
            .any(|l| l.starts_with("pgward_upstream_switches_total{database=\"rw\"}")),
        "{body}"
    );
    drop(standby);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_routing_avoids_a_lagging_standby() {
    let _serial = SERIAL.lock().await;
    let (primary, standby) = tokio::task::spawn_blocking(primary_and_standby)
        .await
        .unwrap();
    let (pp, sp) = (primary.port(), standby.port());
    let h = start_with(primary, &[pp, sp], "", "max_replica_lag = \"1s\"").await;
    let ro = h.connect("app_user", "ro").await;
    assert_eq!(
        scalar(&ro, "SELECT inet_server_port()").await,
        sp.to_string()
    );

    // A transaction replayed (so the standby knows how old its replay is), then replay stops
    // on the standby while the primary goes on writing.
    let sb = &standby;
    let pg = &h.pg;
    tokio::task::block_in_place(|| {
        pg.psql("app", "INSERT INTO public.ha_writes (client) VALUES (-1)")
            .unwrap();
        let start = Instant::now();
        while sb
            .psql(
                "app",
                "SELECT count(*) FROM public.ha_writes WHERE client = -1",
            )
            .unwrap()
            .trim()
            != "1"
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the standby does not replay"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    tokio::task::block_in_place(|| sb.psql("postgres", "SELECT pg_wal_replay_pause()")).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| {
        pg.psql("app", "INSERT INTO public.ha_writes (client) VALUES (0)")
    })
    .unwrap();
    // The same client's next transactions move to the primary, without an error.
    let start = Instant::now();
    loop {
        let port = scalar(&ro, "SELECT inet_server_port()").await;
        if port == pp.to_string() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "read-only work stayed on a standby past max_replica_lag"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "lagging standby left {:.2}s after the first write it did not replay",
        start.elapsed().as_secs_f64()
    );
    // New clients too: the lagging standby is not even a fallback.
    let fresh = h.connect("app_user", "ro").await;
    assert_eq!(
        scalar(&fresh, "SELECT inet_server_port()").await,
        pp.to_string()
    );
    tokio::task::block_in_place(|| sb.psql("postgres", "SELECT pg_wal_replay_resume()")).unwrap();
}
