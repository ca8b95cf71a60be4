//! Sans-IO PostgreSQL wire protocol (3.0) pieces: framing and the few messages the proxy must
//! understand. Nothing here touches a socket.
//!
//! Invariants:
//! - Every length read from the wire is bounded before anything is allocated for it.
//! - A frame is only handed out once it is complete; [`Header::parse`] returns `None` when short.
//! - Client bytes are never re-encoded through a lossy path: SQL text stays `&[u8]`.

pub mod backend;
pub mod frontend;
pub mod startup;

/// Protocol version 3.0 as sent in a StartupMessage.
pub const PROTOCOL_3_0: i32 = 196_608;
/// SSLRequest code.
pub const SSL_REQUEST: i32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// The 5-byte header of a regular (typed) message: type byte and the length that includes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Length of the whole frame on the wire (type byte + length + body).
    pub frame_len: usize,
}

/// Why a frame cannot be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below 4 (impossible for a valid message).
    BadLength,
    /// The message is larger than the configured limit.
    TooLarge { len: usize, max: usize },
}

impl Header {
    /// Parse the header at the start of `buf`. `Ok(None)` when fewer than 5 bytes are buffered.
    #[inline]
    pub fn parse(buf: &[u8], max_len: usize) -> Result<Option<Header>, FrameError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len < 4 {
            return Err(FrameError::BadLength);
        }
        if len > max_len {
            return Err(FrameError::TooLarge { len, max: max_len });
        }
        Ok(Some(Header {
            tag: buf[0],
            frame_len: len + 1,
        }))
    }
}

/// Read a NUL-terminated string starting at `*pos` in `body`, advancing `pos` past the NUL.
#[inline]
pub fn read_cstr<'a>(body: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let rest = body.get(*pos..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    *pos += nul + 1;
    Some(&rest[..nul])
}

#[inline]
pub fn read_i16(body: &[u8], pos: &mut usize) -> Option<i16> {
    let b = body.get(*pos..*pos + 2)?;
    *pos += 2;
    Some(i16::from_be_bytes([b[0], b[1]]))
}

#[inline]
pub fn read_i32(body: &[u8], pos: &mut usize) -> Option<i32> {
    let b = body.get(*pos..*pos + 4)?;
    *pos += 4;
    Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Append a frame with `tag` and `body` to `out`.
#[inline]
pub fn put_frame(out: &mut bytes::BytesMut, tag: u8, body: &[u8]) {
    out.reserve(5 + body.len());
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_short_bad_and_large() {
        assert_eq!(Header::parse(b"Q\0\0", 100), Ok(None));
        assert_eq!(
            Header::parse(b"Q\0\0\0\x03", 100),
            Err(FrameError::BadLength)
        );
        assert_eq!(
            Header::parse(b"Q\x7f\xff\xff\xff", 100),
            Err(FrameError::TooLarge {
                len: 0x7fff_ffff,
                max: 100
            })
        );
        assert_eq!(
            Header::parse(b"Q\0\0\0\x09SELECT", 100),
            Ok(Some(Header {
                tag: b'Q',
                frame_len: 10
            }))
        );
    }

    #[test]
    fn cstr_reading() {
        let body = b"abc\0de\0";
        let mut pos = 0;
        assert_eq!(read_cstr(body, &mut pos), Some(&b"abc"[..]));
        assert_eq!(read_cstr(body, &mut pos), Some(&b"de"[..]));
        assert_eq!(read_cstr(body, &mut pos), None);
        let mut pos = 0;
        assert_eq!(read_cstr(b"no-nul", &mut pos), None);
    }
}
