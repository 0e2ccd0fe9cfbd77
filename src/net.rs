//! Socket reads that skip the wasted syscall.
//!
//! tokio learns that a socket is drained only when a read fails with `WouldBlock`, so a plain
//! `read_buf` loop pays one extra `read` syscall per wake-up. When a read returns less than the
//! room it was given, the kernel had nothing more at that moment; cachet then tells tokio the
//! socket is drained itself. This is safe with edge-triggered readiness: tokio only clears the
//! readiness it observed before the read, and data arriving later raises a new event.

use std::io;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::tcp::OwnedReadHalf;

/// Reads what the socket has into `buf`; `Ok(0)` means the peer closed. Cancel-safe.
pub async fn read_available(half: &OwnedReadHalf, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        half.readable().await?;
        let room = buf.capacity() - buf.len();
        match half.try_read_buf(buf) {
            Ok(n) => {
                if n > 0 && n < room {
                    let _ = half.as_ref().try_io(Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}
