//! What a server connection still owes: one unit per request sent (client's or the proxy's),
//! in order, and what to do with each unit's responses.
//!
//! Invariants:
//! - Units complete in the order they were sent; the server answers strictly in order.
//! - After an ErrorResponse to an extended-protocol message, the server ignores everything up
//!   to the next Sync, so every unit before the next Sync unit is dropped unanswered.
//! - A `Synthesize` unit produces its bytes exactly when it reaches the front, so proxy-made
//!   responses keep their place in the client's response stream.
//! - The connection may be released only when the queue is empty (and the client is not in the
//!   middle of an extended-protocol block, and the server said ReadyForQuery 'I').

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

/// Which request a unit answers; decides which response message completes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Sync, Query or FunctionCall: completed by ReadyForQuery.
    Sync,
    Query,
    FunctionCall,
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
}

impl Kind {
    /// Does a response with this tag complete a unit of this kind?
    #[inline]
    pub fn completed_by(self, tag: u8) -> bool {
        match self {
            Kind::Sync | Kind::Query | Kind::FunctionCall => tag == b'Z',
            Kind::Parse => matches!(tag, b'1' | b'E'),
            Kind::Bind => matches!(tag, b'2' | b'E'),
            Kind::Close => matches!(tag, b'3' | b'E'),
            Kind::Describe => matches!(tag, b'T' | b'n' | b'E'),
            Kind::Execute => matches!(tag, b'C' | b'I' | b's' | b'E'),
        }
    }
    #[inline]
    pub fn ends_block(self) -> bool {
        matches!(self, Kind::Sync | Kind::Query | Kind::FunctionCall)
    }
}

#[derive(Debug)]
pub enum Action {
    /// The client's request: its responses go to the client.
    Forward,
    /// The proxy's own request: its responses are dropped, except errors.
    Swallow,
    /// The tenant context at session level, sent before a statement that cannot run in a
    /// transaction block (dropped like `Swallow`); its ReadyForQuery confirms it.
    SessionContext,
    /// Applying the client's startup parameters (dropped like `Swallow`). An error means the
    /// client's parameters are invalid (PostgreSQL would have refused the connection): the
    /// client gets it as FATAL and the server connection, in an unknown state, is closed.
    SyncParams,
    /// A request the proxy substituted so that it fails on the server (with PostgreSQL's own
    /// effects on the transaction); its ErrorResponse is replaced by these bytes.
    ReplaceError(Bytes),
    /// No request was sent; these bytes stand in for its response.
    Synthesize(Bytes),
}

#[derive(Debug)]
pub struct Unit {
    pub kind: Kind,
    pub action: Action,
    /// Prepared statement created by this request (undone if it fails).
    pub stmt: Option<u64>,
    /// The client's name for that statement, if the client asked for it.
    pub name: Option<Box<[u8]>>,
    /// When the request was forwarded (statement latency metrics).
    pub sent: Option<Instant>,
    /// The statement's text, kept only when query statistics or the slow log need it.
    pub text: Option<crate::querystats::QueryText>,
    /// Shared statement this Bind/Describe uses (invalidated if its plan went stale), and the
    /// client's name for it (errors name that, not the proxy's).
    pub uses: Option<u64>,
    pub alias: Option<Box<[u8]>>,
    /// How many CopyDone/CopyFail the client had sent when this request was sent.
    pub copy_epoch: u32,
    /// The statement's command as its text says (Query, Execute): its label if it fails.
    pub guess: crate::metrics::Command,
    /// Position of the request in the transaction model (`server::txn`): its answer narrows
    /// the model there.
    pub seq: u32,
    /// The tenant-context statement this Parse creates: its `CtxStatements` bit and the
    /// Parse's number.
    pub ctx_parse: Option<(u64, u32)>,
    /// A lone COMMIT / ROLLBACK (Query or Execute): whether it succeeds or fails, no
    /// transaction block is left after it (`client/lost.rs` answers a lost one so).
    pub ends: bool,
}

impl Unit {
    pub fn new(kind: Kind, action: Action, seq: u32) -> Unit {
        Unit {
            kind,
            action,
            stmt: None,
            name: None,
            sent: None,
            text: None,
            uses: None,
            alias: None,
            copy_epoch: 0,
            guess: crate::metrics::Command::Other,
            seq,
            ctx_parse: None,
            ends: false,
        }
    }
}

#[derive(Debug, Default)]
pub struct Pending {
    q: VecDeque<Unit>,
    /// CopyDone/CopyFail messages the client has sent (stamps units; see
    /// [`Pending::forget_syncs_behind_front`]).
    copy_epoch: u32,
}

impl Pending {
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
    #[inline]
    pub fn len(&self) -> usize {
        self.q.len()
    }
    /// The client sent CopyDone or CopyFail.
    pub fn copy_ended(&mut self) {
        self.copy_epoch = self.copy_epoch.wrapping_add(1);
    }

    #[inline]
    pub fn push(&mut self, kind: Kind, action: Action, seq: u32) {
        self.push_unit(Unit::new(kind, action, seq));
    }
    #[inline]
    pub fn push_unit(&mut self, mut unit: Unit) {
        unit.copy_epoch = self.copy_epoch;
        self.q.push_back(unit);
    }
    #[inline]
    pub fn back(&self) -> Option<&Unit> {
        self.q.back()
    }
    #[inline]
    pub fn back_mut(&mut self) -> Option<&mut Unit> {
        self.q.back_mut()
    }
    #[inline]
    pub fn front(&self) -> Option<&Unit> {
        self.q.front()
    }
    #[inline]
    pub fn front_mut(&mut self) -> Option<&mut Unit> {
        self.q.front_mut()
    }
    #[inline]
    pub fn pop(&mut self) -> Option<Unit> {
        self.q.pop_front()
    }
    /// Any request of the server's whose answer is still a ReadyForQuery?
    pub fn has_block_end(&self) -> bool {
        self.q
            .iter()
            .any(|u| u.kind.ends_block() && !matches!(u.action, Action::Synthesize(_)))
    }
    /// The first request of the client's still owed (not the proxy's own, not a stand-in).
    pub fn first_client_request(&self) -> Option<&Unit> {
        self.q
            .iter()
            .find(|u| matches!(u.action, Action::Forward | Action::ReplaceError(_)))
    }
    /// A Parse creating the client's statement `name` is still unanswered.
    pub fn parse_pending(&self, name: &[u8]) -> bool {
        self.q
            .iter()
            .any(|u| u.kind == Kind::Parse && u.name.as_deref() == Some(name))
    }
    /// Nothing owed by the server (only proxy-made answers waiting for their turn, if any).
    pub fn nothing_owed(&self) -> bool {
        self.q
            .iter()
            .all(|u| matches!(u.action, Action::Synthesize(_)))
    }
    /// Pop the synthesized units now at the front, handing their bytes to `emit`.
    #[inline]
    pub fn drain_synthesized(&mut self, mut emit: impl FnMut(&[u8])) {
        while let Some(Unit {
            action: Action::Synthesize(_),
            ..
        }) = self.q.front()
        {
            if let Some(Unit {
                action: Action::Synthesize(b),
                ..
            }) = self.q.pop_front()
            {
                emit(&b);
            }
        }
    }
    /// After an ErrorResponse to an extended-protocol request: drop the units the server will
    /// skip, handing each to `undo` (statements they created). PostgreSQL skips every message
    /// up to the next Sync, a simple Query or FunctionCall included (they get no answer at
    /// all); with `sync_only` false the skip stops at those too (the proxy sends a Sync in
    /// front of them itself). Returns the kind of the unit it stopped at, if any.
    pub fn skip_to_block_end(
        &mut self,
        sync_only: bool,
        mut undo: impl FnMut(&Unit),
    ) -> Option<Kind> {
        while let Some(u) = self.q.front() {
            let stops = match sync_only {
                true => u.kind == Kind::Sync,
                false => u.kind.ends_block(),
            };
            if stops && !matches!(u.action, Action::Synthesize(_)) {
                return Some(u.kind);
            }
            if let Some(u) = self.q.pop_front() {
                undo(&u);
            }
        }
        None
    }
    /// The server entered COPY IN mode for the request at the front: it ignores Sync
    /// messages until the copy ends, so the Syncs the client sent after that request and
    /// before its next CopyDone/CopyFail get no answer.
    pub fn forget_syncs_behind_front(&mut self) {
        let Some(epoch) = self.q.front().map(|u| u.copy_epoch) else {
            return;
        };
        let mut first = true;
        self.q.retain(|u| {
            let ignored = !first
                && u.kind == Kind::Sync
                && matches!(u.action, Action::Forward)
                && u.copy_epoch == epoch;
            first = false;
            !ignored
        });
    }

    pub fn clear(&mut self) {
        self.q.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_rules() {
        assert!(Kind::Execute.completed_by(b'C'));
        assert!(Kind::Execute.completed_by(b's'));
        assert!(!Kind::Execute.completed_by(b'D'));
        assert!(!Kind::Query.completed_by(b'E'));
        assert!(Kind::Describe.completed_by(b'n'));
        assert!(!Kind::Describe.completed_by(b't'));
    }

    #[test]
    fn skip_and_synthesize() {
        let mut p = Pending::default();
        p.push(Kind::Parse, Action::Forward, 0);
        p.push(Kind::Bind, Action::Synthesize(Bytes::from_static(b"2")), 0);
        p.push_unit(Unit {
            stmt: Some(9),
            ..Unit::new(Kind::Parse, Action::Forward, 0)
        });
        p.push(Kind::Sync, Action::Forward, 0);
        p.pop();
        let mut undone = vec![];
        assert_eq!(
            p.skip_to_block_end(true, |u| undone.extend(u.stmt)),
            Some(Kind::Sync)
        );
        assert_eq!(undone, vec![9]);
        assert_eq!(p.len(), 1);
        // A Query or FunctionCall after the failed request is skipped by the server too.
        let mut p = Pending::default();
        p.push(Kind::Execute, Action::Forward, 0);
        p.push(Kind::FunctionCall, Action::Forward, 0);
        p.push(Kind::Query, Action::Forward, 0);
        p.push(Kind::Sync, Action::Forward, 0);
        p.pop();
        assert_eq!(p.skip_to_block_end(true, |_| {}), Some(Kind::Sync));
        assert_eq!(p.len(), 1);
        let mut p = Pending::default();
        p.push(Kind::Query, Action::Forward, 0);
        assert_eq!(p.skip_to_block_end(false, |_| {}), Some(Kind::Query));
        let mut p = Pending::default();
        p.push(Kind::Close, Action::Synthesize(Bytes::from_static(b"3")), 0);
        let mut out = vec![];
        p.drain_synthesized(|b| out.extend_from_slice(b));
        assert_eq!(out, b"3");
        assert!(p.is_empty());
    }
}
