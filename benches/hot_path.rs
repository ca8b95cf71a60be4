//! Micro-benchmarks of the per-message hot path, through pgward's public API.
//!
//! Run: `cargo bench --bench hot_path` (about 30 s), or `cargo bench --bench hot_path -- --quick`
//! (a few seconds). Filter by name as usual: `cargo bench --bench hot_path -- classify`.
//!
//! What is measured (see docs/benchmarks.md for the end-to-end comparison):
//! - `frame/split_100_datarows`: `protocol::Header::parse` walking a buffer of 100 DataRows;
//!   throughput is reported per message.
//! - `classify/*`: `sql::classify::analyze` on a 211-byte SELECT, a multi-statement string and a
//!   guard violation (`SET search_path` in a tenant).
//! - `tenant_ctx/append_bind_execute`: appending a tenant's prebuilt Bind+Execute context bytes to
//!   a BytesMut (the per-transaction cost; building it is per configuration).
//! - `prepared/*`: `server::prepared::Registry::intern` of an already-interned definition, and
//!   `ServerStatements::contains` on a connection that has it.
//! - `metrics/statement_record`: `LabelSet::statement(Command::Select, d)` through the handles
//!   from `metrics::labels` (resolved once, as a session does).
//! - `pool_gate/*`: an uncontended checkout's permit from the fair gate (`pool::fair`), taken and
//!   given back, beside the tokio semaphore it replaced.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use pgward::config::Config;
use pgward::protocol::Header;
use pgward::server::prepared::{Registry, ServerStatements};
use pgward::sql::classify::analyze;
use pgward::tenancy::context::build_one;

const CONFIG: &str = r#"
listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"

[pool]
mode = "transaction"
size = 20

[[databases]]
name = "app"
upstream = "postgres://pgward:secret@127.0.0.1:5432/app?sslmode=disable"

[[users]]
name = "app_user"
password = "secret"

[[tenants]]
id = "t1"
database = "app"
search_path = ["public"]
settings = { "app.tenant_id" = "t1" }
"#;

fn config() -> Config {
    Config::from_toml(CONFIG, Path::new("bench.toml")).expect("bench config is valid")
}

/// A DataRow frame like pgbench -S returns: one int4 column as text.
fn data_row(out: &mut Vec<u8>, value: &[u8]) {
    let body_len = 2 + 4 + value.len();
    out.push(b'D');
    out.extend_from_slice(&((body_len + 4) as u32).to_be_bytes());
    out.extend_from_slice(&1i16.to_be_bytes());
    out.extend_from_slice(&(value.len() as i32).to_be_bytes());
    out.extend_from_slice(value);
}

fn bench_frames(c: &mut Criterion) {
    let mut buf = Vec::new();
    for i in 0..100u32 {
        data_row(&mut buf, format!("{}", 1_000_000 + i * 7919).as_bytes());
    }
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(100));
    g.bench_function("split_100_datarows", |b| {
        b.iter(|| {
            let buf = black_box(&buf[..]);
            let mut pos = 0;
            let mut n = 0u32;
            while let Ok(Some(h)) = Header::parse(&buf[pos..], 64 << 20) {
                if buf.len() - pos < h.frame_len {
                    break;
                }
                n += (h.tag == b'D') as u32;
                pos += h.frame_len;
            }
            assert_eq!(n, 100);
            n
        })
    });
    g.finish();
}

/// Exactly 211 bytes.
fn select_211() -> Vec<u8> {
    let base = "SELECT a.aid, a.bid, a.abalance, b.bbalance, t.tbalance FROM pgbench_accounts a \
                JOIN pgbench_branches b ON b.bid = a.bid JOIN pgbench_tellers t ON t.bid = a.bid \
                WHERE a.aid = $1 AND t.tid = $2 ORDER BY a.aid";
    // 207 bytes; a short comment brings it to 211 (comments are part of what the lexer skips).
    let mut s = base.to_string();
    s.push_str(" --x");
    assert!(s.len() <= 211, "base query too long: {}", s.len());
    while s.len() < 211 {
        s.push(' ');
    }
    assert_eq!(s.len(), 211);
    s.into_bytes()
}

fn bench_classify(c: &mut Criterion) {
    let select = select_211();
    let multi = b"BEGIN; UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 42; \
SELECT abalance FROM pgbench_accounts WHERE aid = 42; \
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 42, 5, now()); COMMIT;"
        .to_vec();
    let violation = b"SET search_path = other_tenant, public".to_vec();
    let protected = |name: &str| matches!(name, "search_path" | "role" | "app.tenant_id");

    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Bytes(select.len() as u64));
    g.bench_function("select_211b", |b| {
        b.iter(|| analyze(black_box(&select), true, &protected))
    });
    g.throughput(Throughput::Bytes(multi.len() as u64));
    g.bench_function("multi_statement", |b| {
        b.iter(|| analyze(black_box(&multi), true, &protected))
    });
    g.throughput(Throughput::Bytes(violation.len() as u64));
    g.bench_function("guard_violation", |b| {
        b.iter(|| {
            let a = analyze(black_box(&violation), true, &protected);
            debug_assert!(a.violation.is_some());
            a
        })
    });
    g.finish();
    // Sanity outside the timed loops.
    assert!(analyze(&violation, true, &protected).violation.is_some());
    assert_eq!(analyze(&multi, true, &protected).statements, 5);
}

fn bench_tenant_ctx(c: &mut Criterion) {
    let cfg = config();
    let tenant = cfg.tenants.get("t1").expect("tenant t1").clone();
    let protected: Arc<BTreeSet<String>> = Arc::new(tenant.settings.keys().cloned().collect());
    let ctx = build_one(tenant, protected, false);
    assert!(!ctx.local.unnamed.is_empty());
    let mut g = c.benchmark_group("tenant_ctx");
    g.throughput(Throughput::Elements(1));
    g.bench_function("append_bind_execute", |b| {
        // A reused output buffer, as a server connection's write buffer is.
        let mut out = BytesMut::with_capacity(8 * 1024);
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&ctx.local.unnamed));
            black_box(out.len())
        })
    });
    g.bench_function("append_parse_bind_execute", |b| {
        // First transaction of a tenant on a server connection also sends the Parse.
        let mut out = BytesMut::with_capacity(8 * 1024);
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&ctx.local.parse));
            out.extend_from_slice(black_box(&ctx.local.unnamed));
            black_box(out.len())
        })
    });
    g.finish();
}

fn bench_prepared(c: &mut Criterion) {
    // Parse body after the name, as pgbench -M prepared sends it.
    let mut def = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1".to_vec();
    def.push(0);
    def.extend_from_slice(&1i16.to_be_bytes());
    def.extend_from_slice(&23i32.to_be_bytes());
    let reg = Registry::default();
    // A registry with other statements in it too.
    for i in 0..200 {
        let mut d = format!("SELECT {i} FROM t WHERE x = $1").into_bytes();
        d.push(0);
        d.extend_from_slice(&0i16.to_be_bytes());
        reg.intern(&d);
    }
    let first = reg.intern(&def);
    let mut on_server = ServerStatements::default();
    for i in 0..100 {
        let mut d = format!("SELECT {i} FROM t WHERE x = $1").into_bytes();
        d.push(0);
        d.extend_from_slice(&0i16.to_be_bytes());
        on_server.insert(reg.intern(&d), 250);
    }
    on_server.insert(first.clone(), 250);

    let mut g = c.benchmark_group("prepared");
    g.throughput(Throughput::Elements(1));
    g.bench_function("registry_intern_existing", |b| {
        b.iter(|| {
            let d = reg.intern(black_box(&def));
            debug_assert_eq!(d.id, first.id);
            d
        })
    });
    g.bench_function("server_statements_contains", |b| {
        b.iter(|| on_server.contains(black_box(first.id)))
    });
    g.bench_function("server_statements_contains_miss", |b| {
        b.iter(|| on_server.contains(black_box(u64::MAX)))
    });
    g.finish();
}

fn bench_metrics(c: &mut Criterion) {
    let cfg = config();
    let _handle = pgward::metrics::install(&cfg.metrics);
    let plain = pgward::metrics::labels("app", None);
    let tenant = pgward::metrics::labels("app", Some("t1"));
    let d = Duration::from_micros(180);
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(1));
    g.bench_function("statement_record", |b| {
        b.iter(|| plain.statement(pgward::metrics::Command::Select, black_box(d)))
    });
    g.bench_function("statement_record_tenant", |b| {
        b.iter(|| tenant.statement(pgward::metrics::Command::Select, black_box(d)))
    });
    g.bench_function("labels_lookup", |b| {
        // Per client connection, not per statement: shown for scale.
        b.iter_batched(
            || (),
            |_| pgward::metrics::labels(black_box("app"), Some(black_box("t1"))),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The uncontended checkout of a pool's gate (a permit taken and given back, nobody waiting),
/// against the tokio semaphore it replaced.
fn bench_pool_gate(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_gate");
    let gate = pgward::pool::fair::FairGate::new(20, true);
    let class: pgward::pool::ClassKey = Arc::from("acme");
    // As the pool uses it: with the clock reading it takes anyway for the transaction.
    let now = std::time::Instant::now();
    g.bench_function("fair_acquire_release", |b| {
        b.iter(|| {
            let mut p = gate.try_acquire_at(&class, pgward::pool::Share::EQUAL, now);
            if let Some(p) = p.as_mut() {
                p.end_at(now);
            }
            drop(black_box(p))
        })
    });
    let sem = Arc::new(tokio::sync::Semaphore::new(20));
    g.bench_function("semaphore_acquire_release", |b| {
        b.iter(|| drop(black_box(sem.clone().try_acquire_owned())))
    });
    g.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = hot_path;
    config = short();
    targets = bench_frames, bench_classify, bench_tenant_ctx, bench_prepared, bench_metrics,
        bench_pool_gate
}
criterion_main!(hot_path);
