//! Giving a server connection back: at a proven transaction boundary (transaction mode), or
//! when the client leaves. Session state the client left behind (T2) is reset first, by the
//! cheapest statements that undo exactly what was detected, or the connection is closed.
//!
//! Invariant: a connection reaches the pool only after ReadyForQuery 'I' with nothing
//! outstanding and, if it was dirty, after its reset query succeeded. Anything else closes it.

use std::time::Duration;

use bytes::BytesMut;

use super::session::{End, Session};
use crate::config::{PoolMode, SessionStatePolicy};
use crate::pool::Checkout;
use crate::server::pending::{Action, Kind};
use crate::server::txn::{Msg, QueryEffect, SessionCtx};
use crate::server::{Dirty, ServerConn};

const RESET_TIMEOUT: Duration = Duration::from_secs(5);

impl Session {
    /// In transaction mode, release the server at a transaction boundary.
    pub(super) fn maybe_release(&mut self) {
        if self.server.is_none()
            || self.mode == PoolMode::Session
            || self.pinned
            || !self.pending.is_empty()
            || !self.txn.is_idle()
            || !self.sout.is_empty()
        {
            return;
        }
        self.hold = false;
        let mut dirty = self.dirty;
        let lasting = Dirty(dirty.0 & !Dirty::TENANT_SESSION.0);
        if !lasting.is_empty() && self.policy == SessionStatePolicy::Pin {
            self.pinned = true;
            crate::metrics::session_reset("pinned");
            if dirty.contains(Dirty::TENANT_SESSION) {
                // Keep the client's own state, but not the session-level tenant context.
                dirty = Dirty::TENANT_SESSION;
            } else {
                return;
            }
            self.dirty = Dirty(self.dirty.0 & !Dirty::TENANT_SESSION.0);
            if let Some(co) = self.server.as_mut() {
                let sql = reset_sql(
                    dirty,
                    co.conn(),
                    self.ctx.as_deref().map(|t| t.reset_sql.as_str()),
                );
                crate::protocol::frontend::put_query(&mut self.sout, sql.as_bytes());
                let seq = self.txn.sent(Msg::Query(QueryEffect::Plain));
                self.pending.push(Kind::Query, Action::Swallow, seq);
                self.txn.session_ctx = SessionCtx::None;
            }
            return;
        }
        self.dirty = Dirty::default();
        let Some(mut co) = self.server.take() else {
            return;
        };
        let now = self.detach(&co);
        let mut sql = String::new();
        if !dirty.is_empty() {
            count_resets(dirty);
            sql = reset_sql(
                dirty,
                co.conn(),
                self.ctx.as_deref().map(|t| t.reset_sql.as_str()),
            );
        }
        self.give_back(co, now, sql);
        // An idle client keeps no buffers.
        if self.cin.is_empty() {
            self.cin = BytesMut::new();
        }
        if self.cout.is_empty() {
            self.cout = BytesMut::new();
        }
    }

    /// The client no longer holds `co`: end of its transaction (statistics). Returns the
    /// time read, for the check-in.
    pub(super) fn detach(&mut self, co: &Checkout) -> std::time::Instant {
        use std::sync::atomic::Ordering::Relaxed;
        self.cancel.detach();
        self.info.state.store(0, Relaxed);
        let now = std::time::Instant::now();
        let held = now.saturating_duration_since(co.since);
        self.labels.transaction.record(held.as_secs_f64());
        self.pool.stats.xact_count.fetch_add(1, Relaxed);
        self.pool
            .stats
            .xact_time_us
            .fetch_add(held.as_micros() as u64, Relaxed);
        now
    }

    /// Return a detached connection to the pool, after running `sql` (a reset) if not empty,
    /// and after any cancel this client sent for it has been delivered.
    fn give_back(&self, co: Checkout, now: std::time::Instant, sql: String) {
        if self.cancel.in_flight() {
            let slot = self.cancel.clone();
            tokio::spawn(async move {
                if tokio::time::timeout(RESET_TIMEOUT, slot.settled())
                    .await
                    .is_err()
                {
                    return; // dropped: the connection closes
                }
                match sql.is_empty() {
                    true => co.checkin(),
                    false => reset_and_checkin(co, sql).await,
                }
            });
        } else if sql.is_empty() {
            co.checkin_at(now);
        } else {
            tokio::spawn(reset_and_checkin(co, sql));
        }
    }

    /// The session is over: tell the client why, and return or close the server connection.
    pub(super) async fn finish(&mut self, end: &End) {
        if let End::Fatal(e) = end {
            self.emit_error(e);
        }
        self.flush_client().await;
        if let Some(mut co) = self.server.take() {
            let now = self.detach(&co);
            let clean = !self.server_broken
                && self.pending.is_empty()
                && !self.txn.mid_block()
                && self.sout.is_empty();
            if clean {
                let mut dirty = self.dirty;
                if self.mode == PoolMode::Session {
                    dirty.insert(Dirty::UNKNOWN);
                }
                let mut sql = String::new();
                if self.txn.maybe_in_block() {
                    sql.push_str("ROLLBACK;");
                }
                if !dirty.is_empty() {
                    count_resets(dirty);
                    sql.push_str(&reset_sql(
                        dirty,
                        co.conn(),
                        self.ctx.as_deref().map(|t| t.reset_sql.as_str()),
                    ));
                }
                self.give_back(co, now, sql);
            }
            // else: dropped, the connection closes
        }
        self.shared.cancels.unregister(self.key.0, self.key.1);
    }
}

fn count_resets(dirty: Dirty) {
    for (d, kind) in KINDS {
        if dirty.contains(*d) {
            crate::metrics::session_reset(kind);
        }
    }
}

const KINDS: &[(Dirty, &str)] = &[
    (Dirty::SETTINGS, "set"),
    (Dirty::ROLE, "role"),
    (Dirty::PREPARED, "prepare"),
    (Dirty::TEMP, "temp_table"),
    (Dirty::CURSORS, "with_hold_cursor"),
    (Dirty::LISTEN, "listen"),
    (Dirty::ADVISORY, "advisory_lock"),
    (Dirty::TENANT_SESSION, "tenant_session_context"),
    (Dirty::UNKNOWN, "unknown"),
];

/// The statements that undo `dirty`, and the matching update of what the proxy knows about
/// the connection. All of them may run in one multi-statement Query (no DISCARD ALL).
pub fn reset_sql(dirty: Dirty, conn: &mut ServerConn, tenant_reset: Option<&str>) -> String {
    let all = dirty.contains(Dirty::UNKNOWN);
    let mut sql = String::new();
    if all || dirty.contains(Dirty::CURSORS) {
        sql.push_str("CLOSE ALL;");
    }
    if all || dirty.contains(Dirty::ROLE) {
        sql.push_str("SET SESSION AUTHORIZATION DEFAULT;RESET ROLE;");
    }
    if all || dirty.contains(Dirty::SETTINGS) || dirty.contains(Dirty::ROLE) {
        sql.push_str("RESET ALL;");
        conn.params.reset_to_baseline();
    } else if dirty.contains(Dirty::TENANT_SESSION) {
        match tenant_reset {
            Some(r) => sql.push_str(r),
            None => {
                sql.push_str("RESET ALL;");
                conn.params.reset_to_baseline();
            }
        }
    }
    if all || dirty.contains(Dirty::PREPARED) {
        sql.push_str("DEALLOCATE ALL;");
        conn.statements.clear();
        conn.ctx.clear();
    }
    if all || dirty.contains(Dirty::LISTEN) {
        sql.push_str("UNLISTEN *;");
    }
    if all || dirty.contains(Dirty::ADVISORY) {
        sql.push_str("SELECT pg_catalog.pg_advisory_unlock_all();");
    }
    if all {
        sql.push_str("DISCARD PLANS;DISCARD SEQUENCES;");
    }
    if all || dirty.contains(Dirty::TEMP) {
        sql.push_str("DISCARD TEMP;");
    }
    sql
}

/// Run the reset query and return the connection to the pool; close it on any failure.
async fn reset_and_checkin(mut co: Checkout, sql: String) {
    let ok = tokio::time::timeout(RESET_TIMEOUT, run_reset(co.conn(), sql.as_bytes()))
        .await
        .unwrap_or(false);
    if ok {
        co.checkin();
    } else {
        tracing::warn!(
            pool = co.pool.name(),
            "session reset failed; closing the server connection"
        );
    }
}

async fn run_reset(conn: &mut ServerConn, sql: &[u8]) -> bool {
    matches!(crate::server::query::run(conn, sql).await, Ok(None))
}
