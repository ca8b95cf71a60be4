//! Frames over the upgrade connection (a local Unix stream socket): a 4-byte big-endian
//! length, a JSON body, and up to [`MAX_FDS`] file descriptors passed with SCM_RIGHTS.
//!
//! Invariants:
//! - A frame is written under one lock ([`Writer`]), its descriptors on its first byte, so
//!   frames of concurrent senders never interleave and descriptors arrive with their frame.
//! - The reader bounds the body ([`MAX_FRAME`]) before allocating it and keeps at most
//!   [`MAX_FDS`] descriptors per frame; extra or unexpected descriptors are closed (dropped),
//!   never leaked. Descriptors are received close-on-exec.
//! - Every call is bounded by the caller's timeout; nothing here panics on bad input.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Largest frame body accepted (a session record with many prepared statements).
pub const MAX_FRAME: usize = 16 << 20;
/// Most descriptors one frame carries (the client and HTTP listeners).
pub const MAX_FDS: usize = 2;

/// One received frame: its body and the descriptors that came with it.
pub struct Frame {
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// The sending side, shared by the tasks that send on one connection.
#[derive(Clone)]
pub struct Writer {
    sock: Arc<UnixStream>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Writer {
    pub fn new(sock: Arc<UnixStream>) -> Writer {
        Writer {
            sock,
            lock: Default::default(),
        }
    }

    /// Send one frame with `fds` attached.
    pub async fn send(&self, body: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        if body.len() > MAX_FRAME || fds.len() > MAX_FDS {
            return Err(std::io::Error::other("frame too large"));
        }
        let _one = self.lock.lock().await;
        let len = (body.len() as u32).to_be_bytes();
        let mut done = 0usize;
        let total = 4 + body.len();
        while done < total {
            let n = self
                .sock
                .async_io(Interest::WRITABLE, || {
                    let (head, rest) = if done < 4 {
                        (&len[done..], body)
                    } else {
                        (&[][..], &body[done - 4..])
                    };
                    let iov = [IoSlice::new(head), IoSlice::new(rest)];
                    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
                    let mut control = SendAncillaryBuffer::new(&mut space);
                    if done == 0 && !fds.is_empty() {
                        control.push(SendAncillaryMessage::ScmRights(fds));
                    }
                    sendmsg(&*self.sock, &iov, &mut control, SendFlags::NOSIGNAL)
                        .map_err(std::io::Error::from)
                })
                .await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            done += n;
        }
        Ok(())
    }
}

/// The receiving side of one connection (one task reads).
pub struct Reader {
    sock: Arc<UnixStream>,
    fds: Vec<OwnedFd>,
}

impl Reader {
    pub fn new(sock: Arc<UnixStream>) -> Reader {
        Reader {
            sock,
            fds: Vec::new(),
        }
    }

    /// The next frame; `Ok(None)` at a clean end of the connection (between frames).
    pub async fn recv(&mut self) -> std::io::Result<Option<Frame>> {
        let mut head = [0u8; 4];
        if !self.fill(&mut head).await? {
            return Ok(None);
        }
        let len = u32::from_be_bytes(head) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::other(format!(
                "frame of {len} bytes exceeds the bound"
            )));
        }
        let mut body = vec![0u8; len];
        if !self.fill(&mut body).await? {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Some(Frame {
            body,
            fds: std::mem::take(&mut self.fds),
        }))
    }

    /// Fill `buf` exactly; false if the connection ended before its first byte.
    async fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            let n = self
                .sock
                .async_io(Interest::READABLE, || {
                    let mut iov = [IoSliceMut::new(&mut buf[got..])];
                    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
                    let mut control = RecvAncillaryBuffer::new(&mut space);
                    let r = recvmsg(&*self.sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
                        .map_err(std::io::Error::from)?;
                    for msg in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(fds) = msg {
                            for fd in fds {
                                if self.fds.len() < MAX_FDS {
                                    self.fds.push(fd);
                                } // else dropped: closed
                            }
                        }
                    }
                    Ok(r.bytes)
                })
                .await?;
            if n == 0 {
                if got == 0 {
                    return Ok(false);
                }
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            got += n;
        }
        Ok(true)
    }
}

/// Split a connected socket into its two sides.
pub fn split(sock: UnixStream) -> (Reader, Writer) {
    let sock = Arc::new(sock);
    (Reader::new(sock.clone()), Writer::new(sock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn frames_carry_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_, w) = split(a);
        let (mut r, _) = split(b);
        // A descriptor to pass: one end of a socket pair, read back through the copy.
        let (mut x, y) = std::os::unix::net::UnixStream::pair().unwrap();
        w.send(b"{\"hello\":1}", &[y.as_fd()]).await.unwrap();
        w.send(b"second", &[]).await.unwrap();
        drop(y);
        let f = r.recv().await.unwrap().unwrap();
        assert_eq!(f.body, b"{\"hello\":1}");
        assert_eq!(f.fds.len(), 1);
        let mut copy = std::os::unix::net::UnixStream::from(f.fds.into_iter().next().unwrap());
        copy.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        x.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        let f = r.recv().await.unwrap().unwrap();
        assert_eq!(f.body, b"second");
        assert!(f.fds.is_empty());
        drop(w);
        assert!(r.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_errors() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut a = a;
        b.set_nonblocking(true).unwrap();
        let (mut r, _) = split(UnixStream::from_std(b).unwrap());
        a.write_all(&(u32::MAX).to_be_bytes()).unwrap();
        assert!(r.recv().await.is_err());

        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut a = a;
        b.set_nonblocking(true).unwrap();
        let (mut r, _) = split(UnixStream::from_std(b).unwrap());
        a.write_all(&10u32.to_be_bytes()).unwrap();
        a.write_all(b"abc").unwrap();
        drop(a);
        assert!(r.recv().await.is_err());
    }
}
