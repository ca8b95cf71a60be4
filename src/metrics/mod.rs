//! Prometheus metrics through the `metrics` facade.
//!
//! Invariants:
//! - Per-statement recording goes through pre-registered handles ([`LabelSet`]), cached per
//!   (database, tenant label): no label strings are built per query.
//! - The tenant label is bounded: the first `tenant_label_cap` tenants seen get their own
//!   label, the rest share `tenant="other"`.
//! - Command labels come from a fixed set ([`Command`]).
//! - The three per-transaction histograms (statement, transaction, checkout wait) live in
//!   [`histogram::HistogramSet`] (per-thread shards) and are appended to the exporter's text
//!   at scrape time; everything else goes through the exporter.

pub mod histogram;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::MetricsSettings;

/// Statement kinds used as the `command` label (from CommandComplete tags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy,
    Begin,
    Commit,
    Rollback,
    Set,
    Ddl,
    Other,
}

pub const COMMANDS: [Command; 12] = [
    Command::Select,
    Command::Insert,
    Command::Update,
    Command::Delete,
    Command::Merge,
    Command::Copy,
    Command::Begin,
    Command::Commit,
    Command::Rollback,
    Command::Set,
    Command::Ddl,
    Command::Other,
];

impl Command {
    pub fn label(self) -> &'static str {
        match self {
            Command::Select => "SELECT",
            Command::Insert => "INSERT",
            Command::Update => "UPDATE",
            Command::Delete => "DELETE",
            Command::Merge => "MERGE",
            Command::Copy => "COPY",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Rollback => "ROLLBACK",
            Command::Set => "SET",
            Command::Ddl => "DDL",
            Command::Other => "OTHER",
        }
    }
    /// From a CommandComplete tag ("SELECT 1", "INSERT 0 5", "CREATE TABLE", …).
    pub fn from_tag(tag: &[u8]) -> Command {
        let word = tag.split(|&b| b == b' ').next().unwrap_or(b"");
        match word {
            b"SELECT" | b"FETCH" | b"SHOW" => Command::Select,
            b"INSERT" => Command::Insert,
            b"UPDATE" => Command::Update,
            b"DELETE" => Command::Delete,
            b"MERGE" => Command::Merge,
            b"COPY" => Command::Copy,
            b"BEGIN" | b"START" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ROLLBACK" => Command::Rollback,
            b"SET" | b"RESET" => Command::Set,
            b"CREATE" | b"ALTER" | b"DROP" | b"TRUNCATE" | b"COMMENT" | b"GRANT" | b"REVOKE" => {
                Command::Ddl
            }
            _ => Command::Other,
        }
    }
    /// The command a statement's text starts with: the label of a statement that failed (no
    /// command tag). `WITH …` and anything unknown are `Other`.
    pub fn of_sql(sql: &[u8]) -> Command {
        let word = crate::sql::classify::first_word(sql);
        let mut upper = [0u8; 16];
        if word.len() > upper.len() {
            return Command::Other;
        }
        for (u, b) in upper.iter_mut().zip(word) {
            *u = b.to_ascii_uppercase();
        }
        match &upper[..word.len()] {
            b"END" => Command::Commit,
            b"ABORT" => Command::Rollback,
            b"VALUES" | b"TABLE" => Command::Select,
            b"WITH" => Command::Other,
            w => Command::from_tag(w),
        }
    }
    fn index(self) -> usize {
        COMMANDS
            .iter()
            .position(|c| *c == self)
            .unwrap_or(COMMANDS.len() - 1)
    }
}

/// Pre-registered handles for one (database, tenant label).
pub struct LabelSet {
    statement: Vec<Histogram>,
    pub transaction: Histogram,
    /// `pgward_tenant_checkout_wait_seconds` (tenants only; a no-op for plain clients).
    pub checkout_wait: Histogram,
    pub tenant: Arc<str>,
}

impl LabelSet {
    #[inline]
    pub fn statement(&self, cmd: Command, d: Duration) {
        self.statement[cmd.index()].record(d.as_secs_f64());
    }
}

struct Registry {
    handle: PrometheusHandle,
    hot: histogram::HistogramSet,
    sets: DashMap<(Arc<str>, Arc<str>), Arc<LabelSet>>,
    tenants_labelled: DashMap<Arc<str>, ()>,
    cap: AtomicUsize,
    errors: DashMap<[u8; 2], Counter>,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// Install the recorder (once per process); later calls return the same handle.
pub fn install(cfg: &MetricsSettings) -> PrometheusHandle {
    let r = REGISTRY.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &cfg.buckets)
            .expect("bucket list validated in config");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // A second install in the same process (tests) keeps the first recorder.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        Registry {
            handle,
            hot: histogram::HistogramSet::new(&cfg.buckets),
            sets: DashMap::new(),
            tenants_labelled: DashMap::new(),
            cap: AtomicUsize::new(cfg.tenant_label_cap),
            errors: DashMap::new(),
        }
    });
    r.cap.store(cfg.tenant_label_cap, Ordering::Relaxed);
    r.handle.clone()
}

/// HELP text of the histograms in [`histogram::HistogramSet`].
fn hot_help(name: &str) -> &'static str {
    match name {
        QUERY => "Statement duration at the proxy, first byte forwarded to completion",
        TRANSACTION => "Server connection hold time per transaction",
        CHECKOUT_WAIT => "Time a client waited for a server connection",
        TENANT_CHECKOUT_WAIT => "Time a tenant's client waited for a server connection",
        _ => "",
    }
}

const QUERY: &str = "pgward_query_duration_seconds";
const TRANSACTION: &str = "pgward_transaction_duration_seconds";
const CHECKOUT_WAIT: &str = "pgward_checkout_wait_seconds";
const TENANT_CHECKOUT_WAIT: &str = "pgward_tenant_checkout_wait_seconds";

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        "pgward_server_connect_seconds",
        Unit::Seconds,
        "Time to open and authenticate a server connection"
    );
    describe_gauge!("pgward_client_connections", "Client connections by state");
    describe_gauge!("pgward_server_connections", "Server connections by state");
    describe_gauge!(
        "pgward_tenant_clients_waiting",
        "Clients of a tenant waiting for a server connection"
    );
    describe_gauge!(
        "pgward_tenant_server_connections",
        "Server connections a tenant's clients hold"
    );
    describe_counter!(
        "pgward_tenant_refusals_total",
        "Clients of a tenant refused by one of its limits, by reason"
    );
    describe_counter!(
        "pgward_errors_total",
        "ErrorResponses sent to clients, by SQLSTATE class"
    );
    describe_counter!(
        "pgward_session_resets_total",
        "Session state reset or pinned, by kind"
    );
    describe_counter!(
        "pgward_timeouts_total",
        "Bounds on waiting that fired, by kind (query, idle_transaction, connect, login)"
    );
    describe_counter!(
        "pgward_txn_model_misses_total",
        "Answers from PostgreSQL that contradicted pgward's model of where its transaction boundaries are (expected: 0)"
    );
    describe_counter!(
        "pgward_rejected_statements_total",
        "Statements refused by the proxy, by reason"
    );
    describe_counter!(
        "pgward_bytes_total",
        "Bytes relayed to and from clients, by database and direction"
    );
    describe_counter!(
        "pgward_prepared_statements_issued_total",
        "Parse messages the proxy sent to prepare a shared statement on a server connection"
    );
    describe_counter!(
        "pgward_prepared_statement_cache_hits_total",
        "Client Parse/Bind/Describe of a named statement already prepared on the server connection"
    );
    describe_gauge!(
        "pgward_server_prepared_statements",
        "Prepared statements on idle server connections (stat = max | total)"
    );
}

/// Handles for a client of `database` in `tenant` (None: no tenant).
pub fn labels(database: &str, tenant: Option<&str>) -> Arc<LabelSet> {
    let Some(r) = REGISTRY.get() else {
        return Arc::new(noop_set());
    };
    let tenant_label: Arc<str> = match tenant {
        None => "".into(),
        Some(t) => tenant_label(r, t),
    };
    let key = (Arc::<str>::from(database), tenant_label.clone());
    if let Some(s) = r.sets.get(&key) {
        return s.clone();
    }
    let labels = [("database", database), ("tenant", &*tenant_label)];
    let set = Arc::new(LabelSet {
        statement: COMMANDS
            .iter()
            .map(|c| {
                r.hot
                    .get(QUERY, &[labels[0], labels[1], ("command", c.label())])
            })
            .collect(),
        transaction: r.hot.get(TRANSACTION, &labels),
        checkout_wait: match tenant {
            Some(_) => r.hot.get(TENANT_CHECKOUT_WAIT, &labels),
            None => Histogram::noop(),
        },
        tenant: tenant_label.clone(),
    });
    r.sets.entry(key).or_insert(set).clone()
}

/// `tenant` as a label value: itself while fewer than `tenant_label_cap` tenants are
/// labelled, else "other".
fn tenant_label(r: &Registry, tenant: &str) -> Arc<str> {
    let known = r.tenants_labelled.contains_key(tenant);
    if known || r.tenants_labelled.len() < r.cap.load(Ordering::Relaxed) {
        if !known {
            r.tenants_labelled.insert(tenant.into(), ());
        }
        tenant.into()
    } else {
        "other".into()
    }
}

/// A tenant's client was refused by one of its limits (`reason`: the limit's key).
pub fn tenant_refusal(tenant: &str, reason: &'static str) {
    if let Some(r) = REGISTRY.get() {
        counter!("pgward_tenant_refusals_total", "tenant" => tenant_label(r, tenant).to_string(), "reason" => reason)
            .increment(1);
    }
}

fn noop_set() -> LabelSet {
    LabelSet {
        statement: COMMANDS.iter().map(|_| Histogram::noop()).collect(),
        transaction: Histogram::noop(),
        checkout_wait: Histogram::noop(),
        tenant: "".into(),
    }
}

pub fn render() -> String {
    match REGISTRY.get() {
        Some(r) => {
            r.handle.run_upkeep();
            let mut out = r.handle.render();
            r.hot.render(&mut out, hot_help);
            out
        }
        None => String::new(),
    }
}

pub fn upkeep() {
    if let Some(r) = REGISTRY.get() {
        r.handle.run_upkeep();
    }
}

/// The checkout-wait histogram of one pool (recorded on every checkout: kept as a handle).
pub fn checkout_wait(database: &str) -> Histogram {
    match REGISTRY.get() {
        Some(r) => r.hot.get(CHECKOUT_WAIT, &[("database", database)]),
        None => Histogram::noop(),
    }
}

pub fn server_connect(database: &str, d: Duration) {
    histogram!("pgward_server_connect_seconds", "database" => database.to_string())
        .record(d.as_secs_f64());
}

/// Errors sent to clients by SQLSTATE class, readable back (the exporter's counters are
/// not): the status page's table. Counted whether or not the exporter is installed; at most
/// one entry per two-byte class.
fn error_table() -> &'static DashMap<[u8; 2], AtomicU64> {
    static T: OnceLock<DashMap<[u8; 2], AtomicU64>> = OnceLock::new();
    T.get_or_init(DashMap::new)
}

/// (SQLSTATE class, ErrorResponses sent to clients) since the process started, by class.
pub fn error_counts() -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = error_table()
        .iter()
        .map(|e| {
            (
                String::from_utf8_lossy(e.key()).into_owned(),
                e.value().load(Ordering::Relaxed),
            )
        })
        .collect();
    v.sort();
    v
}

/// The statement-duration histogram summed over databases, tenants and commands: the bucket
/// bounds (seconds) and per-bucket counts (the last is `+Inf`). None without the exporter.
pub fn statement_latency() -> Option<(Vec<f64>, Vec<u64>)> {
    let r = REGISTRY.get()?;
    Some((r.hot.bounds().to_vec(), r.hot.totals(QUERY)))
}

/// An ErrorResponse went to a client; `code` is its SQLSTATE.
pub fn error(code: &[u8]) {
    let class = [
        code.first().copied().unwrap_or(b'?'),
        code.get(1).copied().unwrap_or(b'?'),
    ];
    error_table()
        .entry(class)
        .or_default()
        .fetch_add(1, Ordering::Relaxed);
    if let Some(r) = REGISTRY.get() {
        let c = r
            .errors
            .entry(class)
            .or_insert_with(|| {
                counter!("pgward_errors_total", "sqlstate_class" => String::from_utf8_lossy(&class).into_owned())
            })
            .clone();
        c.increment(1);
    }
}

/// Prepared-statement events (transaction mode): a Parse the proxy sent to a server
/// connection, or a statement that was already there.
pub fn prepared(hit: bool) {
    static HANDLES: OnceLock<(Counter, Counter)> = OnceLock::new();
    let (issued, hits) = HANDLES.get_or_init(|| {
        (
            counter!("pgward_prepared_statements_issued_total"),
            counter!("pgward_prepared_statement_cache_hits_total"),
        )
    });
    if hit {
        hits.increment(1);
    } else {
        issued.increment(1);
    }
}

pub fn session_reset(kind: &'static str) {
    counter!("pgward_session_resets_total", "kind" => kind).increment(1);
}

/// The server contradicted the transaction model (`server::txn`); the model fell back to
/// assuming no tenant context. Expected to stay 0: a non-zero value is a bug to report.
pub fn txn_model_miss() {
    counter!("pgward_txn_model_misses_total").increment(1);
}

/// A bound on waiting fired: `query`, `idle_transaction`, `connect`, `login`.
/// A pool's connections moved to another upstream host (failover, switchover).
pub fn upstream_switch(database: &str) {
    counter!("pgward_upstream_switches_total", "database" => database.to_string()).increment(1);
}

/// The upstream host a pool's newest connection reached: 1 for it, 0 for the one before.
pub fn upstream_host(database: &str, host: &str, current: bool) {
    gauge!("pgward_upstream_current", "database" => database.to_string(), "host" => host.to_string())
        .set(if current { 1.0 } else { 0.0 });
}

pub fn timeout(kind: &'static str) {
    counter!("pgward_timeouts_total", "kind" => kind).increment(1);
}

pub fn rejected(reason: &'static str) {
    counter!("pgward_rejected_statements_total", "reason" => reason).increment(1);
}

/// Per tenant of one pool: clients waiting for a server connection, and server connections
/// held (`shares`: tenant, waiting, held). Tenants no longer listed are set to zero.
pub fn set_tenant_share_gauges(database: &str, shares: &[(Arc<str>, usize, usize)]) {
    type Seen = std::sync::Mutex<HashSet<(String, Arc<str>)>>;
    static SEEN: OnceLock<Seen> = OnceLock::new();
    let Some(r) = REGISTRY.get() else {
        return;
    };
    let mut now: HashMap<Arc<str>, (usize, usize)> = HashMap::new();
    for (tenant, waiting, held) in shares {
        let e = now.entry(tenant_label(r, tenant)).or_default();
        e.0 += waiting;
        e.1 += held;
    }
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let gone: Vec<(String, Arc<str>)> = seen
        .iter()
        .filter(|(db, t)| db == database && !now.contains_key(t))
        .cloned()
        .collect();
    for k in gone {
        seen.remove(&k);
        now.insert(k.1, (0, 0));
    }
    for (tenant, (waiting, held)) in now {
        let (db, t) = (database.to_string(), tenant.to_string());
        gauge!("pgward_tenant_clients_waiting", "database" => db.clone(), "tenant" => t.clone())
            .set(waiting as f64);
        gauge!("pgward_tenant_server_connections", "database" => db.clone(), "tenant" => t)
            .set(held as f64);
        if waiting + held > 0 {
            seen.insert((db, tenant));
        }
    }
}

pub fn set_connection_gauges(
    database: &str,
    client_active: f64,
    client_idle: f64,
    client_waiting: f64,
    server_active: f64,
    server_idle: f64,
) {
    let db = database.to_string();
    gauge!("pgward_client_connections", "database" => db.clone(), "state" => "active")
        .set(client_active);
    gauge!("pgward_client_connections", "database" => db.clone(), "state" => "idle")
        .set(client_idle);
    gauge!("pgward_client_connections", "database" => db.clone(), "state" => "waiting")
        .set(client_waiting);
    gauge!("pgward_server_connections", "database" => db.clone(), "state" => "active")
        .set(server_active);
    gauge!("pgward_server_connections", "database" => db, "state" => "idle").set(server_idle);
}

#[cfg(test)]
mod tests {
    use super::Command;

    #[test]
    fn command_of_a_statement_text() {
        for (sql, want) in [
            ("SELECT 1/0", Command::Select),
            ("  /* c */ -- x\n select 1", Command::Select),
            ("((SELECT 1))", Command::Select),
            ("VALUES (1)", Command::Select),
            ("table t", Command::Select),
            ("Insert into t values (1)", Command::Insert),
            ("UPDATE t SET x = 1", Command::Update),
            ("delete from t", Command::Delete),
            ("COPY t FROM STDIN", Command::Copy),
            ("start transaction", Command::Begin),
            ("end", Command::Commit),
            ("abort", Command::Rollback),
            ("SET x = 1", Command::Set),
            ("CREATE TABLE t (x int)", Command::Ddl),
            (
                "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
                Command::Other,
            ),
            ("EXPLAIN SELECT 1", Command::Other),
            ("", Command::Other),
            ("'literal'", Command::Other),
            ("averyveryverylongidentifier", Command::Other),
        ] {
            assert_eq!(Command::of_sql(sql.as_bytes()), want, "{sql}");
        }
    }
}
