//! A transaction whose server connection died (a failover, a terminated backend, a crash):
//! the proxy answers the client as PostgreSQL answers a failed transaction, without a server,
//! until the client ends it; the client keeps its connection and its next transaction runs
//! on a new server connection (the new primary after a failover).
//!
//! What the client sees, modelled on PostgreSQL's own failed transaction:
//! - It is told once: an ErrorResponse 08006 (connection failure; the server's own FATAL, if
//!   it sent one, in the message and detail) at the request that was running, or at its next
//!   message when it was idle in the transaction. A ROLLBACK sent before it was told simply
//!   succeeds; a COMMIT fails.
//! - In a transaction block the ReadyForQuery status is 'E': every statement but
//!   ROLLBACK / COMMIT / END / ABORT fails with 25P02, which end it ("ROLLBACK", then 'I').
//!   Outside one (an implicit transaction) the status after the error is 'I'.
//! - After an error to an extended-protocol message everything up to Sync is skipped, as
//!   PostgreSQL skips it.
//!
//! Invariants:
//! - Only transaction-mode clients whose session did not live on that server are kept: a
//!   session-mode client, a pinned one, or one this transaction would pin (`session_state =
//!   "pin"`) gets a FATAL, as from PostgreSQL itself.
//! - While `Lost`, nothing runs SQL and no server connection is held; the next transaction
//!   starts from a fresh transaction model, so its tenant context is injected as for any
//!   transaction start (T1).
//! - Unknown means a block: when the model cannot exclude a transaction block, the client is
//!   answered as in one ('E'), so nothing it sends next runs outside the transaction it
//!   believes it is in. A COMMIT is never answered as committed.

use std::borrow::Cow;

use super::frontend::Step;
use super::session::Session;
use crate::config::{PoolMode, SessionStatePolicy};
use crate::protocol::backend::{self, PgError};
use crate::protocol::frontend as fe;
use crate::server::pending::Action;
use crate::server::txn::TxnModel;
use crate::server::Dirty;
use crate::sql::classify::{analyze, Flags};

/// The client's transaction after its server connection died.
#[derive(Debug)]
pub(super) struct Lost {
    /// The client has seen its transaction fail (pgward's error, or an earlier one).
    told: bool,
    /// It is in a (failed) transaction block: only its end leaves this state.
    block: bool,
    /// Skipping to Sync after an error to an extended-protocol message.
    skip: bool,
    /// Extended protocol: the unnamed statement / portal is an end of the transaction, and
    /// the names of such statements parsed while lost.
    end_stmt: bool,
    end_portal: bool,
    end_names: Vec<Box<[u8]>>,
    /// An end was executed: the next Sync leaves the block.
    ended: bool,
    /// Why the connection ended: the server's message if it sent a FATAL, and its SQLSTATE.
    cause: String,
    server_code: Option<Cow<'static, str>>,
}

/// How a statement ends the lost transaction, if it does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Rollback,
    Commit,
}

/// One COMMIT / END / ROLLBACK / ABORT (not AND CHAIN, not TO SAVEPOINT, not PREPARED).
fn end_of(sql: &[u8]) -> Option<End> {
    let a = analyze(sql, false, &|_| false);
    let plain_end = a.statements == 1
        && a.flags.contains(Flags::TXN_END)
        && !a.flags.contains(Flags::TXN_BEGIN)
        && !a.flags.contains(Flags::NON_TXN);
    if !plain_end {
        return None;
    }
    let word: Vec<u8> = sql
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_alphabetic())
        .map(|b| b.to_ascii_uppercase())
        .collect();
    // Anything not plainly a rollback counts as a COMMIT: it fails when not yet told.
    Some(match &word[..] {
        b"ROLLBACK" | b"ABORT" => End::Rollback,
        _ => End::Commit,
    })
}

const ABORTED: &str =
    "current transaction is aborted, commands ignored until end of transaction block";

impl Session {
    /// Is a client whose server connection dies now kept (answered by [`Lost`])? Not when
    /// its session lived on that server: session mode, pinned, or about to be pinned
    /// (`session_state = "pin"` and state this transaction left that would pin it).
    pub(super) fn keeps_client_on_loss(&self) -> bool {
        let lasting = Dirty(self.dirty.0 & !Dirty::TENANT_SESSION.0);
        let pins = self.policy == SessionStatePolicy::Pin && !lasting.is_empty();
        self.mode == PoolMode::Transaction && !self.pinned && !pins && !self.terminating
    }

    /// The server connection died: answer what it owed as a failed transaction, drop it, and
    /// go on without a server. `fatal`: the server's FATAL, if it sent one.
    pub(super) fn lose_server(&mut self, fatal: Option<PgError>) {
        let (cause, server_code) = match fatal {
            Some(e) => (e.message, Some(e.code)),
            None => ("the server closed the connection".to_string(), None),
        };
        tracing::info!(
            client = self.info.id,
            pool = self.pool.name(),
            %cause,
            "server connection lost during a transaction; the client stays connected"
        );
        let block = self.txn.lost_in_block();
        let mut lost = Lost {
            // Nothing to tell when the client knows its transaction failed, or has none.
            told: self.txn.certainly_aborted() || self.txn.drops_until_sync() || self.txn.is_idle(),
            block,
            skip: self.txn.drops_until_sync(),
            end_stmt: false,
            end_portal: false,
            end_names: Vec::new(),
            ended: false,
            cause,
            server_code,
        };
        // The status after the first block the loss fails: none is left after a lone
        // COMMIT / ROLLBACK, whatever its outcome; otherwise what the model allows.
        let mut status = match self.pending.first_client_request().is_some_and(|u| u.ends) {
            true => b'I',
            false if block => b'E',
            false => b'I',
        };
        let mut last_ready = None;
        // What the server owed, answered in order as PostgreSQL answers a failed request.
        while let Some(u) = self.pending.pop() {
            if let (crate::server::pending::Kind::Parse, Some(n)) = (u.kind, &u.name) {
                self.statements.remove_created(n, u.stmt);
            }
            match (&u.action, u.kind.ends_block()) {
                (Action::Swallow | Action::SyncParams | Action::SessionContext, _) => continue,
                (Action::Synthesize(b), false) => {
                    if !lost.skip {
                        self.cout.extend_from_slice(b);
                    }
                    continue;
                }
                _ => {}
            }
            lost.block = status == b'E';
            let sync = u.kind == crate::server::pending::Kind::Sync;
            if !u.kind.ends_block() || sync {
                if !lost.skip {
                    let e = lost.in_flight_error();
                    self.emit_error(&e);
                    lost.skip = true;
                }
                if sync {
                    backend::ready_for_query(&mut self.cout, status);
                    last_ready = Some(status);
                    lost.skip = false;
                    status = if block { b'E' } else { b'I' };
                }
            } else if !lost.skip {
                // A Query or FunctionCall (while skipping to Sync, PostgreSQL skips them too:
                // no answer at all).
                let e = lost.in_flight_error();
                self.emit_error(&e);
                backend::ready_for_query(&mut self.cout, status);
                last_ready = Some(status);
                status = if block { b'E' } else { b'I' };
            }
        }
        // Where the client is left: as the status it was or will be given says.
        lost.block = match (lost.skip, last_ready) {
            (true, _) => status == b'E',
            (false, Some(s)) => s == b'E',
            (false, None) => block,
        };
        if let Some(co) = self.server.take() {
            self.detach(&co);
            // Dropped: the connection is closed, never returned to the pool.
        }
        self.sout.clear();
        self.txn = TxnModel::default();
        self.hold = false;
        self.dirty = Default::default();
        self.server_broken = false;
        self.unnamed_here = false;
        self.stmt_started = None;
        self.stmt_mark = None;
        self.lost = (lost.skip || lost.block || !lost.told).then_some(lost);
    }

    /// A client message while [`Lost`]: answered here, nothing reaches a server.
    pub(super) fn on_lost(&mut self, tag: u8, frame: &[u8]) -> Result<Step, PgError> {
        let body = &frame[5..];
        let Some(mut l) = self.lost.take() else {
            return Ok(Step::Next);
        };
        let status = |l: &Lost| if l.block { b'E' } else { b'I' };
        match tag {
            b'X' => {
                self.lost = Some(l);
                return Ok(Step::Terminate);
            }
            b'S' => {
                if !l.told && !l.skip {
                    self.emit_error(&l.error(false));
                }
                let done = l.ended || !l.block;
                backend::ready_for_query(&mut self.cout, if done { b'I' } else { b'E' });
                if done {
                    return Ok(Step::Next);
                }
                l.told = true;
                l.skip = false;
                l.end_portal = false;
            }
            // Skipped up to Sync; COPY messages are ignored outside COPY; Flush has nothing.
            _ if l.skip => {}
            b'd' | b'c' | b'f' | b'H' => {}
            b'Q' | b'F' => {
                let sql = match tag {
                    b'Q' => fe::query_text(body)
                        .ok_or_else(|| PgError::fatal("08P01", "invalid Query message"))?,
                    _ => b"",
                };
                let empty =
                    tag == b'Q' && sql.iter().all(|b| b.is_ascii_whitespace() || *b == b';');
                match (end_of(sql), l.told, l.block) {
                    (Some(_), true, true) | (Some(End::Rollback), false, true) => {
                        backend::command_complete(&mut self.cout, "ROLLBACK");
                        backend::ready_for_query(&mut self.cout, b'I');
                        return Ok(Step::Next);
                    }
                    (Some(_), false, _) => {
                        // A COMMIT of a transaction that is gone: it fails, and ends it.
                        self.emit_error(&l.error(false));
                        backend::ready_for_query(&mut self.cout, b'I');
                        return Ok(Step::Next);
                    }
                    _ if empty => {
                        self.cout.extend_from_slice(b"I\0\0\0\x04");
                        backend::ready_for_query(&mut self.cout, status(&l));
                    }
                    _ => {
                        let e = l.next_error();
                        self.emit_error(&e);
                        backend::ready_for_query(&mut self.cout, status(&l));
                        if !l.block {
                            return Ok(Step::Next);
                        }
                    }
                }
            }
            b'P' => {
                let p = fe::parse(body)
                    .ok_or_else(|| PgError::fatal("08P01", "invalid Parse message"))?;
                if l.told && l.block && end_of(p.query).is_some() {
                    self.cout.extend_from_slice(b"1\0\0\0\x04");
                    match p.name.is_empty() {
                        true => l.end_stmt = true,
                        false if l.end_names.len() < 16 => l.end_names.push(p.name.into()),
                        false => {}
                    }
                } else {
                    self.fail_lost(&mut l);
                }
            }
            b'B' => {
                let (portal, stmt, _) = fe::bind_names(body)
                    .ok_or_else(|| PgError::fatal("08P01", "invalid Bind message"))?;
                let is_end = match stmt.is_empty() {
                    true => l.end_stmt,
                    false => {
                        l.end_names.iter().any(|n| &n[..] == stmt)
                            || self
                                .statements
                                .get(stmt)
                                .is_some_and(|d| end_of(d.query()).is_some())
                    }
                };
                if l.told && l.block && is_end && portal.is_empty() {
                    self.cout.extend_from_slice(b"2\0\0\0\x04");
                    l.end_portal = true;
                } else {
                    self.fail_lost(&mut l);
                }
            }
            b'D' => {
                let (kind, name) = fe::target(body)
                    .ok_or_else(|| PgError::fatal("08P01", "invalid Describe message"))?;
                let end_stmt = match name.is_empty() {
                    true => l.end_stmt,
                    false => l.end_names.iter().any(|n| &n[..] == name),
                };
                if kind == b'P' && name.is_empty() && l.end_portal {
                    self.cout.extend_from_slice(b"n\0\0\0\x04");
                } else if kind == b'S' && l.told && end_stmt {
                    // No parameters, no rows.
                    self.cout.extend_from_slice(b"t\0\0\0\x06\0\0n\0\0\0\x04");
                } else {
                    self.fail_lost(&mut l);
                }
            }
            b'E' => {
                let portal = fe::execute_portal(body)
                    .ok_or_else(|| PgError::fatal("08P01", "invalid Execute message"))?;
                if portal.is_empty() && l.end_portal {
                    backend::command_complete(&mut self.cout, "ROLLBACK");
                    l.ended = true;
                } else {
                    self.fail_lost(&mut l);
                }
            }
            b'C' => {
                // PostgreSQL closes in a failed transaction too.
                let (kind, name) = fe::target(body)
                    .ok_or_else(|| PgError::fatal("08P01", "invalid Close message"))?;
                if kind == b'S' && !name.is_empty() {
                    self.statements.remove(name);
                    l.end_names.retain(|n| &n[..] != name);
                }
                self.cout.extend_from_slice(b"3\0\0\0\x04");
            }
            _ => {
                return Err(PgError::fatal(
                    "08P01",
                    format!("invalid frontend message type {}", tag as char),
                ))
            }
        }
        self.lost = Some(l);
        Ok(Step::Next)
    }

    /// An extended-protocol message fails: error, then skip to Sync.
    fn fail_lost(&mut self, l: &mut Lost) {
        let e = l.next_error();
        self.emit_error(&e);
        l.skip = true;
    }
}

impl Lost {
    /// The error that tells the client; `in_flight`: a request was running when it happened.
    fn error(&self, in_flight: bool) -> PgError {
        let msg = match in_flight {
            true => format!(
                "pgward: server connection lost while the request was running ({}); the transaction was rolled back, unless this was its COMMIT, whose outcome is unknown",
                self.cause
            ),
            false => format!(
                "pgward: server connection lost ({}); the transaction was rolled back",
                self.cause
            ),
        };
        // 08006 (connection failure): the client's connection to pgward is fine, its
        // server's is gone; what the server said is in the message and the detail.
        let e = PgError::error("08006", msg).with_hint(
            "The connection is still usable: end the transaction (ROLLBACK) and retry it.",
        );
        match &self.server_code {
            Some(code) => e.with_detail(format!(
                "The server ended its connection with SQLSTATE {code}."
            )),
            None => e,
        }
    }

    /// The error for a statement sent now: the news if not told yet, else PostgreSQL's 25P02.
    fn next_error(&mut self) -> PgError {
        self.answer(false)
    }

    /// The same for a request that was running when the connection died.
    fn in_flight_error(&mut self) -> PgError {
        self.answer(true)
    }

    fn answer(&mut self, in_flight: bool) -> PgError {
        let told = std::mem::replace(&mut self.told, true);
        match told && self.block {
            true => PgError::error("25P02", ABORTED),
            false => self.error(in_flight),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_of_a_lost_transaction() {
        assert!(end_of(b"ROLLBACK") == Some(End::Rollback));
        assert!(end_of(b"  abort;") == Some(End::Rollback));
        assert!(end_of(b"COMMIT") == Some(End::Commit));
        assert!(end_of(b"end") == Some(End::Commit));
        assert!(end_of(b"ROLLBACK TO SAVEPOINT a").is_none());
        assert!(end_of(b"COMMIT AND CHAIN").is_none());
        assert!(end_of(b"COMMIT PREPARED 'x'").is_none());
        assert!(end_of(b"ROLLBACK; SELECT 1").is_none());
        assert!(end_of(b"SELECT 1").is_none());
    }
}
