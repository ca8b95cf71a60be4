//! Opening a server connection: the host (one of the upstream's, of the kind
//! `target_session_attrs` asks for), TCP (+ TLS per `sslmode`), StartupMessage,
//! authentication (SCRAM-SHA-256, md5, cleartext, trust) with the upstream's credentials, and
//! the ParameterStatus/BackendKeyData that follow, up to the first ReadyForQuery.
//!
//! Hosts are tried as libpq tries them: in order (shuffled with `load_balance_hosts=random`),
//! every address of a name, each attempt bounded by `per_host`; a connection to a server of
//! the wrong kind is closed and the search goes on. `prefer-standby` keeps the first server
//! of another kind and returns it only if no standby answered.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::net::TcpStream;

use super::params::ServerParams;
use super::prepared::ServerStatements;
use super::ServerConn;
use crate::config::{Host, PassThrough, ServerKind, TargetSessionAttrs, TcpSettings, Upstream};
use crate::net::{read_message, write_all};
use crate::protocol::backend::{parse_error_fields, parse_parameter_status, PgError};
use crate::protocol::frontend::{put_password, put_sasl_initial};
use crate::protocol::startup::encode_startup;

/// Why a server connection could not be opened. Decides what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not connect to server: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection to server timed out")]
    Timeout,
    #[error("server rejected the connection: {0}")]
    Rejected(PgError),
    #[error("server requested an unsupported authentication method (code {0})")]
    UnsupportedAuth(i32),
    #[error("server requested a password but the upstream URL has none")]
    NoPassword,
    #[error("protocol error from server: {0}")]
    Protocol(&'static str),
    #[error("TLS to server: {0}")]
    Tls(String),
    #[error("authenticating to the server with the client's credentials failed: {0}")]
    PassThrough(String),
    #[error("server unavailable: the last connection attempt failed ({0}); the next one in {1:?} (server_login_retry)")]
    Backoff(String, std::time::Duration),
    #[error("no server of the kind target_session_attrs={0} asks for among {1} ({2})")]
    WrongKind(&'static str, String, String),
}

const MAX_STARTUP_MESSAGE: usize = 1 << 20;

/// Dead-peer detection: keepalive probes on an idle connection, and a bound on how long sent
/// data may stay unacknowledged (a peer gone without FIN, a network partition). A server that
/// is alive but stuck (its kernel still ACKs) is bounded by `query_timeout` instead.
fn tune(tcp: &TcpStream, s: &TcpSettings) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    if !s.keepidle.is_zero() {
        let ka = socket2::TcpKeepalive::new()
            .with_time(s.keepidle)
            .with_interval(s.keepintvl)
            .with_retries(s.keepcnt);
        sock.set_tcp_keepalive(&ka)?;
    }
    if !s.user_timeout.is_zero() {
        sock.set_tcp_user_timeout(Some(s.user_timeout))?;
    }
    Ok(())
}

/// A connection to one of `up`'s hosts of the kind it asks for.
pub async fn connect(
    up: &Upstream,
    id: u64,
    tcp_opts: &TcpSettings,
    per_host: Duration,
) -> Result<ServerConn, ServerError> {
    let target = up.target_session_attrs;
    let mut hosts = up.hosts.clone();
    if up.load_balance {
        use rand::seq::SliceRandom;
        hosts.shuffle(&mut rand::rng());
    }
    let mut fallback = None; // prefer-standby: a server of another kind
    let mut last = None;
    let mut seen = Vec::new();
    for host in &hosts {
        let addrs: Vec<SocketAddr> =
            match tokio::net::lookup_host((host.name.as_str(), host.port)).await {
                Ok(a) => a.collect(),
                Err(e) => {
                    last = Some(ServerError::Io(e));
                    continue;
                }
            };
        for addr in addrs {
            let attempt = tokio::time::timeout(per_host, connect_to(up, host, addr, id, tcp_opts));
            let mut c = match attempt.await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    last = Some(e);
                    continue;
                }
                Err(_) => {
                    last = Some(ServerError::Timeout);
                    continue;
                }
            };
            if target == TargetSessionAttrs::Any {
                return Ok(c);
            }
            let kind = kind(&mut c).await;
            if let Some(k) = kind {
                c.info
                    .standby
                    .store(k.standby, std::sync::atomic::Ordering::Relaxed);
            }
            // A standby too far behind is not used at all, not even as a fallback.
            if let (Some(k), Some(max)) = (kind, up.max_replica_lag) {
                if k.standby {
                    match replay_lag(&mut c).await {
                        Some(lag) if lag <= max => {}
                        lag => {
                            let lag = lag
                                .map_or("unknown".into(), |l| format!("{:.1}s", l.as_secs_f64()));
                            seen.push(format!("{host}: standby {lag} behind (max_replica_lag)"));
                            continue;
                        }
                    }
                }
            }
            match kind {
                Some(k) if k.suits(target, true) => return Ok(c),
                Some(k) if k.suits(target, false) && fallback.is_none() => fallback = Some(c),
                Some(k) => seen.push(format!(
                    "{host}: {}",
                    match (k.standby, k.read_only) {
                        (true, _) => "standby",
                        (false, true) => "read-only primary",
                        (false, false) => "primary",
                    }
                )),
                None => last = Some(ServerError::Protocol("could not tell the server's kind")),
            }
        }
    }
    if let Some(c) = fallback {
        return Ok(c);
    }
    Err(match (seen.is_empty(), last) {
        (true, Some(e)) => e,
        (_, last) => {
            let mut why = seen.join(", ");
            if let Some(e) = last {
                why = format!("{why}; {e}");
            }
            ServerError::WrongKind(target.as_str(), up.hosts_text(), why)
        }
    })
}

/// What the server is: from `in_hot_standby` / `default_transaction_read_only` as reported
/// at login (PostgreSQL 14+), else asked. `None`: the connection failed meanwhile.
pub async fn kind(c: &mut ServerConn) -> Option<ServerKind> {
    let p = &c.params.current;
    let on = |v: &str| v == "on";
    if let (Some(s), Some(r)) = (
        p.get("in_hot_standby"),
        p.get("default_transaction_read_only"),
    ) {
        return Some(ServerKind {
            standby: on(s),
            read_only: on(r),
        });
    }
    let sql = b"SELECT pg_catalog.pg_is_in_recovery()::text, pg_catalog.current_setting('transaction_read_only')";
    let row = super::query::first_row(c, sql).await.ok()?.ok()?;
    Some(ServerKind {
        standby: row.first()?.as_deref() == Some("true"),
        read_only: row.get(1)?.as_deref() == Some("on"),
    })
}

/// How far a standby's replay is behind: 0 when it has replayed all it received, else the
/// age of the last transaction it replayed, confirmed 100 ms later (a standby that just
/// received WAL after a quiet period replays it at once, and would otherwise look as far
/// behind as the quiet period was long). `None`: unknown — the query failed, or WAL is
/// waiting and no transaction was replayed yet — which callers treat as too far behind.
pub async fn replay_lag(c: &mut ServerConn) -> Option<Duration> {
    let sql = b"SELECT CASE WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() THEN 0 \
        ELSE EXTRACT(EPOCH FROM now() - pg_catalog.pg_last_xact_replay_timestamp()) END::float8::text";
    let mut lag = Duration::ZERO;
    for attempt in 0..2 {
        if attempt == 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let row = super::query::first_row(c, sql).await.ok()?.ok()?;
        let secs: f64 = row.first()?.as_deref()?.parse().ok()?;
        lag = Duration::from_secs_f64(secs.max(0.0));
        if lag.is_zero() {
            break;
        }
    }
    Some(lag)
}

/// One attempt at one address of `host`.
async fn connect_to(
    up: &Upstream,
    host: &Host,
    addr: SocketAddr,
    id: u64,
    tcp_opts: &TcpSettings,
) -> Result<ServerConn, ServerError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tune(&tcp, tcp_opts)?;
    let local = tcp.local_addr().ok();
    let mut stream = crate::net::tls::connect_upstream(tcp, up, &host.name).await?;
    let options = up.startup_options();
    let mut params = vec![("user", up.user.as_str()), ("database", up.dbname.as_str())];
    if let Some(o) = &options {
        params.push(("options", o.as_str()));
    }
    let startup = encode_startup(&params);
    write_all(&mut stream, &startup).await?;

    let mut buf = BytesMut::with_capacity(1024);
    let mut params = ServerParams::default();
    let (mut pid, mut secret) = (0, 0);
    let mut scram: Option<ScramSha256> = None;
    let mut key_client: Option<crate::auth::ScramKeyClient> = None;
    loop {
        let (tag, body) = read_message(&mut stream, &mut buf, MAX_STARTUP_MESSAGE).await?;
        match tag {
            b'R' => {
                if body.len() < 4 {
                    return Err(ServerError::Protocol("short Authentication message"));
                }
                let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let data = &body[4..];
                let mut out = BytesMut::new();
                match code {
                    0 => continue,
                    3 => {
                        let pw = up.password.as_deref().ok_or(ServerError::NoPassword)?;
                        let mut d = pw.as_bytes().to_vec();
                        d.push(0);
                        put_password(&mut out, &d);
                    }
                    5 if matches!(up.pass_through, Some(PassThrough::Md5 { .. })) => {
                        let Some(PassThrough::Md5 { hash }) = &up.pass_through else {
                            unreachable!()
                        };
                        let salt: [u8; 4] = data
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or(ServerError::Protocol("short md5 salt"))?;
                        let mut d = crate::auth::md5_response_from_hash(hash, salt).to_vec();
                        d.push(0);
                        put_password(&mut out, &d);
                    }
                    10 if matches!(up.pass_through, Some(PassThrough::Scram { .. })) => {
                        let Some(PassThrough::Scram {
                            client_key,
                            verifier,
                        }) = &up.pass_through
                        else {
                            unreachable!()
                        };
                        let mut c = crate::auth::ScramKeyClient::new(*client_key, verifier.clone());
                        let first = c.client_first();
                        put_sasl_initial(&mut out, c.mechanism(), &first);
                        key_client = Some(c);
                    }
                    11 if key_client.is_some() => {
                        let c = key_client
                            .as_mut()
                            .ok_or(ServerError::Protocol("unexpected SASLContinue"))?;
                        let fin = c
                            .server_first(data)
                            .map_err(|e| ServerError::PassThrough(e.to_string()))?;
                        put_password(&mut out, &fin);
                    }
                    12 if key_client.is_some() => {
                        let c = key_client
                            .as_mut()
                            .ok_or(ServerError::Protocol("unexpected SASLFinal"))?;
                        c.server_final(data)
                            .map_err(|e| ServerError::PassThrough(e.to_string()))?;
                        continue;
                    }
                    5 => {
                        let pw = up.password.as_deref().ok_or(ServerError::NoPassword)?;
                        let salt: [u8; 4] = data
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or(ServerError::Protocol("short md5 salt"))?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            up.user.as_bytes(),
                            pw.as_bytes(),
                            salt,
                        );
                        let mut d = hash.into_bytes();
                        d.push(0);
                        put_password(&mut out, &d);
                    }
                    10 => {
                        let pw = up.password.as_deref().ok_or(ServerError::NoPassword)?;
                        let offered = data.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                        if !offered {
                            return Err(ServerError::UnsupportedAuth(code));
                        }
                        let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                        put_sasl_initial(&mut out, "SCRAM-SHA-256", s.message());
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram
                            .as_mut()
                            .ok_or(ServerError::Protocol("unexpected SASLContinue"))?;
                        s.update(data)
                            .map_err(|_| ServerError::Protocol("bad SCRAM server-first message"))?;
                        put_password(&mut out, s.message());
                    }
                    12 => {
                        let s = scram
                            .as_mut()
                            .ok_or(ServerError::Protocol("unexpected SASLFinal"))?;
                        s.finish(data).map_err(|_| {
                            ServerError::Protocol("server SCRAM signature did not verify")
                        })?;
                        continue;
                    }
                    other => return Err(ServerError::UnsupportedAuth(other)),
                }
                write_all(&mut stream, &out).await?;
            }
            b'S' => {
                if let Some((k, v)) = parse_parameter_status(&body) {
                    params.observe(k, v);
                }
            }
            b'K' => {
                if body.len() >= 8 {
                    pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                }
            }
            b'E' => {
                return Err(ServerError::Rejected(parse_error_fields(&body).to_error()));
            }
            b'Z' => break,
            b'N' | b'v' => {}
            _ => return Err(ServerError::Protocol("unexpected message during startup")),
        }
    }
    params.mark_baseline();
    let now = Instant::now();
    Ok(ServerConn {
        id,
        info: crate::pool::servers::ServerInfo::new(id, pid, local, host.clone(), stream.is_tls()),
        stream,
        rbuf: buf,
        pid,
        secret,
        params,
        statements: ServerStatements::default(),
        ctx: Default::default(),
        created: now,
        last_used: now,
    })
}
