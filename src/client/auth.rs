//! Authenticating a connecting client against `[[users]]`: SCRAM-SHA-256 (default for
//! plaintext passwords and SCRAM verifiers), md5, cleartext password, or trust.
//!
//! An unknown user and a wrong password look the same: same method (a SCRAM exchange with a
//! deterministic mock salt), same SQLSTATE 28P01 and message.

use std::sync::Arc;

use bytes::BytesMut;

use crate::auth::{md5_verify, ChannelBinding, ScramServer, ScramVerifier, Secret};
use crate::config::{AuthMethod, User};
use crate::net::{read_message, write_all, Stream};
use crate::protocol::backend::{self, PgError};
use crate::protocol::read_cstr;
use crate::proxy::Shared;

/// Largest authentication message accepted from a client.
const MAX_AUTH_MESSAGE: usize = 8 * 1024;

fn failed(user: &str) -> PgError {
    PgError::fatal(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}

fn violation(what: &'static str) -> PgError {
    PgError::fatal("08P01", what)
}

/// Run the exchange for `user` (`None`: unknown, fails like a wrong password); on success the
/// client has been sent AuthenticationOk. Returns the SCRAM ClientKey when SCRAM was used.
pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    shared: &Shared,
    user: Option<Arc<User>>,
    user_name: &str,
    wire_name: &str,
    tls_endpoint: Option<Vec<u8>>,
) -> Result<(Arc<User>, Option<[u8; 32]>), PgError> {
    let mut client_key = None;
    let method = user
        .as_ref()
        .map(|u| u.auth)
        .unwrap_or(AuthMethod::ScramSha256);
    let ok = match (&user, method) {
        (Some(_), AuthMethod::Trust) => true,
        (_, AuthMethod::ScramSha256) => {
            let (verifier, mock) = match user.as_ref().and_then(|u| u.secret.as_ref()) {
                Some(Secret::Scram(v)) => (v.clone(), false),
                Some(Secret::Plain(p)) => (shared.plain_verifier(user_name, p), false),
                _ => (ScramVerifier::mock(user_name, &shared.mock_key), true),
            };
            scram(
                stream,
                buf,
                &mut client_key,
                ScramServer::new(
                    verifier,
                    mock,
                    match tls_endpoint {
                        Some(h) => ChannelBinding::TlsServerEndPoint(h),
                        None => ChannelBinding::None,
                    },
                ),
            )
            .await?
        }
        (Some(u), AuthMethod::Md5) => {
            let salt: [u8; 4] = rand::random();
            let mut out = BytesMut::new();
            backend::auth_md5(&mut out, salt);
            send(stream, &out).await?;
            let resp = password_message(stream, buf).await?;
            u.secret
                .as_ref()
                .is_some_and(|s| md5_verify(s, &md5_name(s, user_name, wire_name), salt, &resp))
        }
        (Some(u), AuthMethod::Password) => {
            let mut out = BytesMut::new();
            backend::auth_cleartext(&mut out);
            send(stream, &out).await?;
            let resp = password_message(stream, buf).await?;
            u.secret
                .as_ref()
                .is_some_and(|s| check_plain(s, user_name, &resp))
        }
        (None, _) => false,
    };
    match (ok, user) {
        (true, Some(u)) => {
            let mut out = BytesMut::new();
            backend::auth_ok(&mut out);
            send(stream, &out).await?;
            Ok((u, client_key))
        }
        _ => Err(failed(user_name)),
    }
}

/// The md5 exchange salts with the user name the client sent (`app_user.acme` when a tenant
/// is selected by suffix): a plaintext secret is re-salted for it; a stored md5 hash can only
/// match the plain name.
fn md5_name(secret: &Secret, user: &str, wire: &str) -> String {
    match secret {
        Secret::Plain(_) => wire.to_string(),
        _ => user.to_string(),
    }
}

async fn send(stream: &mut Stream, data: &[u8]) -> Result<(), PgError> {
    write_all(stream, data)
        .await
        .map_err(|_| violation("connection lost during authentication"))
}

async fn read_p(stream: &mut Stream, buf: &mut BytesMut) -> Result<BytesMut, PgError> {
    match read_message(stream, buf, MAX_AUTH_MESSAGE).await {
        Ok((b'p', body)) => Ok(body),
        Ok(_) => Err(violation("expected password response")),
        Err(_) => Err(violation(
            "connection lost or invalid message during authentication",
        )),
    }
}

/// PasswordMessage payload without its terminating NUL.
async fn password_message(stream: &mut Stream, buf: &mut BytesMut) -> Result<Vec<u8>, PgError> {
    let body = read_p(stream, buf).await?;
    let mut pos = 0;
    let pw = read_cstr(&body, &mut pos).ok_or_else(|| violation("invalid password packet"))?;
    Ok(pw.to_vec())
}

fn check_plain(secret: &Secret, user: &str, given: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let Ok(given) = std::str::from_utf8(given) else {
        return false;
    };
    match secret {
        Secret::Plain(p) => p.as_bytes().ct_eq(given.as_bytes()).into(),
        Secret::Md5 { hash } => crate::auth::md5_hash(given, user).ct_eq(hash).into(),
        Secret::Scram(v) => {
            let derived = ScramVerifier::from_password(given, &v.salt, v.iterations);
            derived.stored_key.ct_eq(&v.stored_key).into()
        }
    }
}

async fn scram(
    stream: &mut Stream,
    buf: &mut BytesMut,
    client_key: &mut Option<[u8; 32]>,
    mut server: ScramServer,
) -> Result<bool, PgError> {
    let mut out = BytesMut::new();
    backend::auth_sasl(&mut out, server.mechanisms());
    send(stream, &out).await?;
    let body = read_p(stream, buf).await?;
    let mut pos = 0;
    let mech =
        read_cstr(&body, &mut pos).ok_or_else(|| violation("invalid SASLInitialResponse"))?;
    let mech = std::str::from_utf8(mech).map_err(|_| violation("invalid SASL mechanism"))?;
    let len = crate::protocol::read_i32(&body, &mut pos)
        .ok_or_else(|| violation("invalid SASLInitialResponse"))?;
    let data = body.get(pos..).unwrap_or_default();
    if len < 0 || len as usize != data.len() {
        return Err(violation("invalid SASLInitialResponse length"));
    }
    let first = match server.client_first(mech, data) {
        Ok(f) => f,
        Err(crate::auth::ScramError::UnsupportedMechanism) => {
            return Err(violation(
                "client selected an invalid SASL authentication mechanism",
            ))
        }
        Err(_) => return Err(violation("malformed SCRAM message")),
    };
    out.clear();
    backend::auth_sasl_continue(&mut out, first);
    send(stream, &out).await?;
    let body = read_p(stream, buf).await?;
    match server.client_final(&body) {
        Ok(fin) => {
            *client_key = server.client_key();
            out.clear();
            backend::auth_sasl_final(&mut out, fin);
            send(stream, &out).await?;
            Ok(true)
        }
        Err(crate::auth::ScramError::InvalidProof) => Ok(false),
        Err(_) => Err(violation("malformed SCRAM message")),
    }
}
