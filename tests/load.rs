//! pgbench through a small transaction-mode pool: 200 clients over 10 server connections,
//! simple and extended protocol, select-only and TPC-B-like; zero failures, no aborted
//! client, and PostgreSQL never sees more than 10 connections from pgward.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_200_clients_over_10_server_connections() {
    let h = Harness::start(Opts {
        size: 10,
        checkout_timeout: "30s",
        ..Opts::default()
    })
    .await;
    let pg = &h.pg;
    tokio::task::block_in_place(|| pgbench_init(pg, 2));
    let secs = load_seconds().to_string();
    let runs: [(&str, &[&str]); 5] = [
        ("select-only simple", &["-S", "-M", "simple"]),
        ("select-only extended", &["-S", "-M", "extended"]),
        ("tpcb simple", &["-M", "simple"]),
        ("tpcb extended", &["-M", "extended"]),
        ("select-only prepared", &["-S", "-M", "prepared"]),
    ];
    let max_seen = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (max_seen, stop) = (max_seen.clone(), stop.clone());
        let direct = h.connect_direct().await;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = scalar(&direct, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'pgward' AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
                    .await
                    .parse()
                    .unwrap();
                max_seen.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let port = h.port();
    for (name, mode) in runs {
        let mut args = vec!["-c", "200", "-j", "2", "-T", &secs, "-n"];
        args.extend_from_slice(mode);
        let b =
            tokio::task::block_in_place(|| pgbench(pg, port, "app_user", PASSWORD, "app", &args));
        eprintln!("{name}: tps {:.0}, failed {}", b.tps, b.failed);
        assert!(b.ok, "{name}: pgbench failed or aborted:\n{}", b.output);
        assert_eq!(b.failed, 0, "{name}: failed transactions:\n{}", b.output);
        assert!(b.tps > 0.0, "{name}: no throughput:\n{}", b.output);
    }
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let max = max_seen.load(Ordering::Relaxed);
    assert!(max <= 10, "PostgreSQL saw {max} connections from pgward");
    assert!(max >= 1);
}
