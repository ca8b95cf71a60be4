//! Client → server: what the proxy does with each message of an authenticated client.
//!
//! - Query / Parse text is classified once (`sql::classify`): guard violations (T3) and, with
//!   `session_state = "reject"`, session-state statements are replaced by a statement that
//!   raises the error on the server, so the transaction state stays exactly PostgreSQL's.
//! - A message that needs a server connection gets one (synced to the client's session
//!   parameters), and one that runs SQL gets the tenant context in front of it wherever the
//!   transaction model cannot prove it in effect (`context.rs`, `server::txn`).
//! - Every message sent to the server is also applied to the transaction model; while the
//!   model knows the server skips to Sync, the client's messages are dropped as PostgreSQL
//!   drops them.
//! - In transaction mode, named prepared statements are mapped to shared server statements
//!   and prepared on demand (`prepared.rs`).
//!
//! Every forwarded request gets a unit in `pending`, so responses can be routed.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::{Buf, BytesMut};

use super::context::Needs;
use super::session::Session;
use crate::config::{PoolMode, SessionStatePolicy};
use crate::protocol::backend::{self, PgError};
use crate::protocol::frontend as fe;
use crate::protocol::{FrameError, Header};
use crate::querystats::QueryText;
use crate::server::pending::{Action, Kind, Unit};
use crate::server::txn::{Effect, Msg, QueryEffect, SessionCtx};
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
        if self.lost.is_some() {
            return self.on_lost(tag, frame);
        }
        let body = &frame[5..];
        if self.txn.drops_until_sync() && !matches!(tag, b'S' | b'X') {
            // PostgreSQL skips it (after an error, up to Sync): no answer, no effect.
            return Ok(Step::Next);
        }
        match tag {
            b'Q' => self.on_query(frame, body),
            b'P' => self.on_parse(frame, body),
            b'B' => self.on_bind(frame, body),
            b'D' => self.on_describe(frame, body),
            b'E' => self.on_execute(frame, body),
            b'C' => self.on_close(frame, body),
            b'S' => self.on_sync(frame),
            b'H' => {
                if self.server.is_some() {
                    self.sout.extend_from_slice(frame);
                }
                Ok(Step::Next)
            }
            b'F' => {
                if let Some(step) = self.begin(Needs::Context, true)? {
                    return Ok(step);
                }
                self.forward(frame, Kind::FunctionCall, Msg::FunctionCall);
                Ok(Step::Next)
            }
            b'd' | b'c' | b'f' => {
                // COPY data, possibly pipelined before the server's CopyInResponse (asyncpg
                // does that); outside COPY, PostgreSQL ignores these messages, and so does
                // the proxy when it holds no server connection.
                if self.server.is_some() {
                    self.sout.extend_from_slice(frame);
                    if tag != b'd' {
                        self.txn.copy_in = false;
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
        let idle = self.server.is_none() || self.txn.is_idle();
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

    /// T1 for a Query that ends the client's transaction part-way and goes on (`COMMIT;
    /// SELECT …` sent inside a transaction): the statements after the end run in a new
    /// transaction, and the context can be made to outlive the end only from outside a
    /// transaction (set at session level and committed first, `context.rs`). Inside one, a
    /// tenant's such Query is refused; while that is not known yet, it waits.
    fn vet_continuation(&self, a: &Analysis) -> Option<Result<PgError, Step>> {
        let t = self.ctx.as_ref()?;
        if !a.flags.contains(Flags::AFTER_TXN_END)
            || self.server.is_none()
            || self.txn.is_idle()
            || self.txn.session_ctx == SessionCtx::Confirmed
        {
            return None;
        }
        if self.pending.has_block_end() {
            return Some(Err(Step::Hold));
        }
        crate::metrics::rejected("tenant_guard");
        let who = match t.tenant.id.is_empty() {
            true => "this client".to_string(),
            false => format!("tenant \"{}\"", t.tenant.id),
        };
        Some(Ok(PgError::error(
            "0A000",
            format!(
                "pgward: {who}: a Query sent inside a transaction may not end it and continue (COMMIT; …): statements after the end would run without the tenant context; send them as a separate Query"
            ),
        )))
    }

    /// Track session state and statement-cache effects of SQL that is about to run.
    fn note_effects(&mut self, flags: Flags) {
        self.dirty.insert(session_dirt(flags));
        if flags.contains(Flags::DEALLOCATE_ALL) && self.mode == PoolMode::Transaction {
            self.statements.clear();
            if let Some(co) = self.server.as_mut() {
                let c = co.conn();
                c.statements.clear();
                c.ctx.clear();
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
        let closing_reset = self.is_closing_reset(sql, &a);
        let mut replacement = match closing_reset {
            true => None,
            false => self.vet(&a),
        };
        if replacement.is_none() && !closing_reset {
            match self.vet_continuation(&a) {
                Some(Err(step)) => return Ok(step),
                Some(Ok(err)) => replacement = Some(err),
                None => {}
            }
        }
        if a.statements == 0 && self.server.is_none() {
            // Empty query: answer like PostgreSQL without taking a server connection.
            self.emit_local(|out| {
                out.extend_from_slice(b"I\0\0\0\x04");
                backend::ready_for_query(out, b'I');
            });
            return Ok(Step::Next);
        }
        let needs = match (&replacement, closing_reset && a.statements == 1) {
            // A refused statement fails on the server; a pool's lone closing reset (DISCARD
            // ALL cannot run after the context's Execute) reads nothing.
            (Some(_), _) | (None, true) => Needs::Server,
            (None, false) => Needs::of_query(&a),
        };
        if let Some(step) = self.begin(needs, true)? {
            return Ok(step);
        }
        self.unnamed_here = false; // a simple Query drops the unnamed statement
        match replacement {
            Some(err) => {
                fe::put_query(&mut self.sout, POISON);
                let seq = self.txn.sent(Msg::Query(QueryEffect::Plain));
                self.push_replacing(Kind::Query, &err, seq);
            }
            None => {
                self.note_effects(a.flags);
                self.forward(frame, Kind::Query, Msg::Query(QueryEffect::of(a.flags)));
                if let Some(u) = self.pending.back_mut() {
                    if a.statements == 1 {
                        u.guess = crate::metrics::Command::of_sql(sql);
                        u.ends =
                            Effect::of(a.flags) == Effect::End && !a.flags.contains(Flags::NON_TXN);
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
        // Parse resolves names: the context must be in place. A statement that cannot run in
        // a transaction block gets it at session level before its block starts.
        let needs = match &replacement {
            Some(_) => Needs::Server,
            None if a.control_only => Needs::Server,
            None => Needs::of_parse(a.flags),
        };
        if let Some(step) = self.begin(needs, false)? {
            return Ok(step);
        }
        self.stmt_started.get_or_insert_with(Instant::now);
        self.pool.stats.client_parse_count.fetch_add(1, Relaxed);
        let poisoned;
        let effects = match replacement {
            Some(_) => Flags::default(),
            None if a.control_only => a.flags | Flags::CONTROL_ONLY,
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
        if !p.name.is_empty() {
            self.statements.note_session(p.name, effects);
        }
        self.pool.stats.server_parse_count.fetch_add(1, Relaxed);
        if replacement.is_none() {
            self.forward(frame, Kind::Parse, Msg::Extended);
        } else {
            fe::put_parse(&mut self.sout, p.name, definition);
            let seq = self.txn.sent(Msg::Extended);
            self.pending.push(Kind::Parse, action, seq);
        }
        Ok(Step::Next)
    }

    fn on_bind(&mut self, frame: &[u8], body: &[u8]) -> Result<Step, PgError> {
        let (portal, stmt, rest) =
            fe::bind_names(body).ok_or_else(|| PgError::fatal("08P01", "invalid Bind message"))?;
        // What executing the statement does (its session effects are noted again at each
        // Bind: a later transaction may execute it on another connection).
        let named = match stmt.is_empty() {
            true => None,
            false => self
                .statements
                .get_with_effects(stmt)
                .map(|(d, f)| (d.clone(), f)),
        };
        let effects = match &named {
            Some((_, f)) => Some(*f),
            None if stmt.is_empty() => Some(self.unnamed_effects),
            None => self.statements.session_effects(stmt),
        };
        let needs = effects.map_or(Needs::Context, Needs::of_statement);
        if let Some(step) = self.begin(needs, false)? {
            return Ok(step);
        }
        self.stmt_started.get_or_insert_with(Instant::now);
        self.pool.stats.bind_count.fetch_add(1, Relaxed);
        if self.refuse_foreign_unnamed(stmt) {
            return Ok(Step::Next);
        }
        if let Some(f) = effects.filter(|f| *f != Flags::default()) {
            self.note_effects(f);
        }
        self.txn
            .bound(portal, effects.map_or(Effect::Unknown, Effect::of));
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
                self.push_forward(Kind::Bind, Msg::Extended);
                self.mark_uses(def.id, stmt);
                return Ok(Step::Next);
            }
        }
        self.forward(frame, Kind::Bind, Msg::Extended);
        Ok(Step::Next)
    }

    fn on_describe(&mut self, frame: &[u8], body: &[u8]) -> Result<Step, PgError> {
        let (kind, name) =
            fe::target(body).ok_or_else(|| PgError::fatal("08P01", "invalid Describe message"))?;
        if let Some(step) = self.begin(Needs::Server, false)? {
            return Ok(step);
        }
        // A shared statement may have to be prepared here first: that Parse needs what the
        // client's Parse of it needed.
        let shared = self.mode == PoolMode::Transaction && kind == b'S' && !name.is_empty();
        if shared && !self.prepared_here(name) {
            let needs = self
                .statements
                .get_with_effects(name)
                .map_or(Needs::Server, |(_, f)| Needs::of_parse(f));
            if let Some(step) = self.begin(needs, false)? {
                return Ok(step);
            }
        }
        if kind == b'P' && name.is_empty() && self.txn.ctx_portal {
            self.fail_extended(PgError::error("34000", "portal \"\" does not exist"));
            return Ok(Step::Next);
        }
        if kind == b'S' && self.refuse_foreign_unnamed(name) {
            return Ok(Step::Next);
        }
        if shared {
            if let Some(def) = self.ensure_prepared(name) {
                fe::put_target(&mut self.sout, b'D', b'S', &def.name);
                self.push_forward(Kind::Describe, Msg::Extended);
                self.mark_uses(def.id, name);
                return Ok(Step::Next);
            }
        }
        self.forward(frame, Kind::Describe, Msg::Extended);
        Ok(Step::Next)
    }

    fn on_execute(&mut self, frame: &[u8], body: &[u8]) -> Result<Step, PgError> {
        let portal = fe::execute_portal(body)
            .ok_or_else(|| PgError::fatal("08P01", "invalid Execute message"))?;
        if let Some(step) = self.begin(Needs::Server, false)? {
            return Ok(step);
        }
        if portal.is_empty() && self.txn.ctx_portal {
            self.fail_extended(PgError::error("34000", "portal \"\" does not exist"));
            return Ok(Step::Next);
        }
        let effect = self.txn.portal_effect(portal);
        self.forward(frame, Kind::Execute, Msg::Execute(effect));
        if let Some(u) = self.pending.back_mut() {
            u.ends = effect == Effect::End;
        }
        Ok(Step::Next)
    }

    fn on_close(&mut self, frame: &[u8], body: &[u8]) -> Result<Step, PgError> {
        let (kind, name) =
            fe::target(body).ok_or_else(|| PgError::fatal("08P01", "invalid Close message"))?;
        if self.mode == PoolMode::Transaction && kind == b'S' && !name.is_empty() {
            // Shared statements stay on the server; only the client's name goes away, unless
            // PostgreSQL would skip the Close (after an error in its block): until that is
            // known, it waits.
            if self.server.is_some() && self.txn.may_be_skipping() {
                return Ok(self.await_answers());
            }
            self.statements.remove(name);
            self.emit_local(|out| out.extend_from_slice(b"3\0\0\0\x04"));
            return Ok(Step::Next);
        }
        if self.server.is_none() {
            // Nothing exists on any server for this client outside a transaction.
            self.emit_local(|out| out.extend_from_slice(b"3\0\0\0\x04"));
            return Ok(Step::Next);
        }
        if kind == b'S' && !name.is_empty() {
            self.statements.forget_session(name);
        }
        if let Some(step) = self.begin(Needs::Server, false)? {
            return Ok(step);
        }
        if kind == b'P' && name.is_empty() {
            self.txn.ctx_portal = false;
        }
        self.forward(frame, Kind::Close, Msg::Extended);
        Ok(Step::Next)
    }

    fn on_sync(&mut self, frame: &[u8]) -> Result<Step, PgError> {
        if self.txn.copy_in {
            // PostgreSQL ignores Sync during COPY IN (libpq-style clients send one anyway).
            self.sout.extend_from_slice(frame);
            return Ok(Step::Next);
        }
        self.txn.client_skip = false;
        self.stmt_started = None;
        if self.server.is_none() {
            self.emit_local(|out| backend::ready_for_query(out, b'I'));
            return Ok(Step::Next);
        }
        self.forward(frame, Kind::Sync, Msg::Sync);
        Ok(Step::Next)
    }

    /// Append a client frame unchanged and expect its responses.
    #[inline]
    pub(super) fn forward(&mut self, frame: &[u8], kind: Kind, msg: Msg) {
        self.sout.extend_from_slice(frame);
        self.push_forward(kind, msg);
    }

    /// Expect the responses of a client request just written, and apply it to the model.
    #[inline]
    pub(super) fn push_forward(&mut self, kind: Kind, msg: Msg) {
        let seq = self.txn.sent(msg);
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
            sent,
            text,
            guess: match kind {
                Kind::Execute => self.exec_cmd,
                _ => crate::metrics::Command::Other,
            },
            ..Unit::new(kind, Action::Forward, seq)
        });
    }

    /// Expect the responses of a substituted request whose error is replaced by `err`.
    fn push_replacing(&mut self, kind: Kind, err: &PgError, seq: u32) {
        self.pending.push_unit(Unit {
            sent: Some(Instant::now()),
            ..Unit::new(kind, replacement_action(err), seq)
        });
    }

    fn mark_uses(&mut self, id: u64, client_name: &[u8]) {
        if let Some(u) = self.pending.back_mut() {
            u.uses = Some(id);
            u.alias = Some(client_name.into());
        }
    }

    /// Wait for every answer owed, to decide what depends on them: a Flush (which PostgreSQL
    /// does not answer) makes the server send answers it would keep until a Sync.
    pub(super) fn await_answers(&mut self) -> Step {
        if !self.pending.nothing_owed() && !self.txn.flush_sent {
            fe::put_flush(&mut self.sout);
            self.txn.flush_sent = true;
        }
        Step::Hold
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
                .push(Kind::Bind, Action::Synthesize(b.freeze()), 0);
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

    /// Answer the current extended-protocol message with an error and skip to Sync, as
    /// PostgreSQL does. With a server connection held, the error is raised there (a
    /// statement that fails to parse, its error replaced by `err`), so the transaction is
    /// aborted and the server skips to Sync exactly as it would have.
    pub(super) fn fail_extended(&mut self, err: PgError) {
        if self.server.is_some() {
            let mut def = POISON.to_vec();
            def.extend_from_slice(b"\0\0\0");
            fe::put_parse(&mut self.sout, POISON_NAME, &def);
            let seq = self.txn.sent(Msg::Extended);
            self.push_replacing(Kind::Parse, &err, seq);
            return;
        }
        crate::metrics::error(err.code.as_bytes());
        self.emit_local(|out| err.encode(out));
        self.txn.client_skip = true;
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
/// The statement name it is parsed under (never created: it fails; the client's unnamed
/// statement stays as it was).
const POISON_NAME: &[u8] = b"pgward_refused";

fn replacement_action(err: &PgError) -> Action {
    crate::metrics::error(err.code.as_bytes());
    let mut b = BytesMut::new();
    err.encode(&mut b);
    Action::ReplaceError(b.freeze())
}
