//! The starting process's side: take the listeners over from a running process, then receive
//! its client sessions.
//!
//! Invariants:
//! - Nothing listening at `upgrade_socket` (no file, or a stale socket nobody accepts on for
//!   about a second, which is removed): start normally. Something listening that does not complete the
//!   conversation in time: fail with a clear error (the old process keeps serving).
//! - Received descriptors are checked (a listening TCP socket, a connected TCP socket)
//!   before use; anything else is closed and logged.

use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixStream;

use super::record::{Message, VERSION};
use super::transfer::{self, Reader, Writer};
use super::STEP_TIMEOUT;
use crate::proxy::Shared;

/// The listeners received from the old process, and the connection to it.
pub struct Inherited {
    pub client: std::net::TcpListener,
    pub http: Option<std::net::TcpListener>,
    reader: Reader,
    writer: Writer,
}

/// Ask the process serving `path` to hand over. `Ok(None)`: nobody serves it.
pub async fn take_over(path: &Path) -> Result<Option<Inherited>, String> {
    let conn = match tokio::time::timeout(STEP_TIMEOUT, connect(path)).await {
        Err(_) => {
            return Err(format!(
                "upgrade socket {}: connect timed out",
                path.display()
            ))
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            // Only a socket file is removed, never a file that happens to be at the path.
            let is_socket =
                std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
            if !is_socket {
                return Err(format!(
                    "upgrade_socket {} exists and is not a socket",
                    path.display()
                ));
            }
            tracing::info!(path = %path.display(), "upgrade socket is stale (no process behind it); removing it and starting normally");
            let _ = std::fs::remove_file(path);
            return Ok(None);
        }
        Ok(Err(e)) => return Err(format!("upgrade socket {}: {e}", path.display())),
        Ok(Ok(c)) => c,
    };
    tracing::info!(path = %path.display(), "upgrade: a pgward process is running; asking it to hand over");
    let (mut reader, writer) = transfer::split(conn);
    let hello = Message::Hello {
        version: VERSION,
        pid: std::process::id(),
    };
    step(writer.send(&hello.encode(), &[])).await?;
    let f = step(reader.recv())
        .await?
        .ok_or("the running process closed the upgrade connection")?;
    let http = match Message::decode(&f.body)? {
        Message::Listeners { version, http } if version == VERSION => http,
        other => return Err(format!("upgrade: unexpected answer {other:?}")),
    };
    let mut fds = f.fds.into_iter();
    let client = listener(fds.next()).ok_or("the client listener did not arrive")?;
    let http = match http {
        true => Some(listener(fds.next()).ok_or("the HTTP listener did not arrive")?),
        false => None,
    };
    tracing::info!(listen = ?client.local_addr().ok(), http = ?http.as_ref().and_then(|h| h.local_addr().ok()), "upgrade: received the listening sockets");
    Ok(Some(Inherited {
        client,
        http,
        reader,
        writer,
    }))
}

/// Connect to `path`. A refused connection is tried again for about a second: during a
/// takeover the path briefly names the old process's closed socket until the successor's
/// replaces it, and a stale-looking socket must not be removed then.
async fn connect(path: &Path) -> std::io::Result<UnixStream> {
    let mut tries = 0;
    loop {
        match UnixStream::connect(path).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries < 5 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            r => return r,
        }
    }
}

/// A received descriptor as a listening TCP socket.
fn listener(fd: Option<OwnedFd>) -> Option<std::net::TcpListener> {
    let sock = socket2::Socket::from(fd?);
    if !matches!(sock.r#type(), Ok(socket2::Type::STREAM)) || sock.local_addr().is_err() {
        return None;
    }
    sock.set_nonblocking(true).ok()?;
    Some(sock.into())
}

/// The rest of the conversation, once the listeners were taken.
pub struct Conversation {
    reader: Reader,
    writer: Writer,
}

impl Inherited {
    pub fn into_parts(
        self,
    ) -> (
        std::net::TcpListener,
        Option<std::net::TcpListener>,
        Conversation,
    ) {
        let c = Conversation {
            reader: self.reader,
            writer: self.writer,
        };
        (self.client, self.http, c)
    }
}

impl Conversation {
    /// This process accepts on the listeners now: tell the old process (it stops accepting
    /// and sends its sessions), and continue each session it sends. `Err` if the old process
    /// did not take the message (it gave up waiting and serves on): this process must exit.
    pub async fn ready(self, shared: &Arc<Shared>) -> Result<(), String> {
        let Conversation { mut reader, writer } = self;
        let ready = Message::Ready {
            pid: std::process::id(),
        };
        step(writer.send(&ready.encode(), &[])).await.map_err(|e| {
            format!("the running process did not take the Ready message ({e}); it keeps serving")
        })?;
        shared.upgrade.set_predecessor(Some(writer));
        let s = shared.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut moved = 0usize;
            loop {
                let f = match reader.recv().await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "upgrade: connection to the old process failed");
                        break;
                    }
                };
                let mut fds = f.fds.into_iter();
                match (Message::decode(&f.body), fds.next(), fds.next()) {
                    (Ok(Message::Session(rec)), Some(fd), None) => {
                        moved += 1;
                        let arriving = super::Arriving::new(&s);
                        let resume = crate::client::handover::resume(s.clone(), fd, *rec, arriving);
                        tokio::spawn(resume);
                    }
                    (Ok(Message::Session(_)), ..) => tracing::warn!(
                        "upgrade: a moved session came without exactly one socket; dropped"
                    ),
                    (Ok(other), ..) => {
                        tracing::warn!(message = ?other, "upgrade: unexpected message from the old process ignored")
                    }
                    (Err(e), ..) => {
                        tracing::warn!(error = %e, "upgrade: message from the old process ignored")
                    }
                }
            }
            s.upgrade.set_predecessor(None);
            tracing::info!(
                clients_moved = moved,
                seconds = started.elapsed().as_secs_f64(),
                "upgrade: the old process is done (connection closed)"
            );
        });
        Ok(())
    }
}

async fn step<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T, String> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| "upgrade: the running process did not answer in time".to_string())?
        .map_err(|e| format!("upgrade: {e}"))
}
