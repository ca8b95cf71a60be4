//! T1 across lost server connections, explored: the differential tester's generated message
//! sequences run through pgward as a tenant while the one server connection is terminated at
//! a random point of each (whenever it is inside a transaction). Whatever the point — mid
//! extended-protocol block, inside COPY, in a failed block, with answers pipelined — the
//! client must stay connected, be answered up to the fence (Sync, ROLLBACK, a marker row)
//! without hanging, and every probe, before and after the loss, must show the tenant's context.
//! The exact answers around a loss are checked against PostgreSQL's own answers to a failed
//! transaction in tests/faults.rs.
//!
//! Seeded and reproducible: `PGWARD_LOST_SEED`, `PGWARD_LOST_SEQUENCES` (default 150).

mod common;
#[allow(dead_code)] // the differential half of the tester is not used here
mod difftest;

use std::time::{Duration, Instant};

use common::*;
use difftest::gen::{Gen, Op};
use difftest::{describe, exec};
use rand::{Rng, SeedableRng};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_connection_never_costs_the_client_its_context_or_connection() {
    let (h, env) = difftest::start(1).await;
    let cutter = h.connect_direct().await;
    let seed = env_u64("PGWARD_LOST_SEED", 0x1057_0001);
    let count = env_u64("PGWARD_LOST_SEQUENCES", 150);
    let started = Instant::now();
    let (mut cuts, mut messages, mut refenced) = (0, 0, 0);
    for i in 0..count {
        let s = seed.wrapping_add(i);
        let mut ops = Gen::new(s).sequence();
        let mut rng = rand::rngs::StdRng::seed_from_u64(s ^ 0xc07);
        let at = rng.random_range(1..=ops.len());
        ops.insert(at, Op::Cut);
        let mut w = env.proxied().await.expect("connect through pgward");
        let mut run = exec::run(&mut w, &ops, env.fn_oid, None, Some(&cutter)).await;
        let terminated = matches!(ops.last(), Some(Op::Terminate));
        if run.stuck.is_some() && run.cuts > 0 {
            // The fence itself was in flight when the server died (it got the error): the
            // client's next transaction, a second fence, must work.
            w.send(&exec::fence()).await.expect("second fence");
            if matches!(
                exec::read_to_fence(&mut w, &mut run).await,
                exec::Fence::Seen
            ) {
                run.stuck = None;
                refenced += 1;
            }
        }
        let closed = run.msgs.iter().any(|m| m == "<connection closed>");
        let trouble = if let Some(stuck) = &run.stuck {
            Some(format!("pgward stopped answering ({stuck})"))
        } else if !run.bad_probes.is_empty() {
            Some(format!(
                "T1: a probe ran without the tenant context: {:?}",
                run.bad_probes
            ))
        } else if closed && !terminated {
            Some("the client lost its connection".to_string())
        } else {
            None
        };
        if let Some(why) = trouble {
            panic!(
                "sequence with seed {s} (PGWARD_LOST_SEED={s} PGWARD_LOST_SEQUENCES=1 reproduces it): {why}\n{}\nanswers: {:?}",
                describe(&ops),
                run.msgs
            );
        }
        cuts += run.cuts;
        messages += run.msgs.len();
    }
    eprintln!(
        "lost server: {count} sequences, {cuts} server connections terminated inside a transaction ({refenced} while the fence was in flight), {messages} answers, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The exploration must actually cut transactions, not only idle connections.
    assert!(
        cuts >= count as usize / 5,
        "only {cuts} of {count} sequences lost a server connection in a transaction"
    );
    // And the pool recovers: a plain client gets a working connection.
    let c = h.connect("app_user", "app").await;
    assert_eq!(scalar(&c, "SELECT 1").await, "1");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
