//! Cancel requests. Each client gets a proxy-issued BackendKeyData; a CancelRequest carrying
//! it is forwarded to the PostgreSQL backend serving that client at that moment, and to
//! nothing else.
//!
//! A cancel for a client that is waiting for a server connection ends that wait: its statement
//! fails with 57014, as it would have on the server.
//!
//! A cancel racing with the end of the client's transaction must not hit the next client of
//! that backend: the target is read and an in-flight count raised under one lock, the release
//! clears the target under the same lock and, if a cancel is in flight, keeps the connection
//! out of the pool until PostgreSQL has closed the cancel connection (it sends the signal
//! before closing; a signal reaching an idle backend is ignored).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::config::{Database, Host};
use crate::protocol::startup::encode_cancel;

/// How long a forwarded cancel may take (connect, send, PostgreSQL closing the connection).
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// The database, the host the backend is on, its pid and secret.
type Target = (Arc<Database>, Arc<Host>, i32, i32);

#[derive(Default)]
pub struct CancelSlot {
    target: Mutex<Option<Target>>,
    in_flight: AtomicUsize,
    settled: Notify,
    /// Wakes the client's wait for a server connection (its statement is cancelled there).
    waiting: Notify,
}

/// A cancel being forwarded; lowers the in-flight count when dropped.
struct Forwarding<'a>(&'a CancelSlot);

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.settled.notify_waiters();
    }
}

impl CancelSlot {
    pub fn attach(&self, db: Arc<Database>, host: Arc<Host>, pid: i32, secret: i32) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some((db, host, pid, secret));
    }
    pub fn detach(&self) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    /// The backend to cancel, counted as in flight until the guard is dropped.
    fn start(&self) -> Option<(Target, Forwarding<'_>)> {
        let t = self.target.lock().unwrap_or_else(|e| e.into_inner());
        let target = t.clone()?;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Some((target, Forwarding(self)))
    }
    /// A cancel for the current target is being forwarded (read after `detach`: it can only
    /// go down).
    pub fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
    /// Resolves when a cancel arrives while no backend is attached (the client is waiting for
    /// one). Only cancels sent while this is being awaited count.
    pub async fn cancelled_while_waiting(&self) {
        self.waiting.notified().await
    }

    /// Wait until no cancel is in flight (each is bounded by its own timeout).
    pub async fn settled(&self) {
        loop {
            let n = self.settled.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !self.in_flight() {
                return;
            }
            n.await;
        }
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    map: DashMap<(i32, i32), Arc<CancelSlot>>,
}

impl CancelRegistry {
    /// Issue a fresh (pid, secret) for a client.
    pub fn register(&self) -> (i32, i32, Arc<CancelSlot>) {
        loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            let secret = rand::random::<i32>();
            if pid == 0 {
                continue;
            }
            let slot = Arc::new(CancelSlot::default());
            if let dashmap::Entry::Vacant(v) = self.map.entry((pid, secret)) {
                v.insert(slot.clone());
                return (pid, secret, slot);
            }
        }
    }
    /// Register a key issued by the process this one took over from (a moved client keeps
    /// its BackendKeyData). `None` if this process already issued that key.
    pub fn adopt(&self, pid: i32, secret: i32) -> Option<Arc<CancelSlot>> {
        match self.map.entry((pid, secret)) {
            dashmap::Entry::Vacant(v) => {
                let slot = Arc::new(CancelSlot::default());
                v.insert(slot.clone());
                Some(slot)
            }
            dashmap::Entry::Occupied(_) => None,
        }
    }
    pub fn unregister(&self, pid: i32, secret: i32) {
        self.map.remove(&(pid, secret));
    }

    /// Forward a cancel for the client with this key, if it is running something. False if
    /// no client here has the key.
    pub async fn cancel(&self, pid: i32, secret: i32) -> bool {
        let Some(slot) = self.map.get(&(pid, secret)).map(|s| s.clone()) else {
            return false;
        };
        forward(slot).await;
        true
    }
}

/// Cancel what the slot's backend runs now, in the background (a statement past
/// `query_timeout`: its server connection is closed, and PostgreSQL would otherwise run it to
/// the end). The target is read at once, before the session detaches it.
pub fn cancel_in_background(slot: &CancelSlot) {
    let target = slot
        .target
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some((db, host, pid, secret)) = target {
        tokio::spawn(async move { send_cancel(&db, &host, pid, secret).await });
    }
}

async fn forward(slot: Arc<CancelSlot>) {
    let Some(((db, host, spid, ssecret), _forwarding)) = slot.start() else {
        // Nothing running on a server: a client waiting for one stops waiting.
        slot.waiting.notify_waiters();
        return;
    };
    send_cancel(&db, &host, spid, ssecret).await;
}

async fn send_cancel(db: &Database, host: &Host, spid: i32, ssecret: i32) {
    let up = &db.upstream;
    let r = async {
        let tcp = TcpStream::connect((host.name.as_str(), host.port)).await?;
        let mut s = crate::net::tls::connect_upstream(tcp, up, &host.name)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        s.write_all(&encode_cancel(spid, ssecret)).await?;
        s.flush().await?;
        // PostgreSQL signals the backend, then closes: wait for that.
        let mut sink = [0u8; 64];
        while s.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let r = tokio::time::timeout(CANCEL_TIMEOUT, r)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("timed out")));
    if let Err(e) = r {
        tracing::warn!(database = %db.name, error = %e, "forwarding cancel request failed");
    }
}
