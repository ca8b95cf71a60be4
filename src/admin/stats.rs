//! `SHOW STATS`, `SHOW STATS_TOTALS`, `SHOW STATS_AVERAGES` and `SHOW TOTALS`: PgBouncer's
//! figures per database (the sum over the database's pools: its own, its auth_query users',
//! its dedicated tenants'), all `numeric` as in PgBouncer. Times are microseconds.
//! Averages are those of the last completed `stats_period` (`crate::pool::averages`).

use std::collections::BTreeMap;

use super::{s, Table};
use crate::pool::averages::{Totals, NAMES};
use crate::proxy::Shared;

/// Per database: cumulative totals, and the difference over the last window with its length.
fn per_database(shared: &Shared) -> BTreeMap<String, (Totals, Totals, f64)> {
    let mut m: BTreeMap<String, (Totals, Totals, f64)> = BTreeMap::new();
    for p in shared.pools.iter() {
        let (delta, secs) = p.averages.lock().unwrap_or_else(|e| e.into_inner()).last;
        let e = m.entry(p.name().to_string()).or_default();
        e.0 = e.0.plus(Totals::of(&p.stats));
        e.1 = e.1.plus(delta);
        e.2 = e.2.max(secs);
    }
    m
}

pub fn stats(shared: &Shared) -> Table {
    let mut t = Table::new(
        "sNNNNNNNNNNNNNNNNNNNNNN",
        &[
            "database",
            "total_server_assignment_count",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "total_client_parse_count",
            "total_server_parse_count",
            "total_bind_count",
            "avg_server_assignment_count",
            "avg_xact_count",
            "avg_query_count",
            "avg_recv",
            "avg_sent",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time",
            "avg_client_parse_count",
            "avg_server_parse_count",
            "avg_bind_count",
        ],
    );
    for (db, (total, delta, secs)) in per_database(shared) {
        let mut row = vec![s(db)];
        row.extend(total.0.map(s));
        row.extend(delta.averages(secs).0.map(s));
        t.row(row);
    }
    t
}

fn one_per_database(shared: &Shared, averages: bool) -> Table {
    // PgBouncer prefixes only the last three figures with `avg_` in STATS_AVERAGES.
    const AVG_LAST: [&str; 3] = [
        "avg_client_parse_count",
        "avg_server_parse_count",
        "avg_bind_count",
    ];
    let mut names = vec!["database"];
    names.extend(NAMES.iter().enumerate().map(|(i, n)| match i {
        8.. if averages => AVG_LAST[i - 8],
        _ => *n,
    }));
    let mut t = Table::new("sNNNNNNNNNNN", &names);
    for (db, (total, delta, secs)) in per_database(shared) {
        let v = match averages {
            true => delta.averages(secs),
            false => total,
        };
        let mut row = vec![s(db)];
        row.extend(v.0.map(s));
        t.row(row);
    }
    t
}

pub fn totals(shared: &Shared) -> Table {
    one_per_database(shared, false)
}

pub fn averages(shared: &Shared) -> Table {
    one_per_database(shared, true)
}

/// `SHOW TOTALS`: the sums over all databases, then the averages, one row each.
pub fn grand_totals(shared: &Shared) -> Table {
    let mut t = Table::new("sN", &["name", "value"]);
    let (mut total, mut delta, mut secs) = (Totals::default(), Totals::default(), 0f64);
    for (_, (a, d, w)) in per_database(shared) {
        total = total.plus(a);
        delta = delta.plus(d);
        secs = secs.max(w);
    }
    for (prefix, v) in [("total_", total), ("avg_", delta.averages(secs))] {
        for (name, n) in NAMES.iter().zip(v.0) {
            t.row(vec![s(format!("{prefix}{name}")), s(n)]);
        }
    }
    t
}
