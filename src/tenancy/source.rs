//! Tenants from a SQL table (`tenant_query`), for fleets of thousands of tenants shared by many
//! pgward instances. Loaded at start, every `refresh`, and on RELOAD. A failed refresh keeps
//! the last good set, logs an error and counts `pgward_tenant_refresh_failures_total`.
//!
//! Expected columns (text; extra columns ignored, missing optional ones are NULL):
//! `id`, `database`, `search_path` (comma-separated or a text[] literal), `settings` (JSON
//! object of strings), `role`, `users` (comma-separated or text[]); optional limits `weight`,
//! `max_server_connections`, `max_client_connections`, `queue_timeout`,
//! `reserved_server_connections`; and for a tenant
//! with a database of its own, `upstream` (libpq URL) and `pool_size`. Rows that do not validate
//! are skipped with a warning naming the tenant. Tenants in the configuration file win.
//!
//! Invariant: a client keeps the tenant context it connected with; a removed tenant only
//! refuses new connections.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_postgres::SimpleQueryMessage;

use crate::config::{Config, Tenant, TenantQuery};
use crate::proxy::Shared;
use crate::tenancy::TenantContexts;

pub fn spawn(shared: Arc<Shared>) -> Option<tokio::task::JoinHandle<()>> {
    shared.config().tenant_query.as_ref()?;
    Some(tokio::spawn(async move {
        loop {
            let Some(every) = shared.config().tenant_query.as_ref().map(|t| t.refresh) else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shared.tenant_refresh.notified() => {}
            }
            let cfg = shared.config();
            if let Some(tq) = cfg.tenant_query.clone() {
                refresh(&shared, &cfg, &tq).await;
            }
        }
    }))
}

/// Load once and install the result; on failure keep what is loaded.
pub async fn refresh(shared: &Shared, cfg: &Config, tq: &TenantQuery) {
    match load(cfg, tq).await {
        Ok(tenants) => {
            let n = tenants.len();
            let loaded: Vec<Arc<Tenant>> = tenants.into_iter().map(Arc::new).collect();
            shared
                .tenants
                .store(Arc::new(TenantContexts::build(cfg, &loaded)));
            shared.posture_recheck.notify_one();
            shared.loaded_tenants.store(Arc::new(loaded));
            shared.tenants_changed();
            metrics::gauge!("pgward_tenants_loaded").set(n as f64);
            tracing::debug!(tenants = n, "tenant registry refreshed");
        }
        Err(e) => {
            metrics::counter!("pgward_tenant_refresh_failures_total").increment(1);
            tracing::error!(
                error = %e,
                kept = shared.loaded_tenants.load().len(),
                "tenant_query refresh failed; keeping the last good set of tenants"
            );
        }
    }
}

async fn load(cfg: &Config, tq: &TenantQuery) -> Result<Vec<Tenant>, String> {
    let query = tq.query.clone();
    let rows = crate::control::with_client(&tq.upstream, "tenant_query", |c| async move {
        c.simple_query(&query).await
    })
    .await;
    let mut out = Vec::new();
    for m in rows? {
        let SimpleQueryMessage::Row(r) = m else {
            continue;
        };
        let col = |name: &str| -> Option<String> {
            let idx = r.columns().iter().position(|c| c.name() == name)?;
            r.get(idx).map(str::to_string)
        };
        match row_to_tenant(
            cfg,
            col("id"),
            col("database"),
            col("search_path"),
            col("settings"),
            col("role"),
            col("users"),
            [
                col("weight"),
                col("max_server_connections"),
                col("max_client_connections"),
                col("queue_timeout"),
                col("reserved_server_connections"),
                col("upstream"),
                col("pool_size"),
            ],
        ) {
            Ok(t) => out.push(t),
            Err(e) => tracing::warn!(error = %e, "tenant_query: row skipped"),
        }
    }
    Ok(out)
}

/// One row of the tenant table, column by column (text values as PostgreSQL sent them).
#[allow(clippy::too_many_arguments)]
fn row_to_tenant(
    cfg: &Config,
    id: Option<String>,
    database: Option<String>,
    search_path: Option<String>,
    settings: Option<String>,
    role: Option<String>,
    users: Option<String>,
    [weight, max_server, max_client, queue_timeout, reserved, upstream, pool_size]: [Option<String>;
        7],
) -> Result<Tenant, String> {
    let id = id
        .filter(|s| !s.is_empty() && s.len() <= 63)
        .ok_or("missing or invalid id")?;
    let database = database.ok_or_else(|| format!("tenant {id:?}: missing database"))?;
    if cfg.database(&database).is_none() {
        return Err(format!(
            "tenant {id:?}: database {database:?} is not configured"
        ));
    }
    if cfg.database(&id).is_some() || id == "pgward" {
        return Err(format!("tenant {id:?}: collides with a database name"));
    }
    let mut map = BTreeMap::new();
    if let Some(s) = settings.filter(|s| !s.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(&s)
            .map_err(|e| format!("tenant {id:?}: settings is not JSON: {e}"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| format!("tenant {id:?}: settings must be a JSON object"))?;
        for (k, v) in obj {
            let lk = k.to_ascii_lowercase();
            if matches!(
                lk.as_str(),
                "search_path" | "role" | "session_authorization"
            ) {
                return Err(format!(
                    "tenant {id:?}: use the search_path / role columns for {k}"
                ));
            }
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            map.insert(lk, value);
        }
    }
    let limits = crate::tenancy::limits::TenantLimits::from_text(
        weight.as_deref(),
        max_server.as_deref(),
        max_client.as_deref(),
        queue_timeout.as_deref(),
        reserved.as_deref(),
    )
    .map_err(|e| format!("tenant {id:?}: {e}"))?;
    let dedicated =
        crate::tenancy::dedicated::Dedicated::from_text(upstream.as_deref(), pool_size.as_deref())
            .map_err(|e| format!("tenant {id:?}: {e}"))?;
    Ok(Tenant {
        limits,
        dedicated,
        search_path: search_path.map(|s| list(&s)).unwrap_or_default(),
        settings: map,
        role: role.filter(|r| !r.is_empty()),
        users: users.map(|u| list(&u)),
        id,
        database,
    })
}

/// "a, b" or a text[] literal "{a,\"b c\"}".
fn list(s: &str) -> Vec<String> {
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(s);
    inner
        .split(',')
        .map(|x| x.trim().trim_matches('"').to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(list("a, b"), vec!["a", "b"]);
        assert_eq!(list("{acme,\"Big Co\"}"), vec!["acme", "Big Co"]);
        assert!(list("").is_empty());
    }

    #[test]
    fn rows() {
        let cfg = Config::from_toml(
            "[[databases]]\nname = \"app\"\nupstream = \"postgres://u@h/app\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let s = |v: &str| Some(v.to_string());
        const NONE: [Option<String>; 7] = [None, None, None, None, None, None, None];
        let t = row_to_tenant(
            &cfg,
            s("t9"),
            s("app"),
            s("{t9,public}"),
            s(r#"{"app.tenant_id":"t9","app.n":3}"#),
            None,
            None,
            [
                s("2"),
                s("25%"),
                None,
                s("1s"),
                s("1"),
                s("postgres://u@h2/big"),
                s("2"),
            ],
        )
        .unwrap();
        assert_eq!(t.limits.weight, 2.0);
        assert_eq!(t.limits.share(8, None).max, 2);
        assert_eq!(
            t.limits.queue_timeout,
            Some(std::time::Duration::from_secs(1))
        );
        let d = t.dedicated.as_ref().expect("dedicated");
        assert_eq!((d.upstream.host.as_str(), d.pool_size), ("h2", Some(2)));
        assert_eq!(t.search_path, vec!["t9", "public"]);
        assert_eq!(t.settings["app.n"], "3");
        assert!(row_to_tenant(&cfg, s("t9"), s("nodb"), None, None, None, None, NONE).is_err());
        assert!(row_to_tenant(&cfg, s("t9"), s("app"), None, s("[1]"), None, None, NONE).is_err());
        assert!(row_to_tenant(&cfg, None, s("app"), None, None, None, None, NONE).is_err());
        assert!(row_to_tenant(
            &cfg,
            s("t9"),
            s("app"),
            None,
            s(r#"{"search_path":"x"}"#),
            None,
            None,
            NONE
        )
        .is_err());
        let bad_weight = [s("0"), None, None, None, None, None, None];
        assert!(
            row_to_tenant(&cfg, s("t9"), s("app"), None, None, None, None, bad_weight).is_err()
        );
        let bad_upstream = [None, None, None, None, None, s("nope"), None];
        assert!(row_to_tenant(
            &cfg,
            s("t9"),
            s("app"),
            None,
            None,
            None,
            None,
            bad_upstream
        )
        .is_err());
    }
}
