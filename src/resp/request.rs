//! Client requests: RESP multibulk (decoded by `redis-protocol`) and inline commands (what
//! `redis-cli` and telnet send), checked against the size limits before a frame is buffered.
//!
//! The common case costs one decode of a complete frame. Only when a frame is incomplete (or
//! invalid) are its headers walked, so a client announcing a 600 MB bulk string is refused at
//! the header, as Redis does, instead of after cachet has buffered it.

use bytes::{Buf, Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;

/// Redis's `PROTO_INLINE_MAX_SIZE`: longest inline command, and longest header line.
const INLINE_MAX: usize = 64 * 1024;

/// One command from a client.
#[derive(Debug, Clone)]
pub struct Request {
    /// The command name and its arguments, as sent.
    pub args: Vec<Bytes>,
    /// The command encoded as RESP multibulk, ready to forward upstream unchanged. Always
    /// the encoding of `args`: a changed command is a new [`Request::from_args`].
    pub raw: Bytes,
}

impl Request {
    /// Builds a request from arguments (for commands cachet issues itself).
    pub fn from_args(args: Vec<Bytes>) -> Self {
        let raw = super::encode_command(&args);
        Request { args, raw }
    }

    pub fn name(&self) -> &[u8] {
        &self.args[0]
    }

    pub fn arg(&self, i: usize) -> Option<&[u8]> {
        self.args.get(i).map(|b| &b[..])
    }

    /// Argument `i` as a RESP bulk string (`$len\r\nbytes\r\n`), as it sits in `raw`:
    /// what a command of cachet's own can copy instead of encoding the argument again.
    /// `None` when the argument is not a slice of `raw` (an inline command, one built with
    /// [`Request::from_args`], an empty argument) or the bytes around it are not its header.
    pub fn encoded_arg(&self, i: usize) -> Option<&[u8]> {
        let arg = self.args.get(i)?;
        let start = (arg.as_ptr() as usize).checked_sub(self.raw.as_ptr() as usize)?;
        let header = 3 + decimal_digits(arg.len());
        let encoded = self
            .raw
            .get(start.checked_sub(header)?..start + arg.len() + 2)?;
        let mut digits = itoa::Buffer::new();
        let is_header = encoded[0] == b'$'
            && encoded[1..header - 2] == *digits.format(arg.len()).as_bytes()
            && encoded[header - 2..header] == *b"\r\n";
        (!arg.is_empty() && is_header && encoded.ends_with(b"\r\n")).then_some(encoded)
    }
}

/// How many decimal digits `n` has.
fn decimal_digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Input limits, from `[proxy]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bulk_len: u64,
    pub max_array_len: u64,
    pub max_query_buffer: u64,
}

/// A malformed or oversized request. The client is told `-ERR Protocol error: {0}` and
/// disconnected, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

fn protocol_error<T>(message: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(message.into()))
}

/// Takes the next complete command off the front of `buf`.
///
/// Returns `Ok(None)` when more input is needed. Empty commands (`*0`, an empty inline line)
/// are consumed and skipped, as Redis skips them.
pub fn parse(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Request>, ProtocolError> {
    loop {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let parsed = if first == b'*' {
            parse_multibulk(buf, limits)?
        } else {
            parse_inline(buf)?
        };
        match parsed {
            Parsed::Request(request) => return Ok(Some(request)),
            Parsed::Empty => continue,
            Parsed::Incomplete => {
                if buf.len() as u64 > limits.max_query_buffer {
                    return protocol_error("query buffer limit exceeded");
                }
                return Ok(None);
            }
        }
    }
}

enum Parsed {
    Request(Request),
    Empty,
    Incomplete,
}

fn parse_multibulk(buf: &mut BytesMut, limits: &Limits) -> Result<Parsed, ProtocolError> {
    // `decode_range` only locates the arguments; they become slices of the one frozen
    // frame, so a command costs two allocations (the ranges, the arguments) and no copy.
    match decode_range(buf) {
        Ok(Some((RangeFrame::Array(items), len))) => {
            if items.len() as u64 > limits.max_array_len {
                return protocol_error("invalid multibulk length");
            }
            if items.is_empty() {
                buf.advance(len);
                return Ok(Parsed::Empty);
            }
            let mut ranges = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    RangeFrame::BulkString((start, end)) => {
                        if (end - start) as u64 > limits.max_bulk_len {
                            return protocol_error("invalid bulk length");
                        }
                        ranges.push(start..end);
                    }
                    RangeFrame::Null => return protocol_error("invalid bulk length"),
                    other => {
                        let got = match other {
                            RangeFrame::SimpleString(_) => '+',
                            RangeFrame::Error(_) => '-',
                            RangeFrame::Integer(_) => ':',
                            _ => '*',
                        };
                        return protocol_error(format!("expected '$', got '{got}'"));
                    }
                }
            }
            let raw = buf.split_to(len).freeze();
            let args = ranges.into_iter().map(|r| raw.slice(r)).collect();
            Ok(Parsed::Request(Request { args, raw }))
        }
        // `*-1`: a null array, which Redis ignores like an empty one.
        Ok(Some((_, len))) => {
            buf.advance(len);
            Ok(Parsed::Empty)
        }
        Ok(None) => {
            check_headers(buf, limits)?;
            Ok(Parsed::Incomplete)
        }
        Err(err) => {
            // Walk the headers to say what is wrong the way Redis says it; fall back to the
            // decoder's own words.
            check_headers(buf, limits)?;
            protocol_error(err.details().to_owned())
        }
    }
}

/// Walks the headers of a not-yet-complete multibulk request and refuses one that announces
/// more than the limits allow, or is not made of bulk strings. Bulk bodies are skipped.
fn check_headers(buf: &[u8], limits: &Limits) -> Result<(), ProtocolError> {
    let Some((count, mut pos)) = header_number(buf, 1, "too big mbulk count string")? else {
        return Ok(());
    };
    if count > limits.max_array_len as i64 {
        return protocol_error("invalid multibulk length");
    }
    for _ in 0..count.max(0) {
        let Some(&kind) = buf.get(pos) else {
            return Ok(());
        };
        if kind != b'$' {
            return protocol_error(format!("expected '$', got '{}'", char::from(kind)));
        }
        let Some((len, next)) = header_number(buf, pos + 1, "too big bulk count string")? else {
            return Ok(());
        };
        if len < 0 || len as u64 > limits.max_bulk_len {
            return protocol_error("invalid bulk length");
        }
        pos = next + len as usize + 2;
    }
    Ok(())
}

/// Reads the decimal number that starts at `start` and ends with CRLF; `None` if the line is
/// not complete yet.
fn header_number(
    buf: &[u8],
    start: usize,
    too_long: &str,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = buf.get(start..).unwrap_or_default();
    let Some(end) = rest.iter().position(|&b| b == b'\r') else {
        if rest.len() > INLINE_MAX {
            return protocol_error(too_long);
        }
        return Ok(None);
    };
    let number = std::str::from_utf8(&rest[..end])
        .ok()
        .and_then(|s| s.parse::<i64>().ok());
    let invalid = if start == 1 {
        "invalid multibulk length"
    } else {
        "invalid bulk length"
    };
    match number {
        Some(n) => Ok(Some((n, start + end + 2))),
        None => protocol_error(invalid),
    }
}

fn parse_inline(buf: &mut BytesMut) -> Result<Parsed, ProtocolError> {
    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > INLINE_MAX {
            return protocol_error("too big inline request");
        }
        return Ok(Parsed::Incomplete);
    };
    let line = buf.split_to(newline + 1);
    let mut line = &line[..newline];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    let args = split_inline_args(line)?;
    if args.is_empty() {
        return Ok(Parsed::Empty);
    }
    Ok(Parsed::Request(Request::from_args(args)))
}

/// Splits an inline command line the way Redis's `sdssplitargs` does: whitespace separates
/// arguments; "double quotes" understand `\n \r \t \b \a \\ \" \xHH`; 'single quotes'
/// understand `\'`; a closing quote must be followed by a space or the end of the line.
fn split_inline_args(mut line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    const UNBALANCED: &str = "unbalanced quotes in request";
    let mut args = Vec::new();
    loop {
        while line.first().is_some_and(u8::is_ascii_whitespace) {
            line.advance(1);
        }
        if line.is_empty() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        let mut quote: Option<u8> = None;
        loop {
            match (quote, line.first().copied()) {
                (Some(_), None) => return protocol_error(UNBALANCED),
                (None, None) => break,
                (None, Some(c)) if c.is_ascii_whitespace() => break,
                (None, Some(c @ (b'"' | b'\''))) => {
                    quote = Some(c);
                    line.advance(1);
                }
                (None, Some(c)) => {
                    arg.push(c);
                    line.advance(1);
                }
                (Some(q), Some(c)) if c == q => {
                    line.advance(1);
                    if line.first().is_some_and(|c| !c.is_ascii_whitespace()) {
                        return protocol_error(UNBALANCED);
                    }
                    quote = None;
                    break;
                }
                (Some(b'"'), Some(b'\\')) if line.len() >= 4 && line[1] == b'x' => {
                    match (hex(line[2]), hex(line[3])) {
                        (Some(hi), Some(lo)) => {
                            arg.push(hi << 4 | lo);
                            line.advance(4);
                        }
                        _ => {
                            arg.push(b'\\');
                            line.advance(1);
                        }
                    }
                }
                (Some(b'"'), Some(b'\\')) if line.len() >= 2 => {
                    arg.push(match line[1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                    line.advance(2);
                }
                (Some(b'\''), Some(b'\\')) if line.get(1) == Some(&b'\'') => {
                    arg.push(b'\'');
                    line.advance(2);
                }
                (Some(_), Some(c)) => {
                    arg.push(c);
                    line.advance(1);
                }
            }
        }
        debug_assert!(quote.is_none());
        args.push(Bytes::from(arg));
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bulk_len: 1024,
        max_array_len: 16,
        max_query_buffer: 1 << 20,
    };

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<String>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(req) = parse(&mut buf, &LIMITS)? {
            out.push(
                req.args
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
            );
        }
        Ok(out)
    }

    #[test]
    fn encoded_args_are_found_in_place() {
        let mut buf = BytesMut::from(
            &b"*4\r\n$3\r\nSET\r\n$12\r\nkey:0000\r\n42\r\n$0\r\n\r\n$1\r\nv\r\n"[..],
        );
        let request = parse(&mut buf, &LIMITS).unwrap().unwrap();
        assert_eq!(request.encoded_arg(0), Some(&b"$3\r\nSET\r\n"[..]));
        // A bulk string may hold CR LF; its header says where it ends.
        assert_eq!(
            request.encoded_arg(1),
            Some(&b"$12\r\nkey:0000\r\n42\r\n"[..])
        );
        assert_eq!(
            request.encoded_arg(2),
            None,
            "an empty argument is not a slice of raw"
        );
        assert_eq!(request.encoded_arg(3), Some(&b"$1\r\nv\r\n"[..]));
        assert_eq!(request.encoded_arg(4), None);

        let mut buf = BytesMut::from(&b"set k v\r\n"[..]);
        let inline = parse(&mut buf, &LIMITS).unwrap().unwrap();
        assert_eq!(inline.args.len(), 3);
        assert!((0..3).all(|i| inline.encoded_arg(i).is_none()));
        let built = Request::from_args(vec![Bytes::from_static(b"GET"), Bytes::from_static(b"k")]);
        assert!((0..2).all(|i| built.encoded_arg(i).is_none()));
    }

    #[test]
    fn multibulk_and_inline_mix() {
        let got = parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n\r\nset a \"b c\\n\"\n*0\r\n")
            .unwrap();
        assert_eq!(
            got,
            vec![vec!["GET", "k"], vec!["PING"], vec!["set", "a", "b c\n"]]
        );
    }

    #[test]
    fn inline_is_reencoded_as_multibulk() {
        let mut buf = BytesMut::from(&b"SET 'it''s' \"\\x41\"\r\n"[..]);
        assert!(
            parse(&mut buf, &LIMITS).is_err(),
            "closing quote must be followed by space"
        );
        let mut buf = BytesMut::from(&b"SET k \"\\x41\"\r\n"[..]);
        let req = parse(&mut buf, &LIMITS).unwrap().unwrap();
        assert_eq!(&req.raw[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nA\r\n");
    }

    #[test]
    fn incomplete_input_waits() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r"[..]);
        assert!(parse(&mut buf, &LIMITS).unwrap().is_none());
        assert_eq!(buf.len(), 16, "nothing consumed");
    }

    #[test]
    fn oversized_headers_are_refused_before_the_body_arrives() {
        let err = parse_all(b"*1\r\n$2000\r\nab").unwrap_err();
        assert_eq!(err.to_string(), "Protocol error: invalid bulk length");
        let err = parse_all(b"*17\r\n").unwrap_err();
        assert_eq!(err.to_string(), "Protocol error: invalid multibulk length");
    }

    #[test]
    fn malformed_input_gets_redis_messages() {
        let err = parse_all(b"*1\r\n:5\r\n").unwrap_err();
        assert_eq!(err.to_string(), "Protocol error: expected '$', got ':'");
        let err = parse_all(b"*x\r\n").unwrap_err();
        assert_eq!(err.to_string(), "Protocol error: invalid multibulk length");
        let err = parse_all(b"*1\r\n$y\r\n").unwrap_err();
        assert_eq!(err.to_string(), "Protocol error: invalid bulk length");
        let err = parse_all(b"SET \"a b\r\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Protocol error: unbalanced quotes in request"
        );
    }
}
