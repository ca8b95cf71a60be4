//! Before a client message is sent: a server connection, and the tenant context wherever the
//! transaction model (`server::txn`) cannot prove it is already in effect (T1).
//!
//! This is the only place that sends a tenant context. Every message that runs SQL (Parse,
//! Bind, Query, FunctionCall, and the proxy's own Parse of a shared statement) passes through
//! [`Session::begin`] with what it needs ([`Needs`]); the model decides, from every message
//! sent and every answer received, whether to send it as it is, with the context in front of
//! it, or to wait for the answers owed.

use std::sync::Arc;

use super::frontend::Step;
use super::session::Session;
use crate::protocol::backend::{self, PgError};
use crate::server::pending::{Action, Kind, Unit};
use crate::server::txn::{Decision, Msg, QueryEffect, SessionCtx};
use crate::server::{CtxPrep, Dirty};
use crate::sql::classify::{Analysis, Flags};
use crate::tenancy::context::CtxFrames;
use crate::tenancy::TenantCtx;

/// What a client message needs in place before it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Needs {
    /// A server connection only (Describe, Close, Execute; refused statements).
    Server,
    /// The tenant context in the transaction the message runs in.
    Context,
    /// A procedure (CALL, DO): outside a transaction block it may COMMIT or ROLLBACK inside
    /// itself, and what runs after that must still have the context, so it is set at session
    /// level first; inside a block a procedure cannot end it.
    Procedure,
    /// The context at session level, confirmed before the statement is sent: it cannot run
    /// in a transaction block (nor after anything else in one), or it ends its transaction
    /// part-way and goes on (`…; ROLLBACK; SELECT …` would roll back a context set inline).
    SessionFirst,
}

impl Needs {
    /// A lone transaction-control statement reads nothing, and for some nothing may run
    /// before them in their transaction (`SET TRANSACTION ISOLATION LEVEL` must come before
    /// any query; PostgreSQL refuses VACUUM after an Execute in the same implicit
    /// transaction): the context comes with the first statement that needs it instead.
    fn control_only(flags: Flags) -> bool {
        flags.contains(Flags::CONTROL_ONLY)
            || !flags.contains(Flags::NON_TXN)
                && (flags.contains(Flags::TXN_MODES)
                    || flags.contains(Flags::TXN_BEGIN)
                    || flags.contains(Flags::TXN_END))
    }

    /// For one statement about to be bound or parsed.
    pub(super) fn of_statement(flags: Flags) -> Needs {
        if Needs::control_only(flags) {
            Needs::Server
        } else if flags.contains(Flags::NON_TXN) && !flags.contains(Flags::TXN_END) {
            Needs::SessionFirst
        } else if flags.contains(Flags::UNCERTAIN) {
            Needs::Procedure
        } else {
            Needs::Context
        }
    }

    /// For a Parse of a statement (a procedure gets its session-level context at Bind, where
    /// it runs; a Parse only resolves names).
    pub(super) fn of_parse(flags: Flags) -> Needs {
        match Needs::of_statement(flags) {
            Needs::Procedure => Needs::Context,
            n => n,
        }
    }

    /// For a simple Query.
    pub(super) fn of_query(a: &Analysis) -> Needs {
        let flags = a.flags;
        if a.control_only || (a.statements == 1 && Needs::control_only(flags)) {
            Needs::Server
        } else if (flags.contains(Flags::NON_TXN) && !flags.contains(Flags::TXN_END))
            || flags.contains(Flags::AFTER_TXN_END)
            || flags.contains(Flags::TXN_MODES)
        {
            Needs::SessionFirst
        } else if flags.contains(Flags::UNCERTAIN) {
            Needs::Procedure
        } else {
            Needs::Context
        }
    }
}

/// Test-only: skip every context injection, to show what a miss does (with a baseline role:
/// a permission error). Not reachable from configuration.
#[doc(hidden)]
pub static SKIP_CONTEXT_FOR_TESTS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Transaction,
    Session,
}

impl Session {
    /// Make sure a server connection is held and that what the message needs is in place.
    /// `Some(step)`: the message was dealt with (held, or answered with the error of a failed
    /// checkout or context), or it must wait for a server ([`Step::NeedServer`]).
    /// `ends_block`: the message is answered by ReadyForQuery (Query, FunctionCall).
    pub(super) fn begin(
        &mut self,
        needs: Needs,
        ends_block: bool,
    ) -> Result<Option<Step>, PgError> {
        if self.server.is_none() {
            let Some(e) = self.acquire_error.take() else {
                return Ok(Some(Step::NeedServer));
            };
            self.answer_error(*e, ends_block);
            return Ok(Some(Step::Next));
        }
        if self.txn.session_ctx == SessionCtx::Failed {
            // The session-level context this message waited for failed; the client has that
            // error. The message is answered as PostgreSQL answers after an error.
            self.txn.session_ctx = SessionCtx::None;
            match ends_block {
                true => self.emit_local(|out| backend::ready_for_query(out, b'I')),
                false => self.txn.client_skip = true,
            }
            return Ok(Some(Step::Next));
        }
        let Some(t) = self.ctx.clone() else {
            return Ok(None);
        };
        let owed = self.pending.has_block_end();
        let (decision, scope) = match needs {
            Needs::Server => (Decision::Forward, Scope::Transaction),
            Needs::Context => (self.txn.decide(owed), Scope::Transaction),
            // In a block a procedure is atomic: the transaction's context covers it.
            Needs::Procedure if self.txn.in_block() => (self.txn.decide(owed), Scope::Transaction),
            Needs::Procedure | Needs::SessionFirst => match self.txn.session_ctx {
                SessionCtx::Confirmed => (Decision::Forward, Scope::Session),
                SessionCtx::Sent => (Decision::Hold, Scope::Session),
                _ if self.txn.idle_or_skipping() => {
                    self.send_session_first(&t);
                    (Decision::Hold, Scope::Session)
                }
                // Not certainly idle: wait for the answers owed (a Flush makes them come),
                // which tell.
                _ if !self.pending.nothing_owed() => return Ok(Some(self.await_answers())),
                // Mid-way in an extended-protocol block: at session level inline (it survives
                // a COMMIT inside a procedure; a statement that cannot run in a transaction
                // fails there, as on PostgreSQL).
                _ => (self.txn.decide_session(false), Scope::Session),
            },
        };
        match decision {
            Decision::Forward => Ok(None),
            Decision::Hold => Ok(Some(Step::Hold)),
            Decision::Inject { at_start } => {
                self.inject(&t, scope, at_start);
                Ok(None)
            }
        }
    }

    /// `Some(NeedServer)` when no server connection is held yet (and no failed attempt is
    /// waiting to be reported by [`Session::begin`]).
    pub(super) fn want_server(&mut self) -> Option<Step> {
        (self.server.is_none() && self.acquire_error.is_none()).then_some(Step::NeedServer)
    }

    /// Report an error the proxy found for the current message, as PostgreSQL would: a Query
    /// gets it and ReadyForQuery, an extended-protocol message gets it and the rest of its
    /// block is skipped.
    fn answer_error(&mut self, e: PgError, ends_block: bool) {
        if ends_block {
            crate::metrics::error(e.code.as_bytes());
            self.emit_local(|out| {
                e.encode(out);
                backend::ready_for_query(out, b'I');
            });
        } else {
            self.fail_extended(e);
        }
    }

    /// Send the context's Parse (once per connection), Bind and Execute.
    fn inject(&mut self, t: &Arc<TenantCtx>, scope: Scope, at_start: bool) {
        if SKIP_CONTEXT_FOR_TESTS.load(std::sync::atomic::Ordering::Relaxed) {
            return; // a deliberate miss (tests of the fail-closed setup only)
        }
        let frames: &CtxFrames = match scope {
            Scope::Transaction => &t.local,
            Scope::Session => {
                self.dirty.insert(Dirty::TENANT_SESSION);
                &t.session
            }
        };
        let Some(co) = self.server.as_mut() else {
            return;
        };
        let n = match co.conn().ctx.prepare(frames.bit) {
            CtxPrep::Nothing => None,
            CtxPrep::Parse(n) => {
                self.sout.extend_from_slice(&frames.parse);
                Some(n)
            }
            CtxPrep::Reparse(n) => {
                self.sout.extend_from_slice(&frames.reparse);
                let seq = self.txn.sent(Msg::Extended);
                self.pending.push(Kind::Close, Action::Swallow, seq);
                Some(n)
            }
        };
        if let Some(n) = n {
            let seq = self.txn.sent(Msg::Extended);
            self.pending.push_unit(Unit {
                ctx_parse: Some((frames.bit, n)),
                ..Unit::new(Kind::Parse, Action::Swallow, seq)
            });
        }
        let seq = self.txn.sent(Msg::Context);
        self.pending.push(Kind::Bind, Action::Swallow, seq);
        self.pending.push(Kind::Execute, Action::Swallow, seq);
        if at_start {
            self.sout.extend_from_slice(&frames.unnamed);
            self.txn.ctx_portal = true;
        } else {
            self.sout.extend_from_slice(&frames.named);
            self.pending.push(Kind::Close, Action::Swallow, seq);
        }
    }

    /// The context at session level as a Query of its own; the message that needs it waits
    /// for its ReadyForQuery.
    fn send_session_first(&mut self, t: &Arc<TenantCtx>) {
        self.dirty.insert(Dirty::TENANT_SESSION);
        self.sout.extend_from_slice(&t.session_query);
        let seq = self.txn.sent(Msg::Query(QueryEffect::Plain));
        self.pending.push(Kind::Query, Action::SessionContext, seq);
        self.txn.session_ctx = SessionCtx::Sent;
    }
}
