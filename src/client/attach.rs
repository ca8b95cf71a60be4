//! Taking a server connection for a client: on the pool its tenant's next transaction
//! belongs on (its own database's, `crate::tenancy::dedicated`, else the client's home pool),
//! a fair checkout (by tenant) bounded by the tenant's `queue_timeout` or the pool's, then
//! the client's session parameters are synced, pipelined in front of the client's first
//! message (a swallowed simple Query, only when something differs).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::session::Session;
use crate::config::Tenant;
use crate::pool::{CheckoutError, Share};
use crate::protocol::backend::PgError;
use crate::protocol::frontend::put_query;
use crate::server::pending::{Action, Kind};
use crate::server::txn::{Msg, QueryEffect};
use crate::tenancy::limits::TenantLimits;

impl Session {
    /// The client's tenant as it is now (after reloads and refreshes): its limits, and itself
    /// when it has a database of its own. Plain clients: no limits.
    fn current_tenant(&self) -> (Option<TenantLimits>, Option<Arc<Tenant>>) {
        let Some(t) = &self.tenant else {
            return (None, None);
        };
        let current = self.shared.tenants.load();
        let tenant = current.get(&t.tenant.id).map_or(&t.tenant, |c| &c.tenant);
        let dedicated = tenant.dedicated.is_some().then(|| tenant.clone());
        (Some(tenant.limits), dedicated)
    }

    /// Move the client to the pool its next transaction belongs on: its tenant's own one, else
    /// its home pool; and onto a pool's replacement after a reload.
    fn place(&mut self, dedicated: Option<&Tenant>) {
        if let Some(t) = dedicated {
            let here = self.pool.dedicated_tenant.as_deref() == Some(t.id.as_str());
            if !here || self.pool.is_closed() {
                if let Some(p) = crate::tenancy::dedicated::pool_for(&self.shared, t) {
                    self.pool = p;
                }
            }
            return;
        }
        if self.home.is_closed() {
            // The pool was replaced by a reload: continue on the new one.
            if let Some(p) = self.shared.pools.get(&self.home.key).map(|p| p.clone()) {
                self.home = p;
            }
        }
        if !Arc::ptr_eq(&self.pool, &self.home) {
            self.pool = self.home.clone();
        }
    }

    pub(super) async fn acquire_server(&mut self) -> Result<(), PgError> {
        let (limits, dedicated) = self.current_tenant();
        self.place(dedicated.as_deref());
        let db = &self.pool.db;
        let share = limits.map_or(Share::EQUAL, |l| {
            l.share(db.pool.size, db.tenant_defaults.max_server_connections)
        });
        let timeout = limits.and_then(|l| l.queue_timeout);
        self.info.state.store(2, Ordering::Relaxed);
        // Boxed so that waiting for a server does not enlarge every idle client's task.
        let (pool, cancel, since) = (&self.pool, &self.cancel, &self.info.wait_since_us);
        let class = &self.class;
        let r = Box::pin(async move {
            tokio::select! {
                r = pool.checkout(class, share, Some(since), timeout) => Some(r),
                _ = cancel.cancelled_while_waiting() => None,
            }
        })
        .await;
        let Some(r) = r else {
            self.info.state.store(0, Ordering::Relaxed);
            return Err(PgError::error(
                "57014",
                "canceling statement due to user request",
            ));
        };
        self.info.state.store(1, Ordering::Relaxed);
        let mut co = r.map_err(|e| {
            self.info.state.store(0, Ordering::Relaxed);
            let tenant = match self.class.is_empty() {
                true => String::new(),
                false => format!(" (tenant \"{}\")", self.class),
            };
            match &e {
                CheckoutError::Timeout { .. } => {
                    if !tenant.is_empty() {
                        let reason = match timeout {
                            Some(_) => "queue_timeout",
                            None => "checkout_timeout",
                        };
                        crate::metrics::tenant_refusal(&self.class, reason);
                    }
                    PgError::error("53300", format!("pgward: {e}{tenant}"))
                }
                CheckoutError::Connect { .. } => PgError::error("08006", format!("pgward: {e}")),
            }
        })?;
        self.labels.checkout_wait.record(co.waited.as_secs_f64());
        self.info.request_us.store(
            crate::pool::servers::since_anchor_us(co.since),
            Ordering::Relaxed,
        );
        self.info
            .prepared
            .store(self.statements.held() as u32, Ordering::Relaxed);
        let conn = co.conn();
        conn.info.link.store(self.info.id, Ordering::Relaxed);
        self.cancel.attach(
            self.pool.db.clone(),
            conn.info.peer.clone(),
            conn.pid,
            conn.secret,
        );
        self.txn.checked_out();
        let mut sql = String::new();
        if conn.params.sync_to(&self.params, &mut sql) {
            put_query(&mut self.sout, sql.as_bytes());
            let seq = self.txn.sent(Msg::Query(QueryEffect::Plain));
            self.pending.push(Kind::Query, Action::SyncParams, seq);
        }
        self.unnamed_here = false;
        self.server = Some(co);
        Ok(())
    }
}
