//! T1 and transparency, explored: generated frontend message sequences run on a direct
//! PostgreSQL session that has the tenant's context set, and through pgward as that tenant,
//! while a plain client and a client of another tenant share the same two server connections.
//! The answers must be the same message for message, and every probe (a row, a COPY line or
//! a notice from inside a procedure that commits) must show the tenant's context.
//!
//! Seeded and reproducible: `PGWARD_DIFF_SEED` (default fixed) and `PGWARD_DIFF_SEQUENCES`
//! (default 600 here; the long run in docs/tenancy.md uses more). A failure is shrunk and
//! printed with the seed that reproduces it.

mod common;
mod difftest;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use difftest::gen::Gen;
use difftest::{describe, Verdict};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Another tenant and a plain client using the pool the whole time, so every sequence starts
/// on a server connection someone else just used. The tenant checks its own context.
fn background(
    h: &Harness,
    stop: Arc<AtomicBool>,
    wrong: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    let tenant_url = h.url("app_user", "acme");
    let plain_url = h.url("app_user", "app");
    let t = {
        let (stop, wrong) = (stop.clone(), wrong.clone());
        tokio::spawn(async move {
            let c = connect(&tenant_url).await.expect("acme client");
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let rows = c
                    .simple_query("SELECT current_setting('search_path') || '/' || current_setting('app.tenant_id', true)")
                    .await
                    .expect("acme probe");
                if first_value(&rows) != "acme, public/acme" {
                    wrong.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        })
    };
    let p = tokio::spawn(async move {
        let c = connect(&plain_url).await.expect("plain client");
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let sql = if n % 7 == 0 {
                // session state, reset before the connection is reused
                "SET work_mem = '2MB'; SELECT 1"
            } else {
                "SELECT 1"
            };
            c.simple_query(sql).await.expect("plain client");
            n += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n
    });
    vec![t, p]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_message_sequences_keep_t1_and_match_postgresql() {
    let (h, env) = difftest::start(2).await;
    let seed = env_u64("PGWARD_DIFF_SEED", 0x5eed_0001);
    let count = env_u64("PGWARD_DIFF_SEQUENCES", 600);
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let load = background(&h, stop.clone(), wrong.clone());

    let started = Instant::now();
    let (mut same, mut invalid, mut messages, mut statements) = (0, 0, 0, 0);
    let mut documented = std::collections::BTreeMap::<&str, u64>::new();
    let mut failure = None;
    for i in 0..count {
        let s = seed.wrapping_add(i);
        let ops = Gen::new(s).sequence();
        statements += ops.iter().map(|o| o.statements()).sum::<usize>();
        match env.check(&ops).await {
            Verdict::Same(run) => {
                same += 1;
                messages += run.msgs.len();
            }
            Verdict::Invalid => invalid += 1,
            Verdict::Documented(why) => *documented.entry(why).or_default() += 1,
            Verdict::Differs(why) => {
                failure = Some((s, ops, why));
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut background_txns = 0;
    for t in load {
        background_txns += t.await.unwrap();
    }
    let ran = same + invalid + documented.values().sum::<u64>();
    eprintln!(
        "differential: {same} sequences equal, documented differences {documented:?}, {invalid} not runnable on PostgreSQL; \
         {statements} statements, {messages} answers compared, in {:.1} s ({:.1} sequences/s); \
         {background_txns} background transactions",
        elapsed.as_secs_f64(),
        ran as f64 / elapsed.as_secs_f64()
    );
    if let Some((s, ops, first)) = failure {
        let (small, why) = env.shrink(ops.clone(), Duration::from_secs(90)).await;
        panic!(
            "sequence with seed {s} differs (PGWARD_DIFF_SEED={s} PGWARD_DIFF_SEQUENCES=1 reproduces it)\n\
             minimal sequence ({} of {} steps):\n{}\n{why}\nfirst run:\n{first}",
            small.len(),
            ops.len(),
            describe(&small)
        );
    }
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "the other tenant saw a wrong context"
    );
    assert!(
        same > count / 2,
        "too few comparable sequences: {same} of {count}"
    );
}
