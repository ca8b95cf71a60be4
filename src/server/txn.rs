//! Where the server's transaction boundaries are: the one model that decides whether the next
//! statement of a client needs its tenant context (T1), whether the server is skipping
//! messages, and whether the connection may be released.
//!
//! The model is the set of states the server may be in *after it has processed every message
//! sent so far*. Each message sent (the client's or the proxy's) maps every possible state to
//! the states PostgreSQL can move to on it, success and failure alike ([`step`]). Answers
//! narrow the set at the position of the message they answer (a ReadyForQuery reports the
//! status, an ErrorResponse to an extended-protocol message starts a skip to Sync), and the
//! messages sent after it are applied again from there ([`TxnModel::answered`]). Everything
//! else follows from the set:
//!
//! - the context is needed when some possible state is outside a transaction that has it;
//! - injecting it is harmful when some possible state is an aborted transaction block (the
//!   injected statements would fail with 25P02 and make PostgreSQL skip what the client sent,
//!   a ROLLBACK included); then the proxy waits for the answers already owed
//!   ([`Decision::Hold`]);
//! - the server is certainly skipping to Sync when every possible state is a skip state: the
//!   client's messages up to Sync are dropped, as PostgreSQL drops them, and expect no answer.
//!
//! Invariants:
//! - Soundness: the set always contains the server's real state. Every transition includes
//!   the failure outcome, statements whose effect on the transaction is not known are given
//!   every outcome ([`Effect::Unknown`]), and a response that contradicts the set (a model
//!   miss) resets it to the safe side: no context assumed ([`TxnModel::ready`]).
//! - "Context" means the tenant's settings are in effect in the *current* transaction, set
//!   with SET LOCAL semantics; they end with it. The only context that outlives a transaction
//!   is the session-level one applied before statements that cannot run in a transaction block
//!   (T4), recorded in `session_ctx` once PostgreSQL confirmed it and until the reset.
//! - Plain clients (no context to apply) use the same model for skipping and release; their
//!   decisions never inject.

use std::collections::VecDeque;

use crate::sql::classify::Flags;

/// One possible server state. `_C` variants: the tenant context is in effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum St {
    /// No transaction: the next statement starts one.
    Idle = 0,
    /// An implicit transaction (extended-protocol messages since the last Sync).
    Implicit = 1,
    ImplicitC = 2,
    /// An explicit transaction block (after BEGIN).
    Block = 3,
    BlockC = 4,
    /// A failed transaction block: only ROLLBACK, COMMIT and ROLLBACK TO run.
    Aborted = 5,
    AbortedC = 6,
    /// After an error to an extended-protocol message: ignoring everything up to Sync, which
    /// then leaves the server idle.
    Skip = 7,
    /// The same inside a transaction block: Sync leaves it aborted.
    SkipBlock = 8,
    SkipBlockC = 9,
}

const ALL: [St; 10] = [
    St::Idle,
    St::Implicit,
    St::ImplicitC,
    St::Block,
    St::BlockC,
    St::Aborted,
    St::AbortedC,
    St::Skip,
    St::SkipBlock,
    St::SkipBlockC,
];

/// A set of [`St`].
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct States(u16);

impl States {
    pub const fn of(list: &[St]) -> States {
        let mut bits = 0u16;
        let mut i = 0;
        while i < list.len() {
            bits |= 1 << list[i] as u8;
            i += 1;
        }
        States(bits)
    }
    pub const IDLE: States = States::of(&[St::Idle]);
    const SKIPPING: States = States::of(&[St::Skip, St::SkipBlock, St::SkipBlockC]);
    const ABORTED: States = States::of(&[St::Aborted, St::AbortedC]);
    const NO_CONTEXT: States = States::of(&[St::Idle, St::Implicit, St::Block]);
    const IN_BLOCK: States = States::of(&[St::Block, St::BlockC, St::Aborted, St::AbortedC]);
    /// Between extended-protocol messages and their Sync.
    const MID_BLOCK: States = States::of(&[
        St::Implicit,
        St::ImplicitC,
        St::Skip,
        St::SkipBlock,
        St::SkipBlockC,
    ]);

    #[inline]
    pub fn contains(self, s: St) -> bool {
        self.0 & (1 << s as u8) != 0
    }
    #[inline]
    fn intersects(self, o: States) -> bool {
        self.0 & o.0 != 0
    }
    #[inline]
    fn within(self, o: States) -> bool {
        self.0 & !o.0 == 0
    }
    #[inline]
    fn and(self, o: States) -> States {
        States(self.0 & o.0)
    }
    #[inline]
    fn is_empty(self) -> bool {
        self.0 == 0
    }
    fn iter(self) -> impl Iterator<Item = St> {
        ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl std::fmt::Debug for States {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// What running a statement can do to the transaction it runs in, from its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Runs inside the current transaction (or fails).
    Plain,
    /// BEGIN / START TRANSACTION.
    Begin,
    /// COMMIT / ROLLBACK / END / ABORT / PREPARE TRANSACTION.
    End,
    /// COMMIT AND CHAIN / ROLLBACK AND CHAIN: ends the transaction and starts a new block.
    EndChain,
    /// CALL, DO: a procedure may COMMIT or ROLLBACK inside (outside a transaction block),
    /// so whatever runs after that inside it is in a new transaction.
    MayCommit,
    /// Cannot run in a transaction block (VACUUM, CREATE INDEX CONCURRENTLY, …).
    NonTxn,
    /// Not known (a portal the proxy did not see bound, an unclassifiable text).
    Unknown,
}

impl Effect {
    /// The effect of one statement; for a simple Query of several statements, see
    /// [`QueryEffect`].
    pub fn of(flags: Flags) -> Effect {
        if flags.contains(Flags::UNCERTAIN) {
            Effect::MayCommit
        } else if flags.contains(Flags::TXN_END) && flags.contains(Flags::TXN_BEGIN) {
            Effect::EndChain
        } else if flags.contains(Flags::NON_TXN) && !flags.contains(Flags::TXN_END) {
            Effect::NonTxn
        } else if flags.contains(Flags::TXN_END) {
            Effect::End
        } else if flags.contains(Flags::TXN_BEGIN) {
            Effect::Begin
        } else {
            Effect::Plain
        }
    }
}

/// What a simple Query (one or several statements) can do to the transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryEffect {
    /// No transaction control: an implicit transaction ends with the Query.
    Plain,
    /// Opens a block (BEGIN, possibly after other statements) and does not end one.
    Begin,
    /// Ends the transaction with its last transaction-control statement; nothing follows the
    /// end.
    End,
    /// Anything else (ends part-way and goes on, procedures, statements that cannot run in a
    /// transaction block, unknown): every outcome.
    Any,
}

impl QueryEffect {
    pub fn of(flags: Flags) -> QueryEffect {
        if flags.contains(Flags::UNCERTAIN)
            || flags.contains(Flags::AFTER_TXN_END)
            || flags.contains(Flags::NON_TXN)
        {
            QueryEffect::Any
        } else if flags.contains(Flags::TXN_END) {
            match flags.contains(Flags::TXN_BEGIN) {
                // BEGIN …; COMMIT: ends; COMMIT AND CHAIN: a new block.
                true => QueryEffect::Any,
                false => QueryEffect::End,
            }
        } else if flags.contains(Flags::TXN_BEGIN) {
            QueryEffect::Begin
        } else {
            QueryEffect::Plain
        }
    }
}

/// A message sent to the server, as far as transactions are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Parse, Bind, Describe, Close: opens an implicit transaction; may fail.
    Extended,
    Execute(Effect),
    Sync,
    Query(QueryEffect),
    FunctionCall,
    /// The proxy's tenant context (`set_config(…, true)` by Bind/Execute): in effect in the
    /// current transaction from here on.
    Context,
}

/// One transition: the states PostgreSQL can be in after `m`, from `s`.
pub fn step(s: St, m: Msg) -> States {
    use St::*;
    let ctx = |c: bool, yes: St, no: St| if c { yes } else { no };
    match s {
        Skip | SkipBlock | SkipBlockC => match m {
            Msg::Sync => States::of(&[match s {
                Skip => Idle,
                SkipBlock => Aborted,
                _ => AbortedC,
            }]),
            // Everything else is skipped: a Query or FunctionCall too (no answer at all).
            _ => States::of(&[s]),
        },
        Idle | Implicit | ImplicitC => {
            let c = s == ImplicitC;
            let imp = ctx(c, ImplicitC, Implicit);
            match m {
                Msg::Sync => States::IDLE,
                Msg::Extended => States::of(&[imp, Skip]),
                Msg::Context => States::of(&[ImplicitC, Skip]),
                Msg::Execute(e) => match e {
                    Effect::Plain => States::of(&[imp, Skip]),
                    Effect::Begin => States::of(&[ctx(c, BlockC, Block), Skip]),
                    Effect::End => States::of(&[Idle, Skip]),
                    // "can only be used in transaction blocks": fails.
                    Effect::EndChain => States::of(&[Skip, Idle, Block]),
                    // Commits inside: what follows it runs without the context.
                    Effect::MayCommit => States::of(&[imp, Implicit, Skip]),
                    Effect::NonTxn => States::of(&[Idle, Implicit, imp, Skip]),
                    Effect::Unknown => States::of(&[Idle, Implicit, imp, Block, Skip]),
                },
                // The Query continues the implicit transaction; it ends with the Query.
                Msg::Query(q) => match q {
                    QueryEffect::Plain | QueryEffect::End => States::IDLE,
                    QueryEffect::Begin => {
                        States::of(&[Idle, ctx(c, BlockC, Block), ctx(c, AbortedC, Aborted)])
                    }
                    QueryEffect::Any => States::of(&[Idle, Block, Aborted]),
                },
                Msg::FunctionCall => States::IDLE,
            }
        }
        Block | BlockC => {
            let c = s == BlockC;
            let skip = ctx(c, SkipBlockC, SkipBlock);
            let aborted = ctx(c, AbortedC, Aborted);
            match m {
                Msg::Sync => States::of(&[s]),
                Msg::Extended => States::of(&[s, skip]),
                Msg::Context => States::of(&[BlockC, skip]),
                Msg::Execute(e) => match e {
                    // Procedures are atomic inside a block: they cannot commit.
                    Effect::Plain | Effect::Begin | Effect::MayCommit | Effect::NonTxn => {
                        States::of(&[s, skip])
                    }
                    Effect::End => States::of(&[Idle, skip]),
                    Effect::EndChain => States::of(&[Block, skip]),
                    Effect::Unknown => States::of(&[Idle, s, Block, skip]),
                },
                Msg::Query(q) => match q {
                    QueryEffect::Plain | QueryEffect::Begin => States::of(&[s, aborted]),
                    QueryEffect::End => States::of(&[Idle, aborted]),
                    QueryEffect::Any => States::of(&[Idle, s, Block, aborted, Aborted]),
                },
                Msg::FunctionCall => States::of(&[s, aborted]),
            }
        }
        Aborted | AbortedC => {
            let c = s == AbortedC;
            let skip = ctx(c, SkipBlockC, SkipBlock);
            let block = ctx(c, BlockC, Block);
            match m {
                Msg::Sync => States::of(&[s]),
                // A Parse/Bind of ROLLBACK runs; anything else fails.
                Msg::Extended => States::of(&[s, skip]),
                Msg::Context => States::of(&[skip]),
                Msg::Execute(e) => match e {
                    Effect::End => States::of(&[Idle, skip]),
                    Effect::EndChain => States::of(&[Block, skip]),
                    // ROLLBACK TO SAVEPOINT restores the block (and its context).
                    Effect::Plain => States::of(&[block, skip]),
                    Effect::Unknown => States::of(&[Idle, Block, block, skip]),
                    Effect::Begin | Effect::MayCommit | Effect::NonTxn => States::of(&[skip]),
                },
                Msg::Query(q) => match q {
                    QueryEffect::Plain | QueryEffect::Begin => States::of(&[s, block]),
                    QueryEffect::End => States::of(&[Idle, s]),
                    QueryEffect::Any => States::of(&[Idle, Block, block, Aborted, s]),
                },
                Msg::FunctionCall => States::of(&[s]),
            }
        }
    }
}

/// What to do before a client message that runs SQL (Parse, Bind, Query, FunctionCall).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The context is in effect wherever the message will run: send it as it is.
    Forward,
    /// Send the context first. `at_start`: the server is certainly idle, so no client portal
    /// exists and the unnamed portal may carry the context; otherwise a named one is used.
    Inject { at_start: bool },
    /// Some possible state needs the context and in another injecting it would change what
    /// PostgreSQL does: wait for the answers owed, then decide again.
    Hold,
}

/// The session-level context sent before a statement that cannot run in a transaction block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionCtx {
    None,
    /// Sent; the statement that needs it waits for the confirmation.
    Sent,
    /// PostgreSQL confirmed it (ReadyForQuery without error); it stays until the reset.
    Confirmed,
    /// It failed (the client has the error): the statement that waited for it is answered
    /// without running.
    Failed,
}

/// What an answer says about the server's state right after the message it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// ReadyForQuery with this transaction status.
    Ready(u8),
    /// ErrorResponse to an extended-protocol message: skipping to Sync.
    Failed,
}

/// A message sent and the states predicted right after it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    msg: Msg,
    after: States,
}

/// Messages kept for narrowing; an answer to an older one narrows nothing (still sound).
const MAX_LOG: usize = 256;

/// The transaction model of one client's server connection, plus what the proxy itself
/// decided about the client's message stream.
#[derive(Debug, Clone)]
pub struct TxnModel {
    states: States,
    /// Messages sent and not yet answered by a ReadyForQuery or a skip (oldest first);
    /// `log[0]` has sequence number `first`.
    log: VecDeque<Entry>,
    first: u32,
    pub session_ctx: SessionCtx,
    /// The proxy answered an extended-protocol message with an error while holding no server
    /// connection: the client's messages are dropped up to its Sync.
    pub client_skip: bool,
    /// The server is in COPY IN (CopyInResponse seen, the copy not ended yet).
    pub copy_in: bool,
    /// Effects of the portals bound in this session (most recent last), for Execute.
    portals: Vec<(Box<[u8]>, Effect)>,
    /// How many answers contradicted the model (each reset it to the safe side).
    pub misses: u64,
    /// The unnamed portal is the proxy's context, not a portal of the client's: executing it
    /// is answered as PostgreSQL answers for a portal that does not exist.
    pub ctx_portal: bool,
    /// The proxy sent a Flush after the last message (answers are on their way).
    pub flush_sent: bool,
}

impl Default for TxnModel {
    fn default() -> Self {
        TxnModel {
            states: States::IDLE,
            log: VecDeque::new(),
            first: 0,
            session_ctx: SessionCtx::None,
            client_skip: false,
            copy_in: false,
            portals: Vec::new(),
            misses: 0,
            ctx_portal: false,
            flush_sent: false,
        }
    }
}

/// Portals remembered for Execute; older ones count as [`Effect::Unknown`].
const MAX_PORTALS: usize = 16;

impl TxnModel {
    #[inline]
    pub fn states(&self) -> States {
        self.states
    }

    /// A server connection was just checked out: idle, nothing of anyone else's.
    pub fn checked_out(&mut self) {
        self.states = States::IDLE;
        self.session_ctx = SessionCtx::None;
        self.copy_in = false;
        self.first = self.first.wrapping_add(self.log.len() as u32);
        self.log.clear();
    }

    /// `m` was sent to the server; returns its sequence number (for [`TxnModel::answered`]).
    #[inline]
    pub fn sent(&mut self, m: Msg) -> u32 {
        if matches!(m, Msg::Sync | Msg::Query(_)) {
            self.ctx_portal = false; // the transaction (and its portals) end there
        }
        self.flush_sent = false;
        self.states = apply(self.states, m);
        if self.log.len() == MAX_LOG {
            self.log.pop_front();
            self.first = self.first.wrapping_add(1);
        }
        self.log.push_back(Entry {
            msg: m,
            after: self.states,
        });
        self.first.wrapping_add(self.log.len() as u32 - 1)
    }

    /// The message `seq` was answered with `outcome`: narrow the set there and apply the
    /// messages sent after it again.
    pub fn answered(&mut self, seq: u32, outcome: Outcome) {
        let idx = seq.wrapping_sub(self.first) as usize;
        if idx >= self.log.len() {
            return; // older than the log (or not sent through the model): nothing to narrow
        }
        let after = self.log[idx].after;
        let (compat, fallback) = match outcome {
            Outcome::Ready(b'T') => (
                States::of(&[St::Block, St::BlockC]),
                States::of(&[St::Block]),
            ),
            Outcome::Ready(b'E') => (
                States::of(&[St::Aborted, St::AbortedC]),
                States::of(&[St::Aborted]),
            ),
            Outcome::Ready(_) => (States::IDLE, States::IDLE),
            Outcome::Failed => (States::SKIPPING, States::of(&[St::Skip, St::SkipBlock])),
        };
        let known = after.and(compat);
        let mut s = if known.is_empty() {
            // The model missed: take what the server says, without the context.
            self.miss(after, outcome);
            fallback
        } else {
            known
        };
        self.log.drain(..=idx);
        self.first = seq.wrapping_add(1);
        for e in self.log.iter_mut() {
            s = apply(s, e.msg);
            e.after = s;
        }
        self.states = s;
        if matches!(outcome, Outcome::Ready(_)) && self.log.is_empty() {
            self.copy_in = false;
        }
    }

    /// The portal `name` was bound to a statement with effect `e`.
    pub fn bound(&mut self, name: &[u8], e: Effect) {
        if name.is_empty() {
            self.ctx_portal = false;
        }
        if let Some(i) = self.portals.iter().position(|(n, _)| &n[..] == name) {
            self.portals.remove(i);
        } else if self.portals.len() >= MAX_PORTALS {
            self.portals.remove(0);
        }
        self.portals.push((name.into(), e));
    }

    /// The effect of executing portal `name`.
    pub fn portal_effect(&self, name: &[u8]) -> Effect {
        self.portals
            .iter()
            .rev()
            .find(|(n, _)| &n[..] == name)
            .map_or(Effect::Unknown, |(_, e)| *e)
    }

    /// Every message sent has been answered, and no error since the last narrowing (an
    /// error narrows to the skip states at once): the server is not skipping.
    pub fn all_answered(&mut self) {
        let not_skipping = States(self.states.0 & !States::SKIPPING.0);
        if !not_skipping.is_empty() {
            self.states = not_skipping;
        }
        self.flush_sent = false;
    }

    /// Possibly skipping to Sync after an error.
    #[inline]
    pub fn may_be_skipping(&self) -> bool {
        self.states.intersects(States::SKIPPING)
    }

    #[cold]
    fn miss(&mut self, predicted: States, outcome: Outcome) {
        self.misses += 1;
        tracing::warn!(
            ?predicted,
            ?outcome,
            "transaction model contradicted by the server; assuming no tenant context"
        );
        crate::metrics::txn_model_miss();
    }

    /// Certainly skipping to Sync (the server's skip, or the proxy's own).
    #[inline]
    pub fn drops_until_sync(&self) -> bool {
        self.client_skip || (!self.states.is_empty() && self.states.within(States::SKIPPING))
    }

    /// Certainly idle: no transaction, nothing left of the client's on the server.
    #[inline]
    pub fn is_idle(&self) -> bool {
        self.states == States::IDLE && !self.copy_in
    }

    /// Idle, or skipping to Sync after an error outside a block: a Query of the proxy's own
    /// sent now either runs in a transaction of its own (nothing of the client's is open) or
    /// is skipped like everything the client sends after it.
    #[inline]
    pub fn idle_or_skipping(&self) -> bool {
        self.states.within(States::of(&[St::Idle, St::Skip])) && !self.copy_in
    }

    /// Possibly inside an extended-protocol block (between messages and their Sync).
    #[inline]
    pub fn mid_block(&self) -> bool {
        self.states.intersects(States::MID_BLOCK) || self.copy_in
    }

    /// Certainly in a transaction block (open or failed), not mid-way in extended messages.
    pub fn in_block(&self) -> bool {
        self.states.within(States::IN_BLOCK)
    }

    /// If the server vanished now, after failing whatever is unanswered: could the client
    /// be left in a transaction block? (Unknown counts as yes.)
    pub fn lost_in_block(&self) -> bool {
        const LEFT_IN_BLOCK: States = States::of(&[
            St::Block,
            St::BlockC,
            St::Aborted,
            St::AbortedC,
            St::SkipBlock,
            St::SkipBlockC,
        ]);
        self.states.is_empty() || self.states.intersects(LEFT_IN_BLOCK)
    }

    /// Possibly in a transaction block, open or failed.
    pub fn maybe_in_block(&self) -> bool {
        self.states.intersects(States::IN_BLOCK)
    }

    /// Before a client message that runs SQL in the current transaction, for a client with a
    /// context to apply. `pending`: answers are still owed (waiting can narrow the set).
    pub fn decide(&self, pending: bool) -> Decision {
        if self.session_ctx == SessionCtx::Confirmed || !self.states.intersects(States::NO_CONTEXT)
        {
            return Decision::Forward;
        }
        if self.states.intersects(States::ABORTED) && pending {
            return Decision::Hold;
        }
        // (Aborted and nothing owed cannot be: an aborted block is only known from a
        // ReadyForQuery, which also tells whether it is. Injecting is the safe side.)
        self.inject()
    }

    /// Before a statement that may commit inside itself (CALL, DO) or a Query that ends its
    /// transaction part-way: the context at session level, inline, wherever the statement
    /// can run at all.
    pub fn decide_session(&self, pending: bool) -> Decision {
        let runs_nowhere = States(States::ABORTED.0 | States::SKIPPING.0);
        if self.session_ctx == SessionCtx::Confirmed || self.states.within(runs_nowhere) {
            return Decision::Forward;
        }
        if self.states.intersects(States::ABORTED) && pending {
            return Decision::Hold;
        }
        self.inject()
    }

    fn inject(&self) -> Decision {
        Decision::Inject {
            at_start: self.states == States::IDLE,
        }
    }

    /// Certainly in a failed transaction block.
    pub fn certainly_aborted(&self) -> bool {
        !self.states.is_empty() && self.states.within(States::ABORTED)
    }
}

/// [`step`] over a set.
#[inline]
fn apply(states: States, m: Msg) -> States {
    let mut next = States::default();
    for s in states.iter() {
        next.0 |= step(s, m).0;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use St::*;

    fn run(start: St, msgs: &[Msg]) -> States {
        let mut m = TxnModel {
            states: States::of(&[start]),
            ..Default::default()
        };
        for x in msgs {
            m.sent(*x);
        }
        m.states
    }

    fn model(states: &[St]) -> TxnModel {
        TxnModel {
            states: States::of(states),
            ..Default::default()
        }
    }

    #[test]
    fn sync_ends_implicit_transactions_and_skips() {
        for s in [Idle, Implicit, ImplicitC, Skip] {
            assert_eq!(step(s, Msg::Sync), States::IDLE, "{s:?}");
        }
        assert_eq!(step(Block, Msg::Sync), States::of(&[Block]));
        assert_eq!(step(SkipBlockC, Msg::Sync), States::of(&[AbortedC]));
        assert_eq!(step(SkipBlock, Msg::Sync), States::of(&[Aborted]));
    }

    #[test]
    fn skipping_swallows_everything_but_sync() {
        for m in [
            Msg::Extended,
            Msg::Execute(Effect::End),
            Msg::Query(QueryEffect::Any),
            Msg::FunctionCall,
            Msg::Context,
        ] {
            assert_eq!(step(Skip, m), States::of(&[Skip]), "{m:?}");
            assert_eq!(step(SkipBlockC, m), States::of(&[SkipBlockC]), "{m:?}");
        }
    }

    #[test]
    fn context_holds_through_an_extended_block() {
        // inject, Parse, Bind, Execute SELECT: the context or a skip, never without it.
        let s = run(
            Idle,
            &[
                Msg::Context,
                Msg::Extended,
                Msg::Extended,
                Msg::Execute(Effect::Plain),
            ],
        );
        assert_eq!(s, States::of(&[ImplicitC, Skip]));
        assert_eq!(model(&[ImplicitC, Skip]).decide(true), Decision::Forward);
    }

    #[test]
    fn a_query_inside_an_extended_block_ends_the_transaction() {
        // asyncpg: Parse/Describe/Flush, then a simple Query (COPY): the Query commits the
        // implicit transaction; the next Parse needs the context again (issue: COPY).
        let s = run(
            Idle,
            &[
                Msg::Context,
                Msg::Extended,
                Msg::Extended,
                Msg::Query(QueryEffect::Plain),
            ],
        );
        assert!(s.contains(Idle));
        let m = TxnModel {
            states: s,
            ..Default::default()
        };
        assert!(matches!(m.decide(false), Decision::Inject { .. }));
        // A procedure gets the context at session level, except where it cannot run.
        assert!(matches!(
            model(&[ImplicitC]).decide_session(false),
            Decision::Inject { .. }
        ));
        assert_eq!(
            model(&[AbortedC, Skip]).decide_session(true),
            Decision::Forward
        );
        assert_eq!(
            model(&[Idle, AbortedC]).decide_session(true),
            Decision::Hold
        );
    }

    #[test]
    fn commit_executed_mid_block_loses_the_context() {
        let s = run(
            Idle,
            &[Msg::Context, Msg::Extended, Msg::Execute(Effect::End)],
        );
        assert_eq!(s, States::of(&[Idle, Skip]));
        let s = run(BlockC, &[Msg::Execute(Effect::EndChain), Msg::Extended]);
        assert!(
            s.contains(Block),
            "a chained block starts without the context"
        );
    }

    #[test]
    fn procedures_may_commit_outside_a_block_only() {
        assert!(step(ImplicitC, Msg::Execute(Effect::MayCommit)).contains(Implicit));
        assert!(!step(BlockC, Msg::Execute(Effect::MayCommit)).contains(Block));
    }

    #[test]
    fn begin_keeps_the_context_of_the_implicit_transaction() {
        assert_eq!(
            step(ImplicitC, Msg::Execute(Effect::Begin)),
            States::of(&[BlockC, Skip])
        );
        assert_eq!(
            step(ImplicitC, Msg::Query(QueryEffect::Begin)),
            States::of(&[Idle, BlockC, AbortedC])
        );
    }

    #[test]
    fn aborted_blocks_hold_the_injection() {
        // BEGIN; SELECT 1/0 sent with the context: idle, in the block, or failed in it.
        let mut m = model(&[Idle]);
        m.sent(Msg::Context);
        let q = m.sent(Msg::Query(QueryEffect::Begin));
        // (Skip: the context itself failed; the proxy then sends a Sync.)
        assert_eq!(m.states, States::of(&[Idle, BlockC, AbortedC, Skip]));
        assert_eq!(m.decide(true), Decision::Hold);
        // The ReadyForQuery tells which: an aborted block needs nothing (statements fail).
        let mut m2 = m.clone();
        m2.answered(q, Outcome::Ready(b'E'));
        assert_eq!(m2.decide(false), Decision::Forward);
        let mut m3 = m.clone();
        m3.answered(q, Outcome::Ready(b'I'));
        assert_eq!(m3.decide(false), Decision::Inject { at_start: true });
        let mut m4 = m;
        m4.answered(q, Outcome::Ready(b'T'));
        assert_eq!(m4.decide(false), Decision::Forward);
    }

    #[test]
    fn rollback_to_savepoint_restores_the_block() {
        assert_eq!(
            step(AbortedC, Msg::Query(QueryEffect::Plain)),
            States::of(&[BlockC, AbortedC])
        );
        assert_eq!(
            step(AbortedC, Msg::Execute(Effect::Plain)),
            States::of(&[BlockC, SkipBlockC])
        );
    }

    #[test]
    fn a_miss_falls_back_to_no_context() {
        // A Query without BEGIN cannot leave a block open: if the server says it did, the
        // model missed, and the context is not assumed.
        let mut m = model(&[Idle]);
        m.sent(Msg::Context);
        let q = m.sent(Msg::Query(QueryEffect::Plain));
        m.answered(q, Outcome::Ready(b'T'));
        assert_eq!(m.states, States::of(&[Block]));
        assert_eq!(m.misses, 1);
        assert_eq!(m.decide(false), Decision::Inject { at_start: false });
    }

    #[test]
    fn an_error_without_sync_means_skipping() {
        let mut m = TxnModel::default();
        m.sent(Msg::Context);
        m.sent(Msg::Extended);
        let e = m.sent(Msg::Execute(Effect::Plain));
        // Sent after the failing Execute but before its error was seen: skipped too.
        m.sent(Msg::Extended);
        assert!(!m.drops_until_sync());
        m.answered(e, Outcome::Failed);
        assert!(m.drops_until_sync());
        m.sent(Msg::Sync);
        assert!(m.is_idle());
        // With a Sync already sent behind the failure, the server is not skipping any more.
        let mut m = TxnModel::default();
        let p = m.sent(Msg::Extended);
        m.sent(Msg::Sync);
        m.answered(p, Outcome::Failed);
        assert!(!m.drops_until_sync());
        assert!(m.is_idle());
    }

    #[test]
    fn answers_narrow_at_their_position() {
        // Two blocks pipelined; the first one's ReadyForQuery narrows, the second is replayed.
        let mut m = model(&[Idle]);
        m.sent(Msg::Context);
        m.sent(Msg::Extended);
        m.sent(Msg::Execute(Effect::Begin));
        let s1 = m.sent(Msg::Sync);
        assert_eq!(m.states, States::of(&[Idle, BlockC]));
        m.sent(Msg::Extended);
        m.answered(s1, Outcome::Ready(b'T'));
        assert_eq!(m.states, States::of(&[BlockC, SkipBlockC]));
        // An answer older than the log narrows nothing.
        m.answered(s1, Outcome::Ready(b'I'));
        assert_eq!(m.states, States::of(&[BlockC, SkipBlockC]));
        assert_eq!(m.misses, 0);
    }

    #[test]
    fn effects_from_flags() {
        assert_eq!(Effect::of(Flags::default()), Effect::Plain);
        assert_eq!(Effect::of(Flags::TXN_BEGIN), Effect::Begin);
        assert_eq!(Effect::of(Flags::TXN_END), Effect::End);
        assert_eq!(
            Effect::of(Flags::TXN_END | Flags::TXN_BEGIN),
            Effect::EndChain
        );
        assert_eq!(Effect::of(Flags::UNCERTAIN), Effect::MayCommit);
        assert_eq!(Effect::of(Flags::NON_TXN), Effect::NonTxn);
        assert_eq!(
            QueryEffect::of(Flags::TXN_BEGIN | Flags::TXN_END),
            QueryEffect::Any
        );
        assert_eq!(QueryEffect::of(Flags::TXN_END), QueryEffect::End);
    }

    /// Every transition keeps or loses the context, never invents it: a state with the
    /// context is reached only from one with it, or by the proxy's Context.
    #[test]
    fn context_is_never_invented() {
        let has = |s: St| matches!(s, ImplicitC | BlockC | AbortedC | SkipBlockC);
        let msgs = [
            Msg::Extended,
            Msg::Sync,
            Msg::FunctionCall,
            Msg::Query(QueryEffect::Plain),
            Msg::Query(QueryEffect::Begin),
            Msg::Query(QueryEffect::End),
            Msg::Query(QueryEffect::Any),
        ];
        let effects = [
            Effect::Plain,
            Effect::Begin,
            Effect::End,
            Effect::EndChain,
            Effect::MayCommit,
            Effect::NonTxn,
            Effect::Unknown,
        ];
        let all_msgs = msgs
            .iter()
            .copied()
            .chain(effects.iter().map(|e| Msg::Execute(*e)));
        for m in all_msgs {
            for s in ALL {
                for t in step(s, m).iter() {
                    assert!(!has(t) || has(s), "{s:?} --{m:?}--> {t:?}");
                }
            }
        }
    }
}
