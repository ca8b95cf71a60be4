//! Per-query-shape statistics (`SHOW QUERIES`) and the slow-statement log.
//!
//! A statement's shape is its normalised text (`sql::normalize`: literals replaced by `?`,
//! never parameter values). Per (tenant, shape) the proxy keeps calls, total time and a
//! log-scale latency histogram (p50/p99 to within a factor of √2). Memory is bounded: at most
//! `MAX_SHAPES` shapes are tracked; statements of further shapes are counted in
//! `pgward_query_shapes_dropped_total` only.
//!
//! Both are off unless configured (`metrics.query_stats`, `metrics.slow_statement_threshold`),
//! because normalising every simple Query costs about a microsecond.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;

use crate::server::prepared::StatementDef;

pub const MAX_SHAPES: usize = 5_000;
const MAX_TEXT: usize = 1_000;
const BUCKETS: usize = 32;

/// The text of a statement in flight.
#[derive(Clone, Debug)]
pub enum QueryText {
    Raw(Bytes),
    Prepared(Arc<StatementDef>),
}

impl QueryText {
    fn shape(&self) -> Arc<str> {
        match self {
            QueryText::Raw(b) => crate::sql::normalize::normalize(b, MAX_TEXT).into(),
            QueryText::Prepared(d) => d
                .shape
                .get_or_init(|| crate::sql::normalize::normalize(d.query(), MAX_TEXT).into())
                .clone(),
        }
    }
}

#[derive(Default)]
struct Shape {
    calls: u64,
    total_ns: u64,
    /// bucket i counts durations in [2^(i/2) µs, 2^((i+1)/2) µs)
    hist: [u32; BUCKETS],
}

fn bucket(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us < 1.0 {
        return 0;
    }
    ((us.log2() * 2.0) as usize + 1).min(BUCKETS - 1)
}

fn bucket_upper(i: usize) -> f64 {
    // upper bound in ms
    2f64.powf(i as f64 / 2.0) / 1000.0
}

#[derive(Default)]
pub struct QueryStats {
    shapes: DashMap<(Arc<str>, Arc<str>), Mutex<Shape>>,
    dropped: AtomicU64,
}

pub fn global() -> &'static QueryStats {
    static S: OnceLock<QueryStats> = OnceLock::new();
    S.get_or_init(QueryStats::default)
}

impl QueryStats {
    pub fn record(&self, tenant: &Arc<str>, shape: Arc<str>, d: Duration) {
        let key = (tenant.clone(), shape);
        if !self.shapes.contains_key(&key) && self.shapes.len() >= MAX_SHAPES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("pgward_query_shapes_dropped_total").increment(1);
            return;
        }
        let entry = self.shapes.entry(key).or_default();
        let mut s = entry.lock().unwrap_or_else(|e| e.into_inner());
        s.calls += 1;
        s.total_ns += d.as_nanos() as u64;
        s.hist[bucket(d)] += 1;
    }

    /// Every tracked shape with its figures, unordered.
    pub fn shapes(&self) -> Vec<ShapeFigures> {
        self.shapes
            .iter()
            .map(|e| {
                let s = e.value().lock().unwrap_or_else(|e| e.into_inner());
                let q = |p: f64| {
                    let target = (s.calls as f64 * p).ceil().max(1.0) as u64;
                    let mut seen = 0u64;
                    for (i, n) in s.hist.iter().enumerate() {
                        seen += *n as u64;
                        if seen >= target {
                            return bucket_upper(i);
                        }
                    }
                    bucket_upper(BUCKETS - 1)
                };
                ShapeFigures {
                    tenant: e.key().0.clone(),
                    shape: e.key().1.clone(),
                    calls: s.calls,
                    total_ms: s.total_ns as f64 / 1e6,
                    p50_ms: q(0.5),
                    p99_ms: q(0.99),
                }
            })
            .collect()
    }

    /// The `n` shapes with the most total time, over all tenants (the status page).
    pub fn top_overall(&self, n: usize) -> Vec<ShapeFigures> {
        let mut all = self.shapes();
        all.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        all.truncate(n);
        all
    }

    /// Rows for SHOW QUERIES: per tenant, the `top` shapes by total time.
    pub fn top(&self, top: usize) -> Vec<[String; 7]> {
        let mut all = self.shapes();
        all.sort_by(|a, b| {
            a.tenant
                .cmp(&b.tenant)
                .then(b.total_ms.total_cmp(&a.total_ms))
        });
        let mut out = Vec::new();
        let mut last: Option<Arc<str>> = None;
        let mut n = 0;
        for f in all {
            if last.as_ref() != Some(&f.tenant) {
                last = Some(f.tenant.clone());
                n = 0;
            }
            n += 1;
            if n > top {
                continue;
            }
            out.push([
                f.tenant.to_string(),
                f.shape.to_string(),
                f.calls.to_string(),
                format!("{:.3}", f.total_ms),
                format!("{:.3}", f.mean_ms()),
                format!("{:.3}", f.p50_ms),
                format!("{:.3}", f.p99_ms),
            ]);
        }
        out
    }
}

/// One query shape of one tenant ("" for clients without a tenant).
#[derive(Clone, Debug)]
pub struct ShapeFigures {
    pub tenant: Arc<str>,
    pub shape: Arc<str>,
    pub calls: u64,
    pub total_ms: f64,
    /// Upper bounds of the log-scale buckets (within a factor of √2).
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl ShapeFigures {
    pub fn mean_ms(&self) -> f64 {
        self.total_ms / self.calls.max(1) as f64
    }
}

/// A statement completed: feed the statistics and the slow log, as configured.
#[allow(clippy::too_many_arguments)]
pub fn completed(
    stats_on: bool,
    slow: Option<Duration>,
    database: &str,
    tenant: &Arc<str>,
    user: &str,
    command: crate::metrics::Command,
    text: &QueryText,
    d: Duration,
) {
    let is_slow = slow.is_some_and(|t| d >= t);
    if !stats_on && !is_slow {
        return;
    }
    let shape = text.shape();
    if is_slow && slow_log_allowed() {
        tracing::warn!(
            target: "pgward::slow",
            database,
            tenant = %tenant,
            user,
            command = command.label(),
            duration_ms = d.as_secs_f64() * 1000.0,
            query = %shape,
            "slow statement"
        );
    }
    if stats_on {
        global().record(tenant, shape, d);
    }
}

/// At most 20 slow-statement lines per second, process-wide.
fn slow_log_allowed() -> bool {
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if WINDOW.swap(now, Ordering::Relaxed) != now {
        COUNT.store(0, Ordering::Relaxed);
    }
    COUNT.fetch_add(1, Ordering::Relaxed) < 20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_shapes_and_quantiles() {
        let s = QueryStats::default();
        let t: Arc<str> = "acme".into();
        for i in 0..100u64 {
            s.record(&t, "SELECT ?".into(), Duration::from_micros(100 + i));
        }
        s.record(&t, "UPDATE t SET x = ?".into(), Duration::from_millis(50));
        let rows = s.top(10);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][1], "UPDATE t SET x = ?");
        assert_eq!(rows[1][2], "100");
        let p50: f64 = rows[1][5].parse().unwrap();
        assert!((0.1..0.3).contains(&p50), "{p50}");
        assert_eq!(s.top(1).len(), 1);
        let top = s.top_overall(1);
        assert_eq!(top.len(), 1);
        assert_eq!(&*top[0].shape, "UPDATE t SET x = ?");
    }
}
