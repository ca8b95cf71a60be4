//! The messages of the upgrade conversation and the record of a client session that moves
//! from the old process to the new one, as JSON.
//!
//! Invariants:
//! - Decoding never panics: anything malformed is an `Err` and the caller drops the frame
//!   (and closes the descriptors that came with it).
//! - Byte strings (statement names and definitions, which need not be UTF-8) travel as
//!   base64, exactly as the client sent them.
//! - [`VERSION`] changes whenever a field's meaning does; a process refuses a peer that
//!   speaks another version (the takeover then fails before anything was handed over).

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Version of this conversation.
pub const VERSION: u32 = 1;

/// One frame's body. The descriptors that come with a frame are named in its comment.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// New → old: please hand over.
    Hello { version: u32, pid: u32 },
    /// Old → new, with the client listener and (if `http`) the HTTP listener.
    Listeners { version: u32, http: bool },
    /// New → old: the new process accepts on the listeners; stop accepting and move clients.
    Ready { pid: u32 },
    /// Old → new, with the client's socket: continue this session.
    Session(Box<SessionRecord>),
    /// New → old: a cancel request for a key the new process does not know.
    Cancel { pid: i32, secret: i32 },
}

/// What the new process needs to continue a client session exactly where it stands (between
/// transactions, nothing buffered).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The client's startup parameters as sent (user, database, options, …): the new process
    /// resolves the tenant and pool from them as at login.
    pub startup: Vec<(String, String)>,
    /// The authenticated user name.
    pub user: String,
    /// The SCRAM client key of an `auth_query` user (its pool authenticates with it).
    #[serde(default, with = "b64_opt")]
    pub client_key: Option<Vec<u8>>,
    /// The client's view of its session parameters: (name as reported, value).
    pub params: Vec<(String, String)>,
    /// Its named prepared statements.
    pub statements: Vec<Statement>,
    /// The BackendKeyData it was given: (pid, secret).
    pub key: (i32, i32),
    /// For SHOW CLIENTS.
    pub addr: String,
    pub connected_at_us: u64,
    pub application_name: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(with = "b64")]
    pub name: Vec<u8>,
    /// Parse body after the name: query, NUL, parameter count and types.
    #[serde(with = "b64")]
    pub definition: Vec<u8>,
    /// Its session effects (`sql::classify::Flags`).
    pub effects: u32,
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data (strings, integers, byte strings as base64) cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn decode(body: &[u8]) -> Result<Message, String> {
        serde_json::from_slice(body).map_err(|e| format!("malformed upgrade message: {e}"))
    }
}

mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::b64::serialize(v, s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SessionRecord {
        SessionRecord {
            startup: vec![
                ("user".into(), "app_user.acme".into()),
                ("database".into(), "app".into()),
            ],
            user: "app_user".into(),
            client_key: Some(vec![7; 32]),
            params: vec![("TimeZone".into(), "Asia/Tokyo".into())],
            statements: vec![Statement {
                name: b"s\xe9".to_vec(),
                definition: b"SELECT $1\0\0\x01\0\0\0\x17".to_vec(),
                effects: 5,
            }],
            key: (12345, -42),
            addr: "127.0.0.1:50000".into(),
            connected_at_us: 1_700_000_000_000_000,
            application_name: "psql".into(),
        }
    }

    #[test]
    fn round_trip() {
        for m in [
            Message::Hello {
                version: VERSION,
                pid: 1,
            },
            Message::Listeners {
                version: VERSION,
                http: true,
            },
            Message::Ready { pid: 2 },
            Message::Session(Box::new(sample())),
            Message::Cancel { pid: 3, secret: -4 },
        ] {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_survive() {
        let Message::Session(r) =
            Message::decode(&Message::Session(Box::new(sample())).encode()).unwrap()
        else {
            panic!("not a session");
        };
        assert_eq!(r.statements[0].name, b"s\xe9");
        assert_eq!(r.statements[0].definition[9], 0);
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"type\":\"session\"}",
            b"{\"type\":\"nope\"}",
            b"{\"type\":\"cancel\",\"pid\":\"x\",\"secret\":1}",
            b"\xff\xfe",
        ] {
            assert!(Message::decode(bad).is_err(), "{bad:?}");
        }
        let mut v: serde_json::Value =
            serde_json::from_slice(&Message::Session(Box::new(sample())).encode()).unwrap();
        v["statements"][0]["name"] = "not base64!".into();
        assert!(Message::decode(v.to_string().as_bytes()).is_err());
    }
}
