//! The noisy-neighbour benchmark: one pool of 4 server connections shared by two tenants.
//! Tenant A runs 60 clients of `SELECT pg_sleep(0.05)`; tenant B runs 3 clients of a short
//! SELECT. Reported: B's throughput and p50/p99 latency alone, next to A under first come
//! first served (`fair_sharing = false`), under fair sharing (the default), with A capped by
//! `max_server_connections`, and through PgBouncer with both users on one pool (reference).
//!
//!     cargo bench --bench noisy_neighbour
//!
//! Environment: `NOISY_SECONDS` (per scenario, default 8), `NOISY_ROUNDS` (interleaved
//! rounds, default 1; medians are reported), `PGBOUNCER` (binary; default: `pgbouncer` on
//! PATH or /usr/sbin/pgbouncer, skipped with a note when absent). Needs PostgreSQL 15 server
//! binaries (as the tests do); as root, PostgreSQL and PgBouncer run as the `postgres` user.
//! Targets (docs/benchmarks.md): with the defaults B keeps at least 50 % of its solo TPS and
//! its p99 stays under 60 ms.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgward::pgctl::{PgOptions, TempPostgres};

#[allow(dead_code)]
#[path = "../tests/common/pgbouncer.rs"]
mod pgbouncer;
use pgbouncer::PgBouncer;

const POOL: usize = 4;
const A_CLIENTS: usize = 60;
const B_CLIENTS: usize = 3;
const PASSWORD: &str = "bench-pw";

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Alone,
    Fifo,
    Fair,
    Capped,
    PgBouncer,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::Alone => "B alone (pgward)",
            Scenario::Fifo => "B with A, pgward fair_sharing = false (FIFO)",
            Scenario::Fair => "B with A, pgward defaults (fair sharing)",
            Scenario::Capped => "B with A, A max_server_connections = 2",
            Scenario::PgBouncer => "B with A, PgBouncer (one pool, FIFO)",
        }
    }
}

struct Result {
    b_tps: f64,
    b_p50: Duration,
    b_p99: Duration,
    a_tps: f64,
}

use pgbouncer::free_port;

fn wait_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pgward_config(pg_port: u16, port: u16, s: Scenario) -> String {
    let fair = s != Scenario::Fifo;
    let cap = match s {
        Scenario::Capped => "max_server_connections = 2",
        _ => "",
    };
    format!(
        r#"listen = "127.0.0.1:{port}"
workers = 1

[pool]
size = {POOL}
checkout_timeout = "60s"
fair_sharing = {fair}

[[databases]]
name = "app"
upstream = "postgres://pgward:{PASSWORD}@127.0.0.1:{pg_port}/app?sslmode=disable"

[[users]]
name = "app_user"
password = "{PASSWORD}"

[[tenants]]
id = "a"
database = "app"
settings = {{ "app.tenant_id" = "a" }}
{cap}

[[tenants]]
id = "b"
database = "app"
settings = {{ "app.tenant_id" = "b" }}
"#
    )
}

fn start_pgward(dir: &Path, pg_port: u16, s: Scenario) -> (Proc, u16) {
    let port = free_port();
    let file = dir.join("pgward.toml");
    std::fs::write(&file, pgward_config(pg_port, port, s)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pgward"))
        .arg("--config")
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start pgward");
    wait_port(port);
    (Proc(child), port)
}

fn start_pgbouncer(bin: &Path, pg_port: u16) -> PgBouncer {
    // Both client users share one pool: the database forces the server user.
    PgBouncer::start(
        bin,
        &format!("app = host=127.0.0.1 port={pg_port} dbname=app user=pgward password={PASSWORD} pool_size={POOL}"),
        "auth_type = any\npool_mode = transaction\nmax_client_conn = 1000",
        &[],
    )
}

async fn client(port: u16, user: &str, db: &str) -> tokio_postgres::Client {
    let url = format!("postgres://{user}:{PASSWORD}@127.0.0.1:{port}/{db}?sslmode=disable");
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {db}: {e}"));
    tokio::spawn(conn);
    c
}

async fn run(port: u16, s: Scenario, seconds: u64) -> Result {
    let (a_db, b_db, user) = match s {
        Scenario::PgBouncer => ("app", "app", ["a_user", "b_user"]),
        _ => ("a", "b", ["app_user", "app_user"]),
    };
    let with_a = s != Scenario::Alone;
    let mut a = Vec::new();
    if with_a {
        for _ in 0..A_CLIENTS {
            a.push(client(port, user[0], a_db).await);
        }
    }
    let mut b = Vec::new();
    for _ in 0..B_CLIENTS {
        b.push(client(port, user[1], b_db).await);
    }
    let run_for = Duration::from_secs(seconds);
    let warmup = Duration::from_millis(500);
    let start = Instant::now();
    let a_done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let a_tasks: Vec<_> = a
        .into_iter()
        .map(|c| {
            let done = a_done.clone();
            tokio::spawn(async move {
                while start.elapsed() < run_for + warmup {
                    c.simple_query("SELECT pg_sleep(0.05)").await.expect("A");
                    if start.elapsed() > warmup {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    if with_a {
        tokio::time::sleep(warmup).await; // A fills the queue first
    }
    let b_start = Instant::now();
    let b_tasks: Vec<_> = b
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while b_start.elapsed() < run_for {
                    let t = Instant::now();
                    c.simple_query("SELECT 1").await.expect("B");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in b_tasks {
        lat.extend(t.await.unwrap());
    }
    let b_secs = b_start.elapsed().as_secs_f64();
    for t in a_tasks {
        t.await.unwrap();
    }
    lat.sort();
    let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)];
    Result {
        b_tps: lat.len() as f64 / b_secs,
        b_p50: pct(50),
        b_p99: pct(99),
        a_tps: a_done.load(std::sync::atomic::Ordering::Relaxed) as f64 / run_for.as_secs_f64(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let seconds: u64 = std::env::var("NOISY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let rounds: usize = std::env::var("NOISY_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let pg = TempPostgres::start(PgOptions {
        extra_conf: vec![("max_connections".into(), "100".into())],
        ..PgOptions::default()
    })
    .expect("start PostgreSQL");
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE pgward LOGIN PASSWORD '{PASSWORD}'; CREATE DATABASE app OWNER pgward;"
        ),
    )
    .expect("fixture");
    let dir = std::env::temp_dir().join(format!("pgward-noisy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pgbouncer = pgbouncer::binary();
    let mut scenarios = vec![
        Scenario::Alone,
        Scenario::Fifo,
        Scenario::Fair,
        Scenario::Capped,
    ];
    match &pgbouncer {
        Some(_) => scenarios.push(Scenario::PgBouncer),
        None => eprintln!("PgBouncer not found (set PGBOUNCER=…): its reference row is skipped"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut results: Vec<Vec<Result>> = scenarios.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, &s) in scenarios.iter().enumerate() {
            let (_proc, port): (Box<dyn std::any::Any>, u16) = match s {
                Scenario::PgBouncer => {
                    let b = start_pgbouncer(pgbouncer.as_deref().unwrap(), pg.port());
                    let port = b.port;
                    (Box::new(b), port)
                }
                _ => {
                    let (p, port) = start_pgward(&dir, pg.port(), s);
                    (Box::new(p), port)
                }
            };
            let r = rt.block_on(run(port, s, seconds));
            eprintln!(
                "round {}: {:<48} B {:>8.0} TPS  p50 {:>9.2?}  p99 {:>9.2?}   A {:>5.0} TPS",
                round + 1,
                s.label(),
                r.b_tps,
                r.b_p50,
                r.b_p99,
                r.a_tps
            );
            results[i].push(r);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\nPool of {POOL}; A: {A_CLIENTS} clients of pg_sleep(0.05); B: {B_CLIENTS} clients of SELECT 1; \
         {seconds} s per scenario, {rounds} round(s), medians.\n"
    );
    println!("| scenario | B TPS | B vs alone | B p50 | B p99 | A TPS |");
    println!("|---|---:|---:|---:|---:|---:|");
    let med = |rs: &[Result], f: &dyn Fn(&Result) -> f64| {
        median(&mut rs.iter().map(f).collect::<Vec<_>>())
    };
    let alone = med(&results[0], &|r| r.b_tps);
    let mut verdict = String::new();
    for (s, rs) in scenarios.iter().zip(&results) {
        let tps = med(rs, &|r| r.b_tps);
        let p50 = med(rs, &|r| r.b_p50.as_secs_f64() * 1e3);
        let p99 = med(rs, &|r| r.b_p99.as_secs_f64() * 1e3);
        let a = med(rs, &|r| r.a_tps);
        println!(
            "| {} | {tps:.0} | {:.0} % | {p50:.2} ms | {p99:.2} ms | {} |",
            s.label(),
            tps / alone * 100.0,
            if *s == Scenario::Alone {
                "–".to_string()
            } else {
                format!("{a:.0}")
            }
        );
        if *s == Scenario::Fair {
            let ok = tps >= alone * 0.5 && p99 < 60.0;
            verdict = format!(
                "\nTargets with the defaults (B ≥ 50 % of solo TPS, p99 < 60 ms): {}",
                if ok { "met" } else { "missed" }
            );
        }
    }
    println!("{verdict}");
}
