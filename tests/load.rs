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

/// The `pgward` binary with `workers = 1` runs tokio's current-thread scheduler (src/main.rs):
/// the same pgbench load, through it, with a tenant, gives zero failures, and the tenant's
/// context is on every transaction.
#[test]
fn binary_with_one_worker_thread_serves_pgbench_and_tenants() {
    init_tracing();
    let pg = start_pg();
    pgbench_init(&pg, 2);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let o = Opts {
        size: 5,
        checkout_timeout: "30s",
        extra: TENANTS.to_string(),
        ..Opts::default()
    };
    let text = config_text(pg.port(), &o).replace(
        "listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"",
        &format!("workers = 1\nlisten = \"127.0.0.1:{port}\""),
    );
    assert!(
        text.contains("workers = 1"),
        "config template changed:\n{text}"
    );
    let path = std::env::temp_dir().join(format!("pgward-one-worker-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgward"))
        .arg("--config")
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pgward");
    let child_id = child.id();
    let _kill = KillOnDrop(&mut child);
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "pgward did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // One thread: the current-thread scheduler (the multi-thread one has a worker besides main).
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", child_id)) {
        assert_eq!(
            tasks.count(),
            1,
            "pgward with workers = 1 runs more than one thread"
        );
    }
    let secs = (load_seconds() / 4).max(2).to_string();
    let runs: [(&str, &[&str]); 3] = [
        ("app_user", &["-S", "-M", "simple"]),
        ("app_user", &["-M", "extended"]),
        ("app_user.acme", &["-S", "-M", "prepared"]),
    ];
    for (user, mode) in runs {
        let mut args = vec!["-c", "50", "-j", "2", "-T", &secs, "-n"];
        args.extend_from_slice(mode);
        let b = pgbench(&pg, port, user, PASSWORD, "app", &args);
        eprintln!("{user} {mode:?}: tps {:.0}, failed {}", b.tps, b.failed);
        assert!(b.ok, "{user} {mode:?}: pgbench failed:\n{}", b.output);
        assert_eq!(b.failed, 0, "{user} {mode:?}:\n{}", b.output);
        assert!(b.tps > 0.0, "{user} {mode:?}: no throughput:\n{}", b.output);
    }
    let _ = std::fs::remove_file(&path);
    let out = std::process::Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "app_user.acme", "-d", "app", "-c"])
        .arg("SELECT current_setting('search_path') || '|' || current_setting('app.tenant_id')")
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(got.trim(), "acme, public|acme", "{out:?}");
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
