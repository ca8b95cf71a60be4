//! Background upkeep of one pool, once a second: close idle connections past `idle_timeout`
//! or `server_lifetime` (keeping `min_size`), drop dead ones, open connections up to
//! `min_size`, and prove the upstream alive for `/ready`: a completed transaction proves it;
//! when nothing did for `PROBE_AFTER`, a `SELECT 1` probe with `ready_probe_timeout` does.
//! It also closes the `SHOW STATS_AVERAGES` window when `stats_period` has passed, and
//! leaves standbys whose replay falls behind `max_replica_lag`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{now_ms, Pool};

/// How stale `last_ok_ms` may get before the maintenance task probes the upstream.
pub const PROBE_AFTER: Duration = Duration::from_secs(2);

pub fn spawn(pool: Arc<Pool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if pool.closed.load(Ordering::Acquire) {
                return;
            }
            pool.roll_averages(Instant::now());
            run_once(&pool).await;
            pool.check_replica_lag().await;
        }
    })
}

pub async fn run_once(pool: &Arc<Pool>) {
    let s = &pool.db.pool;
    let min = s.min_size;
    // Close what is too old or idle too long, beyond min_size, and anything dead.
    let removed = pool.with_idle(|idle| {
        let before = idle.len();
        idle.retain_mut(|c| {
            !c.stream.is_broken_while_idle() && c.created.elapsed() <= s.server_lifetime
        });
        let mut excess = idle.len().saturating_sub(min);
        // Oldest-used first: the idle list is pushed and popped at its end.
        idle.retain(|c| {
            if excess > 0 && c.last_used.elapsed() > s.idle_timeout {
                excess -= 1;
                false
            } else {
                true
            }
        });
        before - idle.len()
    });
    if removed > 0 {
        pool.stats.idle.fetch_sub(removed, Ordering::Relaxed);
        pool.stats
            .closed_total
            .fetch_add(removed as u64, Ordering::Relaxed);
    }
    // A transaction completed since the last look: the server answers.
    let xacts = pool.stats.xact_count.load(Ordering::Relaxed);
    if pool.seen_xacts.swap(xacts, Ordering::Relaxed) != xacts {
        pool.mark_ok();
    }
    // Probe when nothing proved the upstream alive recently (an open connection proves
    // nothing: a frozen server keeps its sockets open).
    let stale = now_ms().saturating_sub(pool.last_ok_ms.load(Ordering::Relaxed))
        > PROBE_AFTER.as_millis() as u64;
    // A dedicated tenant's pool is not probed: it does not count for /ready, and a probe
    // would keep a connection open to a database nobody uses.
    if stale && pool.dedicated_tenant.is_none() {
        pool.probe().await;
    }
    let now = pool.size_now();
    let want = if now < min {
        (min - now).min(pool.db.pool.size.saturating_sub(now))
    } else {
        0
    };
    for _ in 0..want {
        let Some(permit) = pool.own_permit() else {
            break;
        };
        match pool.open().await {
            Ok(c) => pool.put_idle(c, Instant::now()),
            Err(_) => break,
        }
        drop(permit);
    }
}
