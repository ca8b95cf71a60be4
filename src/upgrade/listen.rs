//! The running process's side: serve `upgrade_socket` and hand the listeners to a successor.
//!
//! Invariants:
//! - The socket is created at a temporary path, made mode 0600 (only this user may take
//!   the process over: a successor is trusted with client sessions without
//!   re-authentication) and renamed over `upgrade_socket`, so the path always names a
//!   socket that answers, never a half-made one.
//! - One successor at a time; until it says `Ready` (each step bounded: [`super::STEP_TIMEOUT`],
//!   [`READY_TIMEOUT`] for the successor's start) nothing changes here. After `Ready` the process stops accepting, wakes every
//!   session (they move at their next idle point) and begins its shutdown.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;

use super::record::{Message, VERSION};
use super::transfer::{self, Reader, Writer};
use super::STEP_TIMEOUT;
use crate::proxy::Shared;

/// How long the new process may take from receiving the listeners to `Ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The listening sockets a successor receives (duplicates of the ones this process accepts
/// on): the client listener, then the HTTP listener if there is one.
pub struct Handed {
    pub client: OwnedFd,
    pub http: Option<OwnedFd>,
}

/// Create the upgrade socket at `path` (temporary name, mode 0600, renamed over `path`).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let tmp = PathBuf::from(format!("{}.{}.tmp", path.display(), std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp)?;
    let r = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(l)
}

/// Serve the upgrade socket until the listeners were handed over.
pub fn spawn(
    listener: UnixListener,
    path: PathBuf,
    shared: Arc<Shared>,
    handed: Handed,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tracing::info!(path = %path.display(), "upgrade socket ready: a new pgward started with this configuration takes over");
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = shared.shutdown.notified() => return,
            };
            let conn = match conn {
                Ok((c, _)) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (reader, writer) = transfer::split(conn);
            match converse(&shared, reader, writer, &handed).await {
                Ok(()) => return, // handed over: the successor serves the path now
                Err(why) => {
                    tracing::error!(reason = %why, "upgrade: takeover by a new process failed; this process keeps serving")
                }
            }
        }
    })
}

/// One successor's conversation, up to its `Ready`.
async fn converse(
    shared: &Arc<Shared>,
    mut reader: Reader,
    writer: Writer,
    handed: &Handed,
) -> Result<(), String> {
    let pid = match next(&mut reader, STEP_TIMEOUT).await? {
        Message::Hello { version, pid } if version == VERSION => pid,
        Message::Hello { version, .. } => {
            return Err(format!(
                "the new process speaks upgrade version {version}, this one {VERSION}"
            ))
        }
        other => return Err(format!("unexpected {other:?} instead of Hello")),
    };
    tracing::info!(
        new_pid = pid,
        "upgrade: a new process asks to take over; handing over the listeners"
    );
    let mut fds = vec![handed.client.as_fd()];
    fds.extend(handed.http.as_ref().map(|h| h.as_fd()));
    let body = Message::Listeners {
        version: VERSION,
        http: handed.http.is_some(),
    }
    .encode();
    tokio::time::timeout(STEP_TIMEOUT, writer.send(&body, &fds))
        .await
        .map_err(|_| "timed out sending the listeners".to_string())?
        .map_err(|e| format!("sending the listeners: {e}"))?;
    // The new process starts serving first (loading `tenant_query` tenants may take a while).
    match next(&mut reader, READY_TIMEOUT).await? {
        Message::Ready { .. } => {}
        other => return Err(format!("unexpected {other:?} instead of Ready")),
    }
    let clients = shared.clients.len();
    tracing::info!(new_pid = pid, clients, "upgrade: the new process accepts on the listeners; this one stops accepting and moves its clients at their next idle point");
    shared.upgrade.set_successor(writer);
    for c in shared.clients.iter() {
        c.kill.notify_one(); // `killed` unset: a wake-up to move
    }
    shared.begin_shutdown();
    // The successor sends cancel requests for clients it does not have (yet).
    let s = shared.clone();
    tokio::spawn(async move {
        loop {
            match reader.recv().await {
                Ok(Some(f)) => match Message::decode(&f.body) {
                    Ok(Message::Cancel { pid, secret }) => {
                        let s = s.clone();
                        tokio::spawn(async move { super::cancel(&s, pid, secret).await });
                    }
                    Ok(other) => {
                        tracing::warn!(message = ?other, "upgrade: unexpected message from the new process ignored")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "upgrade: message from the new process ignored")
                    }
                },
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade: connection to the new process failed");
                    return;
                }
            }
        }
    });
    Ok(())
}

/// The next message, within `limit`.
async fn next(reader: &mut Reader, limit: Duration) -> Result<Message, String> {
    let f = tokio::time::timeout(limit, reader.recv())
        .await
        .map_err(|_| "the new process did not answer in time".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("the new process closed the upgrade connection")?;
    Message::decode(&f.body)
}
