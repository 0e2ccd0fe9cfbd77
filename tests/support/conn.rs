//! A raw connection with its own RESP2/RESP3 frame scanner, independent of cachet's, so tests
//! that read replies through it do not trust the code they test.

use std::time::Duration;

use super::RawClient;

/// Length of the first complete RESP2/RESP3 frame in `buf`; `None` while it is incomplete.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, String> {
    pub fn parse(buf: &[u8], at: usize) -> Result<Option<usize>, String> {
        if at >= buf.len() {
            return Ok(None);
        }
        let Some(end) = buf[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| at + p)
        else {
            return Ok(None);
        };
        let header = &buf[at + 1..end];
        let next = end + 2;
        let number = || -> Result<i64, String> {
            std::str::from_utf8(header)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad length {:?}", String::from_utf8_lossy(header)))
        };
        match buf[at] {
            b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Ok(Some(next)),
            b'$' | b'!' | b'=' => {
                let n = number()?;
                if n < 0 {
                    return Ok(Some(next));
                }
                let stop = next + n as usize + 2;
                if buf.len() < stop {
                    return Ok(None);
                }
                if &buf[stop - 2..stop] != b"\r\n" {
                    return Err("bulk string not followed by CRLF".into());
                }
                Ok(Some(stop))
            }
            kind @ (b'*' | b'~' | b'>' | b'%' | b'|') => {
                let n = number()?;
                if n < 0 {
                    return Ok(Some(next));
                }
                let count = if kind == b'%' || kind == b'|' {
                    2 * n
                } else {
                    n
                };
                let mut pos = next;
                for _ in 0..count {
                    match parse(buf, pos)? {
                        Some(p) => pos = p,
                        None => return Ok(None),
                    }
                }
                if kind == b'|' {
                    // Attributes precede the frame they describe.
                    return parse(buf, pos);
                }
                Ok(Some(pos))
            }
            other => Err(format!("unexpected RESP type byte {:?}", other as char)),
        }
    }
    parse(buf, 0)
}

/// Like support's `RawClient`, but reads RESP2 nulls too.
pub struct Conn {
    stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl Conn {
    pub async fn connect(addr: std::net::SocketAddr) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: bytes::BytesMut::with_capacity(16 * 1024),
        })
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await
    }

    pub async fn send(&mut self, args: &[impl AsRef<[u8]>]) -> std::io::Result<()> {
        self.send_raw(&RawClient::encode(args)).await
    }

    pub async fn read_frame(&mut self) -> std::io::Result<bytes::Bytes> {
        self.read_frame_timeout(Duration::from_secs(10)).await
    }

    pub async fn read_frame_timeout(&mut self, timeout: Duration) -> std::io::Result<bytes::Bytes> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match frame_len(&self.buf) {
                Ok(Some(n)) => return Ok(self.buf.split_to(n).freeze()),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply"))??;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
        }
    }

    pub async fn command(&mut self, args: &[impl AsRef<[u8]>]) -> std::io::Result<bytes::Bytes> {
        self.send(args).await?;
        self.read_frame().await
    }

    pub async fn text(&mut self, args: &[&str]) -> String {
        let reply = self
            .command(args)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: no reply: {e}"));
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// True once the peer has closed the connection (EOF or reset within `timeout`).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        super::closed_within(&mut self.stream, timeout).await
    }
}
