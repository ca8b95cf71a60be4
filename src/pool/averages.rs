//! `SHOW STATS_AVERAGES` and the `avg_*` columns of `SHOW STATS`: what changed over the last
//! completed `stats_period` (PgBouncer's meaning): counts and bytes per second; transaction,
//! query and wait time per transaction, query and server assignment, in microseconds.
//!
//! Each pool keeps the totals at the start of the current window and the difference over the
//! last completed one ([`Window::roll`], called by the maintenance task once a second). Rows
//! of a database sum the differences of its pools before dividing, so a mean is weighted by
//! its pool's traffic. Until a first window completes, averages are 0 (as in PgBouncer).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::stats::PoolStats;

/// Cumulative figures of a pool, in `SHOW STATS_TOTALS` order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub server_assignment_count: u64,
    pub xact_count: u64,
    pub query_count: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub xact_time: u64,
    pub query_time: u64,
    pub wait_time: u64,
    pub client_parse_count: u64,
    pub server_parse_count: u64,
    pub bind_count: u64,
}

impl Totals {
    pub fn of(st: &PoolStats) -> Totals {
        let r = Ordering::Relaxed;
        Totals {
            server_assignment_count: st.checkouts_total.load(r),
            xact_count: st.xact_count.load(r),
            query_count: st.query_count.load(r),
            bytes_received: st.bytes_received.load(r),
            bytes_sent: st.bytes_sent.load(r),
            xact_time: st.xact_time_us.load(r),
            query_time: st.query_time_us.load(r),
            wait_time: st.wait_us_total.load(r),
            client_parse_count: st.client_parse_count.load(r),
            server_parse_count: st.server_parse_count.load(r),
            bind_count: st.bind_count.load(r),
        }
    }

    fn zip(self, o: Totals, f: impl Fn(u64, u64) -> u64) -> Totals {
        Totals {
            server_assignment_count: f(self.server_assignment_count, o.server_assignment_count),
            xact_count: f(self.xact_count, o.xact_count),
            query_count: f(self.query_count, o.query_count),
            bytes_received: f(self.bytes_received, o.bytes_received),
            bytes_sent: f(self.bytes_sent, o.bytes_sent),
            xact_time: f(self.xact_time, o.xact_time),
            query_time: f(self.query_time, o.query_time),
            wait_time: f(self.wait_time, o.wait_time),
            client_parse_count: f(self.client_parse_count, o.client_parse_count),
            server_parse_count: f(self.server_parse_count, o.server_parse_count),
            bind_count: f(self.bind_count, o.bind_count),
        }
    }

    pub fn plus(self, o: Totals) -> Totals {
        self.zip(o, u64::wrapping_add)
    }

    /// The figures as `SHOW STATS_AVERAGES` gives them, for a difference over `secs`.
    pub fn averages(&self, secs: f64) -> Totals {
        let rate = |n: u64| match secs > 0.0 {
            true => (n as f64 / secs).round() as u64,
            false => 0,
        };
        let mean = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
        Totals {
            server_assignment_count: rate(self.server_assignment_count),
            xact_count: rate(self.xact_count),
            query_count: rate(self.query_count),
            bytes_received: rate(self.bytes_received),
            bytes_sent: rate(self.bytes_sent),
            xact_time: mean(self.xact_time, self.xact_count),
            query_time: mean(self.query_time, self.query_count),
            wait_time: mean(self.wait_time, self.server_assignment_count),
            client_parse_count: rate(self.client_parse_count),
            server_parse_count: rate(self.server_parse_count),
            bind_count: rate(self.bind_count),
        }
    }
}

/// The current window of one pool and the difference over the last completed one.
pub struct Window {
    start: Instant,
    at_start: Totals,
    /// Difference over the last completed window, and its length in seconds.
    pub last: (Totals, f64),
}

impl Window {
    pub fn new(now: Instant) -> Window {
        Window {
            start: now,
            at_start: Totals::default(),
            last: (Totals::default(), 0.0),
        }
    }

    /// Close the window if `period` has passed.
    pub fn roll(&mut self, now: Instant, current: Totals, period: Duration) {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < period {
            return;
        }
        self.last = (
            current.zip(self.at_start, u64::wrapping_sub),
            elapsed.as_secs_f64(),
        );
        self.start = now;
        self.at_start = current;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(xacts: u64, xact_time: u64, assignments: u64, wait: u64) -> Totals {
        Totals {
            xact_count: xacts,
            xact_time,
            server_assignment_count: assignments,
            wait_time: wait,
            ..Totals::default()
        }
    }

    #[test]
    fn a_window_gives_rates_and_means_of_its_difference() {
        let t0 = Instant::now();
        let p = Duration::from_secs(10);
        let mut w = Window::new(t0);
        w.roll(t0 + Duration::from_secs(5), totals(50, 5_000, 50, 100), p);
        assert_eq!(w.last.1, 0.0, "not a full window yet");
        w.roll(t0 + p, totals(100, 10_000, 100, 200), p);
        let a = w.last.0.averages(w.last.1);
        assert_eq!((a.xact_count, a.xact_time, a.wait_time), (10, 100, 2));
        // The next window counts only what happened in it.
        w.roll(t0 + 2 * p, totals(120, 30_000, 110, 200), p);
        let a = w.last.0.averages(w.last.1);
        assert_eq!((a.xact_count, a.xact_time, a.wait_time), (2, 1_000, 0));
    }

    #[test]
    fn no_traffic_averages_to_zero() {
        let a = Totals::default().averages(60.0);
        assert_eq!(a, Totals::default());
        assert_eq!(totals(5, 10, 5, 5).averages(0.0).xact_count, 0);
    }
}
