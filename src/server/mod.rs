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

pub struct ServerConn {
    pub id: u64,
    pub stream: Stream,
    /// Bytes read from the server and not yet processed. Kept with the connection.
    pub rbuf: BytesMut,
    /// BackendKeyData of this backend, for forwarding cancels.
    pub pid: i32,
    pub secret: i32,
    pub params: ServerParams,
    pub statements: ServerStatements,
    /// Which tenant-context statements (by setting count) are prepared here (bit n = n pairs).
    pub ctx_prepared: u64,
    pub created: Instant,
    pub last_used: Instant,
}
