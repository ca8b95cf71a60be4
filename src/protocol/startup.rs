//! The untyped first message of a connection: StartupMessage, SSLRequest, GSSENCRequest,
//! CancelRequest. Parsed from a complete, length-bounded packet.
//!
//! Invariant: the caller bounds the packet length (`MAX_STARTUP_PACKET`) before buffering it.

use super::{read_cstr, CANCEL_REQUEST, GSSENC_REQUEST, SSL_REQUEST};

/// Largest startup packet accepted before authentication (PostgreSQL allows 10,000 bytes).
pub const MAX_STARTUP_PACKET: usize = 10_000;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup(StartupMessage),
}

#[derive(Debug, PartialEq, Eq, Default, Clone)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    /// Parameters in the order sent; names and values as sent (lossless for ASCII/UTF-8).
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy, thiserror::Error)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("unsupported frontend protocol {0}.{1}")]
    UnsupportedVersion(u16, u16),
    #[error("invalid startup packet layout: expected terminator as last byte")]
    Malformed,
    #[error("startup parameters are not valid UTF-8")]
    NotUtf8,
}

/// Read the packet length from the first 4 bytes; `None` if fewer buffered.
pub fn packet_len(buf: &[u8]) -> Option<Result<usize, StartupError>> {
    let b = buf.get(..4)?;
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    Some(if (8..=super::startup::MAX_STARTUP_PACKET).contains(&len) {
        Ok(len)
    } else {
        Err(StartupError::BadLength)
    })
}

/// Parse a complete packet (including its 4-byte length).
pub fn parse(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    if packet.len() < 8 {
        return Err(StartupError::BadLength);
    }
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    match code {
        SSL_REQUEST if body.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if body.is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST if body.len() == 8 => Ok(StartupPacket::Cancel {
            pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        }),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(StartupError::BadLength),
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedVersion(major, minor));
            }
            parse_params(body).map(|params| {
                StartupPacket::Startup(StartupMessage {
                    major,
                    minor,
                    params,
                })
            })
        }
    }
}

fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    if body.last() != Some(&0) {
        return Err(StartupError::Malformed);
    }
    let mut params = Vec::new();
    let mut pos = 0;
    while pos < body.len() - 1 {
        let name = read_cstr(body, &mut pos).ok_or(StartupError::Malformed)?;
        let value = read_cstr(body, &mut pos).ok_or(StartupError::Malformed)?;
        let name = std::str::from_utf8(name).map_err(|_| StartupError::NotUtf8)?;
        let value = std::str::from_utf8(value).map_err(|_| StartupError::NotUtf8)?;
        params.push((name.to_owned(), value.to_owned()));
    }
    Ok(params)
}

/// Encode a StartupMessage (protocol 3.0) with the given parameters.
pub fn encode_startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&super::PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Encode a CancelRequest.
pub fn encode_cancel(pid: i32, secret: i32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&16u32.to_be_bytes());
    out[4..8].copy_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out[8..12].copy_from_slice(&pid.to_be_bytes());
    out[12..].copy_from_slice(&secret.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_startup() {
        let pkt = encode_startup(&[("user", "u"), ("database", "d")]);
        match parse(&pkt).unwrap() {
            StartupPacket::Startup(m) => {
                assert_eq!((m.major, m.minor), (3, 0));
                assert_eq!(m.get("user"), Some("u"));
                assert_eq!(m.get("database"), Some("d"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancel_and_ssl() {
        assert_eq!(
            parse(&encode_cancel(7, -3)).unwrap(),
            StartupPacket::Cancel { pid: 7, secret: -3 }
        );
        let mut ssl = 8u32.to_be_bytes().to_vec();
        ssl.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        assert_eq!(parse(&ssl).unwrap(), StartupPacket::SslRequest);
    }

    #[test]
    fn malformed() {
        assert_eq!(
            packet_len(&[0x7f, 0xff, 0xff, 0xff]),
            Some(Err(StartupError::BadLength))
        );
        assert_eq!(
            packet_len(&[0, 0, 0, 2]),
            Some(Err(StartupError::BadLength))
        );
        let mut bad = encode_startup(&[("user", "u")]);
        bad.pop();
        assert!(parse(&bad).is_err());
        let mut v2 = 8u32.to_be_bytes().to_vec();
        v2.extend_from_slice(&0x0002_0000i32.to_be_bytes());
        assert_eq!(parse(&v2), Err(StartupError::UnsupportedVersion(2, 0)));
    }
}
