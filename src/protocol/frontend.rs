//! Frontend (client → server) messages the proxy inspects or writes itself.
//!
//! Inspection works on frame bodies (`&[u8]` after the 5-byte header) and never copies or
//! re-encodes SQL text. A body that does not parse is reported as `None`; the caller answers
//! with a protocol-violation error instead of forwarding it.

use bytes::BytesMut;

use super::{put_frame, read_cstr, read_i16};

/// The SQL text of a Query body (without its NUL).
#[inline]
pub fn query_text(body: &[u8]) -> Option<&[u8]> {
    let mut pos = 0;
    let text = read_cstr(body, &mut pos)?;
    (pos == body.len()).then_some(text)
}

/// Fields of a Parse body.
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// Everything after the statement name: query NUL, parameter count, type OIDs. This is the
    /// identity of a statement for sharing across clients.
    pub definition: &'a [u8],
}

pub fn parse(body: &[u8]) -> Option<Parse<'_>> {
    let mut pos = 0;
    let name = read_cstr(body, &mut pos)?;
    let def_start = pos;
    let query = read_cstr(body, &mut pos)?;
    let n = read_i16(body, &mut pos)?;
    if n < 0 || body.len() - pos != n as usize * 4 {
        return None;
    }
    Some(Parse {
        name,
        query,
        definition: &body[def_start..],
    })
}

/// The (portal, statement) names at the start of a Bind body and the offset of the rest.
pub fn bind_names(body: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let mut pos = 0;
    let portal = read_cstr(body, &mut pos)?;
    let stmt = read_cstr(body, &mut pos)?;
    Some((portal, stmt, pos))
}

/// Describe/Close body: kind ('S' or 'P') and name.
pub fn target(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    let mut pos = 0;
    let name = read_cstr(rest, &mut pos)?;
    (matches!(kind, b'S' | b'P') && pos == rest.len()).then_some((kind, name))
}

// ---- encoders for messages the proxy sends to the server ----

pub fn put_query(out: &mut BytesMut, sql: &[u8]) {
    out.reserve(6 + sql.len());
    out.extend_from_slice(b"Q");
    out.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    out.extend_from_slice(sql);
    out.extend_from_slice(b"\0");
}

/// Parse with a given name and a definition as returned by [`parse`].
pub fn put_parse(out: &mut BytesMut, name: &[u8], definition: &[u8]) {
    let len = 4 + name.len() + 1 + definition.len();
    out.reserve(len + 1);
    out.extend_from_slice(b"P");
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(b"\0");
    out.extend_from_slice(definition);
}

/// Bind whose statement name is replaced by `stmt`, keeping the rest of the client's body.
pub fn put_bind_renamed(out: &mut BytesMut, portal: &[u8], stmt: &[u8], rest: &[u8]) {
    let len = 4 + portal.len() + 1 + stmt.len() + 1 + rest.len();
    out.reserve(len + 1);
    out.extend_from_slice(b"B");
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(portal);
    out.extend_from_slice(b"\0");
    out.extend_from_slice(stmt);
    out.extend_from_slice(b"\0");
    out.extend_from_slice(rest);
}

/// Describe or Close ('D'/'C') of kind 'S'/'P' with a name.
pub fn put_target(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    let len = 4 + 1 + name.len() + 1;
    out.reserve(len + 1);
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&[kind]);
    out.extend_from_slice(name);
    out.extend_from_slice(b"\0");
}

/// Bind of text parameters to `portal`, all results in text.
pub fn put_bind_text(out: &mut BytesMut, portal: &[u8], stmt: &[u8], params: &[&[u8]]) {
    let mut body = Vec::with_capacity(16 + params.iter().map(|p| p.len() + 4).sum::<usize>());
    body.extend_from_slice(portal);
    body.push(0);
    body.extend_from_slice(stmt);
    body.push(0);
    body.extend_from_slice(&0i16.to_be_bytes()); // all parameters text
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p);
    }
    body.extend_from_slice(&0i16.to_be_bytes()); // all results text
    put_frame(out, b'B', &body);
}

/// Execute of `portal`, all rows.
pub fn put_execute(out: &mut BytesMut, portal: &[u8]) {
    let mut body = Vec::with_capacity(portal.len() + 5);
    body.extend_from_slice(portal);
    body.push(0);
    body.extend_from_slice(&0i32.to_be_bytes());
    put_frame(out, b'E', &body);
}

/// The portal name of an Execute message body.
pub fn execute_portal(body: &[u8]) -> Option<&[u8]> {
    let end = body.iter().position(|&b| b == 0)?;
    (body.len() == end + 5).then(|| &body[..end])
}

pub fn put_flush(out: &mut BytesMut) {
    out.extend_from_slice(b"H\0\0\0\x04");
}

pub fn put_sync(out: &mut BytesMut) {
    out.extend_from_slice(b"S\0\0\0\x04");
}

pub fn put_terminate(out: &mut BytesMut) {
    out.extend_from_slice(b"X\0\0\0\x04");
}

/// PasswordMessage / SASLResponse ('p') with raw data.
pub fn put_password(out: &mut BytesMut, data: &[u8]) {
    put_frame(out, b'p', data);
}

/// SASLInitialResponse.
pub fn put_sasl_initial(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let mut body = Vec::with_capacity(mechanism.len() + 5 + data.len());
    body.extend_from_slice(mechanism.as_bytes());
    body.push(0);
    body.extend_from_slice(&(data.len() as i32).to_be_bytes());
    body.extend_from_slice(data);
    put_frame(out, b'p', &body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_fields() {
        let mut body = b"s1\0SELECT $1\0".to_vec();
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&23u32.to_be_bytes());
        let p = parse(&body).unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.query, b"SELECT $1");
        assert_eq!(p.definition, &body[3..]);
        // claims two types, carries one
        let mut bad = b"s1\0SELECT $1\0".to_vec();
        bad.extend_from_slice(&2i16.to_be_bytes());
        bad.extend_from_slice(&23u32.to_be_bytes());
        assert!(parse(&bad).is_none());
    }

    #[test]
    fn query_and_target() {
        assert_eq!(query_text(b"SELECT 1\0"), Some(&b"SELECT 1"[..]));
        assert_eq!(query_text(b"SELECT 1\0junk"), None);
        assert_eq!(query_text(b"SELECT 1"), None);
        assert_eq!(target(b"Sabc\0"), Some((b'S', &b"abc"[..])));
        assert_eq!(target(b"Xabc\0"), None);
    }

    #[test]
    fn bind_rename_keeps_rest() {
        let body = b"p\0old\0\0\0\0\0\0\0";
        let (portal, stmt, rest) = bind_names(body).unwrap();
        assert_eq!((portal, stmt), (&b"p"[..], &b"old"[..]));
        let mut out = BytesMut::new();
        put_bind_renamed(&mut out, portal, b"newname", &body[rest..]);
        let (_, stmt2, _) = bind_names(&out[5..]).unwrap();
        assert_eq!(stmt2, b"newname");
        assert_eq!(out.len(), 5 + body.len() + 4);
    }
}
