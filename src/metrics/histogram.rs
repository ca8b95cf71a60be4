//! Fixed-bucket latency histograms recorded into per-thread shards and summed at scrape time.
//!
//! The per-statement, per-transaction and checkout-wait histograms are recorded several times
//! per transaction by every worker thread. The exporter's own histogram storage appends each
//! observation to one shared lock-free list (one contended cache line per histogram, drained
//! at scrape); here an observation is two relaxed `fetch_add`s on a line only the recording
//! thread writes.
//!
//! Invariants:
//! - Bucket bounds are the configured `metrics.buckets` (ascending, validated); a value `v`
//!   goes to the first bucket whose bound is `>= v` (Prometheus `le`), else to `+Inf`.
//! - A shard is allocated on its thread's first observation; a histogram nobody recorded into
//!   costs no shard memory and is not rendered.
//! - Counts only grow; `_count` is the sum of the buckets, so a scrape racing with writers is
//!   consistent within one shard and at most a few observations behind overall.
//! - The sum is kept in whole nanoseconds (values are durations in seconds).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::HistogramFn;

use crate::shard::{index as shard, SHARDS};

const PER_BLOCK: usize = 16;

/// 16 counters on their own pair of cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Block([AtomicU64; PER_BLOCK]);

/// One thread's counts: buckets (bounds + 1 for `+Inf`), then the sum in nanoseconds.
struct Shard(Box<[Block]>);

impl Shard {
    fn new(slots: usize) -> Shard {
        Shard(
            (0..slots.div_ceil(PER_BLOCK))
                .map(|_| Block::default())
                .collect(),
        )
    }
    #[inline]
    fn slot(&self, i: usize) -> &AtomicU64 {
        &self.0[i / PER_BLOCK].0[i % PER_BLOCK]
    }
}

pub struct ShardedHistogram {
    bounds: Arc<[f64]>,
    shards: [OnceLock<Shard>; SHARDS],
}

impl ShardedHistogram {
    pub fn new(bounds: Arc<[f64]>) -> ShardedHistogram {
        ShardedHistogram {
            bounds,
            shards: Default::default(),
        }
    }

    #[inline]
    pub fn observe(&self, seconds: f64) {
        let n = self.bounds.len();
        let bucket = self.bounds.partition_point(|b| *b < seconds);
        let s = self.shards[shard()].get_or_init(|| Shard::new(n + 2));
        s.slot(bucket).fetch_add(1, Ordering::Relaxed);
        let ns = (seconds.max(0.0) * 1e9) as u64;
        s.slot(n + 1).fetch_add(ns, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative; the last is `+Inf`) and the sum in nanoseconds.
    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        let n = self.bounds.len();
        let mut counts = vec![0u64; n + 1];
        let mut sum = 0u64;
        for s in self.shards.iter().filter_map(OnceLock::get) {
            for (i, c) in counts.iter_mut().enumerate() {
                *c += s.slot(i).load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(s.slot(n + 1).load(Ordering::Relaxed));
        }
        (counts, sum)
    }
}

impl HistogramFn for ShardedHistogram {
    fn record(&self, value: f64) {
        self.observe(value);
    }
}

/// Histograms by (name, rendered labels), rendered in Prometheus text format.
pub struct HistogramSet {
    bounds: Arc<[f64]>,
    series: Mutex<BTreeMap<(&'static str, String), Arc<ShardedHistogram>>>,
}

impl HistogramSet {
    pub fn new(bounds: &[f64]) -> HistogramSet {
        HistogramSet {
            bounds: bounds.into(),
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// The histogram `name{labels}`; the same one for the same name and labels.
    pub fn get(&self, name: &'static str, labels: &[(&str, &str)]) -> metrics::Histogram {
        let mut key = String::new();
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            let _ = write!(key, "{k}=\"{}\"", escape(v));
        }
        let h = self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((name, key))
            .or_insert_with(|| Arc::new(ShardedHistogram::new(self.bounds.clone())))
            .clone();
        metrics::Histogram::from_arc(h)
    }

    /// The bucket bounds (seconds, ascending; the `+Inf` bucket is implied).
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Per-bucket counts (not cumulative; the last is `+Inf`) summed over every series of
    /// `name`, whatever its labels.
    pub fn totals(&self, name: &str) -> Vec<u64> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = vec![0u64; self.bounds.len() + 1];
        for (_, h) in series.iter().filter(|((n, _), _)| *n == name) {
            for (o, c) in out.iter_mut().zip(h.snapshot().0) {
                *o += c;
            }
        }
        out
    }

    /// Every series with at least one observation; `help(name)` gives its HELP text.
    pub fn render(&self, out: &mut String, help: impl Fn(&str) -> &'static str) {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = "";
        for ((name, labels), h) in series.iter() {
            let (counts, sum_ns) = h.snapshot();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {}", help(name));
                let _ = writeln!(out, "# TYPE {name} histogram");
                last = name;
            }
            let sep = if labels.is_empty() { "" } else { "," };
            let mut cumulative = 0u64;
            for (i, c) in counts.iter().enumerate() {
                cumulative += c;
                match self.bounds.get(i) {
                    Some(b) => {
                        let _ =
                            writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
                        );
                    }
                }
            }
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum_ns as f64 / 1e9);
            let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
        }
        if !last.is_empty() {
            out.push('\n');
        }
    }
}

/// A label value in Prometheus text format.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_le_and_threads_add_up() {
        let set = Arc::new(HistogramSet::new(&[0.001, 0.01, 0.1]));
        let hs: Vec<_> = (0..6)
            .map(|_| {
                let set = set.clone();
                std::thread::spawn(move || {
                    let h = set.get("x_seconds", &[("db", "a\"b")]);
                    for v in [0.0005, 0.001, 0.002, 0.05, 3.0] {
                        h.record(v);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let _ = set.get("y_seconds", &[]); // never recorded: not rendered
        let mut out = String::new();
        set.render(&mut out, |_| "help");
        let expected = "# HELP x_seconds help\n# TYPE x_seconds histogram\n\
            x_seconds_bucket{db=\"a\\\"b\",le=\"0.001\"} 12\n\
            x_seconds_bucket{db=\"a\\\"b\",le=\"0.01\"} 18\n\
            x_seconds_bucket{db=\"a\\\"b\",le=\"0.1\"} 24\n\
            x_seconds_bucket{db=\"a\\\"b\",le=\"+Inf\"} 30\n\
            x_seconds_sum{db=\"a\\\"b\"} 18.321\n\
            x_seconds_count{db=\"a\\\"b\"} 30\n\n";
        assert_eq!(out, expected);
        // Totals add up every series of a name: 6 threads × (2, 1, 1, 1), plus one more.
        set.get("x_seconds", &[("db", "other")]).record(0.005);
        assert_eq!(set.totals("x_seconds"), vec![12, 7, 6, 6]);
        assert_eq!(set.totals("y_seconds"), vec![0; 4]);
    }
}
