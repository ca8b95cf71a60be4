//! The session loop of one authenticated client: one task, one state struct, one poll loop.
//!
//! Data path: bytes from the client are framed in `cin` and handled message by message
//! (`frontend.rs`): forwarded to `sout`, rewritten, or answered by the proxy. Bytes from the
//! server are framed in the server's `rbuf` and handled by `relay.rs`: forwarded to `cout`
//! in runs, or swallowed when they answer the proxy's own requests. [`Session::poll_io`]
//! moves bytes in all four directions at once, so a client pipelining large requests while
//! the server streams large results never deadlocks, and memory stays bounded: a side is not
//! read while the buffer it feeds is above `HIGH_WATER`.
//!
//! Invariants:
//! - In transaction mode the server connection is held from the first message of a
//!   transaction to the ReadyForQuery 'I' that ends it with nothing outstanding
//!   ([`Session::maybe_release`]); it goes back to the pool only through `release.rs`.
//! - Nothing here awaits while holding a lock.
//! - `poll_io` is the only place that waits; it is cancel-safe (no partial state on Pending).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::cancel::CancelSlot;
use super::frontend::Flow;
use super::statements::ClientStatements;
use crate::config::{PoolMode, SessionStatePolicy};
use crate::metrics::LabelSet;
use crate::net::Stream;
use crate::pool::{Checkout, Pool};
use crate::protocol::backend::PgError;
use crate::proxy::{ClientInfo, Shared};
use crate::server::params::ClientParams;
use crate::server::pending::Pending;
use crate::server::txn::TxnModel;
use crate::server::Dirty;
use crate::tenancy::TenantCtx;

/// Stop reading a side while the buffer it feeds holds more than this.
pub const HIGH_WATER: usize = 256 * 1024;
const READ_CHUNK: usize = 8 * 1024;

pub struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) info: Arc<ClientInfo>,
    /// The pool of the current or next transaction: `home`, or its tenant's own database's.
    pub(super) pool: Arc<Pool>,
    /// The pool of the client's database and user.
    pub(super) home: Arc<Pool>,
    pub(super) mode: PoolMode,
    pub(super) policy: SessionStatePolicy,
    /// The tenant the client selected (identity, guards, labels).
    pub(super) tenant: Option<Arc<TenantCtx>>,
    /// The client's class in the pool's fair queue (tenant id, `""` for plain clients).
    pub(super) class: crate::pool::ClassKey,
    /// Counts the client for its tenant's `max_client_connections`.
    pub(super) _tenant_slot: Option<crate::tenancy::limits::TenantSlot>,
    /// The context its transactions get: the tenant's, or the database's for plain clients
    /// when it has a baseline role; `None` when there is nothing to set.
    pub(super) ctx: Option<Arc<TenantCtx>>,
    pub(super) labels: Arc<LabelSet>,
    pub(super) params: ClientParams,
    pub(super) max_message: usize,
    pub(super) cancel: Arc<CancelSlot>,
    /// The BackendKeyData this client was given.
    pub(super) key: (i32, i32),

    pub(super) client: Stream,
    pub(super) cin: BytesMut,
    pub(super) cout: BytesMut,
    pub(super) server: Option<Checkout>,
    pub(super) sout: BytesMut,

    /// Responses the server still owes, in order.
    pub(super) pending: Pending,
    /// Where the server's transaction boundaries are (T1): decides the tenant context,
    /// skipping and release. The one description of the protocol/transaction state.
    pub(super) txn: TxnModel,
    /// The next client message waits for answers owed (the session keeps reading the client).
    pub(super) hold: bool,
    /// The client sent Terminate after requests the server is still answering: their
    /// responses are delivered (as PostgreSQL would) before the session ends.
    pub(super) terminating: bool,
    /// Session state left on the server by this client (T2).
    pub(super) dirty: Dirty,
    /// Pinned to its server connection (policy `pin`, or session mode).
    pub(super) pinned: bool,
    pub(super) statements: ClientStatements,
    /// When the first message of the statement being built was forwarded (extended protocol).
    pub(super) stmt_started: Option<Instant>,
    /// Running mark for per-statement latency inside a multi-statement Query.
    pub(super) stmt_mark: Option<Instant>,
    /// The server connection was lost or is in an unknown state: close it.
    pub(super) server_broken: bool,
    /// What the server said before it went away: its FATAL, relayed (the one error the
    /// client gets) or held back for a client that stays connected (`lost.rs`).
    pub(super) server_fatal: ServerFatal,
    /// The transaction whose server connection died, answered without a server until the
    /// client ends it (`lost.rs`).
    pub(super) lost: Option<super::lost::Lost>,
    /// Bounds on waiting (`query_timeout`, `idle_transaction_timeout`).
    pub(super) timers: Timers,
    /// This client's place in `max_client_connections`, given back when the session ends.
    pub(super) _slot: super::Counted,
    /// Why the last checkout failed, until the message that needed it is answered with it.
    pub(super) acquire_error: Option<Box<PgError>>,
    /// Query statistics / slow log, when configured: (stats on, slow threshold, tenant).
    pub(super) observe: Option<(bool, Option<std::time::Duration>, Arc<str>)>,
    /// Text of the statement the next Execute runs (only kept when `observe` is set).
    pub(super) exec_text: Option<crate::querystats::QueryText>,
    /// Text of the last unnamed Parse (only kept when `observe` is set).
    pub(super) unnamed_text: Option<bytes::Bytes>,
    /// Command of the last unnamed Parse's text, and of the statement the next Execute runs:
    /// the label of a statement that fails (no command tag).
    pub(super) unnamed_cmd: crate::metrics::Command,
    pub(super) exec_cmd: crate::metrics::Command,
    /// Session effects of the last unnamed Parse, noted again at each Bind of it.
    pub(super) unnamed_effects: crate::sql::classify::Flags,
    /// The unnamed statement on the current server connection was parsed by this client
    /// during this checkout (otherwise it is another client's, or none).
    pub(super) unnamed_here: bool,
}

/// The deadlines of the session loop. The query timer runs while the server owes answers and
/// restarts whenever one of them completes (`completions`); the idle timer runs while the
/// client holds a transaction open and the server owes nothing.
#[derive(Default)]
pub(super) struct Timers {
    /// Answers the server completed (requests popped from `pending`).
    pub completions: u64,
    /// (since, completions then) of the running query timer.
    query: Option<(Instant, u64)>,
    /// Since when the client holds a transaction open without sending anything.
    idle: Option<Instant>,
}

pub(super) enum Event {
    ClientData,
    ClientEof,
    ServerData,
    ServerEof,
    ClientError(std::io::Error),
    ServerError(std::io::Error),
}

/// A FATAL from the server before its connection ended.
#[derive(Default)]
pub(super) enum ServerFatal {
    #[default]
    None,
    /// Forwarded to the client, which is closed after it.
    Relayed,
    /// Not forwarded: the client stays and is told by `lost.rs`.
    Held(Box<PgError>),
}

/// Why a session ended; decides what the client is told.
pub enum End {
    /// Client sent Terminate or closed.
    ClientGone,
    /// Send this error and close.
    Fatal(PgError),
}

impl Session {
    pub async fn run(mut self: Box<Self>) -> End {
        let end = self.run_inner().await;
        if let End::Fatal(e) = &end {
            tracing::info!(client = self.info.id, user = %self.info.user, error = %e, "closing client connection");
        }
        self.finish(&end).await;
        end
    }

    async fn run_inner(&mut self) -> End {
        loop {
            if let Err(e) = self.process_server() {
                return End::Fatal(e);
            }
            // Only reading the server breaks it (relay.rs): a lost connection is dealt with
            // before any client message is handled.
            if self.server_broken {
                if let Some(end) = self.server_lost() {
                    return end;
                }
            }
            let flow = match self.terminating {
                true => {
                    self.cin.clear(); // nothing after Terminate is read
                    if !self.pending.has_block_end() {
                        return End::ClientGone;
                    }
                    Ok(Flow::Continue)
                }
                false => self.process_client(),
            };
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::NeedServer) => {
                    // The one place a session waits for the pool; the message that asked is
                    // handled again with the connection (or the error) in hand.
                    self.acquire_error = self.acquire_server().await.err().map(Box::new);
                    continue;
                }
                Ok(Flow::Terminate) => {
                    // Wait for the answers only if the server owes them without more input: up
                    // to the last ReadyForQuery owed (PostgreSQL flushes there).
                    if !self.pending.has_block_end() || self.server.is_none() {
                        return End::ClientGone;
                    }
                    self.terminating = true;
                }
                Err(e) => return End::Fatal(e),
            }
            self.maybe_release();
            // After a takeover, an idle session moves to the new process (handover.rs). Boxed:
            // needed once, its state is not kept in every client's task.
            if self.shared.upgrade.handed_over() {
                if let Some(end) = Box::pin(self.hand_over()).await {
                    return end;
                }
            }
            // Between transactions, a shutdown ends the session (checked at every wake-up;
            // idle clients are closed when the process exits after draining).
            if self.server.is_none()
                && self
                    .shared
                    .shutting_down
                    .load(std::sync::atomic::Ordering::Acquire)
            {
                return End::Fatal(PgError::fatal(
                    "57P01",
                    "terminating connection due to administrator command (pgward shutting down)",
                ));
            }
            let deadline = self.deadline();
            let info = self.info.clone();
            let io = async {
                match deadline {
                    None => Some(poll_fn(|cx| self.poll_io(cx)).await),
                    Some(at) => {
                        let io = poll_fn(|cx| self.poll_io(cx));
                        tokio::time::timeout_at(at.into(), io).await.ok()
                    }
                }
            };
            // `KILL` / `KILL_CLIENT` first: a busy client is not spared by always having data.
            let ev = tokio::select! {
                biased;
                _ = info.kill.notified() => None,
                ev = io => Some(ev),
            };
            let ev = match ev {
                // Woken to move to a successor process (handover.rs), not killed.
                None if !info.killed.load(std::sync::atomic::Ordering::Acquire) => continue,
                None => {
                    return End::Fatal(PgError::fatal(
                        "57P01",
                        "terminating connection due to administrator command (pgward KILL)",
                    ))
                }
                Some(Some(ev)) => ev,
                Some(None) => match self.expired() {
                    Some(end) => return end,
                    None => continue,
                },
            };
            if matches!(ev, Event::ClientData) {
                self.timers.idle = None;
            }
            match ev {
                Event::ClientData | Event::ServerData => {}
                Event::ClientEof => return End::ClientGone,
                Event::ClientError(e) => {
                    tracing::debug!(client = self.info.id, error = %e, "client connection error");
                    return End::ClientGone;
                }
                Event::ServerEof | Event::ServerError(_) => {
                    if let Event::ServerError(e) = &ev {
                        tracing::warn!(pool = self.pool.name(), error = %e, "server connection error");
                    }
                    // Deliver whatever the server said last (e.g. a FATAL 57P01) first.
                    let _ = self.process_server();
                    self.server_broken = true;
                    if let Some(end) = self.server_lost() {
                        return end;
                    }
                }
            }
        }
    }

    /// When the loop must stop waiting, if a bound applies now.
    fn deadline(&mut self) -> Option<Instant> {
        let p = &self.pool.db.pool;
        if self.server.is_none() {
            self.timers.query = None;
            self.timers.idle = None;
            return None;
        }
        let owed = !self.pending.nothing_owed() && !self.txn.copy_in;
        if owed && !p.query_timeout.is_zero() {
            self.timers.idle = None;
            let since = match self.timers.query {
                Some((t, c)) if c == self.timers.completions => t,
                _ => {
                    let now = Instant::now();
                    self.timers.query = Some((now, self.timers.completions));
                    now
                }
            };
            return Some(since + p.query_timeout);
        }
        self.timers.query = None;
        if !owed && !p.idle_transaction_timeout.is_zero() && !self.txn.is_idle() {
            let since = *self.timers.idle.get_or_insert_with(Instant::now);
            return Some(since + p.idle_transaction_timeout);
        }
        self.timers.idle = None;
        None
    }

    /// A deadline passed: the session ends if the bound it was for still applies.
    fn expired(&mut self) -> Option<End> {
        let p = &self.pool.db.pool;
        if let Some((_, c)) = self.timers.query {
            if c != self.timers.completions || self.pending.nothing_owed() {
                return None; // progress since: the timer starts again
            }
            // The server's state is unknown: stop what it runs and close the connection.
            crate::metrics::timeout("query");
            super::cancel::cancel_in_background(&self.cancel);
            self.server_broken = true;
            return Some(End::Fatal(PgError::fatal(
                "57014",
                format!(
                    "pgward: canceling statement due to query_timeout ({}): the server did not answer in time; its connection was closed",
                    humantime::format_duration(p.query_timeout)
                ),
            )));
        }
        if self.timers.idle.is_some() && !self.txn.is_idle() && self.pending.nothing_owed() {
            // Rolled back and returned to the pool by `finish`, as for a client that left.
            crate::metrics::timeout("idle_transaction");
            return Some(End::Fatal(PgError::fatal(
                "25P03",
                format!(
                    "pgward: terminating connection due to idle_transaction_timeout ({}): the transaction was open with nothing sent",
                    humantime::format_duration(p.idle_transaction_timeout)
                ),
            )));
        }
        None
    }

    /// The server connection is gone: a transaction-mode client stays, its transaction
    /// answered as failed (`lost.rs`; `None`); any other gets one FATAL, PostgreSQL's if it
    /// sent one, else pgward's.
    fn server_lost(&mut self) -> Option<End> {
        if self.keeps_client_on_loss() {
            let held = match std::mem::take(&mut self.server_fatal) {
                ServerFatal::Held(e) => Some(*e),
                _ => None,
            };
            self.lose_server(held);
            return None;
        }
        Some(match self.server_fatal {
            ServerFatal::Relayed => End::ClientGone,
            _ => End::Fatal(PgError::fatal(
                "08006",
                "pgward: server connection lost; the transaction was aborted",
            )),
        })
    }

    /// Move bytes: write what is buffered, read what is readable. Ready when there is
    /// something new to process.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        loop {
            let mut progress = false;
            if !self.cout.is_empty() {
                match Pin::new(&mut self.client).poll_write(cx, &self.cout) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Event::ClientEof),
                    Poll::Ready(Ok(n)) => {
                        self.cout.advance(n);
                        self.pool
                            .stats
                            .bytes_sent
                            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        progress = true;
                        if self.cout.is_empty() && self.client.is_tls() {
                            let _ = Pin::new(&mut self.client).poll_flush(cx);
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::ClientError(e)),
                    Poll::Pending => {}
                }
            }
            if let Some(co) = self.server.as_mut() {
                let conn = co.conn();
                if !self.sout.is_empty() {
                    match Pin::new(&mut conn.stream).poll_write(cx, &self.sout) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Event::ServerEof),
                        Poll::Ready(Ok(n)) => {
                            self.sout.advance(n);
                            progress = true;
                            if self.sout.is_empty() && conn.stream.is_tls() {
                                let _ = Pin::new(&mut conn.stream).poll_flush(cx);
                            }
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Event::ServerError(e)),
                        Poll::Pending => {}
                    }
                }
                if self.cout.len() < HIGH_WATER {
                    if conn.rbuf.capacity() - conn.rbuf.len() < 1024 {
                        conn.rbuf.reserve(READ_CHUNK);
                    }
                    match poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.rbuf) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Event::ServerEof),
                        Poll::Ready(Ok(_)) => return Poll::Ready(Event::ServerData),
                        Poll::Ready(Err(e)) => return Poll::Ready(Event::ServerError(e)),
                        Poll::Pending => {}
                    }
                }
            }
            // While held (messages waiting for earlier answers), keep reading up to the
            // bound, so that a client that went away is noticed even if the server never
            // answers what it is waiting for.
            if self.sout.len() < HIGH_WATER && (!self.hold || self.cin.len() < HIGH_WATER) {
                let idle = self.cin.is_empty() && self.cin.capacity() == 0;
                let ready = match (&self.client, idle) {
                    // An idle client costs no buffer until it has something to say.
                    (Stream::Tcp(t), true) => t.poll_read_ready(cx).is_ready(),
                    _ => true,
                };
                if ready {
                    if self.cin.capacity() - self.cin.len() < 1024 {
                        self.cin.reserve(READ_CHUNK);
                    }
                    match poll_read_buf(Pin::new(&mut self.client), cx, &mut self.cin) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Event::ClientEof),
                        Poll::Ready(Ok(n)) => {
                            self.pool
                                .stats
                                .bytes_received
                                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                            return Poll::Ready(Event::ClientData);
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Event::ClientError(e)),
                        Poll::Pending => {}
                    }
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Send the client an error of the proxy's own (counted by SQLSTATE).
    pub(super) fn emit_error(&mut self, e: &PgError) {
        crate::metrics::error(e.code.as_bytes());
        e.encode(&mut self.cout);
    }

    /// Write everything buffered for the client (used at the end of the session).
    pub(super) async fn flush_client(&mut self) {
        use tokio::io::AsyncWriteExt;
        if !self.cout.is_empty() {
            let _ = self.client.write_all(&self.cout).await;
            self.cout.clear();
        }
        let _ = self.client.flush().await;
    }
}
