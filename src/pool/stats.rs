//! Pool statistics, written on every transaction by whichever worker thread runs the client.
//!
//! Each value is split into per-thread shards on separate cache lines, so the per-transaction
//! path never contends on a shared cache line; readers (admin console, metrics, maintenance)
//! sum the shards. The method names mirror the std atomics they replace.
//!
//! Invariants:
//! - Counters only grow; their sum is exact once writers are quiet.
//! - A gauge is incremented and decremented on possibly different shards: each shard wraps,
//!   the wrapping sum is the true value, and a read racing with writers is clamped at zero.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::shard::{index as shard, SHARDS};

#[repr(align(128))]
#[derive(Default)]
struct Line(AtomicU64);

/// A monotonically growing count.
#[derive(Default)]
pub struct Counter([Line; SHARDS]);

impl Counter {
    #[inline]
    pub fn fetch_add(&self, n: u64, o: Ordering) {
        self.0[shard()].0.fetch_add(n, o);
    }
    pub fn load(&self, o: Ordering) -> u64 {
        self.0.iter().fold(0u64, |s, l| s.wrapping_add(l.0.load(o)))
    }
}

/// A value that goes up and down (connections in a state).
#[derive(Default)]
pub struct Gauge(Counter);

impl Gauge {
    #[inline]
    pub fn fetch_add(&self, n: usize, o: Ordering) {
        self.0.fetch_add(n as u64, o);
    }
    #[inline]
    pub fn fetch_sub(&self, n: usize, o: Ordering) {
        self.0.fetch_add((n as u64).wrapping_neg(), o);
    }
    pub fn load(&self, o: Ordering) -> usize {
        (self.0.load(o) as i64).max(0) as usize
    }
}

/// Counters and gauges read by the admin console and metrics.
#[derive(Default)]
pub struct PoolStats {
    pub waiting: Gauge,
    pub active: Gauge,
    pub idle: Gauge,
    pub connecting: Gauge,
    pub opened_total: Counter,
    pub closed_total: Counter,
    pub checkouts_total: Counter,
    pub wait_us_total: Counter,
    pub xact_count: Counter,
    pub query_count: Counter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub xact_time_us: Counter,
    pub query_time_us: Counter,
    /// Parse messages from clients, Parse messages pgward sent to servers (clients' and
    /// re-preparations; not the tenant context's), Bind messages from clients.
    pub client_parse_count: Counter,
    pub server_parse_count: Counter,
    pub bind_count: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_across_threads() {
        let st = std::sync::Arc::new(PoolStats::default());
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let st = st.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        st.xact_count.fetch_add(1, Ordering::Relaxed);
                        st.active.fetch_add(1, Ordering::Relaxed);
                    }
                    // a gauge decremented on other threads than the one that raised it
                    if i % 2 == 0 {
                        for _ in 0..2000 {
                            st.idle.fetch_sub(1, Ordering::Relaxed);
                        }
                    } else {
                        for _ in 0..2000 {
                            st.idle.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(st.xact_count.load(Ordering::Relaxed), 12_000);
        assert_eq!(st.active.load(Ordering::Relaxed), 12_000);
        assert_eq!(st.idle.load(Ordering::Relaxed), 0);
        st.waiting.fetch_sub(1, Ordering::Relaxed);
        assert_eq!(
            st.waiting.load(Ordering::Relaxed),
            0,
            "negative reads clamp"
        );
    }
}
