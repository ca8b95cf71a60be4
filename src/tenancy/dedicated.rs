//! Dedicated-database tenants: a tenant that names its own `upstream` (in `[[tenants]]` or a
//! column of `tenant_query`) runs its transactions on a pool of its own, behind the same
//! listen address, database name and tenant selection as every other tenant.
//!
//! Invariants:
//! - The pool a tenant's transaction runs on is chosen at each checkout from the current
//!   tenant set ([`Placement`]), so a refresh or reload moves a tenant at its clients' next
//!   transaction. A transaction already open finishes where it began; a session-mode client
//!   keeps its server connection (and so its place) until it disconnects.
//! - A dedicated pool has its database's settings with the tenant's upstream (host, port,
//!   dbname, credentials, TLS from the URL), its `pool_size` if set, `min_size` 0 and the
//!   database's `baseline_role`. It is registered under `database \0 tenant \0 id` (a key no
//!   database or auth_query user pool can have) and is replaced when the tenant's upstream or
//!   size, or its database's settings, change; closed when the tenant goes back to shared or
//!   disappears ([`reconcile`], after every refresh and reload).
//! - Created on first use, a dedicated pool keeps no connection while unused and leaves the
//!   registry once it has had no connection and no waiting client for its `idle_timeout`.
//!   It does not count for `/ready`: one tenant's database being down is that tenant's
//!   outage, not the instance's (its clients get 08006 as for any unreachable upstream).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::config::{Database, Tenant, Upstream};
use crate::pool::Pool;
use crate::proxy::Shared;

/// A tenant's own database.
#[derive(Debug)]
pub struct Dedicated {
    pub upstream: Upstream,
    /// Size of its pool; `None`: its database's pool size.
    pub pool_size: Option<usize>,
}

impl Dedicated {
    /// From the tenant's `upstream` URL and `pool_size`; errors name the key.
    pub fn parse(url: &str, pool_size: Option<usize>) -> Result<Arc<Dedicated>, (&str, String)> {
        let upstream = Upstream::parse(url).map_err(|e| ("upstream", e))?;
        if pool_size == Some(0) {
            return Err(("pool_size", "must be at least 1".into()));
        }
        Ok(Arc::new(Dedicated {
            upstream,
            pool_size,
        }))
    }

    /// From `tenant_query` text columns; an empty or NULL `upstream` means shared.
    pub fn from_text(
        url: Option<&str>,
        pool_size: Option<&str>,
    ) -> Result<Option<Arc<Dedicated>>, String> {
        let size = match pool_size.map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<usize>().map_err(|_| {
                format!("pool_size {s:?}: must be a number of connections, at least 1")
            })?),
        };
        match url.map(str::trim).filter(|s| !s.is_empty()) {
            None if size.is_some() => {
                Err("pool_size is only for a tenant with its own upstream".into())
            }
            None => Ok(None),
            Some(u) => Dedicated::parse(u, size)
                .map(Some)
                .map_err(|(k, e)| format!("{k}: {e}")),
        }
    }

    /// The settings of this tenant's pool: its database's, with its own upstream and size.
    pub fn database(&self, db: &Database) -> Database {
        let mut pool = db.pool.clone();
        if let Some(n) = self.pool_size {
            pool.size = n;
        }
        pool.min_size = 0;
        Database {
            name: db.name.clone(),
            upstream: Upstream {
                baseline_role: db.upstream.baseline_role.clone(),
                ..self.upstream.clone()
            },
            pool,
            tenant_required: db.tenant_required,
            role_check: db.role_check,
            tenant_defaults: db.tenant_defaults,
        }
    }
}

/// Registry key of a tenant's dedicated pool.
fn key(database: &str, tenant: &str) -> String {
    format!("{database}\0tenant\0{tenant}")
}

/// `(database, tenant)` of a dedicated pool's key.
fn parse_key(key: &str) -> Option<(&str, &str)> {
    let (db, rest) = key.split_once('\0')?;
    Some((db, rest.strip_prefix("tenant\0")?))
}

/// Same upstream (every field, the password included: compared, never printed) and settings.
fn same(a: &Database, b: &Database) -> bool {
    format!("{:?}{:?}", a.upstream, a.pool) == format!("{:?}{:?}", b.upstream, b.pool)
        && a.tenant_defaults == b.tenant_defaults
}

/// The tenant's dedicated pool, if one is open.
pub fn open_pool(shared: &Shared, database: &str, tenant: &str) -> Option<Arc<Pool>> {
    shared.pools.get(&key(database, tenant)).map(|p| p.clone())
}

/// Where a tenant's next transaction runs: its dedicated pool (created if needed), or `None`
/// for its database's shared pool.
pub fn pool_for(shared: &Arc<Shared>, tenant: &Tenant) -> Option<Arc<Pool>> {
    let d = tenant.dedicated.as_ref()?;
    let cfg = shared.config();
    let db = cfg.database(&tenant.database)?;
    let want = d.database(db);
    let k = key(&db.name, &tenant.id);
    let pool = {
        let mut entry = shared.pools.entry(k.clone()).or_insert_with(|| {
            let p = Pool::dedicated(Arc::new(d.database(db)), k.clone(), &tenant.id);
            spawn_upkeep(Arc::downgrade(shared), p.clone());
            p
        });
        if entry.is_closed() || !same(&entry.db, &want) {
            let p = Pool::dedicated(Arc::new(want), k, &tenant.id);
            spawn_upkeep(Arc::downgrade(shared), p.clone());
            let old = std::mem::replace(&mut *entry, p);
            old.close();
        }
        entry.clone()
    };
    Some(pool)
}

/// After a reload or a tenant refresh: close the dedicated pools of tenants that moved back to
/// shared, changed their upstream or size, or are gone. Their clients' next checkout finds the
/// tenant's current place.
pub fn reconcile(shared: &Shared) {
    let tenants = shared.tenants.load();
    let cfg = shared.config();
    shared.pools.retain(|k, p| {
        let Some((db, id)) = parse_key(k) else {
            return true;
        };
        let current = tenants.get(id).and_then(|t| {
            let d = t.tenant.dedicated.as_ref()?;
            let db = cfg.database(db).filter(|_| t.tenant.database == db)?;
            Some(d.database(db))
        });
        let keep = !p.is_closed() && current.is_some_and(|want| same(&p.db, &want));
        if !keep {
            tracing::info!(pool = %k.replace('\0', "/"), "dedicated tenant pool closed (tenant moved, changed or removed)");
            p.close();
        }
        keep
    });
}

/// The pool's maintenance, then its removal once unused for its `idle_timeout`: no
/// connection (idle ones close after the same timeout) and nobody waiting.
fn spawn_upkeep(shared: Weak<Shared>, pool: Arc<Pool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unused_since: Option<Instant> = None;
        loop {
            tick.tick().await;
            if pool.is_closed() {
                return;
            }
            crate::pool::maintain::run_once(&pool).await;
            let unused = pool.size_now() == 0 && pool.waiting() == 0;
            unused_since = match (unused, unused_since) {
                (false, _) => None,
                (true, None) => Some(Instant::now()),
                (true, since) => since,
            };
            if unused_since.is_some_and(|t| t.elapsed() >= pool.db.pool.idle_timeout) {
                if let Some(s) = shared.upgrade() {
                    s.pools.remove_if(&pool.key, |_, p| Arc::ptr_eq(p, &pool));
                }
                tracing::debug!(pool = %pool.key.replace('\0', "/"), "idle dedicated tenant pool closed");
                pool.close();
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_text() {
        let k = key("app", "acme");
        assert_eq!(parse_key(&k), Some(("app", "acme")));
        assert_eq!(parse_key("app"), None);
        assert_eq!(parse_key("app\0someuser"), None, "auth_query user pools");
        assert!(matches!(Dedicated::from_text(None, None), Ok(None)));
        assert!(matches!(Dedicated::from_text(Some(" "), None), Ok(None)));
        let d = Dedicated::from_text(Some("postgres://u:p@db2:6543/big"), Some("3"))
            .unwrap()
            .unwrap();
        assert_eq!((d.upstream.port, d.pool_size), (6543, Some(3)));
        assert!(Dedicated::from_text(None, Some("3")).is_err());
        assert!(Dedicated::from_text(Some("postgres://u@h/x"), Some("0")).is_err());
        assert!(Dedicated::from_text(Some("mysql://u@h/x"), None).is_err());
    }
}
