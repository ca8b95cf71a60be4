//! Taking a server connection for a client: FIFO checkout with the pool's timeout, then the
//! client's session parameters are synced, pipelined in front of the client's first message
//! (a swallowed simple Query, only when something differs).

use std::sync::atomic::Ordering;

use super::session::Session;
use crate::pool::CheckoutError;
use crate::protocol::backend::PgError;
use crate::protocol::frontend::put_query;
use crate::server::pending::{Action, Kind};
use crate::server::txn::{Msg, QueryEffect};

impl Session {
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
        let r = Box::pin(async move {
            tokio::select! {
                r = pool.checkout(Some(since)) => Some(r),
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
            match &e {
                CheckoutError::Timeout { .. } => PgError::error("53300", format!("pgward: {e}")),
                CheckoutError::Connect { .. } => PgError::error("08006", format!("pgward: {e}")),
                CheckoutError::Closed(_) => PgError::error("57P01", format!("pgward: {e}")),
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
