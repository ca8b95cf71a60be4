//! Cancel requests. Each client gets a proxy-issued BackendKeyData; a CancelRequest carrying
//! it is forwarded to the PostgreSQL backend serving that client at that moment, and to
//! nothing else. A client holding no server connection has nothing to cancel.
//!
//! Known race (shared with PgBouncer): a cancel that arrives as the client's transaction ends
//! may reach the backend after it was released; the slot is cleared before release, so the
//! window is the time PostgreSQL takes to deliver the signal.

use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::Database;
use crate::protocol::startup::encode_cancel;

#[derive(Default)]
pub struct CancelSlot {
    target: Mutex<Option<(Arc<Database>, i32, i32)>>,
}

impl CancelSlot {
    pub fn attach(&self, db: Arc<Database>, pid: i32, secret: i32) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some((db, pid, secret));
    }
    pub fn detach(&self) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    fn get(&self) -> Option<(Arc<Database>, i32, i32)> {
        self.target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    pub fn unregister(&self, pid: i32, secret: i32) {
        self.map.remove(&(pid, secret));
    }

    /// Forward a cancel for the client with this key, if it is running something.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let Some(slot) = self.map.get(&(pid, secret)).map(|s| s.clone()) else {
            tracing::debug!(pid, "cancel request for unknown key ignored");
            return;
        };
        let Some((db, spid, ssecret)) = slot.get() else {
            return;
        };
        let up = &db.upstream;
        let r = async {
            let tcp = TcpStream::connect((up.host.as_str(), up.port)).await?;
            let mut s = crate::net::tls::connect_upstream(tcp, up)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            s.write_all(&encode_cancel(spid, ssecret)).await?;
            s.flush().await?;
            s.shutdown().await
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(database = %db.name, error = %e, "forwarding cancel request failed");
        }
    }
}
