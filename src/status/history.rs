//! Statement latency over time for the status page: p50 and p99 of the statements that
//! completed in each sampling interval.
//!
//! Invariants:
//! - Memory is bounded: at most [`CAPACITY`] samples are kept, the oldest dropped first, plus
//!   one copy of the histogram's bucket counts (the baseline of the next difference).
//! - A sample describes only its own interval: it is the difference between two readings of
//!   the cumulative statement histogram (`crate::metrics::statement_latency`). The first
//!   reading only sets the baseline; counts that went down (cannot happen: they only grow)
//!   count as zero.
//! - Quantiles are estimated the way Prometheus' `histogram_quantile` does: linear within the
//!   bucket that holds the rank; a rank in the `+Inf` bucket gives the highest finite bound.
//!   An interval without statements has no quantiles (a gap in the chart, not a zero).
//! - The histogram is process-wide, so the history is too ([`global`]); [`sample_if_due`] takes
//!   at most one sample per interval however many proxies in the process call it.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Samples kept: ten minutes at [`INTERVAL`].
pub const CAPACITY: usize = 120;
/// How often a sample is taken (by the proxy's 5-second housekeeping tick).
pub const INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Sample {
    /// End of the interval, ms since the Unix epoch.
    pub at_ms: u64,
    /// Statements completed in the interval.
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

pub struct History {
    samples: VecDeque<Sample>,
    /// The previous reading (per-bucket counts), once there is one.
    last: Option<Vec<u64>>,
    last_at: Option<Instant>,
}

impl Default for History {
    fn default() -> Self {
        History {
            samples: VecDeque::with_capacity(CAPACITY),
            last: None,
            last_at: None,
        }
    }
}

impl History {
    /// A reading of the cumulative histogram (`bounds` in seconds; `counts` per bucket, the
    /// last `+Inf`) taken at `at_ms`: adds the sample for the interval since the last one.
    pub fn record(&mut self, at_ms: u64, bounds: &[f64], counts: &[u64]) {
        let prev = self.last.replace(counts.to_vec());
        let Some(prev) = prev.filter(|p| p.len() == counts.len()) else {
            return;
        };
        let delta: Vec<u64> = counts
            .iter()
            .zip(&prev)
            .map(|(c, p)| c.saturating_sub(*p))
            .collect();
        let q = |q| quantile(bounds, &delta, q).map(|s| s * 1000.0);
        if self.samples.len() == CAPACITY {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at_ms,
            count: delta.iter().sum(),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
        });
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().cloned().collect()
    }
}

/// The `q` quantile (0..=1) of per-bucket counts `delta` (the last bucket `+Inf`), in the
/// unit of `bounds`; None when there are no observations.
pub fn quantile(bounds: &[f64], delta: &[u64], q: f64) -> Option<f64> {
    let total: u64 = delta.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, n) in delta.iter().enumerate() {
        if *n > 0 && (below + n) as f64 >= rank {
            let Some(upper) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let within = ((rank - below as f64) / *n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below += n;
    }
    bounds.last().copied()
}

/// The process's history.
pub fn global() -> &'static Mutex<History> {
    static H: OnceLock<Mutex<History>> = OnceLock::new();
    H.get_or_init(Default::default)
}

/// Take a sample if none was taken in the last [`INTERVAL`] (less a little slack for timer
/// jitter). Does nothing without the metrics exporter (`metrics.enabled = false`).
pub fn sample_if_due() {
    let Some((bounds, counts)) = crate::metrics::statement_latency() else {
        return;
    };
    let mut h = global().lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if h.last_at
        .is_some_and(|t| now.duration_since(t) < INTERVAL - Duration::from_millis(500))
    {
        return;
    }
    h.last_at = Some(now);
    h.record(crate::pool::now_ms(), &bounds, &counts);
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: [f64; 3] = [0.001, 0.01, 0.1];

    #[test]
    fn first_reading_is_the_baseline_then_differences() {
        let mut h = History::default();
        h.record(1, &B, &[5, 0, 0, 0]);
        assert!(h.samples().is_empty());
        h.record(2, &B, &[5, 10, 0, 0]);
        h.record(3, &B, &[5, 10, 0, 0]);
        let s = h.samples();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].at_ms, s[0].count), (2, 10));
        // All ten in (1 ms, 10 ms]: the median halfway.
        assert!((s[0].p50_ms.unwrap() - 5.5).abs() < 1e-9, "{:?}", s[0]);
        assert!(s[0].p99_ms.unwrap() > 9.8 && s[0].p99_ms.unwrap() <= 10.0);
        assert_eq!(s[1].count, 0);
        assert_eq!((s[1].p50_ms, s[1].p99_ms), (None, None));
    }

    #[test]
    fn bounded_to_capacity_oldest_dropped() {
        let mut h = History::default();
        for i in 0..(CAPACITY as u64 + 30) {
            h.record(i, &B, &[i, 0, 0, 0]);
        }
        let s = h.samples();
        assert_eq!(s.len(), CAPACITY);
        assert_eq!(s.first().unwrap().at_ms, 30);
        assert_eq!(s.last().unwrap().at_ms, CAPACITY as u64 + 29);
    }

    #[test]
    fn quantiles_like_histogram_quantile() {
        assert_eq!(quantile(&B, &[0, 0, 0, 0], 0.5), None);
        // 100 in the first bucket: linear from 0.
        assert!((quantile(&B, &[100, 0, 0, 0], 0.5).unwrap() - 0.0005).abs() < 1e-12);
        // 99 fast, 1 beyond the last bound: p99 still in the first bucket, p100 capped.
        assert!(quantile(&B, &[99, 0, 0, 1], 0.99).unwrap() <= 0.001);
        assert_eq!(quantile(&B, &[99, 0, 0, 1], 1.0), Some(0.1));
        assert_eq!(quantile(&B, &[0, 0, 0, 3], 0.5), Some(0.1));
        // A changed bucket layout (reload) restarts from a new baseline.
        let mut h = History::default();
        h.record(1, &B, &[1, 1, 1, 1]);
        h.record(2, &B[..2], &[2, 2, 2]);
        assert!(h.samples().is_empty());
    }
}
