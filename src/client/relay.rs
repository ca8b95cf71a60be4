//! Server → client: routing each response to the client or dropping it, by the unit at the
//! front of `pending`.
//!
//! Contiguous forwarded messages are copied to `cout` as one run. Asynchronous messages
//! (NoticeResponse, NotificationResponse, ParameterStatus) belong to no unit: notices are
//! dropped while the proxy's own request is being answered, ParameterStatus updates the
//! server's and the client's view and reaches the client only when the client's view changes.

use std::time::Instant;

use super::session::{ServerFatal, Session};
use crate::metrics::Command;
use crate::protocol::backend::{parse_error_fields, parse_parameter_status, ErrorFields, PgError};
use crate::protocol::frontend::put_sync;
use crate::protocol::Header;
use crate::server::pending::{Action, Kind};
use crate::server::txn::{Msg, Outcome, SessionCtx};

/// Server messages are trusted more than client ones, but still bounded.
const MAX_SERVER_MESSAGE: usize = 1 << 30;

impl Session {
    pub(super) fn process_server(&mut self) -> Result<(), PgError> {
        let Some(co) = self.server.as_mut() else {
            return Ok(());
        };
        let mut buf = std::mem::take(&mut co.conn().rbuf);
        let mut pos = 0;
        let mut run: Option<usize> = None;
        let mut result = Ok(());
        while let Ok(Some(h)) = Header::parse(&buf[pos..], MAX_SERVER_MESSAGE) {
            if buf.len() - pos < h.frame_len {
                break;
            }
            let frame = &buf[pos..pos + h.frame_len];
            match self.route(h.tag, frame) {
                Route::Forward => {
                    run.get_or_insert(pos);
                }
                Route::ForwardThenFlush => {
                    let start = run.take().unwrap_or(pos);
                    self.cout.extend_from_slice(&buf[start..pos + h.frame_len]);
                    self.emit_synthesized();
                }
                Route::Drop => {
                    if let Some(start) = run.take() {
                        self.cout.extend_from_slice(&buf[start..pos]);
                    }
                    self.emit_synthesized();
                }
                Route::Replace(bytes) => {
                    if let Some(start) = run.take() {
                        self.cout.extend_from_slice(&buf[start..pos]);
                    }
                    self.cout.extend_from_slice(&bytes);
                    self.emit_synthesized();
                }
                Route::Broken(e) => {
                    result = Err(e);
                    break;
                }
            }
            pos += h.frame_len;
        }
        if let Some(start) = run.take() {
            self.cout.extend_from_slice(&buf[start..pos]);
        }
        if Header::parse(&buf[pos..], MAX_SERVER_MESSAGE).is_err() {
            result = Err(PgError::fatal(
                "08P01",
                "pgward: invalid message from server",
            ));
        }
        bytes::Buf::advance(&mut buf, pos);
        if let Some(co) = self.server.as_mut() {
            co.conn().rbuf = buf;
        }
        self.emit_synthesized();
        if result.is_err() {
            self.server_broken = true;
        }
        if self.pending.nothing_owed() {
            // Everything sent was answered, without an error since the last refinement.
            self.txn.all_answered();
        }
        result
    }

    fn emit_synthesized(&mut self) {
        let cout = &mut self.cout;
        self.pending
            .drain_synthesized(|b| cout.extend_from_slice(b));
    }

    fn route(&mut self, tag: u8, frame: &[u8]) -> Route {
        tracing::trace!(tag = %(tag as char), pending = self.pending.len(), "server message");
        let body = &frame[5..];
        let front_swallows = matches!(
            self.pending.front().map(|u| &u.action),
            Some(Action::Swallow | Action::SyncParams | Action::SessionContext)
        );
        match tag {
            b'A' => return Route::Forward,
            b'N' => {
                return if front_swallows {
                    Route::Drop
                } else {
                    Route::Forward
                }
            }
            b'S' => {
                let Some((name, value)) = parse_parameter_status(body) else {
                    return Route::Drop;
                };
                if let Some(co) = self.server.as_mut() {
                    co.conn().params.observe(name, value);
                }
                let (name, value) = (
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(value),
                );
                return if self.params.set(&name, &value) {
                    Route::Forward
                } else {
                    Route::Drop
                };
            }
            _ => {}
        }
        if tag == b'E' {
            let f = parse_error_fields(body);
            if is_fatal(&f) {
                self.server_broken = true;
                if self.hold_fatal(&f) {
                    return Route::Drop; // what is owed stays owed: `lost.rs` answers it
                }
            }
        }
        let Some(unit) = self.pending.front() else {
            // Unsolicited: PostgreSQL sends a FATAL ErrorResponse before closing.
            if tag == b'E' {
                let f = parse_error_fields(body);
                self.server_broken = true;
                crate::metrics::error(f.code);
                if is_fatal(&f) {
                    self.server_fatal = ServerFatal::Relayed;
                }
                return Route::ForwardThenFlush;
            }
            return Route::Broken(PgError::fatal(
                "08P01",
                format!("pgward: unexpected message '{}' from server", tag as char),
            ));
        };
        if tag == b'E' && matches!(unit.action, Action::SyncParams) {
            return Route::Broken(parse_error_fields(body).to_error().into_fatal());
        }
        let (kind, sent, guess, client_request) = (
            unit.kind,
            unit.sent,
            unit.guess,
            matches!(unit.action, Action::Forward | Action::ReplaceError(_)),
        );
        let text = if self.observe.is_some() {
            unit.text.clone()
        } else {
            None
        };
        if tag == b'E' && matches!(unit.action, Action::ReplaceError(_)) {
            // The substituted request failed as intended: the client sees the proxy's
            // error instead; a Query still gets its ReadyForQuery, forwarded.
            let replaced = match self.pending.front_mut() {
                Some(u) => std::mem::replace(&mut u.action, Action::Forward),
                None => Action::Forward,
            };
            if !kind.ends_block() {
                if let Some(u) = self.pending.pop() {
                    self.undo_statement(&u);
                    self.after_error(&u, false);
                }
            }
            if let Action::ReplaceError(b) = replaced {
                return Route::Replace(b);
            }
        }
        // Synthesized units never reach here: they are drained as soon as they are in front.
        let forward = client_request || tag == b'E';
        // Per-statement latency and the command label, from completions of client requests.
        if client_request && matches!(tag, b'C' | b'E' | b'I' | b's') {
            match kind {
                Kind::Query => {
                    let now = Instant::now();
                    let since = self.stmt_mark.replace(now).or(sent).unwrap_or(now);
                    let cmd = command_of(tag, body, guess);
                    self.statement_done(cmd, text.as_ref(), now - since);
                }
                Kind::Execute => {
                    if let Some(sent) = sent {
                        let (cmd, d) = (command_of(tag, body, guess), sent.elapsed());
                        self.statement_done(cmd, text.as_ref(), d);
                    }
                }
                _ => {}
            }
        }
        if tag == b'E' && forward {
            let f = parse_error_fields(body);
            crate::metrics::error(f.code);
            if is_fatal(&f) {
                self.server_fatal = ServerFatal::Relayed;
            }
        }
        let session_ctx = matches!(
            self.pending.front().map(|u| &u.action),
            Some(Action::SessionContext)
        );
        match tag {
            b'G' => {
                self.txn.copy_in = true;
                if kind == Kind::Execute {
                    self.pending.forget_syncs_behind_front();
                }
            }
            b'E' if session_ctx => self.txn.session_ctx = SessionCtx::Failed,
            b'Z' if session_ctx && self.txn.session_ctx == SessionCtx::Sent => {
                self.txn.session_ctx = SessionCtx::Confirmed;
            }
            _ => {}
        }
        if matches!(tag, b'C' | b'E' | b'Z') {
            self.txn.copy_in = false;
        }
        if !kind.completed_by(tag) {
            return if forward { Route::Forward } else { Route::Drop };
        }
        let Some(unit) = self.pending.pop() else {
            return Route::Drop;
        };
        self.timers.completions += 1;
        if let (b'1', Some((bit, n)), Some(co)) = (tag, unit.ctx_parse, self.server.as_mut()) {
            co.conn().ctx.parsed(bit, n);
        }
        if tag == b'Z' {
            let status = body.first().copied().unwrap_or(b'I');
            self.txn.answered(unit.seq, Outcome::Ready(status));
        }
        let mut renamed = None;
        if tag == b'E' {
            self.undo_statement(&unit);
            if let Some(id) = unit.uses {
                match parse_error_fields(body).code {
                    // "cached plan must not change result type" (DDL since it was prepared):
                    // the shared statement is closed and prepared again on its next use.
                    b"0A000" => {
                        if let Some(co) = self.server.as_mut() {
                            co.conn().statements.invalidate(id);
                        }
                    }
                    // Its Parse failed after this was sent: the error names the client's
                    // statement, as PostgreSQL would.
                    b"26000" => {
                        renamed = unit.alias.as_deref().and_then(|a| {
                            rename_in_error(frame, format!("pgward_{id}").as_bytes(), a)
                        });
                    }
                    _ => {}
                }
            }
            self.after_error(&unit, matches!(unit.action, Action::Swallow));
        }
        match (forward, renamed) {
            (true, Some(b)) => Route::Replace(b),
            (true, None) => Route::ForwardThenFlush,
            (false, _) => Route::Drop,
        }
    }

    /// After an ErrorResponse completed `failed`: drop what the server will skip, and tell the
    /// model the server skips to Sync from there.
    fn after_error(&mut self, failed: &crate::server::pending::Unit, from_proxy: bool) {
        if failed.kind.ends_block() {
            return; // its ReadyForQuery follows
        }
        let statements = &mut self.statements;
        let server = self.server.as_mut();
        let mut undo_server = Vec::new();
        let mut undo_ctx = 0u64;
        let mut session_ctx_skipped = false;
        let next = self.pending.skip_to_block_end(!from_proxy, |u| {
            if let Some(id) = u.stmt {
                undo_server.push(id);
            }
            undo_ctx |= u.ctx_parse.map_or(0, |(bit, _)| bit);
            session_ctx_skipped |= matches!(u.action, Action::SessionContext);
            // A skipped Parse creates nothing; a skipped Close closes nothing.
            if let (Kind::Parse, Some(n)) = (u.kind, &u.name) {
                statements.remove_created(n, u.stmt);
            }
        });
        if let Some(co) = server {
            let conn = co.conn();
            for id in undo_server {
                // Skipped: an older copy (its Close was skipped too) may still be there.
                conn.statements.invalidate(id);
            }
            conn.ctx.lost(undo_ctx);
        }
        self.txn.answered(failed.seq, Outcome::Failed);
        if session_ctx_skipped {
            // Skipped like the statement that waits for it, which is dropped now.
            self.txn.session_ctx = SessionCtx::None;
        }
        // The proxy's own request failed in front of a simple Query: the server now
        // ignores everything up to a Sync, so send one; its ReadyForQuery answers the
        // client's Query.
        if from_proxy && matches!(next, Some(Kind::Query) | Some(Kind::FunctionCall)) {
            put_sync(&mut self.sout);
            let seq = self.txn.sent(Msg::Sync);
            if let Some(u) = self.pending.front_mut() {
                u.seq = seq;
            }
        }
    }

    /// One statement of the client completed after `d`.
    fn statement_done(
        &self,
        cmd: Command,
        text: Option<&crate::querystats::QueryText>,
        d: std::time::Duration,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        self.labels.statement(cmd, d);
        self.pool.stats.query_count.fetch_add(1, Relaxed);
        self.pool
            .stats
            .query_time_us
            .fetch_add(d.as_micros() as u64, Relaxed);
        if let (Some((stats, slow, tenant)), Some(text)) = (&self.observe, text) {
            crate::querystats::completed(
                *stats,
                *slow,
                self.pool.name(),
                tenant,
                &self.info.user,
                cmd,
                text,
                d,
            );
        }
    }

    /// A FATAL from the server, for a client that stays when its server goes away: held
    /// back (the client is told once, by `lost.rs`). Returns whether it was.
    fn hold_fatal(&mut self, f: &ErrorFields) -> bool {
        if !is_fatal(f) || !self.keeps_client_on_loss() {
            return false;
        }
        self.server_fatal = ServerFatal::Held(Box::new(f.to_error()));
        true
    }

    fn undo_statement(&mut self, unit: &crate::server::pending::Unit) {
        if let Some(co) = self.server.as_mut() {
            let conn = co.conn();
            if let Some(id) = unit.stmt {
                // Closed again before the next Parse (harmless if nothing is there).
                conn.statements.invalidate(id);
            }
            if let Some((bit, _)) = unit.ctx_parse {
                conn.ctx.lost(bit);
            }
        }
        if let (Kind::Parse, Some(n)) = (unit.kind, &unit.name) {
            self.statements.remove_created(n, unit.stmt);
        }
    }
}

fn is_fatal(f: &ErrorFields) -> bool {
    f.severity == b"FATAL" || f.severity == b"PANIC"
}

enum Route {
    /// Part of a run copied to the client.
    Forward,
    /// Copy the run including this message now (synthesized responses may follow).
    ForwardThenFlush,
    Drop,
    /// Send these bytes instead of this message.
    Replace(bytes::Bytes),
    Broken(PgError),
}

/// An ErrorResponse frame with the quoted name `from` replaced by `to`.
fn rename_in_error(frame: &[u8], from: &[u8], to: &[u8]) -> Option<bytes::Bytes> {
    let quoted = [&b"\""[..], from, b"\""].concat();
    let at = frame
        .windows(quoted.len())
        .position(|w| w == quoted.as_slice())?;
    let mut body = Vec::with_capacity(frame.len() + to.len());
    body.extend_from_slice(&frame[5..at + 1]);
    body.extend_from_slice(to);
    body.extend_from_slice(&frame[at + 1 + from.len()..]);
    let mut out = bytes::BytesMut::with_capacity(body.len() + 5);
    out.extend_from_slice(b"E");
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    Some(out.freeze())
}

/// The label: the command tag of a completed statement, else what its text said.
fn command_of(tag: u8, body: &[u8], guess: Command) -> Command {
    match tag {
        b'C' => Command::from_tag(body.strip_suffix(b"\0").unwrap_or(body)),
        _ => guess,
    }
}
