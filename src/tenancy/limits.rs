//! Per-tenant limits: a tenant's weight in its pool's fair queue, the most server
//! connections it may hold at once, the most client connections it may have, and how long
//! its clients may wait for a server connection (`queue_timeout`).
//!
//! Set per tenant (`[[tenants]]`, or columns of `tenant_query`), with defaults per database
//! (`tenant_max_server_connections`, `tenant_max_client_connections`). Read at each checkout
//! and login from the current tenant set, so a reload or refresh applies to clients already
//! connected at their next transaction.
//!
//! Invariant: a tenant's client count equals its live [`TenantSlot`]s; the entry is removed
//! when it drops to zero (the map holds only tenants with clients).

use std::sync::Arc;

use dashmap::DashMap;

use crate::pool::Share;

/// The most server connections one tenant may hold: a number, or a share of the pool size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCap {
    Count(usize),
    Percent(u32),
}

impl ServerCap {
    /// `"8"`, or `"25%"` (of the pool size, at least one connection).
    pub fn parse(s: &str) -> Result<ServerCap, String> {
        let s = s.trim();
        let bad = || {
            format!("{s:?}: must be a number of connections (at least 1) or a percentage of the pool size such as \"25%\"")
        };
        if let Some(p) = s.strip_suffix('%') {
            let p: u32 = p.trim().parse().map_err(|_| bad())?;
            if p == 0 || p > 100 {
                return Err(bad());
            }
            return Ok(ServerCap::Percent(p));
        }
        match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(ServerCap::Count(n)),
            _ => Err(bad()),
        }
    }

    pub fn of(self, pool_size: usize) -> usize {
        match self {
            ServerCap::Count(n) => n,
            ServerCap::Percent(p) => (pool_size * p as usize / 100).max(1),
        }
    }
}

/// A tenant's own limits; `None` falls back to its database's default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantLimits {
    pub weight: f64,
    pub max_server_connections: Option<ServerCap>,
    pub max_client_connections: Option<usize>,
    /// The longest a client of this tenant waits for a server connection (instead of the
    /// pool's `checkout_timeout`).
    pub queue_timeout: Option<std::time::Duration>,
    /// Server connections of its database's pool that only this tenant may use.
    pub reserved_server_connections: usize,
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            weight: 1.0,
            max_server_connections: None,
            max_client_connections: None,
            queue_timeout: None,
            reserved_server_connections: 0,
        }
    }
}

impl TenantLimits {
    /// From text values (the `tenant_query` columns); absent or empty means "not set".
    pub fn from_text(
        weight: Option<&str>,
        max_server: Option<&str>,
        max_client: Option<&str>,
        queue_timeout: Option<&str>,
        reserved: Option<&str>,
    ) -> Result<TenantLimits, String> {
        fn set(v: Option<&str>) -> Option<&str> {
            v.map(str::trim).filter(|v| !v.is_empty())
        }
        let mut l = TenantLimits::default();
        if let Some(w) = set(weight) {
            l.weight = parse_weight(
                w.parse::<f64>()
                    .map_err(|_| format!("weight {w:?}: not a number"))?,
            )?;
        }
        if let Some(m) = set(max_server) {
            l.max_server_connections =
                Some(ServerCap::parse(m).map_err(|e| format!("max_server_connections {e}"))?);
        }
        if let Some(m) = set(max_client) {
            l.max_client_connections =
                Some(m.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("max_client_connections {m:?}: must be a number, at least 1")
                })?);
        }
        if let Some(t) = set(queue_timeout) {
            l.queue_timeout = Some(parse_queue_timeout(t)?);
        }
        if let Some(r) = set(reserved) {
            l.reserved_server_connections = r.parse().map_err(|_| {
                format!("reserved_server_connections {r:?}: must be a number of connections")
            })?;
        }
        Ok(l)
    }

    /// The tenant's share of a pool of `pool_size` (`default_cap`: its database's default).
    pub fn share(&self, pool_size: usize, default_cap: Option<ServerCap>) -> Share {
        Share {
            weight: self.weight,
            max: self
                .max_server_connections
                .or(default_cap)
                .map_or(usize::MAX, |c| c.of(pool_size)),
        }
    }
}

/// Give each shared pool its tenants' `reserved_server_connections` (after a reload or a
/// refresh). A pool keeps at least one connection nobody reserved: reserves beyond that are
/// cut down, in tenant id order, with a warning.
pub fn apply_reserves(shared: &crate::proxy::Shared) {
    let tenants = shared.tenants.load().sorted();
    for p in shared.pools.iter().filter(|p| p.dedicated_tenant.is_none()) {
        let mut reserves = std::collections::HashMap::new();
        let mut left = p.db.pool.size.saturating_sub(1);
        for t in &tenants {
            let want = t.limits.reserved_server_connections;
            if want == 0 || t.database != p.name() || t.dedicated.is_some() {
                continue;
            }
            let r = want.min(left);
            if r < want {
                tracing::warn!(tenant = %t.id, database = %p.name(), reserved = want, kept = r, pool_size = p.db.pool.size, "reserved_server_connections cut down: the pool keeps at least one connection nobody reserved");
            }
            left -= r;
            if r > 0 {
                reserves.insert(crate::pool::ClassKey::from(t.id.as_str()), r);
            }
        }
        p.set_reserves(reserves);
    }
}

/// A queue timeout: a duration such as "500ms" or "2s", above zero.
pub fn parse_queue_timeout(t: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(t.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "queue_timeout {t:?}: must be a duration above zero such as \"500ms\" or \"2s\""
        )),
    }
}

/// A weight must be a finite number above zero.
pub fn parse_weight(w: f64) -> Result<f64, String> {
    if w.is_finite() && w > 0.0 && w <= 1e6 {
        Ok(w)
    } else {
        Err(format!("weight {w}: must be above 0 (and at most 1000000)"))
    }
}

/// Client connections per tenant.
#[derive(Default)]
pub struct ClientCounts(DashMap<Arc<str>, usize>);

/// One client of a tenant, counted while it lives.
pub struct TenantSlot {
    counts: Arc<ClientCounts>,
    tenant: Arc<str>,
}

impl ClientCounts {
    /// Count a client of `tenant`, unless it already has `max` (then `Err(max)`).
    pub fn take(
        self: &Arc<Self>,
        tenant: &Arc<str>,
        max: Option<usize>,
    ) -> Result<TenantSlot, usize> {
        let mut n = self.0.entry(tenant.clone()).or_insert(0);
        if let Some(max) = max {
            if *n >= max {
                let full = *n;
                drop(n);
                self.0.remove_if(tenant, |_, n| *n == 0);
                return Err(full.max(max));
            }
        }
        *n += 1;
        Ok(TenantSlot {
            counts: self.clone(),
            tenant: tenant.clone(),
        })
    }

    pub fn get(&self, tenant: &str) -> usize {
        self.0.get(tenant).map_or(0, |n| *n)
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        if let Some(mut n) = self.counts.0.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
        }
        self.counts.0.remove_if(&self.tenant, |_, n| *n == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_and_scale() {
        assert_eq!(ServerCap::parse("8"), Ok(ServerCap::Count(8)));
        assert_eq!(ServerCap::parse("25%").unwrap().of(20), 5);
        assert_eq!(ServerCap::parse("10%").unwrap().of(4), 1, "at least one");
        for bad in ["0", "0%", "101%", "x", "-1", ""] {
            assert!(ServerCap::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_from_table_text() {
        let l = TenantLimits::from_text(
            Some("2.5"),
            Some("50%"),
            Some("10"),
            Some("250ms"),
            Some("1"),
        )
        .unwrap();
        assert_eq!(l.queue_timeout, Some(std::time::Duration::from_millis(250)));
        assert_eq!(l.reserved_server_connections, 1);
        assert_eq!(l.weight, 2.5);
        assert_eq!(l.share(8, None).max, 4);
        assert_eq!(l.max_client_connections, Some(10));
        let d = TenantLimits::from_text(None, Some(""), None, Some(" "), None).unwrap();
        assert_eq!(d, TenantLimits::default());
        assert_eq!(
            d.share(8, Some(ServerCap::Count(3))).max,
            3,
            "database default"
        );
        assert!(TenantLimits::from_text(Some("0"), None, None, None, None).is_err());
        assert!(TenantLimits::from_text(None, None, Some("0"), None, None).is_err());
        assert!(TenantLimits::from_text(None, None, None, Some("0s"), None).is_err());
        assert!(TenantLimits::from_text(None, None, None, Some("soon"), None).is_err());
        assert!(TenantLimits::from_text(None, None, None, None, Some("-1")).is_err());
    }

    #[test]
    fn client_counts_follow_slots() {
        let c = Arc::new(ClientCounts::default());
        let t: Arc<str> = Arc::from("acme");
        let a = c.take(&t, Some(2)).unwrap();
        let b = c.take(&t, Some(2)).unwrap();
        assert_eq!(c.take(&t, Some(2)).err(), Some(2));
        drop(a);
        assert_eq!(c.get("acme"), 1);
        let _a = c.take(&t, Some(2)).unwrap();
        drop(b);
        drop(_a);
        assert_eq!(c.get("acme"), 0);
        assert!(c.0.is_empty(), "no entry for a tenant without clients");
    }
}
