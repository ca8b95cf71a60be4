//! Backend messages the proxy writes itself (errors, authentication, status, admin results),
//! encoded with pgwire. Forwarded server messages never pass through here.
//!
//! Also the one decoder for server messages the proxy inspects: ErrorResponse/NoticeResponse
//! fields (SQLSTATE, message, position) and ParameterStatus.

use std::borrow::Cow;

use bytes::BytesMut;
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{
    CommandComplete, ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};
use pgwire::messages::Message;

use super::read_cstr;

/// A client-visible error: what PostgreSQL would put in an ErrorResponse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgError {
    pub severity: &'static str,
    pub code: Cow<'static, str>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn error(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        PgError {
            severity: "ERROR",
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }
    pub fn fatal(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        PgError {
            severity: "FATAL",
            ..Self::error(code, message)
        }
    }
    /// The same error ending the session (a login refused, a connection closed).
    pub fn into_fatal(self) -> Self {
        PgError {
            severity: "FATAL",
            ..self
        }
    }
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    /// A NOTICE (SQLSTATE 00000).
    pub fn notice(message: impl Into<String>) -> Self {
        PgError {
            severity: "NOTICE",
            ..Self::error("00000", message)
        }
    }
    pub fn encode(&self, out: &mut BytesMut) {
        match self.severity {
            "NOTICE" | "WARNING" | "INFO" | "LOG" | "DEBUG" => {
                encode(out, &NoticeResponse::new(self.fields()))
            }
            _ => encode(out, &ErrorResponse::new(self.fields())),
        }
    }
    fn fields(&self) -> Vec<(u8, String)> {
        let mut fields = vec![
            (b'S', self.severity.to_string()),
            (b'V', self.severity.to_string()),
            (b'C', self.code.to_string()),
            (b'M', self.message.clone()),
        ];
        if let Some(d) = &self.detail {
            fields.push((b'D', d.clone()));
        }
        if let Some(h) = &self.hint {
            fields.push((b'H', h.clone()));
        }
        fields
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

fn encode<M: Message>(out: &mut BytesMut, m: &M) {
    // Encoding into a BytesMut cannot fail for the message types used here.
    m.encode(out).expect("pgwire encode into BytesMut");
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(out, &ReadyForQuery::new(status));
}

pub fn auth_ok(out: &mut BytesMut) {
    encode(out, &Authentication::Ok);
}
pub fn auth_cleartext(out: &mut BytesMut) {
    encode(out, &Authentication::CleartextPassword);
}
pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    encode(out, &Authentication::MD5Password(salt.to_vec()));
}
pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    let m = mechanisms.iter().map(|s| s.to_string()).collect();
    encode(out, &Authentication::SASL(m));
}
pub fn auth_sasl_continue(out: &mut BytesMut, data: Vec<u8>) {
    encode(out, &Authentication::SASLContinue(data.into()));
}
pub fn auth_sasl_final(out: &mut BytesMut, data: Vec<u8>) {
    encode(out, &Authentication::SASLFinal(data.into()));
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    encode(out, &ParameterStatus::new(name.into(), value.into()));
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    encode(out, &BackendKeyData::new(pid, SecretKey::I32(secret)));
}

pub fn negotiate_protocol_version(out: &mut BytesMut, minor: i32, unsupported: Vec<String>) {
    encode(out, &NegotiateProtocolVersion::new(minor, unsupported));
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    encode(out, &CommandComplete::new(tag.into()));
}

/// RowDescription for an all-text result (admin console).
/// RowDescription of text-format columns with their type (`oid`, `typlen`).
pub fn row_description_typed(out: &mut BytesMut, columns: &[(&str, u32, i16)]) {
    let fields = columns
        .iter()
        .map(|(c, oid, len)| FieldDescription::new(c.to_string(), 0, 0, *oid, *len, -1, 0))
        .collect();
    encode(out, &RowDescription::new(fields));
}

pub fn row_description(out: &mut BytesMut, columns: &[&str]) {
    const TEXT_OID: u32 = 25;
    let fields = columns
        .iter()
        .map(|c| FieldDescription::new(c.to_string(), 0, 0, TEXT_OID, -1, -1, 0))
        .collect();
    encode(out, &RowDescription::new(fields));
}

/// DataRow of text values; `None` is SQL NULL.
pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    let mut data = BytesMut::new();
    for v in values {
        match v {
            Some(s) => {
                data.extend_from_slice(&(s.len() as i32).to_be_bytes());
                data.extend_from_slice(s.as_bytes());
            }
            None => data.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    encode(out, &DataRow::new(data, values.len() as i16));
}

/// The fields of an ErrorResponse/NoticeResponse body that the proxy looks at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    pub severity: &'a [u8],
    pub code: &'a [u8],
    pub message: &'a [u8],
}

impl ErrorFields<'_> {
    /// The server's error as one the proxy relays (ERROR, PostgreSQL's SQLSTATE and message).
    pub fn to_error(&self) -> PgError {
        PgError::error(
            String::from_utf8_lossy(self.code).into_owned(),
            String::from_utf8_lossy(self.message).into_owned(),
        )
    }
}

/// Parse the body (after the 5-byte header) of an ErrorResponse or NoticeResponse.
pub fn parse_error_fields(body: &[u8]) -> ErrorFields<'_> {
    let mut f = ErrorFields::default();
    let mut pos = 0;
    while pos < body.len() && body[pos] != 0 {
        let code = body[pos];
        pos += 1;
        let Some(v) = read_cstr(body, &mut pos) else {
            break;
        };
        match code {
            b'V' => f.severity = v,
            b'S' if f.severity.is_empty() => f.severity = v,
            b'C' => f.code = v,
            b'M' => f.message = v,
            _ => {}
        }
    }
    f
}

/// Parse a ParameterStatus body into (name, value).
pub fn parse_parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut pos = 0;
    let name = read_cstr(body, &mut pos)?;
    let value = read_cstr(body, &mut pos)?;
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trip() {
        let mut out = BytesMut::new();
        PgError::error("28P01", "password authentication failed for user \"x\"").encode(&mut out);
        assert_eq!(out[0], b'E');
        let f = parse_error_fields(&out[5..]);
        assert_eq!(f.code, b"28P01");
        assert_eq!(f.severity, b"ERROR");
        assert!(f.message.starts_with(b"password authentication failed"));
        let relayed = f.to_error().into_fatal();
        assert_eq!(
            (relayed.severity, &*relayed.code),
            ("FATAL", "28P01"),
            "{relayed}"
        );
        assert!(relayed
            .message
            .starts_with("password authentication failed"));
    }

    #[test]
    fn rfq_bytes() {
        let mut out = BytesMut::new();
        ready_for_query(&mut out, b'T');
        assert_eq!(&out[..], b"Z\0\0\0\x05T");
    }
}
