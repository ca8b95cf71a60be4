//! Replacing a running pgward process without refusing a connection or dropping a
//! transaction (`upgrade_socket`; docs/operations.md, "Upgrading without downtime").
//!
//! The conversation, over a local Unix socket (mode 0600) at `upgrade_socket`:
//! 1. The new process connects and says `Hello` ([`takeover`]).
//! 2. The old one answers `Listeners` with its listening sockets (SCM_RIGHTS): both now hold
//!    the same sockets, so the kernel's accept queue is never closed ([`listen`]).
//! 3. The new process starts serving on them, says `Ready` and serves the path itself.
//! 4. The old one stops accepting, wakes every client session, and each one moves at its next
//!    idle point: its socket and a [`record::SessionRecord`] go to the new process
//!    (`client::handover`). Sessions that cannot move (TLS, pinned) end as at a shutdown. The
//!    old process exits when no session is left, or after the shutdown drain bound.
//! 5. Meanwhile the new process sends cancel requests for keys it does not know to the old one.
//!
//! Invariants:
//! - Until `Ready`, the old process serves as before: a takeover that fails at any earlier
//!   step changes nothing for it. Every step of the conversation has a timeout.
//! - Sessions move only to a successor whose connection is healthy; after one failed send no
//!   further session is sent (they end as at a shutdown instead).

pub mod listen;
pub mod record;
pub mod systemd;
pub mod takeover;
pub mod transfer;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::proxy::Shared;
use transfer::Writer;

/// How long one step of the conversation may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// This process's side of a takeover, in [`Shared`].
#[derive(Default)]
pub struct State {
    /// Sessions move: the listeners went to a successor (read at every session wake-up).
    moving: AtomicBool,
    successor: Mutex<Option<Writer>>,
    /// Notified when the listeners were handed over.
    handed: Notify,
    /// The process this one took over from, while its connection lasts.
    predecessor: Mutex<Option<Writer>>,
    moved: AtomicUsize,
    /// Sessions received and not yet registered as clients (see [`Arriving`]).
    arriving: AtomicUsize,
}

/// A session received from the predecessor, counted until it is registered as a client (or
/// refused): a process does not exit while one is on its way in.
pub struct Arriving(Arc<Shared>);

impl Arriving {
    pub fn new(shared: &Arc<Shared>) -> Arriving {
        shared.upgrade.arriving.fetch_add(1, Ordering::AcqRel);
        Arriving(shared.clone())
    }
}

impl Drop for Arriving {
    fn drop(&mut self) {
        self.0.upgrade.arriving.fetch_sub(1, Ordering::AcqRel);
    }
}

impl State {
    /// The successor to send sessions to, once the listeners were handed over.
    #[inline]
    pub fn successor(&self) -> Option<Writer> {
        if !self.moving.load(Ordering::Acquire) {
            return None;
        }
        self.successor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_successor(&self, w: Writer) {
        *self.successor.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
        self.moving.store(true, Ordering::Release);
        self.handed.notify_waiters();
    }

    /// The successor's connection failed: no more sessions are sent there.
    pub fn successor_failed(&self, why: &str) {
        let was = self
            .successor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if was.is_some() {
            tracing::error!(error = %why, "upgrade: the connection to the new process failed; remaining clients stay here until shutdown");
        }
    }

    /// True once the listeners were handed over.
    pub fn handed_over(&self) -> bool {
        self.moving.load(Ordering::Acquire)
    }

    /// Resolves once the listeners were handed over.
    pub async fn wait_handed_over(&self) {
        loop {
            let n = self.handed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.handed_over() {
                return;
            }
            n.await;
        }
    }

    pub fn moved_one(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions moved to the successor so far.
    pub fn moved(&self) -> usize {
        self.moved.load(Ordering::Relaxed)
    }

    pub fn set_predecessor(&self, w: Option<Writer>) {
        *self.predecessor.lock().unwrap_or_else(|e| e.into_inner()) = w;
    }

    fn predecessor(&self) -> Option<Writer> {
        self.predecessor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A cancel request: to the client here with this key, or else (best effort) to the process
/// this one took over from, where that client may still be.
pub async fn cancel(shared: &Shared, pid: i32, secret: i32) {
    if shared.cancels.cancel(pid, secret).await {
        return;
    }
    match shared.upgrade.predecessor() {
        Some(w) => {
            let body = record::Message::Cancel { pid, secret }.encode();
            match tokio::time::timeout(STEP_TIMEOUT, w.send(&body, &[]))
                .await
                .map_err(std::io::Error::other)
            {
                Ok(Ok(())) => {
                    tracing::debug!(pid, "cancel request passed to the previous process")
                }
                Ok(Err(e)) | Err(e) => {
                    tracing::debug!(pid, error = %e, "cancel request could not be passed to the previous process")
                }
            }
        }
        None => tracing::debug!(pid, "cancel request for unknown key ignored"),
    }
}

/// Old process: wait until every client session moved or ended, at most `limit`.
pub async fn wait_for_sessions(shared: &Shared, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let busy = || !shared.clients.is_empty() || shared.upgrade.arriving.load(Ordering::Acquire) > 0;
    while tokio::time::Instant::now() < deadline && busy() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
