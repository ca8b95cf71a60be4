//! Moving a client session to the process that took over this one's listeners, and
//! continuing a session moved here from the process this one took over from.
//!
//! Invariants:
//! - A session moves only at an idle point: no server connection held, nothing buffered in
//!   either direction (what is buffered for the client is written first, within a bound),
//!   nothing owed, not terminating, not in a transaction whose server died (`lost.rs`), not
//!   pinned (session mode or `session_state = pin`), plain TCP (a TLS session's keys cannot
//!   leave the process). The
//!   client is sent nothing: the next byte it sends is read by the new process.
//! - Once its socket and record were sent, the session here ends without touching the
//!   socket (no error, no shutdown): closing this process's descriptor does not close the
//!   connection the new process holds. If sending fails, the session stays here.
//! - A moved session keeps its BackendKeyData, its session parameters as the client last saw
//!   them and its named prepared statements. A malformed record or descriptor is logged and
//!   that connection closed; nothing here panics on it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::BytesMut;

use super::admit::{self, Entry, Seed};
use super::session::{End, Session};
use super::statements::MAX_CLIENT_STATEMENTS;
use super::{auth_query, Counted};
use crate::config::PassThrough;
use crate::config::PoolMode;
use crate::net::Stream;
use crate::protocol::backend::PgError;
use crate::protocol::startup::StartupMessage;
use crate::proxy::Shared;
use crate::upgrade::record::{Message, SessionRecord, Statement};

/// Longest a session waits to send itself to the successor.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

impl Session {
    /// After this process handed its listeners over: send this session to the successor if
    /// it is at an idle point. `Some` when it moved (the session ends here).
    pub(super) async fn hand_over(&mut self) -> Option<End> {
        let successor = self.shared.upgrade.successor()?;
        if !self.cout.is_empty() && self.server.is_none() {
            // The answer that ended its transaction is still buffered: deliver it first.
            match tokio::time::timeout(SEND_TIMEOUT, self.write_out()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
        if !self.movable() {
            return None;
        }
        let Stream::Tcp(tcp) = &self.client else {
            return None;
        };
        let body = Message::Session(Box::new(self.record())).encode();
        if body.len() > crate::upgrade::transfer::MAX_FRAME {
            return None; // too many statements to carry: it stays (and ends as at a shutdown)
        }
        let sent = tokio::time::timeout(SEND_TIMEOUT, successor.send(&body, &[tcp.as_fd()])).await;
        match sent {
            Ok(Ok(())) => {
                self.shared.upgrade.moved_one();
                tracing::debug!(
                    client = self.info.id,
                    "client session moved to the new process"
                );
                Some(End::ClientGone)
            }
            Ok(Err(e)) => {
                self.shared.upgrade.successor_failed(&e.to_string());
                None
            }
            Err(_) => {
                self.shared
                    .upgrade
                    .successor_failed("timed out sending a session");
                None
            }
        }
    }

    /// Write what is buffered for the client (cancel-safe: each write advances `cout`).
    async fn write_out(&mut self) -> std::io::Result<()> {
        use bytes::Buf;
        use tokio::io::AsyncWriteExt;
        while !self.cout.is_empty() {
            let n = self.client.write(&self.cout).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.cout.advance(n);
            self.pool
                .stats
                .bytes_sent
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    fn movable(&self) -> bool {
        self.server.is_none()
            && self.mode == PoolMode::Transaction
            && !self.pinned
            && !self.terminating
            && !self.hold
            && self.cin.is_empty()
            && self.cout.is_empty()
            && self.sout.is_empty()
            && self.pending.is_empty()
            && self.txn.is_idle()
            && self.acquire_error.is_none()
            && self.statements.held() == self.statements.len()
            && !self.client.is_tls()
            // A transaction whose server died is answered here until it ends (lost.rs).
            && self.lost.is_none()
    }

    /// What the new process needs to continue this session.
    fn record(&self) -> SessionRecord {
        let client_key = match &self.home.db.upstream.pass_through {
            Some(PassThrough::Scram { client_key, .. }) => Some(client_key.to_vec()),
            _ => None,
        };
        SessionRecord {
            startup: unpack_startup(&self.info.startup),
            user: self.info.user.clone(),
            client_key,
            params: self
                .params
                .values
                .iter()
                .map(|(_, name, value)| (name.to_string(), value.to_string()))
                .collect(),
            statements: self
                .statements
                .iter()
                .map(|(name, def, effects)| Statement {
                    name: name.to_vec(),
                    definition: def.definition.to_vec(),
                    effects: effects.0,
                })
                .collect(),
            key: self.key,
            addr: self.info.addr.clone(),
            connected_at_us: self
                .info
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            application_name: self.info.application_name.clone(),
        }
    }
}

/// Continue a session moved here (its socket and record came from the old process). A client
/// that cannot be continued (its user or tenant is no longer configured, a limit) gets the
/// FATAL a login would get; a descriptor that is not a connected socket is only logged.
pub async fn resume(
    shared: Arc<Shared>,
    fd: OwnedFd,
    rec: SessionRecord,
    arriving: crate::upgrade::Arriving,
) {
    let addr = rec.addr.clone();
    let mut tcp = match socket(fd) {
        Ok(t) => Some(t),
        Err(why) => {
            tracing::warn!(%addr, reason = %why, "moved client could not be continued");
            return;
        }
    };
    let login_timeout = shared.config().client_login_timeout;
    let session = tokio::time::timeout(login_timeout, readmit(&shared, &mut tcp, rec)).await;
    drop(arriving); // registered as a client by now, or refused
    let e = match session {
        Ok(Ok(session)) => {
            let id = session.info.id;
            session.run().await;
            shared.clients.remove(&id);
            return;
        }
        Ok(Err(e)) => e,
        Err(_) => PgError::fatal(
            "08006",
            "pgward: the session could not be continued after an upgrade in time (client_login_timeout)",
        ),
    };
    tracing::warn!(%addr, reason = %e, "moved client could not be continued; its connection is closed");
    if let Some(tcp) = tcp {
        super::send_error(&mut Stream::Tcp(tcp), e).await;
    }
}

/// The moved client's socket, if the descriptor is a connected TCP socket.
fn socket(fd: OwnedFd) -> Result<tokio::net::TcpStream, String> {
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true).map_err(|e| e.to_string())?;
    std.peer_addr()
        .map_err(|e| format!("not a connected socket: {e}"))?;
    let tcp = tokio::net::TcpStream::from_std(std).map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Admit a moved client again from its record and rebuild its session; `tcp` is taken only
/// when it succeeds. `Err` is the FATAL to close the client with.
async fn readmit(
    shared: &Arc<Shared>,
    tcp: &mut Option<tokio::net::TcpStream>,
    rec: SessionRecord,
) -> Result<Box<Session>, PgError> {
    if rec.statements.len() > MAX_CLIENT_STATEMENTS {
        return Err(PgError::fatal(
            "53400",
            "pgward: too many prepared statements to continue the session after an upgrade",
        ));
    }
    let cfg = shared.config();
    let msg = StartupMessage {
        major: 3,
        minor: 0,
        params: rec.startup,
    };
    let resolved = crate::tenancy::resolve(&cfg, &shared.tenants.load(), &msg)?;
    if resolved.admin {
        return Err(PgError::fatal(
            "0A000",
            "pgward: an admin console session cannot move to a new process",
        ));
    }
    let mut user = cfg.users.get(&rec.user).cloned();
    if user.is_none() {
        if let Some(aq) = &cfg.auth_query {
            user = auth_query::lookup(shared, aq, &rec.user).await;
        }
    }
    let user = user.ok_or_else(|| {
        PgError::fatal(
            "28000",
            format!(
                "pgward: user \"{}\" is not known to the upgraded pgward; reconnect",
                rec.user
            ),
        )
    })?;
    let client_key = match rec.client_key {
        None => None,
        Some(k) => Some(
            <[u8; 32]>::try_from(k)
                .map_err(|_| PgError::fatal("08P01", "pgward: malformed session record"))?,
        ),
    };
    let mut a = admit::admit(shared, &cfg, &resolved, &user, client_key, Entry::Moved).await?;
    for (name, value) in &rec.params {
        a.params.set(name, value);
    }
    let (pid, secret) = rec.key;
    let (key, cancel) = match shared.cancels.adopt(pid, secret) {
        Some(slot) => ((pid, secret), slot),
        None => {
            tracing::warn!(
                pid,
                "moved client's cancel key is taken here; its cancel requests will not reach it"
            );
            let (p, s, slot) = shared.cancels.register();
            ((p, s), slot)
        }
    };
    let Some(tcp) = tcp.take() else {
        return Err(PgError::fatal(
            "08006",
            "pgward: the moved connection is gone",
        ));
    };
    let seed = Seed {
        stream: Stream::Tcp(tcp),
        cin: BytesMut::new(),
        user: user.name.clone(),
        tenant_id: resolved.tenant.as_ref().map(|t| t.id.clone()),
        addr: rec.addr,
        connected_at: UNIX_EPOCH + Duration::from_micros(rec.connected_at_us),
        application_name: rec.application_name,
        startup: pack_startup(&msg.params),
        key,
        cancel,
        slot: Counted::take(shared, |s| &s.client_count),
    };
    let mut session = admit::build(shared, &cfg, a, seed);
    let context = session
        .tenant
        .as_ref()
        .map(|t| t.plan_context.clone())
        .unwrap_or_default();
    for s in rec.statements {
        let def = shared
            .statements
            .intern_in(context.as_bytes(), &s.definition);
        session
            .statements
            .insert(&s.name, def, crate::sql::classify::Flags(s.effects));
    }
    Ok(session)
}

/// Startup parameters as one allocation: `name NUL value NUL` for each.
pub fn pack_startup(params: &[(String, String)]) -> Box<[u8]> {
    let mut b = Vec::new();
    for (k, v) in params {
        b.extend_from_slice(k.as_bytes());
        b.push(0);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.into_boxed_slice()
}

/// The inverse of [`pack_startup`].
pub fn unpack_startup(packed: &[u8]) -> Vec<(String, String)> {
    let mut parts = packed
        .split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        out.push((k, v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_packs_and_unpacks() {
        let p = vec![
            ("user".to_string(), "app_user.acme".to_string()),
            ("database".to_string(), "app".to_string()),
            ("options".to_string(), "-c pgward.tenant=acme".to_string()),
            ("application_name".to_string(), String::new()),
        ];
        assert_eq!(unpack_startup(&pack_startup(&p)), p);
        assert!(unpack_startup(&pack_startup(&[])).is_empty());
    }
}
