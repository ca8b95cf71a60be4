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

/// Names of the figures, in `SHOW STATS_TOTALS` order (the index of each in [`Totals`]).
pub const NAMES: [&str; 11] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
];
const ASSIGNMENTS: usize = 0;
const XACTS: usize = 1;
const QUERIES: usize = 2;
const XACT_TIME: usize = 5;
const QUERY_TIME: usize = 6;
const WAIT_TIME: usize = 7;

/// Cumulative figures of a pool, indexed as [`NAMES`]; times in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals(pub [u64; 11]);

impl Totals {
    pub fn of(st: &PoolStats) -> Totals {
        let r = Ordering::Relaxed;
        Totals([
            st.checkouts_total.load(r),
            st.xact_count.load(r),
            st.query_count.load(r),
            st.bytes_received.load(r),
            st.bytes_sent.load(r),
            st.xact_time_us.load(r),
            st.query_time_us.load(r),
            st.wait_us_total.load(r),
            st.client_parse_count.load(r),
            st.server_parse_count.load(r),
            st.bind_count.load(r),
        ])
    }

    fn zip(self, o: Totals, f: impl Fn(u64, u64) -> u64) -> Totals {
        Totals(std::array::from_fn(|i| f(self.0[i], o.0[i])))
    }

    pub fn plus(self, o: Totals) -> Totals {
        self.zip(o, u64::wrapping_add)
    }

    pub fn wait_time(&self) -> u64 {
        self.0[WAIT_TIME]
    }

    /// The figures as `SHOW STATS_AVERAGES` gives them, for a difference over `secs`: the
    /// three times are means per transaction, statement and assignment; the rest rates.
    pub fn averages(&self, secs: f64) -> Totals {
        let v = &self.0;
        let mean = |t: usize, n: usize| v[t].checked_div(v[n]).unwrap_or(0);
        Totals(std::array::from_fn(|i| match i {
            XACT_TIME => mean(XACT_TIME, XACTS),
            QUERY_TIME => mean(QUERY_TIME, QUERIES),
            WAIT_TIME => mean(WAIT_TIME, ASSIGNMENTS),
            _ if secs > 0.0 => (v[i] as f64 / secs).round() as u64,
            _ => 0,
        }))
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
        let mut t = Totals::default();
        (t.0[XACTS], t.0[XACT_TIME], t.0[ASSIGNMENTS], t.0[WAIT_TIME]) =
            (xacts, xact_time, assignments, wait);
        t
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
        assert_eq!((a.0[XACTS], a.0[XACT_TIME], a.0[WAIT_TIME]), (10, 100, 2));
        // The next window counts only what happened in it.
        w.roll(t0 + 2 * p, totals(120, 30_000, 110, 200), p);
        let a = w.last.0.averages(w.last.1);
        assert_eq!((a.0[XACTS], a.0[XACT_TIME], a.0[WAIT_TIME]), (2, 1_000, 0));
    }

    #[test]
    fn no_traffic_averages_to_zero() {
        let a = Totals::default().averages(60.0);
        assert_eq!(a, Totals::default());
        assert_eq!(totals(5, 10, 5, 5).averages(0.0).0[XACTS], 0);
    }
}
