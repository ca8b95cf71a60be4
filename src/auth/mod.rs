//! Client and server authentication for pgward, as sans-IO state machines:
//! no sockets, no async, no clocks. Callers move bytes between the wire
//! protocol messages and these types.
//!
//! - [`secret`]: configured credentials ([`Secret`], [`ScramVerifier`]).
//! - [`scram`]: SCRAM-SHA-256(-PLUS) server ([`ScramServer`]) and a client
//!   that logs in to PostgreSQL with a recovered ClientKey ([`ScramKeyClient`]).
//! - [`md5`]: PostgreSQL md5 challenge/response.
//!
//! Invariants shared by all submodules:
//! - Nothing here panics on peer input; malformed input is an error value.
//! - Secret comparisons (proofs, signatures, md5 responses) are constant time.
//! - Errors and `Debug` output never contain passwords, keys or client-sent
//!   bytes.
//! - Costly work is explicit: [`ScramVerifier::from_password`] runs PBKDF2
//!   (~2.8 ms at 4096 iterations) and callers should cache its result per
//!   (password, salt, iterations); verifying a proof with a stored verifier
//!   is cheap (~14 µs).
//! - Passwords are used as raw UTF-8 bytes (no SASLprep tables); see
//!   [`secret`] for exactly when this differs from PostgreSQL.

pub mod md5;
pub mod scram;
pub mod secret;

pub use self::md5::{md5_hash, md5_response_from_hash, md5_verify};
pub use self::scram::{ChannelBinding, ScramError, ScramKeyClient, ScramServer};
pub use self::secret::{ScramVerifier, Secret, SecretError};
