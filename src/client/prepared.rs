//! Named prepared statements in transaction mode (see `server::prepared` for the model).
//!
//! Parse of a named statement binds the client's name to the shared definition and is sent
//! under the proxy's name (closing that connection's older copy first: a Parse always parses
//! afresh, as on PostgreSQL). Bind/Describe of a known name prepare it on demand when the
//! connection lacks it (a swallowed Parse pipelined in front) and are renamed; that is where
//! sharing saves work: a client's statement follows it to every server connection. A name the client
//! never prepared passes through unchanged, so PostgreSQL reports it (26000) itself.

use std::sync::Arc;

use super::frontend::Step;
use super::session::Session;
use super::statements::MAX_CLIENT_STATEMENTS;
use crate::protocol::backend::PgError;
use crate::protocol::frontend as fe;
use crate::server::pending::{Action, Kind, Unit};
use crate::server::prepared::StatementDef;
use crate::server::txn::Msg;
use crate::sql::classify::Flags;

impl Session {
    pub(super) fn parse_named(
        &mut self,
        name: &[u8],
        definition: &[u8],
        action: Action,
        effects: Flags,
    ) -> Result<Step, PgError> {
        if self.statements.contains(name) {
            if self.pending.parse_pending(name) {
                // Whether it exists depends on how that Parse ends: wait for it.
                return Ok(self.await_answers());
            }
            self.fail_extended(PgError::error(
                "42P05",
                format!(
                    "prepared statement \"{}\" already exists",
                    String::from_utf8_lossy(name)
                ),
            ));
            return Ok(Step::Next);
        }
        if self.statements.len() >= MAX_CLIENT_STATEMENTS {
            self.fail_extended(PgError::error(
                "53400",
                format!(
                    "pgward: a client may hold at most {MAX_CLIENT_STATEMENTS} prepared statements"
                ),
            ));
            return Ok(Step::Next);
        }
        let context = self
            .tenant
            .as_ref()
            .map(|t| t.plan_context.as_bytes())
            .unwrap_or_default();
        let def = self.shared.statements.intern_in(context, definition);
        // A client's Parse always parses afresh, as on PostgreSQL: types or tables may have
        // been dropped and created again since any connection prepared it. Copies on other
        // connections are re-prepared on their next use.
        def.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.statements.insert(name, def.clone(), effects);
        let Some(co) = self.server.as_mut() else {
            return Ok(Step::Next);
        };
        let _ = co.conn().statements.has_current(&def); // schedules the old copy's Close
        self.prepare_on_server(&def, action, Some(name));
        Ok(Step::Next)
    }

    /// Is the client's statement `name` prepared, current, on the server connection held?
    pub(super) fn prepared_here(&mut self, name: &[u8]) -> bool {
        let Some(def) = self.statements.get(name).cloned() else {
            return false;
        };
        self.server
            .as_mut()
            .is_some_and(|co| co.conn().statements.has_current(&def))
    }

    /// The shared definition behind a client's statement name, prepared on the current server
    /// connection (a Parse is queued if needed). `None` for names the client never prepared.
    pub(super) fn ensure_prepared(&mut self, name: &[u8]) -> Option<Arc<StatementDef>> {
        let def = self.statements.get(name)?.clone();
        self.prepare_here(def)
    }

    /// [`Session::ensure_prepared`] for a definition already looked up.
    pub(super) fn prepare_here(&mut self, def: Arc<StatementDef>) -> Option<Arc<StatementDef>> {
        let co = self.server.as_mut()?;
        if co.conn().statements.has_current(&def) {
            crate::metrics::prepared(true);
        } else {
            self.prepare_on_server(&def, Action::Swallow, None);
        }
        Some(def)
    }

    fn prepare_on_server(
        &mut self,
        def: &Arc<StatementDef>,
        action: Action,
        client_name: Option<&[u8]>,
    ) {
        let max = self.pool.db.pool.max_prepared_statements;
        let Some(co) = self.server.as_mut() else {
            return;
        };
        let conn = co.conn();
        let stale = conn.statements.take_stale();
        let victim = conn.statements.insert(def.clone(), max);
        for old in stale.iter().chain(victim.iter()) {
            fe::put_target(&mut self.sout, b'C', b'S', &old.name);
            let seq = self.txn.sent(Msg::Extended);
            self.pending.push(Kind::Close, Action::Swallow, seq);
        }
        crate::metrics::prepared(false);
        self.pool
            .stats
            .server_parse_count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        fe::put_parse(&mut self.sout, &def.name, &def.definition);
        let seq = self.txn.sent(Msg::Extended);
        self.pending.push_unit(Unit {
            stmt: Some(def.id),
            name: client_name.map(Into::into),
            ..Unit::new(Kind::Parse, action, seq)
        });
    }
}
