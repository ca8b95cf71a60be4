//! Client → server: what the proxy does with each message of an authenticated client.
//!
//! - Query / Parse text is classified once (`sql::classify`): guard violations (T3) and, with
//!   `session_state = "reject"`, session-state statements are replaced by a statement that
//!   raises the error on the server, so the transaction state stays exactly PostgreSQL's.
//! - At the first message of a transaction the server connection is obtained and, pipelined
//!   in front of that message, the client's session parameters are synced and the tenant
//!   context is injected (`begin`).
//! - In transaction mode, named prepared statements are mapped to shared server statements
//!   and prepared on demand (`prepared.rs`).
//!
//! Every forwarded request gets a unit in `pending`, so responses can be routed.

use std::time::Instant;

use bytes::{Buf, BytesMut};

use super::session::Session;
use crate::config::{PoolMode, SessionStatePolicy};
use crate::protocol::backend::{self, PgError};
use crate::protocol::frontend as fe;
use crate::protocol::{FrameError, Header};
use crate::querystats::QueryText;
use crate::server::pending::{Action, Kind, Unit};
use crate::server::Dirty;
use crate::sql::classify::{analyze, Analysis, Flags, Violation};

/// What handling one message decided.
pub(super) enum Step {
    /// Message consumed.
    Next,
    /// Leave this message (and the rest) buffered until outstanding responses arrive.
    Hold,
    /// The client said Terminate.
    Terminate,
    /// Leave this message buffered: it needs a server connection, which the session loop
    /// obtains (the one place that waits for the pool) before handling it again.
    NeedServer,
}

/// What [`Session::process_client`] leaves the session loop to do.
pub(super) enum Flow {
    /// Everything complete was handled (or held).
    Continue,
    /// Get a server connection, then call `process_client` again.
    NeedServer,
    /// The client said Terminate.
    Terminate,
}

impl Session {
    /// Handle every complete message buffered from the client. Never waits: a message that
    /// needs a server connection while none is held stops the pass with [`Flow::NeedServer`].
    pub(super) fn process_client(&mut self) -> Result<Flow, PgError> {
        let mut buf = std::mem::take(&mut self.cin);
        let mut consumed = 0;
        // Re-examined on every call: held messages are retried once responses arrived.
        self.hold = false;
        let result = loop {
            let rest = &buf[consumed..];
            let h = match Header::parse(rest, self.max_message) {
                Ok(Some(h)) => h,
                Ok(None) => break Ok(Flow::Continue),
                Err(FrameError::BadLength) => {
                    break Err(PgError::fatal("08P01", "invalid message length"))
                }
                Err(FrameError::TooLarge { len, max }) => {
                    break Err(PgError::fatal(
                        "54000",
                        format!("message of {len} bytes exceeds max_message_size ({max} bytes)"),
                    ))
                }
            };
            if rest.len() < h.frame_len {
                if buf.capacity() - buf.len() < h.frame_len - rest.len() {
                    // Make room for the whole frame once (bounded by max_message_size).
                    buf.advance(consumed);
                    consumed = 0;
                    buf.reserve(h.frame_len);
                }
                break Ok(Flow::Continue);
            }
            let frame_range = consumed..consumed + h.frame_len;
            match self.handle_message(h.tag, &buf[frame_range]) {
                Ok(Step::Next) => consumed += h.frame_len,
                Ok(Step::Hold) => {
                    self.hold = true;
                    break Ok(Flow::Continue);
                }
                Ok(Step::NeedServer) => break Ok(Flow::NeedServer),
                Ok(Step::Terminate) => break Ok(Flow::Terminate),
                Err(e) => break Err(e),
            }
        };
        buf.advance(consumed);
        self.cin = buf;
        if !matches!(result, Ok(Flow::NeedServer)) {
            // A failed checkout is reported to the message that asked for it, never later.
            self.acquire_error = None;
        }
        result
    }

    fn handle_message(&mut self, tag: u8, frame: &[u8]) -> Result<Step, PgError> {
        tracing::trace!(tag = %(tag as char), len = frame.len(), "client message");
        let body = &frame[5..];
        if self.skip_till_sync && tag != b'S' {
            return Ok(Step::Next);
        }
        match tag {
            b'Q' => self.on_query(frame, body),
            b'P' => self.on_parse(frame, body),
            b'B' => self.on_bind(frame, body),
            b'D' => self.on_describe(frame, body),
            b'E' => {
                self.reinject |= self.portal_ends_txn && self.server.is_some();
                self.on_extended(frame, Kind::Execute)
            }
            b'C' => self.on_close(frame, body),
            b'S' => self.on_sync(frame),
            b'H' => {
                if self.server.is_some() {
                    self.sout.extend_from_slice(frame);
                }
                Ok(Step::Next)
            }
            b'F' => {
                if let Some(step) = self.begin(false, true)? {
                    return Ok(step);
                }
                self.forward(frame, Kind::FunctionCall);
                Ok(Step::Next)
            }
            b'd' | b'c' | b'f' => {
                // COPY data, possibly pipelined before the server's CopyInResponse (asyncpg
                // does that); outside COPY, PostgreSQL ignores these messages, and so does
                // the proxy when it holds no server connection.
                if self.server.is_some() {
                    self.sout.extend_from_slice(frame);
                    if tag != b'd' {
                        self.copy_in = false;
                        self.pending.copy_ended();
                    }
                }
                Ok(Step::Next)
            }
            b'X' => Ok(Step::Terminate),
            _ => Err(PgError::fatal(
                "08P01",
                format!("invalid frontend message type {}", tag as char),
            )),
        }
    }

    /// Classify SQL text for this client.
    fn analyze(&self, sql: &[u8]) -> Analysis {
        match &self.tenant {
            Some(t) => analyze(sql, true, &|name| t.is_protected(name)),
            None => analyze(sql, false, &|_| false),
        }
    }

    /// A connection pool's reset (asyncpg sends `…; RESET ALL`, others `DISCARD ALL`) from a
    /// tenant client, outside any transaction, ending the Query: nothing runs after it in that
    /// transaction, so the tenant context cannot be escaped and the statement is allowed.
    fn is_closing_reset(&self, sql: &[u8], a: &Analysis) -> bool {
        if !matches!(a.violation, Some(Violation::ResetAll)) || a.flags.contains(Flags::TXN_BEGIN) {
            return false;
        }
        let idle = self.server.is_none()
            || self.fresh
            || (self.pending.is_empty() && !self.unsynced && self.status == b'I');
        let end = sql
            .iter()
            .rposition(|b| !b.is_ascii_whitespace() && *b != b';')
            .map_or(&sql[..0], |i| &sql[..=i]);
        let ends = |kw: &[u8]| {
            end.len() >= kw.len() && end[end.len() - kw.len()..].eq_ignore_ascii_case(kw)
        };
        idle && (ends(b"RESET ALL") || ends(b"DISCARD ALL"))
    }

    /// Decide whether the statement may run; `Some(error)` if the proxy refuses it.
    fn vet(&mut self, a: &Analysis) -> Option<PgError> {
        if let (Some(v), Some(t)) = (&a.violation, &self.tenant) {
            crate::metrics::rejected("tenant_guard");
            let what = match v {
                Violation::Setting(name) => format!("changing \"{name}\""),
                Violation::Role => "changing the role or session authorization".to_string(),
                Violation::ResetAll => "RESET ALL / DISCARD ALL".to_string(),
            };
            return Some(PgError::error(
                "42501",
                format!(
                    "pgward: {what} is not allowed for tenant \"{}\": the tenant context is managed by the proxy",
                    t.tenant.id
                ),
            ));
        }
        if self.mode == PoolMode::Transaction
            && self.policy == SessionStatePolicy::Reject
            && !session_dirt(a.flags).is_empty()
        {
            crate::metrics::rejected("session_state");
            return Some(PgError::error(
                "0A000",
                "pgward: statements that change session state are not allowed on this pool (session_state = \"reject\"); use SET LOCAL, or a session-mode pool",
            ));
        }
        None
    }

    /// T1 for a Query that ends the client's open transaction and goes on (`COMMIT; SELECT …`
    /// sent inside a transaction): the statements after the end would run without the tenant
    /// context, and nothing can be sent between them, so a tenant's such Query is refused.
    /// (From outside a transaction the context is set at session level instead; see on_query.)
    fn vet_continuation(&self, a: &Analysis) -> Option<PgError> {
        let t = self.tenant.as_ref().filter(|t| t.pairs > 0)?;
        let in_txn = self.server.is_some()
            && !self.fresh
            && self.pending.is_empty()
            && !self.unsynced
            && self.status != b'I';
        if !(in_txn && a.flags.contains(Flags::AFTER_TXN_END)) {
            return None;
        }
        crate::metrics::rejected("tenant_guard");
        Some(PgError::error(
            "0A000",
            format!(
                "pgward: tenant \"{}\": a Query sent inside a transaction may not end it and continue (COMMIT; …): statements after the end would run without the tenant context; send them as a separate Query",
                t.tenant.id
            ),
        ))
    }

    /// Track session state and statement-cache effects of SQL that is about to run.
    fn note_effects(&mut self, flags: Flags) {
        self.dirty.insert(session_dirt(flags));
        if flags.contains(Flags::DEALLOCATE_ALL) && self.mode == PoolMode::Transaction {
            self.statements.clear();
            if let Some(co) = self.server.as_mut() {
                let c = co.conn();
                c.statements.clear();
                c.ctx_prepared = 0;
            }
        }
    }

    fn on_query(&mut self, frame: &[u8], body: &[u8]) -> Result<Step, PgError> {
        let sql =
            fe::query_text(body).ok_or_else(|| PgError::fatal("08P01", "invalid Query message"))?;
        if !sql.iter().all(|b| b.is_ascii_whitespace() || *b == b';') {
            // Surely a statement: take the server first, so the text is classified once.
            if let Some(step) = self.want_server() {
                return Ok(step);
            }
        }
        let a = self.analyze(sql);
        let replacement = if self.is_closing_reset(sql, &a) {
            None
        } else {
            self.vet(&a).or_else(|| self.vet_continuation(&a))
        };
        // Statements that cannot run in a transaction block, and multi-statement Queries that
        // end a transaction part-way (`BEGIN; …; COMMIT; SELECT …`): a transaction-local
        // context would not cover everything, so it is set at session level and reset after.
        let non_txn = replacement.is_none()
            && (a.flags.contains(Flags::NON_TXN) || a.flags.contains(Flags::AFTER_TXN_END));
        if a.statements == 0 && self.server.is_none() {
            // Empty query: answer like PostgreSQL without taking a server connection.
            self.emit_local(|out| {
                out.extend_from_slice(b"I\0\0\0\x04");
                backend::ready_for_query(out, b'I');
            });
            return Ok(Step::Next);
        }
        if let Some(step) = self.begin(non_txn, true)? {
            return Ok(step);
        }
        self.unnamed_here = false; // a simple Query drops the unnamed statement
        match replacement {
            Some(err) => {
                fe::put_query(&mut self.sout, POISON);
                self.push_replacing(Kind::Query, &err);
            }
            None => {
                self.note_effects(a.flags);
                self.forward(frame, Kind::Query);
                if let Some(u) = self.pending.back_mut() {
                    if a.statements == 1 {
                        u.guess = crate::metrics::Command::of_sql(sql);
                    }
                    if self.observe.is_some() {
                        u.text = Some(QueryText::Raw(bytes::Bytes::copy_from_slice(sql)));
                    }
                }
            }
        }
        // Per-statement latency of a multi-statement Query runs from when it was sent.
        self.stmt_mark = self
            .pending
            .back()
            .and_then(|u| u.sent)
            .or_else(|| Some(Instant::now()));
        Ok(Step::Next)
    }

    fn on_parse(&mut self, frame: &[u8], body: &[u8]) -> Result<Step, PgError> {
        let p = fe::parse(body).ok_or_else(|| PgError::fatal("08P01", "invalid Parse message"))?;
        if let Some(step) = self.want_server() {
            return Ok(step);
        }
        let a = self.analyze(p.query);
        let replacement = self.vet(&a);
        if let Some(step) = self.begin(false, false)? {
            return Ok(step);
        }
        self.unsynced = true;
        self.stmt_started.get_or_insert_with(Instant::now);
        self.reinject_context(); // Parse resolves names: the context must be in place
        let poisoned;
        let effects = match replacement {
            Some(_) => Flags::default(),
            None => a.flags,
        };
        if p.name.is_empty() {
            self.unnamed_effects = effects;
            self.unnamed_cmd = crate::metrics::Command::of_sql(p.query);
            self.unnamed_here = replacement.is_none();
        }
        let (definition, action) = match &replacement {
            Some(err) => {
                // Fails at Parse on the server, like a real error would (the transaction is
                // aborted, later messages skipped to Sync); the client sees `err` instead.
                let mut def = POISON.to_vec();
                def.push(0);
                def.extend_from_slice(&p.definition[p.query.len() + 1..]);
                poisoned = def;
                (&poisoned[..], replacement_action(err))
            }
            None => {
                self.note_effects(a.flags);
                (p.definition, Action::Forward)
            }
        };
        if self.observe.is_some() && p.name.is_empty() {
            self.unnamed_text = Some(bytes::Bytes::copy_from_slice(p.query));
        }
        if self.mode == PoolMode::Transaction && !p.name.is_empty() {
            return self.parse_named(p.name, definition, action, effects);
        }
        if replacement.is_none() {
            self.forward(frame, Kind::Parse);
        } else {
            fe::put_parse(&mut self.sout, p.name, definition);
            self.pending.push(Kind::Parse, action);
        }
        Ok(Step::Next)
    }

    fn on_bind(&mut self, frame: &[u8], body: &[u8]) -> Result<Step, PgError> {
        let (portal, stmt, rest) =
            fe::bind_names(body).ok_or_else(|| PgError::fatal("08P01", "invalid Bind message"))?;
        if let Some(step) = self.begin(false, false)? {
            return Ok(step);
        }
        self.unsynced = true;
        self.stmt_started.get_or_insert_with(Instant::now);
        if self.refuse_foreign_unnamed(stmt) {
            return Ok(Step::Next);
        }
        // Executing a statement again has its session effects again (noted at Parse for the
        // first execution; a later transaction may execute it on another connection).
        let named = match stmt.is_empty() {
            true => None,
            false => self
                .statements
                .get_with_effects(stmt)
                .map(|(d, f)| (d.clone(), f)),
        };
        let effects = match &named {
            Some((_, f)) => *f,
            None if stmt.is_empty() => self.unnamed_effects,
            None => Flags::default(),
        };
        if effects != Flags::default() {
            self.note_effects(effects);
        }
        self.reinject_context();
        self.portal_ends_txn = effects.contains(Flags::TXN_END);
        self.exec_cmd = match &named {
            Some((d, _)) => d.cmd,
            None if stmt.is_empty() => self.unnamed_cmd,
            None => crate::metrics::Command::Other,
        };
        if self.observe.is_some() {
            self.exec_text = match &named {
                Some((d, _)) => Some(QueryText::Prepared(d.clone())),
                None if stmt.is_empty() => self.unnamed_text.clone().map(QueryText::Raw),
                None => None,
            };
        }
        if self.mode == PoolMode::Transaction {
            if let Some(def) = named.and_then(|(d, _)| self.prepare_here(d)) {
                fe::put_bind_renamed(&mut self.sout, portal, &def.name, &body[rest..]);
                self.push_forward(Kind::Bind);
                self.mark_uses(def.id);
                return Ok(Step::Next);
            }
        }
        self.forward(frame, Kind::Bind);
        Ok(Step::Next)
    }

    fn on_describe(&mut self, frame: &[u8], body: &[u8]) -> Result<Step, PgError> {
        let (kind, name) =
            fe::target(body).ok_or_else(|| PgError::fatal("08P01", "invalid Describe message"))?;
        if let Some(step) = self.begin(false, false)? {
            return Ok(step);
        }
        self.unsynced = true;
        if kind == b'S' && self.refuse_foreign_unnamed(name) {
            return Ok(Step::Next);
        }
        if self.mode == PoolMode::Transaction && kind == b'S' && !name.is_empty() {
            if let Some(def) = self.ensure_prepared(name) {
                fe::put_target(&mut self.sout, b'D', b'S', &def.name);
                self.push_forward(Kind::Describe);
                self.mark_uses(def.id);
                return Ok(Step::Next);
            }
        }
        self.forward(frame, Kind::Describe);
        Ok(Step::Next)
    }

    fn on_extended(&mut self, frame: &[u8], kind: Kind) -> Result<Step, PgError> {
        if let Some(step) = self.begin(false, false)? {
            return Ok(step);
        }
        self.unsynced = true;
        self.forward(frame, kind);
        Ok(Step::Next)
    }

    fn on_close(&mut self, frame: &[u8], body: &[u8]) -> Result<Step, PgError> {
        let (kind, name) =
            fe::target(body).ok_or_else(|| PgError::fatal("08P01", "invalid Close message"))?;
        if self.mode == PoolMode::Transaction && kind == b'S' && !name.is_empty() {
            // Shared statements stay on the server; only the client's name goes away.
            self.statements.remove(name);
            self.unsynced = self.server.is_some() || self.unsynced;
            self.emit_local(|out| out.extend_from_slice(b"3\0\0\0\x04"));
            return Ok(Step::Next);
        }
        if self.server.is_none() {
            // Nothing exists on any server for this client outside a transaction.
            self.emit_local(|out| out.extend_from_slice(b"3\0\0\0\x04"));
            return Ok(Step::Next);
        }
        self.on_extended(frame, Kind::Close)
    }

    fn on_sync(&mut self, frame: &[u8]) -> Result<Step, PgError> {
        if self.copy_in {
            // PostgreSQL ignores Sync during COPY IN (libpq-style clients send one anyway).
            self.sout.extend_from_slice(frame);
            return Ok(Step::Next);
        }
        self.skip_till_sync = false;
        self.stmt_started = None;
        self.reinject = false;
        self.portal_ends_txn = false;
        if self.server.is_none() {
            self.unsynced = false;
            self.emit_local(|out| backend::ready_for_query(out, b'I'));
            return Ok(Step::Next);
        }
        self.unsynced = false;
        self.forward(frame, Kind::Sync);
        Ok(Step::Next)
    }

    /// Append a client frame unchanged and expect its responses.
    #[inline]
    pub(super) fn forward(&mut self, frame: &[u8], kind: Kind) {
        self.sout.extend_from_slice(frame);
        self.push_forward(kind);
    }

    #[inline]
    pub(super) fn push_forward(&mut self, kind: Kind) {
        let sent = match kind {
            Kind::Execute => self.stmt_started.take().or_else(|| Some(Instant::now())),
            Kind::Query | Kind::FunctionCall => Some(Instant::now()),
            _ => None,
        };
        let text = match kind {
            Kind::Execute if self.observe.is_some() => self.exec_text.clone(),
            _ => None,
        };
        self.pending.push_unit(Unit {
            kind,
            action: Action::Forward,
            stmt: None,
            name: None,
            sent,
            text,
            uses: None,
            copy_epoch: 0,
            guess: match kind {
                Kind::Execute => self.exec_cmd,
                _ => crate::metrics::Command::Other,
            },
        });
    }

    /// Expect the responses of a substituted request whose error is replaced by `err`.
    fn push_replacing(&mut self, kind: Kind, err: &PgError) {
        let action = replacement_action(err);
        self.pending.push_unit(Unit {
            kind,
            action,
            stmt: None,
            name: None,
            sent: Some(Instant::now()),
            text: None,
            uses: None,
            copy_epoch: 0,
            guess: crate::metrics::Command::Other,
        });
    }

    fn mark_uses(&mut self, id: u64) {
        if let Some(u) = self.pending.back_mut() {
            u.uses = Some(id);
        }
    }

    /// Bytes the proxy answers with, placed after every response still owed.
    pub(super) fn emit_local(&mut self, f: impl FnOnce(&mut BytesMut)) {
        if self.pending.is_empty() {
            f(&mut self.cout);
        } else {
            let mut b = BytesMut::new();
            f(&mut b);
            // The kind of a synthesized unit only matters for skipping: it is dropped, like
            // any response, when an earlier request of its block fails.
            self.pending
                .push(Kind::Bind, Action::Synthesize(b.freeze()));
        }
    }

    /// T2: a Bind or Describe of the unnamed statement with no Parse of it in this checkout
    /// would use the one another client left on the server connection. Answered as
    /// PostgreSQL answers when there is none (26000); returns whether it was.
    fn refuse_foreign_unnamed(&mut self, name: &[u8]) -> bool {
        if !name.is_empty() || self.unnamed_here || self.mode != PoolMode::Transaction {
            return false;
        }
        self.fail_extended(PgError::error(
            "26000",
            "unnamed prepared statement does not exist",
        ));
        true
    }

    /// Answer the current extended-protocol message with an error and skip to Sync.
    pub(super) fn fail_extended(&mut self, err: PgError) {
        crate::metrics::error(err.code.as_bytes());
        self.emit_local(|out| err.encode(out));
        self.skip_till_sync = true;
    }

    /// Start of a transaction block (or of a statement inside one): make sure a server
    /// connection is held and, at a block start, that the session parameters and the tenant
    /// context are in place. `Some(step)`: the message was dealt with (held, or answered with
    /// the error of a failed checkout), or it must wait for a server ([`Step::NeedServer`]).
    pub(super) fn begin(
        &mut self,
        non_txn: bool,
        ends_block: bool,
    ) -> Result<Option<Step>, PgError> {
        if self.unsynced {
            return Ok(None);
        }
        if self.server.is_some() {
            if self.fresh {
                // Just checked out (its parameter sync may be pending): a block starts.
                self.fresh = false;
                self.inject_context(non_txn);
                return Ok(None);
            }
            if self.pending.is_empty() {
                if self.status == b'I' {
                    self.inject_context(non_txn);
                }
                return Ok(None);
            }
            // A new block pipelined behind one whose outcome is unknown: its status decides
            // whether it needs the tenant context.
            if self.tenant.as_ref().is_some_and(|t| t.pairs > 0) && self.pending.has_block_end() {
                return Ok(Some(Step::Hold));
            }
            return Ok(None);
        }
        let Some(e) = self.acquire_error.take() else {
            return Ok(Some(Step::NeedServer));
        };
        if ends_block {
            crate::metrics::error(e.code.as_bytes());
            self.emit_local(|out| {
                e.encode(out);
                backend::ready_for_query(out, b'I');
            });
        } else {
            self.fail_extended(*e);
        }
        Ok(Some(Step::Next))
    }

    /// `Some(NeedServer)` when no server connection is held yet (and no failed attempt is
    /// waiting to be reported by [`Session::begin`]).
    fn want_server(&mut self) -> Option<Step> {
        (self.server.is_none() && self.acquire_error.is_none()).then_some(Step::NeedServer)
    }

    /// T1 inside an extended block: after a statement that ended the transaction (`COMMIT`
    /// executed, more messages before Sync), the next Parse or Bind runs in a new
    /// transaction, which gets the tenant context again.
    fn reinject_context(&mut self) {
        if std::mem::take(&mut self.reinject) {
            self.inject_context(false);
        }
    }

    /// Tenant context for a block that starts now with the server idle.
    fn inject_context(&mut self, non_txn: bool) {
        let Some(t) = self.tenant.clone() else {
            return;
        };
        if t.pairs == 0 {
            return;
        }
        let Some(co) = self.server.as_mut() else {
            return;
        };
        let conn = co.conn();
        if non_txn {
            self.sout.extend_from_slice(&t.session_query);
            self.pending.push(Kind::Query, Action::Swallow);
            self.dirty.insert(Dirty::TENANT_SESSION);
            return;
        }
        if conn.ctx_prepared & t.stmt_bit == 0 {
            self.sout.extend_from_slice(&t.parse);
            conn.ctx_prepared |= t.stmt_bit;
            self.pending.push(Kind::Parse, Action::Swallow);
        }
        self.sout.extend_from_slice(&t.bind_execute);
        self.pending.push(Kind::Bind, Action::Swallow);
        self.pending.push(Kind::Execute, Action::Swallow);
    }
}

/// Session state that a statement with these flags leaves behind (T2).
pub(super) fn session_dirt(flags: Flags) -> Dirty {
    let mut d = Dirty::default();
    let map = [
        (Flags::SET_SESSION, Dirty::SETTINGS),
        (Flags::SET_ROLE, Dirty::ROLE),
        (Flags::PREPARE, Dirty::PREPARED),
        (Flags::TEMP_OBJECT, Dirty::TEMP),
        (Flags::WITH_HOLD, Dirty::CURSORS),
        (Flags::LISTEN, Dirty::LISTEN),
        (Flags::ADVISORY_LOCK, Dirty::ADVISORY),
        (Flags::UNCERTAIN, Dirty::UNKNOWN),
        // DISCARD ALL resets settings behind the proxy's back: re-establish a known baseline.
        (Flags::DISCARD, Dirty::SETTINGS),
    ];
    for (f, dirt) in map {
        if flags.contains(f) {
            d.insert(dirt);
        }
    }
    d
}

/// SQL that always fails at parse time on the server (a syntax error). Substituted for a
/// refused statement so PostgreSQL applies its own error semantics to the transaction.
const POISON: &[u8] = b"PGWARD_REFUSED_STATEMENT";

fn replacement_action(err: &PgError) -> Action {
    crate::metrics::error(err.code.as_bytes());
    let mut b = BytesMut::new();
    err.encode(&mut b);
    Action::ReplaceError(b.freeze())
}
