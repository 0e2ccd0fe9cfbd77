//! Client and Redis connections: plain TCP or TLS, behind one stream type, and socket reads
//! that skip the wasted syscall.
//!
//! [`Stream`] (split into [`ReadHalf`] and [`WriteHalf`]) is what the sessions and the
//! upstream connections hold. On TLS, a write reports its bytes as written only once their
//! records are on the socket (see [`Tls`]), as a TCP write does, so the callers' loops (write
//! until the buffer is empty) need no flush of their own. [`tls`] builds the rustls configs.
//!
//! tokio learns that a socket is drained only when a read fails with `WouldBlock`, so a plain
//! `read_buf` loop pays one extra `read` syscall per wake-up. When a read returns less than the
//! room it was given, the kernel had nothing more at that moment, and cachet tells tokio so
//! itself ([`read_available`], plain TCP only: a TLS read is an ordinary one).
//!
//! The read runs inside `try_io`, which notes the socket's readiness *before* the read and
//! clears only that: if data arrived meanwhile (another thread's driver saw a new edge), the
//! readiness has moved on and stays set, so no wake-up is lost.

pub mod tls;

use std::io;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Reads what the connection has into `buf`; `Ok(0)` means the peer closed. Cancel-safe.
///
/// On plain TCP, room is made in `buf` only once the socket is readable, so an idle
/// connection holds no buffer: 5,000 idle clients cost cachet kilobytes each, not the 64 KiB
/// a read takes. A TLS connection makes room before it reads (rustls may hold decrypted
/// bytes that no socket readiness announces).
pub async fn read_available(half: &mut ReadHalf, buf: &mut BytesMut) -> io::Result<usize> {
    match half {
        ReadHalf::Tcp(half) => read_tcp(half, buf).await,
        ReadHalf::Tls(half, _) => {
            reserve(buf);
            half.read_buf(buf).await
        }
        ReadHalf::Mem(half) => {
            reserve(buf);
            half.read_buf(buf).await
        }
    }
}

async fn read_tcp(half: &OwnedReadHalf, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        half.readable().await?;
        reserve(buf);
        let room = buf.capacity() - buf.len();
        let mut short_read = None;
        let result = half.as_ref().try_io(Interest::READABLE, || {
            match half.try_read_buf(buf) {
                // Report WouldBlock so that try_io clears the readiness it saw before the read.
                Ok(n) if n > 0 && n < room => {
                    short_read = Some(n);
                    Err(io::ErrorKind::WouldBlock.into())
                }
                other => other,
            }
        });
        match result {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Some(n) = short_read {
                    return Ok(n);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Makes room for a socket read: 64 KiB more when less than 16 KiB is free.
pub fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 16 * 1024 {
        buf.reserve(64 * 1024);
    }
}

/// A connection to a client or to Redis, before it is split.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<Tls>),
    /// An in-process pipe to a task that speaks RESP like Redis: the Redis Cluster router's
    /// end of a connection (`crate::upstream::cluster`). Never a client's.
    Mem(tokio::io::DuplexStream),
}

/// The reading half of a [`Stream`] (a TLS one keeps its socket's descriptor, for
/// `CLIENT LIST`).
pub enum ReadHalf {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Tls>, RawFd),
    Mem(tokio::io::ReadHalf<tokio::io::DuplexStream>),
}

/// The writing half of a [`Stream`].
pub enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Tls>),
    Mem(tokio::io::WriteHalf<tokio::io::DuplexStream>),
}

impl Stream {
    /// The TCP connection under it (none for an in-process pipe).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(tcp) => Some(tcp),
            Stream::Tls(tls) => Some(tls.inner.get_ref().0),
            Stream::Mem(_) => None,
        }
    }

    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.tcp().map_or(Ok(()), |tcp| tcp.set_nodelay(nodelay))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.tcp() {
            Some(tcp) => tcp.local_addr(),
            None => Err(io::Error::other("an in-process pipe has no address")),
        }
    }

    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(tcp) => {
                let (r, w) = tcp.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Tls(tls) => {
                let fd = tls.inner.get_ref().0.as_raw_fd();
                let (r, w) = tokio::io::split(*tls);
                (ReadHalf::Tls(r, fd), WriteHalf::Tls(w))
            }
            Stream::Mem(pipe) => {
                let (r, w) = tokio::io::split(pipe);
                (ReadHalf::Mem(r), WriteHalf::Mem(w))
            }
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(tcp: TcpStream) -> Self {
        Stream::Tcp(tcp)
    }
}

impl From<tokio_rustls::TlsStream<TcpStream>> for Stream {
    fn from(tls: tokio_rustls::TlsStream<TcpStream>) -> Self {
        Stream::Tls(Box::new(Tls {
            inner: tls,
            accepted: 0,
        }))
    }
}

impl ReadHalf {
    /// Puts a connection back together (both halves of one [`Stream::into_split`]).
    pub fn unsplit(self, writer: WriteHalf) -> io::Result<Stream> {
        match (self, writer) {
            (ReadHalf::Tcp(r), WriteHalf::Tcp(w)) => r
                .reunite(w)
                .map(Stream::Tcp)
                .map_err(|e| io::Error::other(e.to_string())),
            (ReadHalf::Tls(r, _), WriteHalf::Tls(w)) if r.is_pair_of(&w) => {
                Ok(Stream::Tls(Box::new(r.unsplit(w))))
            }
            (ReadHalf::Mem(r), WriteHalf::Mem(w)) if r.is_pair_of(&w) => {
                Ok(Stream::Mem(r.unsplit(w)))
            }
            _ => Err(io::Error::other("halves of different connections")),
        }
    }

    /// True while the peer has sent nothing and not closed: for a connection that should be
    /// idle. Reads at most one byte.
    pub fn is_idle(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self {
            ReadHalf::Tcp(half) => {
                matches!(half.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            ReadHalf::Tls(half, _) => {
                let mut buf = ReadBuf::new(&mut probe);
                let mut cx = Context::from_waker(Waker::noop());
                Pin::new(half).poll_read(&mut cx, &mut buf).is_pending()
            }
            ReadHalf::Mem(half) => {
                let mut buf = ReadBuf::new(&mut probe);
                let mut cx = Context::from_waker(Waker::noop());
                Pin::new(half).poll_read(&mut cx, &mut buf).is_pending()
            }
        }
    }
}

impl AsRawFd for ReadHalf {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            ReadHalf::Tcp(half) => half.as_ref().as_raw_fd(),
            ReadHalf::Tls(_, fd) => *fd,
            ReadHalf::Mem(_) => -1,
        }
    }
}

impl WriteHalf {
    /// Writes what the connection takes now without waiting; `WouldBlock` if nothing.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(half) => half.try_write(buf),
            // A later `write` (with a real waker) finishes what this one began: the records
            // of bytes taken stay in `Tls` until they are on the socket.
            WriteHalf::Tls(half) => {
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(half).poll_write(&mut cx, buf) {
                    Poll::Ready(result) => result,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
            WriteHalf::Mem(half) => {
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(half).poll_write(&mut cx, buf) {
                    Poll::Ready(result) => result,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }
}

/// A TLS connection whose writes count as done only once their records are on the socket.
///
/// tokio-rustls reports bytes as written as soon as rustls has taken them, and leaves the
/// records it could not send yet for a later write or flush. Here a write that is taken but
/// not yet sent stays pending (and remembered in `accepted`); the caller polls again with the
/// same bytes, as every write loop does, and gets the count once they are sent. rustls's
/// outgoing buffer holds at most one write's records (its default limit is 64 KiB).
pub struct Tls {
    inner: tokio_rustls::TlsStream<TcpStream>,
    /// Bytes rustls took from the caller's buffer whose records are not all sent yet.
    accepted: usize,
}

impl AsyncRead for Tls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.accepted == 0 {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
            self.accepted = n;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        Poll::Ready(Ok(std::mem::take(&mut self.accepted)))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

macro_rules! delegate_write {
    ($type:ident) => {
        impl AsyncWrite for $type {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $type::Tcp(s) => Pin::new(s).poll_write(cx, buf),
                    $type::Tls(s) => Pin::new(s).poll_write(cx, buf),
                    $type::Mem(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $type::Tcp(s) => Pin::new(s).poll_flush(cx),
                    $type::Tls(s) => Pin::new(s).poll_flush(cx),
                    $type::Mem(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $type::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                    $type::Tls(s) => Pin::new(s).poll_shutdown(cx),
                    $type::Mem(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_write!(Stream);
delegate_write!(WriteHalf);

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Mem(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s, _) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Mem(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}
