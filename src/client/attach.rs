//! Taking a server connection for a client: a fair checkout (by tenant) with the pool's
//! timeout, then the client's session parameters are synced, pipelined in front of the
//! client's first message (a swallowed simple Query, only when something differs).

use std::sync::atomic::Ordering;

use super::session::Session;
use crate::pool::{CheckoutError, Share};
use crate::protocol::backend::PgError;
use crate::protocol::frontend::put_query;
use crate::server::pending::{Action, Kind};
use crate::server::txn::{Msg, QueryEffect};

impl Session {
    /// The client's share of its pool: its tenant's current limits (after reloads and
    /// refreshes), else an equal one.
    fn share(&self) -> Share {
        let Some(t) = &self.tenant else {
            return Share::EQUAL;
        };
        let current = self.shared.tenants.load();
        let limits = current
            .get(&t.tenant.id)
            .map_or(t.tenant.limits, |c| c.tenant.limits);
        let db = &self.pool.db;
        limits.share(db.pool.size, db.tenant_defaults.max_server_connections)
    }

    pub(super) async fn acquire_server(&mut self) -> Result<(), PgError> {
        if self.pool.is_closed() {
            // The pool was replaced by a reload: continue on the new one.
            let key = self.pool.key.clone();
            if let Some(p) = self.shared.pools.get(&key).map(|p| p.clone()) {
                self.pool = p;
            }
        }
        self.info.state.store(2, Ordering::Relaxed);
        // Boxed so that waiting for a server does not enlarge every idle client's task.
        let (pool, cancel, since) = (&self.pool, &self.cancel, &self.info.wait_since_us);
        let (class, share) = (&self.class, self.share());
        let r = Box::pin(async move {
            tokio::select! {
                r = pool.checkout(class, share, Some(since)) => Some(r),
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
                        crate::metrics::tenant_refusal(&self.class, "checkout_timeout");
                    }
                    PgError::error("53300", format!("pgward: {e}{tenant}"))
                }
                CheckoutError::Connect { .. } => PgError::error("08006", format!("pgward: {e}")),
            }
        })?;
        let conn = co.conn();
        self.cancel
            .attach(self.pool.db.clone(), conn.pid, conn.secret);
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
