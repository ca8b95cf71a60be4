//! One task per client connection: startup negotiation (SSLRequest, GSSENCRequest,
//! CancelRequest, protocol version), tenant resolution, authentication, then either the admin
//! console or the pooled session loop.
//!
//! Invariants: before authentication every read is bounded (startup packet ≤ 10,000 bytes,
//! auth messages ≤ 8 KiB) and the whole handshake has a deadline; a client that fails any
//! step gets an ErrorResponse with a real SQLSTATE and is closed.

mod attach;
pub mod auth;
pub mod auth_query;
pub mod cancel;
pub mod context;
mod frontend;
mod lost;
mod prepared;
mod relay;
mod release;
pub mod session;
mod startup_check;
pub mod statements;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::{ClientTls, PoolMode};
use crate::net::{write_all, Stream};
use crate::protocol::backend::{self, PgError};
use crate::protocol::startup::{self, StartupPacket};
use crate::proxy::{ClientInfo, Shared};
use crate::server::params::ClientParams;
use crate::server::pending::Pending;
use crate::server::txn::TxnModel;
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
                shared.cancels.cancel(pid, secret).await;
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
    let dynamic = known.is_some() && !cfg.users.contains_key(&resolved.user);
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
    if let Some(t) = &resolved.tenant {
        if t.users
            .as_ref()
            .is_some_and(|list| !list.contains(&user.name))
        {
            send_error(
                &mut stream,
                PgError::fatal(
                    "28000",
                    format!(
                        "pgward: user \"{}\" may not select tenant \"{}\"",
                        user.name, t.id
                    ),
                ),
            )
            .await;
            return None;
        }
    }
    let Some(db) = cfg.database(&resolved.database).cloned() else {
        send_error(
            &mut stream,
            PgError::fatal(
                "3D000",
                format!("database \"{}\" does not exist", resolved.database),
            ),
        )
        .await;
        return None;
    };
    if shared
        .disabled
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&db.name)
    {
        let e = format!(
            "database \"{}\" is not currently accepting connections (pgward: DISABLE)",
            db.name
        );
        send_error(&mut stream, PgError::fatal("55000", e)).await;
        return None;
    }
    if db.tenant_required && resolved.tenant.is_none() {
        send_error(&mut stream, PgError::fatal("28000", format!("pgward: database \"{}\" requires a tenant (dbname = tenant id, user.tenant, or options=-cpgward.tenant=…)", db.name))).await;
        return None;
    }
    let tenant = resolved
        .tenant
        .as_ref()
        .and_then(|t| shared.tenants.load().get(&t.id).cloned());
    // The client's class in the pool's fair queue: its tenant, or the plain clients.
    let class = crate::pool::ClassKey::from(resolved.tenant.as_ref().map_or("", |t| t.id.as_str()));
    if let Some(t) = &tenant {
        if let Some(e) = crate::tenancy::posture::refusal(shared, &db, &t.tenant) {
            send_error(&mut stream, e).await;
            return None;
        }
    }
    let tenant_slot = match &tenant {
        Some(t) => {
            let max = (t.tenant.limits.max_client_connections)
                .or(db.tenant_defaults.max_client_connections);
            match shared.tenant_clients.take(&class, max) {
                Ok(slot) => Some(slot),
                Err(max) => {
                    crate::metrics::tenant_refusal(&t.tenant.id, "max_client_connections");
                    let msg = format!("pgward: too many client connections for tenant \"{}\" (max_client_connections = {max})", t.tenant.id);
                    send_error(&mut stream, PgError::fatal("53300", msg)).await;
                    return None;
                }
            }
        }
        None => None,
    };
    if let Some(t) = &tenant {
        // T3 at login: a startup parameter (or `options=-c …`) may not set what the tenant
        // context sets, as `SET` may not.
        let protected = resolved
            .params
            .iter()
            .find(|(name, _)| t.is_protected(&name.to_ascii_lowercase()));
        if let Some((name, _)) = protected {
            crate::metrics::rejected("tenant_guard");
            send_error(&mut stream, PgError::fatal("42501", format!("pgward: startup parameter \"{name}\" is not allowed for tenant \"{}\": the tenant context is managed by the proxy", t.tenant.id))).await;
            return None;
        }
    }
    let home = if dynamic {
        auth_query::user_pool(shared, &db, &user, client_key)
    } else {
        shared.pool(&db.name)
    };
    // A tenant with a database of its own starts there.
    let pool = match tenant.as_ref().filter(|t| t.tenant.dedicated.is_some()) {
        Some(t) => crate::tenancy::dedicated::pool_for(shared, &t.tenant),
        None => home.clone(),
    };
    let (Some(pool), Some(home)) = (pool, home) else {
        send_error(
            &mut stream,
            PgError::fatal("3D000", format!("database \"{}\" does not exist", db.name)),
        )
        .await;
        return None;
    };
    let baseline = match pool.baseline().await {
        Ok(b) => b,
        Err(e) => {
            send_error(&mut stream, PgError::fatal("08006", format!("pgward: {e}"))).await;
            return None;
        }
    };
    let mut params = ClientParams::new(&baseline, &resolved.params);
    if let Err(e) = startup_check::check(&pool, &class, &mut params).await {
        send_error(&mut stream, e).await;
        return None;
    }
    // Like PostgreSQL, report only the parameters the server reports (GUC_REPORT ones: the
    // baseline's names), with the client's values where it set them.
    for (lname, name, value) in params.values.iter() {
        if baseline.get(lname).is_some() {
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
    let info = Arc::new(ClientInfo {
        id: shared.next_client.fetch_add(1, Ordering::Relaxed),
        user: user.name.clone(),
        database: db.name.clone(),
        tenant: resolved.tenant.as_ref().map(|t| t.id.clone()),
        addr: addr.to_string(),
        connected_at: SystemTime::now(),
        state: AtomicU8::new(0),
        wait_since_us: Default::default(),
        tls: stream.is_tls(),
        application_name: msg.get("application_name").unwrap_or("").to_string(),
        local: stream.local_addr(),
        request_us: Default::default(),
        prepared: Default::default(),
        kill: Default::default(),
    });
    shared.clients.insert(info.id, info.clone());
    tracing::debug!(%addr, user = %user.name, database = %db.name, tenant = ?info.tenant, "client connected");
    let mode = db.pool.mode;
    // Boxed: the session is the bulk of an idle client's memory, and a future that moves it
    // around would hold it more than once.
    Some(LoggedIn::Client(Box::new(Session {
        labels: crate::metrics::labels(&db.name, info.tenant.as_deref()),
        shared: shared.clone(),
        info,
        pool,
        home,
        mode,
        policy: db.pool.session_state,
        ctx: tenant
            .clone()
            .or_else(|| shared.tenants.load().plain(&db.name).cloned())
            .filter(|t| t.pairs > 0),
        tenant,
        class,
        params,
        max_message: cfg.max_message_size,
        cancel,
        key: (pid, secret),
        client: stream,
        cin: {
            // Bytes the client pipelined after its startup packet are not lost.
            let mut b = BytesMut::new();
            b.extend_from_slice(&buf);
            b
        },
        cout: BytesMut::new(),
        server: None,
        sout: BytesMut::new(),
        pending: Pending::default(),
        txn: TxnModel::default(),
        hold: false,
        terminating: false,
        dirty: Default::default(),
        pinned: mode == PoolMode::Session,
        statements: Default::default(),
        stmt_started: None,
        stmt_mark: None,
        server_broken: false,
        server_fatal: Default::default(),
        lost: None,
        timers: Default::default(),
        _slot: slot,
        _tenant_slot: tenant_slot,
        acquire_error: None,
        observe: (cfg.metrics.query_stats || cfg.metrics.slow_statement_threshold.is_some()).then(
            || {
                (
                    cfg.metrics.query_stats,
                    cfg.metrics.slow_statement_threshold,
                    Arc::from(
                        resolved
                            .tenant
                            .as_ref()
                            .map(|t| t.id.as_str())
                            .unwrap_or(""),
                    ),
                )
            },
        ),
        exec_text: None,
        unnamed_text: None,
        unnamed_effects: Default::default(),
        unnamed_cmd: crate::metrics::Command::Other,
        exec_cmd: crate::metrics::Command::Other,
        unnamed_here: false,
    })))
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

async fn send_error(stream: &mut Stream, e: PgError) {
    crate::metrics::error(e.code.as_bytes());
    let mut out = BytesMut::new();
    e.encode(&mut out);
    let _ = write_all(stream, &out).await;
}
