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

/// A reply from Redis that is not valid RESP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid RESP from Redis at byte {at}: {reason}")]
pub struct FrameError {
    pub at: usize,
    pub reason: &'static str,
}

/// Measures the reply frame at the front of `buf` (RESP2 or RESP3); `Ok(None)` if it is not
/// complete yet. See [`FrameScanner`], which this runs from the start.
pub fn reply_frame(buf: &[u8]) -> Result<Option<FrameInfo>, FrameError> {
    FrameScanner::default().scan(buf)
}

/// Measures one reply frame as its bytes arrive.
///
/// cachet forwards replies as Redis sent them, so it only needs to know where each one ends.
/// This walks the type bytes and length headers without building anything. It does not use
/// `redis-protocol`'s decoders for this because they build frames: the RESP3 one refuses
/// RESP2's null bulk/array (`$-1`, `*-1`), and a RESP3 set containing maps (`COMMAND INFO`'s
/// key specs) cannot be built at all, and building allocates for every array.
///
/// A scanner remembers how far it got, so a reply of millions of elements arriving over
/// many reads is walked once, not once per read (which held every client of a pooled
/// connection for seconds). Between calls the frame's bytes must stay at the front of the
/// buffer, only growing at the end.
#[derive(Debug, Default)]
pub struct FrameScanner {
    /// Bytes of the frame measured: whole elements only.
    pos: usize,
    /// Elements still to read in each open aggregate.
    open: Vec<i64>,
}

impl FrameScanner {
    /// Measures on from where the last call stopped; once a frame is complete the scanner
    /// starts afresh for the next one.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<FrameInfo>, FrameError> {
        let push = buf.first() == Some(&b'>');
        loop {
            let pos = self.pos;
            let Some(&kind) = buf.get(pos) else {
                return Ok(None);
            };
            let Some(line_end) = memchr_crlf(buf, pos + 1) else {
                return Ok(None);
            };
            let line = &buf[pos + 1..line_end];
            let error = |reason| FrameError { at: pos, reason };
            let mut next = line_end + 2;
            let children = match kind {
                b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => 0,
                b'$' | b'!' | b'=' => {
                    let len = parse_len(line).ok_or_else(|| error("bad length"))?;
                    if len >= 0 {
                        next += len as usize + 2;
                        if next > buf.len() {
                            return Ok(None);
                        }
                    } else if len != -1 {
                        return Err(error("bad length"));
                    }
                    0
                }
                b'*' | b'~' | b'>' => parse_len(line).ok_or_else(|| error("bad length"))?,
                b'%' | b'|' => parse_len(line).ok_or_else(|| error("bad length"))? * 2,
                _ => return Err(error("unknown frame type")),
            };
            self.pos = next;
            // An attribute (`|`) precedes the frame it describes: that frame is one more
            // element.
            let children = if kind == b'|' { children + 1 } else { children };
            if children > 0 {
                self.open.push(children);
                continue;
            }
            loop {
                match self.open.last_mut() {
                    None => {
                        let len = std::mem::take(&mut self.pos);
                        return Ok(Some(FrameInfo { len, push }));
                    }
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

fn memchr_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let mut offset = 0;
    loop {
        let cr = rest[offset..].iter().position(|&b| b == b'\r')? + offset;
        if rest.get(cr + 1) == Some(&b'\n') {
            return Some(from + cr);
        }
        if cr + 1 >= rest.len() {
            return None;
        }
        offset = cr + 1;
    }
}

fn parse_len(line: &[u8]) -> Option<i64> {
    std::str::from_utf8(line).ok()?.parse().ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(input: &[u8]) -> Option<usize> {
        reply_frame(input).expect("valid").map(|f| f.len)
    }

    #[test]
    fn measures_every_frame_type_and_waits_for_the_rest() {
        let frames: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":12\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"$3\r\na\r\n\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"_\r\n",
            b"%1\r\n+k\r\n~2\r\n%1\r\n+a\r\n:1\r\n,1.5\r\n",
            b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
            b"*0\r\n",
            b"=7\r\ntxt:abc\r\n",
        ];
        for frame in frames {
            let mut input = frame.to_vec();
            input.extend_from_slice(b"+next\r\n");
            assert_eq!(
                measure(&input),
                Some(frame.len()),
                "{}",
                String::from_utf8_lossy(frame)
            );
            for cut in 0..frame.len() {
                assert_eq!(
                    measure(&frame[..cut]),
                    None,
                    "prefix {cut} of {:?}",
                    String::from_utf8_lossy(frame)
                );
            }
        }
        assert!(reply_frame(b">1\r\n+x\r\n").unwrap().unwrap().push);
    }

    #[test]
    fn a_scanner_resumes_where_it_stopped() {
        let frames: &[&[u8]] = &[
            b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n$2\r\nbc\r\n_\r\n",
            b"%1\r\n+k\r\n~2\r\n%1\r\n+a\r\n:1\r\n,1.5\r\n",
            b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
        ];
        for frame in frames {
            for step in 1..frame.len() {
                let mut scanner = FrameScanner::default();
                let mut found = None;
                for end in (step..frame.len()).step_by(step).chain([frame.len()]) {
                    if let Some(info) = scanner.scan(&frame[..end]).unwrap() {
                        assert_eq!(end, frame.len(), "complete only at the end");
                        found = Some(info);
                    }
                }
                let info = found.expect("complete");
                assert_eq!(info.len, frame.len());
                assert_eq!(info.push, frame[0] == b'>');
                // Afresh for the next frame.
                assert_eq!(scanner.scan(b"+OK\r\n").unwrap().unwrap().len, 5);
            }
        }
    }

    #[test]
    fn a_huge_reply_arriving_in_many_reads_is_walked_once() {
        // An array of 300,000 integers in 1 KB reads: walked from the start on every read
        // it costs about 2,000 times as much.
        let mut frame = b"*300000\r\n".to_vec();
        for _ in 0..300_000 {
            frame.extend_from_slice(b":1\r\n");
        }
        let started = std::time::Instant::now();
        assert_eq!(reply_frame(&frame).unwrap().unwrap().len, frame.len());
        let at_once = started.elapsed();
        let started = std::time::Instant::now();
        let mut scanner = FrameScanner::default();
        let mut found = None;
        for end in (1024..frame.len()).step_by(1024).chain([frame.len()]) {
            found = found.or(scanner.scan(&frame[..end]).unwrap());
        }
        let chunked = started.elapsed();
        assert_eq!(found.unwrap().len, frame.len());
        assert!(
            chunked < at_once * 10 + std::time::Duration::from_millis(500),
            "in 1 KB reads {chunked:?}, at once {at_once:?}"
        );
        assert!(reply_frame(b"?x\r\n").is_err());
    }
}
