//! Sockets: one stream type over TCP or TLS (either side), and message reading helpers used
//! during startup and authentication (before the session loop takes over).

pub mod stream;

pub use stream::Stream;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::protocol::{FrameError, Header};

/// Read one complete typed message into `buf`, returning (tag, body). The body is split off
/// `buf`; bytes after the message stay buffered. `max` bounds the length before allocating.
pub async fn read_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: usize,
) -> std::io::Result<(u8, BytesMut)> {
    loop {
        match Header::parse(buf, max) {
            Ok(Some(h)) if buf.len() >= h.frame_len => {
                let mut frame = buf.split_to(h.frame_len);
                frame.advance(5);
                return Ok((h.tag, frame));
            }
            Ok(Some(h)) => buf.reserve(h.frame_len - buf.len()),
            Ok(None) => buf.reserve(512),
            Err(FrameError::BadLength) => return Err(invalid("invalid message length")),
            Err(FrameError::TooLarge { .. }) => return Err(invalid("message too large")),
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

pub async fn write_all(stream: &mut Stream, data: &[u8]) -> std::io::Result<()> {
    stream.write_all(data).await?;
    stream.flush().await
}

pub fn invalid(msg: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}
pub mod tls;
