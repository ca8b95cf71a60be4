//! Opening a server connection: TCP (+ TLS per `sslmode`), StartupMessage, authentication
//! (SCRAM-SHA-256, md5, cleartext, trust) with the upstream's credentials, and the
//! ParameterStatus/BackendKeyData that follow, up to the first ReadyForQuery.

use std::time::Instant;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::net::TcpStream;

use super::params::ServerParams;
use super::prepared::ServerStatements;
use super::ServerConn;
use crate::config::{PassThrough, TcpSettings, Upstream};
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

pub async fn connect(
    up: &Upstream,
    id: u64,
    tcp_opts: &TcpSettings,
) -> Result<ServerConn, ServerError> {
    let tcp = TcpStream::connect((up.host.as_str(), up.port)).await?;
    tcp.set_nodelay(true)?;
    tune(&tcp, tcp_opts)?;
    let local = tcp.local_addr().ok();
    let mut stream = crate::net::tls::connect_upstream(tcp, up).await?;
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
        info: crate::pool::servers::ServerInfo::new(id, pid, local, stream.is_tls()),
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
