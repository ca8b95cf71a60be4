//! One pooled PostgreSQL connection: connecting and authenticating ([`connect`]), what it
//! still owes its client ([`pending`]), its session parameters ([`params`]) and the prepared
//! statements that exist on it ([`prepared`]).

pub mod connect;
pub mod params;
pub mod pending;
pub mod prepared;
pub mod query;
pub mod txn;

use std::time::Instant;

use bytes::BytesMut;

use crate::net::Stream;
pub use connect::{connect, ServerError};
use params::ServerParams;
use prepared::ServerStatements;

/// Session state a client left on this connection that must be undone before reuse (T2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dirty(pub u32);

impl Dirty {
    pub const SETTINGS: Dirty = Dirty(1);
    pub const ROLE: Dirty = Dirty(1 << 1);
    pub const PREPARED: Dirty = Dirty(1 << 2);
    pub const TEMP: Dirty = Dirty(1 << 3);
    pub const CURSORS: Dirty = Dirty(1 << 4);
    pub const LISTEN: Dirty = Dirty(1 << 5);
    pub const ADVISORY: Dirty = Dirty(1 << 6);
    /// Tenant context applied at session level (statements that cannot run in a transaction).
    pub const TENANT_SESSION: Dirty = Dirty(1 << 7);
    /// Something the proxy cannot see through (DO, CALL, …): reset everything.
    pub const UNKNOWN: Dirty = Dirty(1 << 8);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn contains(self, o: Dirty) -> bool {
        self.0 & o.0 == o.0
    }
    pub fn insert(&mut self, o: Dirty) {
        self.0 |= o.0;
    }
}

/// The tenant-context statements of one server connection, one bit each
/// (`CtxFrames::bit`).
///
/// Invariant: a bit is in `ready` only when the server answered a Parse of its statement
/// with ParseComplete and no context Parse was sent since (nor DEALLOCATE ALL); it leaves
/// `ready` when anything may have removed the statement (a failed or skipped Parse,
/// DEALLOCATE ALL). A Parse sent and not yet answered may still be skipped (the server
/// ignores messages after an error until Sync), so nothing that depends on it is sent on
/// trust: a use before its answer prepares the statement again, Close first.
#[derive(Debug, Default, Clone, Copy)]
pub struct CtxStatements {
    ready: u64,
    sent: u64,
    /// Counts context Parses sent (and clears): only the answer to the latest one counts.
    latest: u32,
}

/// What must precede a use of a context statement.
#[derive(Debug, PartialEq, Eq)]
pub enum CtxPrep {
    /// It exists on the server.
    Nothing,
    /// Never sent here: Parse it (the answer carries this number to [`CtxStatements::parsed`]).
    Parse(u32),
    /// A Parse of it may be unanswered: Close, then Parse.
    Reparse(u32),
}

impl CtxStatements {
    /// What to send before using `bit`'s statement; records the Parse as sent.
    pub fn prepare(&mut self, bit: u64) -> CtxPrep {
        if self.ready & bit != 0 {
            return CtxPrep::Nothing;
        }
        self.latest = self.latest.wrapping_add(1);
        let again = self.sent & bit != 0;
        self.sent |= bit;
        match again {
            true => CtxPrep::Reparse(self.latest),
            false => CtxPrep::Parse(self.latest),
        }
    }
    /// The server answered Parse number `n` of `bit`'s statement with ParseComplete.
    pub fn parsed(&mut self, bit: u64, n: u32) {
        if n == self.latest {
            self.ready |= bit;
        }
    }
    /// A Parse of `bit`'s statement failed or was skipped.
    pub fn lost(&mut self, bit: u64) {
        self.ready &= !bit;
    }
    /// Every statement was deallocated.
    pub fn clear(&mut self) {
        self.ready = 0;
        self.sent = 0;
        self.latest = self.latest.wrapping_add(1);
    }
}

pub struct ServerConn {
    pub id: u64,
    /// What `SHOW SERVERS` shows of it, wherever it is.
    pub info: std::sync::Arc<crate::pool::servers::ServerInfo>,
    pub stream: Stream,
    /// Bytes read from the server and not yet processed. Kept with the connection.
    pub rbuf: BytesMut,
    /// BackendKeyData of this backend, for forwarding cancels.
    pub pid: i32,
    pub secret: i32,
    pub params: ServerParams,
    pub statements: ServerStatements,
    /// Which tenant-context statements are prepared here.
    pub ctx: CtxStatements,
    pub created: Instant,
    pub last_used: Instant,
}

#[cfg(test)]
mod tests {
    use super::{CtxPrep, CtxStatements};

    #[test]
    fn a_context_statement_is_trusted_only_once_its_latest_parse_is_answered() {
        let mut c = CtxStatements::default();
        assert_eq!(c.prepare(1), CtxPrep::Parse(1));
        // Used again before the answer: the first Parse may yet be skipped.
        assert_eq!(c.prepare(1), CtxPrep::Reparse(2));
        c.parsed(1, 1); // an older answer: the Close+Parse behind it may still fail
        assert_eq!(c.prepare(1), CtxPrep::Reparse(3));
        c.parsed(1, 3);
        assert_eq!(c.prepare(1), CtxPrep::Nothing);
        assert_eq!(c.prepare(2), CtxPrep::Parse(4));
        c.lost(1);
        assert_eq!(c.prepare(1), CtxPrep::Reparse(5));
        c.parsed(1, 5);
        // DEALLOCATE ALL sent before an answer arrives: the answer proves nothing.
        c.clear();
        c.parsed(2, 4);
        assert_eq!(c.prepare(2), CtxPrep::Parse(7));
        assert_eq!(c.prepare(1), CtxPrep::Parse(8));
    }
}
