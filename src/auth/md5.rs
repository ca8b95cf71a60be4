//! PostgreSQL `md5` password authentication (AuthenticationMD5Password).
//!
//! Stored hash: `md5(password || username)`, configured as `"md5" + 32 hex`.
//! Challenge response: `"md5" + hex(md5(hex(stored hash) || salt))`, where the
//! salt is the 4 random bytes the server sent in AuthenticationMD5Password.
//!
//! Invariants:
//! - Hex is always lowercase, as PostgreSQL produces and expects.
//! - [`md5_verify`] compares in constant time over the 35-byte response; only
//!   the response length (public) can end the comparison early. It never
//!   panics. A SCRAM verifier cannot answer an md5 challenge, so it always
//!   fails for [`Secret::Scram`] (PostgreSQL then uses SCRAM instead).
//! - The username is the role name from the startup packet, byte for byte.

use ::md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::secret::Secret;

fn hex_lower_into(bytes: &[u8; 16], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// The stored PostgreSQL md5 hash: `md5(password || user)` (raw digest; the
/// config form is `"md5"` followed by its lowercase hex).
pub fn md5_hash(password: &str, user: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(user.as_bytes());
    h.finalize().into()
}

/// The md5 challenge response PostgreSQL expects:
/// `"md5" + hex(md5(hex(md5(password || user)) || salt))`, given the stored
/// hash `md5(password || user)`.
pub fn md5_response_from_hash(hash: &[u8; 16], salt: [u8; 4]) -> [u8; 35] {
    let mut hex = [0u8; 32];
    hex_lower_into(hash, &mut hex);
    let mut h = Md5::new();
    h.update(hex);
    h.update(salt);
    let outer: [u8; 16] = h.finalize().into();
    let mut out = [0u8; 35];
    out[..3].copy_from_slice(b"md5");
    hex_lower_into(&outer, &mut out[3..]);
    out
}

/// Constant-time check of a client's PasswordMessage payload (without the
/// trailing NUL) against a stored secret (Plain or Md5). Always false for a
/// SCRAM secret.
pub fn md5_verify(secret: &Secret, user: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let hash = match secret {
        Secret::Plain(p) => md5_hash(p, user),
        Secret::Md5 { hash } => *hash,
        Secret::Scram(_) => return false,
    };
    let expected = md5_response_from_hash(&hash, salt);
    response.len() == expected.len() && bool::from(expected.ct_eq(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn known_hashes() {
        // User "postgres", password "postgres".
        let h = md5_hash("postgres", "postgres");
        assert_eq!(
            format!("md5{}", hex(&h)),
            "md53175bce1d3201d16594cebf9d7eb3f9d"
        );
        // Produced by PostgreSQL 15: role "bob", password "postgres".
        assert_eq!(
            format!("md5{}", hex(&md5_hash("postgres", "bob"))),
            "md565170a859842ceb2930dc2fa1454af9d"
        );
        // Parsed config string gives the same hash.
        match Secret::parse("md53175bce1d3201d16594cebf9d7eb3f9d").unwrap() {
            Secret::Md5 { hash } => assert_eq!(hash, h),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_matches_independent_computations() {
        let salt = [0x01, 0x02, 0xfe, 0xff];
        let resp = md5_response_from_hash(&md5_hash("postgres", "postgres"), salt);

        // By hand, straight from the definition.
        let inner = hex(&Md5::digest(b"postgrespostgres"));
        let mut outer_input = inner.into_bytes();
        outer_input.extend_from_slice(&salt);
        let by_hand = format!("md5{}", hex(&Md5::digest(&outer_input)));
        assert_eq!(&resp[..], by_hand.as_bytes());

        // postgres-protocol's client implementation.
        let client = postgres_protocol::authentication::md5_hash(b"postgres", b"postgres", salt);
        assert_eq!(&resp[..], client.as_bytes());
    }

    #[test]
    fn verify() {
        let salt = [9, 8, 7, 6];
        let good = postgres_protocol::authentication::md5_hash(b"alice", b"pw", salt);
        let plain = Secret::Plain("pw".into());
        let hashed = Secret::parse(&format!("md5{}", hex(&md5_hash("pw", "alice")))).unwrap();
        for s in [&plain, &hashed] {
            assert!(md5_verify(s, "alice", salt, good.as_bytes()));
            assert!(!md5_verify(s, "alice", [9, 8, 7, 5], good.as_bytes()));
            assert!(!md5_verify(s, "alice", salt, &good.as_bytes()[..34]));
            let mut with_nul = good.clone().into_bytes();
            with_nul.push(0);
            assert!(!md5_verify(s, "alice", salt, &with_nul));
            assert!(!md5_verify(s, "alice", salt, b""));
            assert!(!md5_verify(
                s,
                "alice",
                salt,
                good.to_uppercase().as_bytes()
            ));
        }
        // Plaintext secrets are hashed with the given user; a stored md5 hash
        // already includes the user it was made for.
        assert!(!md5_verify(&plain, "bob", salt, good.as_bytes()));
        let wrong = postgres_protocol::authentication::md5_hash(b"alice", b"pW", salt);
        assert!(!md5_verify(&plain, "alice", salt, wrong.as_bytes()));
        let scram = Secret::Scram(crate::auth::secret::ScramVerifier::from_password(
            "pw", b"s", 1,
        ));
        assert!(!md5_verify(&scram, "alice", salt, good.as_bytes()));
    }
}
