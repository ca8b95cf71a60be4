//! One task per client connection: startup negotiation (SSLRequest, GSSENCRequest,
//! CancelRequest, protocol version), tenant resolution, authentication, then either the admin
//! console or the pooled session loop.
//!
//! Invariants: before authentication every read is bounded (startup packet ≤ 10,000 bytes,
//! auth messages ≤ 8 KiB) and the whole handshake has a deadline; a client that fails any
//! step gets an ErrorResponse with a real SQLSTATE and is closed.

mod admit;
mod attach;
pub mod auth;
pub mod auth_query;
pub mod cancel;
pub mod context;
mod frontend;
pub mod handover;
mod lost;
mod prepared;
mod relay;
mod release;
pub mod session;
mod startup_check;
pub mod statements;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::ClientTls;
use crate::net::{write_all, Stream};
use crate::protocol::backend::{self, PgError};
use crate::protocol::startup::{self, StartupPacket};
use crate::proxy::Shared;
use crate::tenancy::resolve;
use session::Session;

/// Serve one accepted connection until it ends.
///
/// A connection that is still logging in counts toward `max_pending_logins` and must finish
/// within `client_login_timeout`; it counts toward `max_client_connections` from its startup
/// packet on (after SSL negotiation, so a refusal reads as PostgreSQL's would), until it ends.
pub async fn handle(tcp: TcpStream, addr: SocketAddr, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let cfg = shared.config();
    let stream = Stream::Tcp(tcp);
    let login = Counted::take(&shared, |s| &s.pending_logins);
    if login.n > cfg.max_pending_logins {
        let e = PgError::fatal(
            "53300",
            format!(
                "pgward: too many connections are logging in (max_pending_logins = {})",
                cfg.max_pending_logins
            ),
        );
        // Boxed, like the handshake: what a task holds across awaits is held by every client.
        Box::pin(refuse(stream, e)).await;
        return;
    }
    // Boxed: the handshake's state (TLS, SCRAM, a possible first server connect) is large and
    // needed only once; inline it would stay in every idle client's task.
    let r = tokio::time::timeout(
        cfg.client_login_timeout,
        Box::pin(handshake(stream, addr, &shared)),
    )
    .await;
    drop(login);
    drop(cfg);
    match r {
        Ok(Some(LoggedIn::Client(session))) => {
            let id = session.info.id;
            session.run().await;
            shared.clients.remove(&id);
        }
        Ok(Some(LoggedIn::Admin(stream, buf, user))) => {
            crate::admin::run(stream, buf, shared, user).await;
        }
        Ok(None) => {}
        Err(_) => {
            crate::metrics::timeout("login");
            tracing::debug!(%addr, "client login timed out (client_login_timeout)");
        }
    }
}

/// A slot of a counter (`max_pending_logins`, `max_client_connections`), given back on drop.
pub struct Counted {
    counter: Arc<Shared>,
    which: fn(&Shared) -> &AtomicUsize,
    /// The count including this one.
    pub n: usize,
}

impl Counted {
    fn take(shared: &Arc<Shared>, which: fn(&Shared) -> &AtomicUsize) -> Counted {
        let n = which(shared).fetch_add(1, Ordering::AcqRel) + 1;
        Counted {
            counter: shared.clone(),
            which,
            n,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.which)(&self.counter).fetch_sub(1, Ordering::AcqRel);
    }
}

/// Refuse a connection that has not sent its startup packet yet: answer SSL and GSS
/// requests with "N" (no TLS is negotiated for a refusal) until the startup packet, then the
/// error, as PostgreSQL reports "too many clients" after the SSL exchange.
async fn refuse(mut stream: Stream, e: PgError) {
    let mut buf = BytesMut::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match read_startup(&mut stream, &mut buf).await {
                Ok(Some(StartupPacket::SslRequest | StartupPacket::GssEncRequest)) => {
                    if write_all(&mut stream, b"N").await.is_err() {
                        return;
                    }
                }
                Ok(Some(StartupPacket::Cancel { .. })) | Ok(None) => return,
                _ => break,
            }
        }
        send_error(&mut stream, e).await;
    })
    .await;
}

/// Everything up to ReadyForQuery. `None` when the connection ended (error already sent).
/// What a completed login leads to.
enum LoggedIn {
    Client(Box<Session>),
    /// An admin console session: it runs after the login, outside `client_login_timeout`
    /// and the `max_pending_logins` slot.
    Admin(Stream, BytesMut, String),
}

async fn handshake(mut stream: Stream, addr: SocketAddr, shared: &Arc<Shared>) -> Option<LoggedIn> {
    let mut buf = BytesMut::with_capacity(256);
    let cfg = shared.config();
    let mut binding = None;
    let msg = loop {
        let packet = match read_startup(&mut stream, &mut buf).await {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(e) => {
                send_error(&mut stream, e).await;
                return None;
            }
        };
        match packet {
            StartupPacket::SslRequest => {
                let tls_cfg = shared.tls.load_full();
                match (&*tls_cfg, stream.is_tls()) {
                    (Some(tc), false) if !buf.is_empty() => {
                        let _ = tc;
                        // Bytes after SSLRequest before the handshake: a MITM signature.
                        send_error(
                            &mut stream,
                            PgError::fatal("08P01", "received unencrypted data after SSL request"),
                        )
                        .await;
                        return None;
                    }
                    (Some(_), false)
                        if cfg
                            .tls
                            .as_ref()
                            .is_some_and(|t| t.client_tls == ClientTls::Disable) =>
                    {
                        if write_all(&mut stream, b"N").await.is_err() {
                            return None;
                        }
                    }
                    (Some(tc), false) => {
                        if write_all(&mut stream, b"S").await.is_err() {
                            return None;
                        }
                        let Stream::Tcp(tcp) = stream else {
                            return None;
                        };
                        match tokio_rustls::TlsAcceptor::from(tc.config.clone())
                            .accept(tcp)
                            .await
                        {
                            Ok(tls) => {
                                stream = Stream::ServerTls(Box::new(tls));
                                binding = Some(tc.endpoint.clone());
                            }
                            Err(e) => {
                                tracing::debug!(%addr, error = %e, "client TLS handshake failed");
                                return None;
                            }
                        }
                    }
                    _ => {
                        if write_all(&mut stream, b"N").await.is_err() {
                            return None;
                        }
                    }
                }
            }
            StartupPacket::GssEncRequest => {
                if write_all(&mut stream, b"N").await.is_err() {
                    return None;
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                crate::upgrade::cancel(shared, pid, secret).await;
                return None;
            }
            StartupPacket::Startup(m) => break m,
        }
    };
    // From the startup packet on, the connection is a client (PostgreSQL too counts it, and
    // says "too many clients" after the SSL exchange).
    let slot = Counted::take(shared, |s| &s.client_count);
    if slot.n > cfg.max_client_connections {
        send_error(
            &mut stream,
            PgError::fatal(
                "53300",
                format!(
                    "pgward: too many client connections (max_client_connections = {})",
                    cfg.max_client_connections
                ),
            ),
        )
        .await;
        return None;
    }
    let require_tls = cfg
        .tls
        .as_ref()
        .is_some_and(|t| t.client_tls == ClientTls::Require);
    if require_tls && !stream.is_tls() {
        send_error(
            &mut stream,
            PgError::fatal(
                "28000",
                "pgward: TLS is required (client_tls = \"require\"); connect with sslmode=require",
            ),
        )
        .await;
        return None;
    }
    let mut out = BytesMut::new();
    if msg.minor > 0 {
        let unsupported = msg
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.clone())
            .collect();
        backend::negotiate_protocol_version(&mut out, 0, unsupported);
        if write_all(&mut stream, &out).await.is_err() {
            return None;
        }
        out.clear();
    }
    let resolved = match resolve(&cfg, &shared.tenants.load(), &msg) {
        Ok(r) => r,
        Err(e) => {
            send_error(&mut stream, e).await;
            return None;
        }
    };
    let method = cfg
        .users
        .get(&resolved.user)
        .map(|u| u.auth)
        .unwrap_or(crate::config::AuthMethod::ScramSha256);
    if let Err(why) = crate::config::access::check(
        &cfg.access,
        &resolved.database,
        &resolved.user,
        addr.ip(),
        method,
    ) {
        tracing::info!(%addr, user = %resolved.user, reason = %why, "client refused by access rules");
        send_error(
            &mut stream,
            PgError::fatal("28000", format!("pgward: {why}")),
        )
        .await;
        return None;
    }
    let mut known = cfg.users.get(&resolved.user).cloned();
    if known.is_none() {
        if let Some(aq) = &cfg.auth_query {
            known = auth_query::lookup(shared, aq, &resolved.user).await;
        }
    }
    let (user, client_key) = match auth::authenticate(
        &mut stream,
        &mut buf,
        shared,
        known,
        &resolved.user,
        msg.get("user").unwrap_or(&resolved.user),
        binding,
    )
    .await
    {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(%addr, user = %resolved.user, code = %e.code, "client authentication failed");
            if e.code == "28P01" {
                // Repeated failures from one address are answered ever more slowly.
                tokio::time::sleep(shared.auth_failed(addr.ip())).await;
            }
            send_error(&mut stream, e).await;
            return None;
        }
    };
    shared.auth_succeeded(addr.ip());
    if resolved.admin {
        if !cfg.admin_users.contains(&user.name) {
            send_error(
                &mut stream,
                PgError::fatal(
                    "28000",
                    format!("pgward: user \"{}\" is not in admin_users", user.name),
                ),
            )
            .await;
            return None;
        }
        return Some(LoggedIn::Admin(stream, buf, user.name.clone()));
    }
    let entry = admit::Entry::Login;
    let a = match admit::admit(shared, &cfg, &resolved, &user, client_key, entry).await {
        Ok(a) => a,
        Err(e) => {
            send_error(&mut stream, e).await;
            return None;
        }
    };
    // Like PostgreSQL, report only the parameters the server reports (GUC_REPORT ones: the
    // baseline's names), with the client's values where it set them.
    for (lname, name, value) in a.params.values.iter() {
        if a.baseline.get(lname).is_some() {
            backend::parameter_status(&mut out, name, value);
        }
    }
    let (pid, secret, cancel) = shared.cancels.register();
    backend::backend_key_data(&mut out, pid, secret);
    backend::ready_for_query(&mut out, b'I');
    if write_all(&mut stream, &out).await.is_err() {
        shared.cancels.unregister(pid, secret);
        return None;
    }
    let seed = admit::Seed {
        stream,
        // Bytes the client pipelined after its startup packet are not lost.
        cin: {
            let mut b = BytesMut::new();
            b.extend_from_slice(&buf);
            b
        },
        user: user.name.clone(),
        tenant_id: resolved.tenant.as_ref().map(|t| t.id.clone()),
        addr: addr.to_string(),
        connected_at: SystemTime::now(),
        application_name: msg.get("application_name").unwrap_or("").to_string(),
        startup: handover::pack_startup(&msg.params),
        key: (pid, secret),
        cancel,
        slot,
    };
    Some(LoggedIn::Client(admit::build(shared, &cfg, a, seed)))
}

/// Read one startup-phase packet (length-prefixed, untyped), bounded by MAX_STARTUP_PACKET.
async fn read_startup(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Option<StartupPacket>, PgError> {
    loop {
        if let Some(len) = startup::packet_len(buf) {
            let Ok(len) = len else {
                // PostgreSQL logs an invalid startup packet length and closes without a word
                // (a client that sends Terminate before its startup packet, a port scanner).
                tracing::debug!("invalid startup packet length; closing");
                return Ok(None);
            };
            if buf.len() >= len {
                let packet = buf.split_to(len);
                return startup::parse(&packet).map(Some).map_err(|e| match e {
                    startup::StartupError::UnsupportedVersion(..) => {
                        PgError::fatal("0A000", e.to_string())
                    }
                    _ => PgError::fatal("08P01", e.to_string()),
                });
            }
            buf.reserve(len - buf.len());
        } else {
            buf.reserve(64);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

pub(super) async fn send_error(stream: &mut Stream, e: PgError) {
    crate::metrics::error(e.code.as_bytes());
    let mut out = BytesMut::new();
    e.encode(&mut out);
    let _ = write_all(stream, &out).await;
}
