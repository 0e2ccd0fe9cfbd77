//! RESP on the wire: requests from clients ([`request`]), replies from Redis
//! ([`reply_frame`]), the frames cachet writes itself ([`reply`]), and the command table
//! learned from the upstream ([`commands`]).
//!
//! Frames are decoded by the `redis-protocol` crate; cachet never re-encodes a frame it
//! forwards. Replies from Redis are only measured (where does this frame end, is it a push)
//! and passed on as the bytes Redis sent.

pub mod commands;
pub mod reply;
pub mod request;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::decode::complete::decode_range;
use redis_protocol::resp3::types::RangeFrame;

pub use request::{Limits, ProtocolError, Request};

/// The RESP version a client (or an upstream connection) speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Resp2,
    Resp3,
}

impl Protocol {
    pub fn index(self) -> usize {
        match self {
            Protocol::Resp2 => 0,
            Protocol::Resp3 => 1,
        }
    }
}

/// Encodes a command as a RESP multibulk array of bulk strings.
pub fn encode_command(args: &[Bytes]) -> Bytes {
    use redis_protocol::resp2::types::BytesFrame;
    let frame = BytesFrame::Array(args.iter().cloned().map(BytesFrame::BulkString).collect());
    let mut out = BytesMut::new();
    redis_protocol::resp2::encode::extend_encode(&mut out, &frame, false)
        .expect("a multibulk of bulk strings always encodes");
    out.freeze()
}

/// What cachet needs to know about one reply frame from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// Bytes the frame occupies.
    pub len: usize,
    /// A RESP3 push (`>`): out-of-band, not the reply to any command.
    pub push: bool,
}

/// Measures the reply frame at the front of `buf`; `Ok(None)` if it is not complete yet.
///
/// RESP3 is a superset of RESP2, so one decoder serves both protocol versions.
pub fn reply_frame(
    buf: &[u8],
) -> Result<Option<FrameInfo>, redis_protocol::error::RedisProtocolError> {
    Ok(decode_range(buf)?.map(|(frame, len)| FrameInfo {
        len,
        push: matches!(frame, RangeFrame::Push { .. }),
    }))
}

/// Decodes the reply frame at the front of `buf` fully, for the few replies cachet inspects
/// (subscription counts, `+RESET`, handshake replies).
pub fn decode_reply(
    buf: &Bytes,
) -> Result<
    Option<(redis_protocol::resp3::types::BytesFrame, usize)>,
    redis_protocol::error::RedisProtocolError,
> {
    redis_protocol::resp3::decode::complete::decode_bytes(buf)
}

/// ASCII-lowercases a command name into `out` without allocating; `None` if it is longer
/// than any Redis command name.
pub fn lowercase_name<'a>(name: &[u8], out: &'a mut [u8; 64]) -> Option<&'a [u8]> {
    let out = out.get_mut(..name.len())?;
    for (o, c) in out.iter_mut().zip(name) {
        *o = c.to_ascii_lowercase();
    }
    Some(out)
}
