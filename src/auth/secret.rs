//! Configured user credentials: plaintext passwords, PostgreSQL `md5` hashes
//! and SCRAM-SHA-256 verifiers in `pg_authid` format.
//!
//! Invariants:
//! - [`Secret::parse`] never panics and never fails for plaintext or md5
//!   strings; it fails only for a string that starts with `SCRAM-SHA-256$` but
//!   is malformed. The error names the offending field, never its contents.
//! - An `md5` secret is recognised exactly as PostgreSQL does: `md5` followed
//!   by exactly 32 *lowercase* hex digits (35 characters). Anything else that
//!   is not SCRAM-shaped (including uppercase hex) is plaintext.
//! - A [`ScramVerifier`] always has `iterations >= 1` and a non-empty salt when
//!   it came from [`Secret::parse`]; [`ScramVerifier::from_password`] clamps
//!   `iterations` to at least 1 so its output always round-trips through
//!   [`ScramVerifier::to_pg_string`] and [`Secret::parse`].
//! - `Debug` output of [`Secret`] and [`ScramVerifier`] never contains key or
//!   password material. Secrets are not zeroized on drop.
//!
//! SASLprep: PostgreSQL (server and libpq) runs the password through SASLprep
//! (RFC 4013) and, if that fails (invalid UTF-8, prohibited or unassigned
//! characters, bidi violations), uses the raw bytes instead. For pure ASCII,
//! SASLprep is the identity, so ASCII passwords are used byte for byte.
//! This module has no Unicode tables, so **non-ASCII passwords are also used
//! as their raw UTF-8 bytes**. That equals PostgreSQL's result whenever
//! SASLprep either fails (e.g. emoji or other characters unassigned in
//! Unicode 3.2) or is the identity (NFKC-stable text with no non-ASCII spaces
//! and no "mapped to nothing" characters such as U+00AD), which covers normal
//! precomposed text. It differs when SASLprep would change the string (e.g.
//! decomposed accents, full-width forms, U+00A0): for such users configure the
//! SCRAM verifier from `pg_authid` instead of the plaintext password.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of a SCRAM-SHA-256 verifier as stored in `pg_authid.rolpassword`.
pub const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";
/// PostgreSQL's default PBKDF2 iteration count (`scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// PostgreSQL's salt length for generated verifiers, in bytes.
pub const DEFAULT_SALT_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA-256 over the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC is defined for keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Error returned by [`Secret::parse`] for a malformed SCRAM verifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The string starts with `SCRAM-SHA-256$` but is not a valid verifier;
    /// the payload names the part that is wrong.
    #[error("invalid SCRAM-SHA-256 verifier: {0}")]
    InvalidScram(&'static str),
}

/// A user's credential as configured.
#[derive(Clone)]
pub enum Secret {
    /// Plaintext password.
    Plain(String),
    /// PostgreSQL md5 hash: `md5(password || username)`.
    Md5 {
        /// The 16 raw digest bytes (the config string holds them as hex).
        hash: [u8; 16],
    },
    /// SCRAM-SHA-256 verifier.
    Scram(ScramVerifier),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Secret::Plain(<redacted>)"),
            Secret::Md5 { .. } => f.write_str("Secret::Md5(<redacted>)"),
            Secret::Scram(v) => write!(f, "Secret::Scram({v:?})"),
        }
    }
}

impl Secret {
    /// Parse the config string; anything not md5-shaped or SCRAM-shaped is
    /// plaintext. A string starting with `SCRAM-SHA-256$` must be a valid
    /// verifier (`SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>`),
    /// otherwise an error naming the bad part is returned.
    pub fn parse(s: &str) -> Result<Secret, SecretError> {
        if let Some(hash) = parse_md5(s) {
            return Ok(Secret::Md5 { hash });
        }
        if let Some(rest) = s.strip_prefix(SCRAM_PREFIX) {
            return parse_scram(rest).map(Secret::Scram);
        }
        Ok(Secret::Plain(s.to_owned()))
    }

    /// Render back to the configuration/`pg_authid` string form.
    pub fn to_config_string(&self) -> String {
        match self {
            Secret::Plain(p) => p.clone(),
            Secret::Md5 { hash } => {
                let mut s = String::with_capacity(35);
                s.push_str("md5");
                s.push_str(&hex_lower(hash));
                s
            }
            Secret::Scram(v) => v.to_pg_string(),
        }
    }
}

/// Lowercase hex encoding.
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn lower_hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn parse_md5(s: &str) -> Option<[u8; 16]> {
    let hex = s.strip_prefix("md5")?.as_bytes();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = (lower_hex_val(pair[0])? << 4) | lower_hex_val(pair[1])?;
    }
    Some(out)
}

fn parse_scram(rest: &str) -> Result<ScramVerifier, SecretError> {
    let err = SecretError::InvalidScram;
    let (params, keys) = rest.split_once('$').ok_or(err(
        "missing '$' between iterations:salt and StoredKey:ServerKey",
    ))?;
    let (iter, salt) = params
        .split_once(':')
        .ok_or(err("missing ':' between iterations and salt"))?;
    let (stored, server) = keys
        .split_once(':')
        .ok_or(err("missing ':' between StoredKey and ServerKey"))?;
    if iter.is_empty() || !iter.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("iteration count is not a decimal number"));
    }
    let iterations: u32 = iter
        .parse()
        .map_err(|_| err("iteration count out of range"))?;
    if iterations == 0 {
        return Err(err("iteration count is 0"));
    }
    let salt = B64
        .decode(salt)
        .map_err(|_| err("salt is not valid base64"))?;
    if salt.is_empty() {
        return Err(err("salt is empty"));
    }
    let stored_key = decode_key(stored).map_err(|e| match e {
        KeyErr::Base64 => err("StoredKey is not valid base64"),
        KeyErr::Len => err("StoredKey is not 32 bytes"),
    })?;
    let server_key = decode_key(server).map_err(|e| match e {
        KeyErr::Base64 => err("ServerKey is not valid base64"),
        KeyErr::Len => err("ServerKey is not 32 bytes"),
    })?;
    Ok(ScramVerifier {
        iterations,
        salt,
        stored_key,
        server_key,
    })
}

enum KeyErr {
    Base64,
    Len,
}

fn decode_key(s: &str) -> Result<[u8; 32], KeyErr> {
    let v = B64.decode(s).map_err(|_| KeyErr::Base64)?;
    v.try_into().map_err(|_| KeyErr::Len)
}

/// A SCRAM-SHA-256 verifier, as PostgreSQL stores it.
#[derive(Clone)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count (>= 1).
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// `SHA-256(ClientKey)`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// Constant-time on the keys; salt and iterations are public values.
impl PartialEq for ScramVerifier {
    fn eq(&self, other: &Self) -> bool {
        let keys =
            self.stored_key.ct_eq(&other.stored_key) & self.server_key.ct_eq(&other.server_key);
        self.iterations == other.iterations && self.salt == other.salt && bool::from(keys)
    }
}

impl Eq for ScramVerifier {}

impl ScramVerifier {
    /// Derive a verifier from a plaintext password (PBKDF2-HMAC-SHA-256; about
    /// 2.8 ms at 4096 iterations, so callers should cache the result).
    ///
    /// The password bytes are used as-is (see the module docs on SASLprep:
    /// exact for ASCII, and for non-ASCII whenever SASLprep would fail or be
    /// the identity). `iterations` of 0 is treated as 1.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        Self::from_password_with_client_key(password, salt, iterations).0
    }

    /// Like [`ScramVerifier::from_password`], also returning the ClientKey,
    /// which [`super::scram::ScramKeyClient`] needs to log in with it.
    pub fn from_password_with_client_key(
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> (ScramVerifier, [u8; 32]) {
        let iterations = iterations.max(1);
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        let server_key = hmac_sha256(&salted, &[b"Server Key"]);
        let verifier = ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key,
        };
        (verifier, client_key)
    }

    /// Deterministic fake verifier for an unknown user, so that the SCRAM
    /// exchange (salt, iteration count) looks stable and plausible per user.
    ///
    /// Salt: first 16 bytes of `HMAC(mock_key, "salt" || username)`;
    /// iterations: [`DEFAULT_ITERATIONS`] (if real verifiers use another count,
    /// callers wanting indistinguishability should overwrite `iterations`).
    /// The keys are derived from `mock_key` as well, so no password matches
    /// them in practice; [`super::scram::ScramServer`] additionally fails
    /// every proof when told the verifier is a mock.
    pub fn mock(username: &str, mock_key: &[u8; 32]) -> ScramVerifier {
        let salt_full = hmac_sha256(mock_key, &[b"salt", username.as_bytes()]);
        ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: salt_full[..DEFAULT_SALT_LEN].to_vec(),
            stored_key: hmac_sha256(mock_key, &[b"stored", username.as_bytes()]),
            server_key: hmac_sha256(mock_key, &[b"server", username.as_bytes()]),
        }
    }

    /// Render as `SCRAM-SHA-256$<iter>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>`.
    pub fn to_pg_string(&self) -> String {
        format!(
            "{SCRAM_PREFIX}{}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Key derivation itself is checked against the RFC 7677 vector in the
    // scram.rs tests; here: formatting and parsing round-trip.
    #[test]
    fn scram_round_trip() {
        let v = ScramVerifier::from_password("secret", b"0123456789abcdef", 4096);
        let s = v.to_pg_string();
        assert!(s.starts_with("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$"));
        match Secret::parse(&s).unwrap() {
            Secret::Scram(p) => assert_eq!(p, v),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn md5_parse() {
        let s = Secret::parse("md53175bce1d3201d16594cebf9d7eb3f9d").unwrap();
        match &s {
            Secret::Md5 { hash } => assert_eq!(hex_lower(hash), "3175bce1d3201d16594cebf9d7eb3f9d"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.to_config_string(), "md53175bce1d3201d16594cebf9d7eb3f9d");
        // Uppercase hex, wrong length, non-hex: plaintext, as in PostgreSQL.
        for p in [
            "md53175BCE1D3201D16594CEBF9D7EB3F9D",
            "md53175bce1d3201d16594cebf9d7eb3f9",
            "md53175bce1d3201d16594cebf9d7eb3f9d0",
            "md53175bce1d3201d16594cebf9d7eb3f9g",
            "md5",
            "",
            "hunter2",
        ] {
            assert!(
                matches!(Secret::parse(p).unwrap(), Secret::Plain(ref x) if x == p),
                "{p}"
            );
        }
    }

    #[test]
    fn scram_malformed() {
        let good = ScramVerifier::from_password("x", b"salt", 4096).to_pg_string();
        assert!(Secret::parse(&good).is_ok());
        let k = B64.encode([7u8; 32]);
        let k31 = B64.encode([7u8; 31]);
        let cases: Vec<(String, &str)> = vec![
            ("SCRAM-SHA-256$".into(), "missing '$'"),
            (format!("SCRAM-SHA-256$4096:c2FsdA=={k}:{k}"), "missing '$'"),
            (
                format!("SCRAM-SHA-256$4096c2FsdA==${k}:{k}"),
                "iterations and salt",
            ),
            (
                format!("SCRAM-SHA-256$4096:c2FsdA==${k}{k}"),
                "StoredKey and ServerKey",
            ),
            (format!("SCRAM-SHA-256$0:c2FsdA==${k}:{k}"), "is 0"),
            (
                format!("SCRAM-SHA-256$-1:c2FsdA==${k}:{k}"),
                "not a decimal",
            ),
            (format!("SCRAM-SHA-256$:c2FsdA==${k}:{k}"), "not a decimal"),
            (
                format!("SCRAM-SHA-256$99999999999:c2FsdA==${k}:{k}"),
                "out of range",
            ),
            (
                format!("SCRAM-SHA-256$4096:c2F*dA==${k}:{k}"),
                "salt is not valid base64",
            ),
            (format!("SCRAM-SHA-256$4096:${k}:{k}"), "salt is empty"),
            (
                format!("SCRAM-SHA-256$4096:c2FsdA==$!!:{k}"),
                "StoredKey is not valid base64",
            ),
            (
                format!("SCRAM-SHA-256$4096:c2FsdA==${k31}:{k}"),
                "StoredKey is not 32",
            ),
            (
                format!("SCRAM-SHA-256$4096:c2FsdA==${k}:{k31}"),
                "ServerKey is not 32",
            ),
            (
                format!("SCRAM-SHA-256$4096:c2FsdA==${k}:{k}$"),
                "ServerKey is not valid base64",
            ),
        ];
        for (s, want) in cases {
            let e = Secret::parse(&s).expect_err(&s).to_string();
            assert!(e.contains(want), "{s}: {e}");
            assert!(!e.contains(&k), "error leaks key material");
        }
        // Not SCRAM-shaped (prefix differs): plaintext.
        assert!(matches!(
            Secret::parse("SCRAM-SHA-1$x").unwrap(),
            Secret::Plain(_)
        ));
    }

    #[test]
    fn mock_is_deterministic_and_per_user() {
        let key = [42u8; 32];
        let a = ScramVerifier::mock("alice", &key);
        assert_eq!(a, ScramVerifier::mock("alice", &key));
        assert_ne!(a.salt, ScramVerifier::mock("bob", &key).salt);
        assert_ne!(a.salt, ScramVerifier::mock("alice", &[1u8; 32]).salt);
        assert_eq!(a.salt.len(), DEFAULT_SALT_LEN);
        assert_eq!(a.iterations, DEFAULT_ITERATIONS);
        // Parses back like a real one.
        assert!(matches!(
            Secret::parse(&a.to_pg_string()).unwrap(),
            Secret::Scram(_)
        ));
    }

    #[test]
    fn debug_redacts() {
        let v = ScramVerifier::from_password("pw", b"salt", 1);
        let d = format!(
            "{:?} {:?}",
            Secret::Plain("hunter2".into()),
            Secret::Scram(v.clone())
        );
        assert!(!d.contains("hunter2"));
        assert!(!d.contains(&B64.encode(v.stored_key)));
    }

    #[test]
    fn zero_iterations_clamped() {
        let v = ScramVerifier::from_password("pw", b"salt", 0);
        assert_eq!(v.iterations, 1);
        assert_eq!(v, ScramVerifier::from_password("pw", b"salt", 1));
    }
}
