//! `Stream`: a TCP connection, possibly wrapped in TLS, to a client or to a server.
//! Delegates `AsyncRead`/`AsyncWrite`; the session loop polls it directly.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum Stream {
    Tcp(TcpStream),
    /// We are the TLS server (client-facing).
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// We are the TLS client (server-facing).
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Tcp(_))
    }
    /// Our end of the connection.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Stream::Tcp(t) => t.local_addr(),
            Stream::ServerTls(t) => t.get_ref().0.local_addr(),
            Stream::ClientTls(t) => t.get_ref().0.local_addr(),
        }
        .ok()
    }
    /// True if the peer closed or sent something while we expected silence (an idle server
    /// connection that is no longer usable). Never blocks.
    pub fn is_broken_while_idle(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut rb = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(self).poll_read(&mut cx, &mut rb).is_ready()
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ServerTls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ClientTls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ServerTls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ClientTls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::ServerTls(s) => Pin::new(s).poll_flush(cx),
            Stream::ClientTls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ServerTls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ClientTls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
