//! The status page for people: `GET /` on `http_listen` is one self-contained HTML page
//! (`page.html`: inline CSS and JS, no external URL) that fetches `GET /status.json` every
//! two seconds and draws it.
//!
//! Invariants:
//! - The figures come from the code paths the admin console uses (`SHOW POOLS`, `SHOW
//!   TENANTS`: `crate::admin::pool_figures`, `crate::admin::tenant_load`; `SHOW QUERIES`:
//!   `crate::querystats`), so the page and the console cannot disagree.
//! - No secret reaches the snapshot: no password, no upstream URL; databases, login role
//!   names, tenant ids, query shapes (literals replaced by `?`) and error texts only.
//! - Everything in the snapshot is bounded by configuration (pools, tenants) or by a
//!   constant (history samples, query shapes, SQLSTATE classes).
//! - The page inserts text with `textContent` only; nothing from the snapshot is parsed as
//!   HTML.

pub mod history;

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::proxy::Shared;

/// The page (`GET /`).
pub const PAGE: &str = include_str!("page.html");

/// Query shapes shown on the page.
pub const TOP_SHAPES: usize = 10;

#[derive(Serialize)]
pub struct Snapshot {
    pub version: &'static str,
    /// When the snapshot was taken, ms since the Unix epoch.
    pub now_ms: u64,
    pub uptime_s: u64,
    pub ready: bool,
    /// Why `/ready` answers 503, if it does.
    pub ready_reason: Option<String>,
    pub clients: usize,
    pub pools: Vec<PoolRow>,
    pub tenants: Vec<TenantRow>,
    pub latency: Latency,
    pub errors: Vec<ErrorRow>,
    pub queries: Queries,
    pub warnings: Vec<Warning>,
}

/// One `SHOW POOLS` row (same names), plus the pool's size and mean wait.
#[derive(Serialize)]
pub struct PoolRow {
    pub database: String,
    pub user: String,
    pub tenant: Option<String>,
    pub cl_active: usize,
    pub cl_waiting: usize,
    pub sv_active: usize,
    pub sv_idle: usize,
    pub sv_login: usize,
    pub maxwait_us: u64,
    pub avg_wait_us: u64,
    pub size: usize,
    pub pool_mode: &'static str,
    pub paused: bool,
}

/// One `SHOW TENANTS` row's load figures (same names).
#[derive(Serialize)]
pub struct TenantRow {
    pub tenant: String,
    pub database: String,
    pub clients: usize,
    pub waiting: usize,
    pub server_connections: usize,
}

#[derive(Serialize)]
pub struct Latency {
    /// False without the metrics exporter (`metrics.enabled = false`).
    pub available: bool,
    pub interval_s: u64,
    pub samples: Vec<history::Sample>,
}

#[derive(Serialize)]
pub struct ErrorRow {
    pub class: String,
    pub name: &'static str,
    pub count: u64,
}

#[derive(Serialize)]
pub struct Queries {
    /// `metrics.query_stats`: without it no shape is tracked.
    pub enabled: bool,
    pub top: Vec<QueryRow>,
}

#[derive(Serialize)]
pub struct QueryRow {
    pub tenant: String,
    pub query: String,
    pub calls: u64,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Warning {
    /// `role_check` (T5 finding), `role_check_failed`, `server_error`, `paused`,
    /// `disabled`, `shutting_down`.
    pub kind: &'static str,
    /// The database (or `database/tenant`) it is about; empty for the process.
    pub subject: String,
    pub message: String,
}

pub fn snapshot(shared: &Shared) -> Snapshot {
    let cfg = shared.config();
    let ready = crate::http::readiness(shared);
    Snapshot {
        version: crate::VERSION_STRING,
        now_ms: crate::pool::now_ms(),
        uptime_s: shared.started.elapsed().as_secs(),
        ready: ready.is_ok(),
        ready_reason: ready.err(),
        clients: shared.clients.len(),
        pools: pools(shared),
        tenants: tenants(shared),
        latency: Latency {
            available: crate::metrics::statement_latency().is_some(),
            interval_s: history::INTERVAL.as_secs(),
            samples: history::global()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .samples(),
        },
        errors: crate::metrics::error_counts()
            .into_iter()
            .map(|(class, count)| ErrorRow {
                name: class_name(&class),
                class,
                count,
            })
            .collect(),
        queries: Queries {
            enabled: cfg.metrics.query_stats,
            top: crate::querystats::global()
                .top_overall(TOP_SHAPES)
                .into_iter()
                .map(|f| QueryRow {
                    mean_ms: f.mean_ms(),
                    tenant: f.tenant.to_string(),
                    query: f.shape.to_string(),
                    calls: f.calls,
                    total_ms: f.total_ms,
                    p50_ms: f.p50_ms,
                    p99_ms: f.p99_ms,
                })
                .collect(),
        },
        warnings: warnings(shared),
    }
}

/// The snapshot as JSON (`GET /status.json`).
pub fn json(shared: &Shared) -> String {
    serde_json::to_string(&snapshot(shared)).unwrap_or_else(|_| "{}".into())
}

fn pools(shared: &Shared) -> Vec<PoolRow> {
    let mut rows: Vec<PoolRow> = crate::admin::pool_figures(shared)
        .into_iter()
        .map(|p| PoolRow {
            database: p.database,
            user: p.user,
            tenant: p.tenant,
            cl_active: p.cl_active,
            cl_waiting: p.cl_waiting,
            sv_active: p.sv_active,
            sv_idle: p.sv_idle,
            sv_login: p.sv_login,
            maxwait_us: p.maxwait_us,
            avg_wait_us: p.avg_wait_us,
            size: p.size,
            pool_mode: p.mode,
            paused: p.paused,
        })
        .collect();
    rows.sort_by(|a, b| (&a.database, &a.tenant, &a.user).cmp(&(&b.database, &b.tenant, &b.user)));
    rows
}

fn tenants(shared: &Shared) -> Vec<TenantRow> {
    shared
        .tenants
        .load()
        .sorted()
        .iter()
        .map(|t| {
            let (clients, waiting, server_connections) = crate::admin::tenant_load(shared, t);
            TenantRow {
                tenant: t.id.clone(),
                database: t.database.clone(),
                clients,
                waiting,
                server_connections,
            }
        })
        .collect()
}

/// What an operator should know: T5 findings, pools whose last connection attempt failed,
/// paused and disabled databases, a shutdown in progress.
fn warnings(shared: &Shared) -> Vec<Warning> {
    use crate::tenancy::posture::Posture;
    let mut w = Vec::new();
    if shared.shutting_down.load(Ordering::Acquire) {
        w.push(Warning {
            kind: "shutting_down",
            subject: String::new(),
            message: "shutting down: new clients are refused".into(),
        });
    }
    for (key, p) in shared.postures.all() {
        match &p {
            Posture::Unsafe { .. } => w.push(Warning {
                kind: "role_check",
                subject: key,
                message: format!(
                    "statements without their tenant context would run as {}",
                    p.summary()
                ),
            }),
            Posture::Unchecked(_) => w.push(Warning {
                kind: "role_check_failed",
                subject: key,
                message: format!("role check: {}", p.summary()),
            }),
            Posture::Safe { .. } => {}
        }
    }
    let mut pools: Vec<_> = shared.pools.iter().map(|p| p.clone()).collect();
    pools.sort_by(|a, b| a.key.cmp(&b.key));
    for p in &pools {
        let subject = match &p.dedicated_tenant {
            Some(t) => format!("{}/{t}", p.name()),
            None => p.name().to_string(),
        };
        let failed = p.last_error_ms.load(Ordering::Relaxed);
        if failed > 0 && failed >= p.last_ok_ms.load(Ordering::Relaxed) {
            let why = p
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            w.push(Warning {
                kind: "server_error",
                subject: subject.clone(),
                message: format!("last server connection attempt failed: {why}"),
            });
        }
        if p.is_paused() {
            w.push(Warning {
                kind: "paused",
                subject,
                message: "paused (PAUSE): clients wait until RESUME".into(),
            });
        }
    }
    let mut disabled: Vec<String> = shared
        .disabled
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    disabled.sort();
    for d in disabled {
        w.push(Warning {
            kind: "disabled",
            subject: d,
            message: "disabled (DISABLE): new clients are refused until ENABLE".into(),
        });
    }
    w
}

/// PostgreSQL's name of a SQLSTATE class (Appendix A of its documentation), or "".
pub fn class_name(class: &str) -> &'static str {
    match class {
        "00" => "successful completion",
        "01" => "warning",
        "02" => "no data",
        "03" => "SQL statement not yet complete",
        "08" => "connection exception",
        "09" => "triggered action exception",
        "0A" => "feature not supported",
        "0B" => "invalid transaction initiation",
        "0F" => "locator exception",
        "0L" => "invalid grantor",
        "0P" => "invalid role specification",
        "0Z" => "diagnostics exception",
        "20" => "case not found",
        "21" => "cardinality violation",
        "22" => "data exception",
        "23" => "integrity constraint violation",
        "24" => "invalid cursor state",
        "25" => "invalid transaction state",
        "26" => "invalid SQL statement name",
        "27" => "triggered data change violation",
        "28" => "invalid authorization specification",
        "2B" => "dependent privilege descriptors still exist",
        "2D" => "invalid transaction termination",
        "2F" => "SQL routine exception",
        "34" => "invalid cursor name",
        "38" => "external routine exception",
        "39" => "external routine invocation exception",
        "3B" => "savepoint exception",
        "3D" => "invalid catalog name",
        "3F" => "invalid schema name",
        "40" => "transaction rollback",
        "42" => "syntax error or access rule violation",
        "44" => "WITH CHECK OPTION violation",
        "53" => "insufficient resources",
        "54" => "program limit exceeded",
        "55" => "object not in prerequisite state",
        "57" => "operator intervention",
        "58" => "system error",
        "72" => "snapshot failure",
        "F0" => "configuration file error",
        "HV" => "foreign data wrapper error",
        "P0" => "PL/pgSQL error",
        "XX" => "internal error",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names() {
        assert_eq!(class_name("22"), "data exception");
        assert_eq!(class_name("42"), "syntax error or access rule violation");
        assert_eq!(class_name("zz"), "");
    }

    const CONFIG: &str = r#"
listen = "127.0.0.1:0"
[[databases]]
name = "app"
upstream = "postgres://pgward:hunter2-secret@127.0.0.1:1/app"
[[databases]]
name = "reports"
upstream = "postgres://reporter:other-secret@127.0.0.1:1/reports"
[[users]]
name = "app_user"
password = "user-secret"
[[tenants]]
id = "acme"
database = "app"
[[tenants]]
id = "globex"
database = "app"
"#;

    #[tokio::test]
    async fn snapshot_json_has_every_section_and_no_secret() {
        let cfg = crate::config::Config::from_toml(CONFIG, std::path::Path::new("t.toml")).unwrap();
        let shared = crate::proxy::Shared::new(cfg).unwrap();
        shared.disabled.lock().unwrap().insert("reports".into());
        shared.pool("app").unwrap().pause();
        crate::metrics::error(b"22012");
        let text = json(&shared);
        for secret in [
            "hunter2-secret",
            "other-secret",
            "user-secret",
            "postgres://",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let pools = v["pools"].as_array().unwrap();
        assert_eq!(pools.len(), 2, "{text}");
        assert_eq!(pools[0]["database"], "app");
        assert_eq!(pools[0]["user"], "pgward");
        assert_eq!(pools[0]["paused"], true);
        for col in [
            "cl_active",
            "cl_waiting",
            "sv_active",
            "sv_idle",
            "sv_login",
            "maxwait_us",
            "avg_wait_us",
        ] {
            assert_eq!(pools[0][col], 0, "{col}");
        }
        assert_eq!(pools[1]["database"], "reports");
        let tenants: Vec<&str> = v["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tenant"].as_str().unwrap())
            .collect();
        assert_eq!(tenants, ["acme", "globex"]);
        assert!(v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["class"] == "22" && e["name"] == "data exception" && e["count"] != 0));
        assert_eq!(v["queries"]["enabled"], false);
        assert_eq!(v["latency"]["interval_s"], 5);
        assert!(v["latency"]["samples"].is_array());
        let kinds: Vec<(&str, &str)> = v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["kind"].as_str().unwrap(), w["subject"].as_str().unwrap()))
            .collect();
        // The pools' maintenance may already have failed to reach the (absent) upstream.
        let kinds: Vec<_> = kinds
            .into_iter()
            .filter(|k| k.0 != "server_error")
            .collect();
        assert_eq!(kinds, [("paused", "app"), ("disabled", "reports")]);
        assert_eq!(v["ready"], false, "no upstream ever answered");
    }

    #[test]
    fn the_page_is_self_contained() {
        // The SVG namespace is a name, not something fetched.
        let page = PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        for needle in [
            "http:",
            "https:",
            "//cdn",
            "src=",
            "@import",
            "url(",
            "innerHTML",
        ] {
            assert!(!page.contains(needle), "the page must not contain {needle}");
        }
        assert!(PAGE.contains("status.json"));
    }
}
