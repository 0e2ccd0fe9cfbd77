//! Client requests: RESP multibulk and inline commands (what `redis-cli` and telnet send),
//! framed with Redis's own request grammar and checked against the size limits before a
//! frame is buffered.
//!
//! A request is an array of bulk strings, nothing else, so it is framed here rather than by
//! `redis-protocol`'s general decoder (which cachet uses for replies and encoding). That
//! decoder reads any RESP value, recursively: a million nested `*1` headers overflowed the
//! stack. It also accepts lengths Redis refuses (`$04`, `$+4`, `*01`): forwarded raw, Redis
//! closes the shared connection on them and every client's commands in flight fail. So the
//! framer here:
//!
//! * reads lengths the way Redis's `string2ll` does: an optional `-`, then digits with no
//!   leading zero; a `*` count of 0 or less is an empty request, skipped; a `$` length must be
//!   0 or more. Each header line and each bulk ends with CRLF.
//! * answers each malformed request with Redis's own words (`Protocol error: expected '$',
//!   got '*'`, `invalid bulk length`, ...), at the first bad header, before the body arrives;
//!   the session writes the replies owed before it, then closes the connection.
//! * applies Redis's limits for clients that have not authenticated: at most 10 arguments
//!   and 16 KiB per argument, so an unauthenticated client can never make cachet buffer more
//!   than about 160 KiB.
//! * is incremental: a request arriving over many reads is checked as its bytes arrive, and
//!   each byte is looked at once (plus once more when the request is split into arguments),
//!   so a 21 MB command costs the same whether it comes in one read or a thousand.
//!
//! What leaves this module is a request Redis will frame exactly as cachet did, so a pooled
//! connection is never closed by Redis because of a client's bytes. Inline commands are
//! encoded by cachet (as multibulk), like the commands cachet builds itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, Bytes, BytesMut};

/// Redis's `PROTO_INLINE_MAX_SIZE`: longest inline command, and longest header line.
const INLINE_MAX: usize = 64 * 1024;
/// Redis's limits for a client that has not authenticated (`authRequired`).
const UNAUTHENTICATED_MAX_ARGS: i64 = 10;
const UNAUTHENTICATED_MAX_BULK: i64 = 16 * 1024;
/// A multibulk count larger than this is invalid (Redis: `INT_MAX`).
const MAX_COUNT: i64 = i32::MAX as i64;

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

/// The input every client has buffered, against `proxy.max_query_buffer_total`: with
/// `max_clients` clients each allowed `max_query_buffer`, the sum needs a cap of its own.
#[derive(Debug)]
pub struct RequestBuffers {
    total: Arc<AtomicUsize>,
    cap: usize,
}

impl RequestBuffers {
    pub fn new(cap: u64) -> Self {
        RequestBuffers {
            total: Arc::default(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
        }
    }

    /// A share for one client, counting nothing yet.
    pub fn share(&self) -> BufferShare {
        BufferShare {
            total: self.total.clone(),
            cap: self.cap,
            counted: 0,
        }
    }

    /// Bytes buffered by all clients now.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// One client's part of [`RequestBuffers`]; given back when the client's session ends,
/// however it ends.
#[derive(Debug)]
pub struct BufferShare {
    total: Arc<AtomicUsize>,
    cap: usize,
    counted: usize,
}

impl BufferShare {
    /// Records that this client now buffers `bytes`; true when all clients together buffer
    /// more than the cap.
    pub fn set(&mut self, bytes: usize) -> bool {
        let total = if bytes >= self.counted {
            self.total
                .fetch_add(bytes - self.counted, Ordering::Relaxed)
                + bytes
                - self.counted
        } else {
            self.total
                .fetch_sub(self.counted - bytes, Ordering::Relaxed)
                - (self.counted - bytes)
        };
        self.counted = bytes;
        total > self.cap
    }
}

impl Drop for BufferShare {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Frames one client's requests. It remembers how far a request that has not fully arrived
/// was already checked, so the next read resumes there: the client's input buffer must only
/// lose bytes through [`RequestParser::parse`].
#[derive(Debug, Default)]
pub struct RequestParser {
    /// Bytes at the front of the buffer that belong to the request in progress and were
    /// checked: its `*` header, whole bulks, and the header of `bulk`.
    checked: usize,
    /// Arguments the request in progress announced; 0 when none is in progress.
    announced: usize,
    /// Arguments of the request in progress that arrived whole.
    arrived: usize,
    /// The length of the bulk whose header was read and whose body is awaited.
    bulk: Option<usize>,
    /// Bytes of the line being read (inline command or header) already searched for its
    /// end, so a line sent a byte at a time is searched once, not once per byte.
    searched: usize,
}

impl RequestParser {
    /// Takes the next complete command off the front of `buf`.
    ///
    /// Returns `Ok(None)` when more input is needed. Empty commands (`*0`, `*-1`, an empty
    /// inline line) are consumed and skipped, as Redis skips them. `authenticated: false`
    /// applies Redis's limits for clients that have not authenticated.
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
        authenticated: bool,
    ) -> Result<Option<Request>, ProtocolError> {
        loop {
            let parsed = if self.announced > 0 {
                self.multibulk(buf, limits, authenticated)?
            } else {
                match buf.first() {
                    None => return Ok(None),
                    Some(b'*') => self.start_multibulk(buf, limits, authenticated)?,
                    Some(_) => parse_inline(buf, &mut self.searched)?,
                }
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

    /// Reads the `*count` header at the front of `buf`.
    fn start_multibulk(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
        authenticated: bool,
    ) -> Result<Parsed, ProtocolError> {
        let Some((count, next)) = header(
            buf,
            1,
            &mut self.searched,
            "too big mbulk count string",
            "invalid multibulk length",
        )?
        else {
            return Ok(Parsed::Incomplete);
        };
        if count > MAX_COUNT {
            return protocol_error("invalid multibulk length");
        }
        if count > UNAUTHENTICATED_MAX_ARGS && !authenticated {
            return protocol_error("unauthenticated multibulk length");
        }
        if count <= 0 {
            buf.advance(next);
            return Ok(Parsed::Empty);
        }
        if count as u64 > limits.max_array_len {
            return protocol_error("invalid multibulk length");
        }
        self.announced = count as usize;
        self.arrived = 0;
        self.checked = next;
        self.bulk = None;
        self.multibulk(buf, limits, authenticated)
    }

    /// Checks the bulks of the request in progress that have arrived since the last call.
    fn multibulk(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
        authenticated: bool,
    ) -> Result<Parsed, ProtocolError> {
        while self.arrived < self.announced {
            let len = match self.bulk {
                Some(len) => len,
                None => {
                    let Some(&kind) = buf.get(self.checked) else {
                        return Ok(Parsed::Incomplete);
                    };
                    if kind != b'$' {
                        // Redis's error replies turn CR and LF into spaces.
                        let got = match kind {
                            b'\r' | b'\n' => ' ',
                            other => char::from(other),
                        };
                        return protocol_error(format!("expected '$', got '{got}'"));
                    }
                    let Some((len, next)) = header(
                        buf,
                        self.checked + 1,
                        &mut self.searched,
                        "too big bulk count string",
                        "invalid bulk length",
                    )?
                    else {
                        return Ok(Parsed::Incomplete);
                    };
                    if len < 0 || len as u64 > limits.max_bulk_len {
                        return protocol_error("invalid bulk length");
                    }
                    if len > UNAUTHENTICATED_MAX_BULK && !authenticated {
                        return protocol_error("unauthenticated bulk length");
                    }
                    self.checked = next;
                    self.bulk = Some(len as usize);
                    len as usize
                }
            };
            let end = self.checked + len;
            match buf.get(end..end + 2) {
                None => return Ok(Parsed::Incomplete),
                Some(b"\r\n") => {}
                Some(_) => return protocol_error("expected CRLF after a bulk string"),
            }
            self.checked = end + 2;
            self.bulk = None;
            self.arrived += 1;
        }
        let raw = buf.split_to(self.checked).freeze();
        let args = split_args(&raw, self.announced);
        self.announced = 0;
        self.checked = 0;
        Ok(Parsed::Request(Request { args, raw }))
    }
}

enum Parsed {
    Request(Request),
    Empty,
    Incomplete,
}

/// Reads the number in the header line that starts at `start` and ends with CRLF, the way
/// Redis's `string2ll` reads it; `None` if the line has not fully arrived. Returns the
/// number and where the next line starts.
fn header(
    buf: &[u8],
    start: usize,
    searched: &mut usize,
    too_long: &str,
    invalid: &str,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = buf.get(start..).unwrap_or_default();
    let Some(cr) = find_from(rest, b'\r', searched) else {
        if rest.len() > INLINE_MAX {
            return protocol_error(too_long);
        }
        return Ok(None);
    };
    match rest.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return protocol_error(invalid),
    }
    *searched = 0;
    match redis_number(&rest[..cr]) {
        Some(n) => Ok(Some((n, start + cr + 2))),
        None => protocol_error(invalid),
    }
}

/// Finds `byte` in `line`, starting where the last search of the same line stopped.
fn find_from(line: &[u8], byte: u8, searched: &mut usize) -> Option<usize> {
    let from = (*searched).min(line.len());
    match line[from..].iter().position(|&b| b == byte) {
        Some(at) => Some(from + at),
        None => {
            *searched = line.len();
            None
        }
    }
}

/// Redis's `string2ll`: `0`, or an optional `-` followed by a non-zero digit and more
/// digits, within `i64`. No `+`, no leading zero, no spaces, not empty.
fn redis_number(text: &[u8]) -> Option<i64> {
    if text == b"0" {
        return Some(0);
    }
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) || digits.len() > 19 {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        // Accumulated as a negative number, whose range is one larger than the positive's.
        value = value.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// Splits a checked multibulk frame into its arguments (slices of the frame, no copy).
fn split_args(raw: &Bytes, count: usize) -> Vec<Bytes> {
    let mut args = Vec::with_capacity(count);
    let mut pos = line_end(raw, 0) + 2;
    for _ in 0..count {
        let end = line_end(raw, pos);
        let len = raw[pos + 1..end]
            .iter()
            .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0'));
        let start = end + 2;
        args.push(raw.slice(start..start + len));
        pos = start + len + 2;
    }
    args
}

/// Where the header line at `from` ends (its CR), in a frame already checked.
fn line_end(raw: &[u8], from: usize) -> usize {
    from + raw[from..]
        .iter()
        .position(|&b| b == b'\r')
        .expect("a checked frame")
}

fn parse_inline(buf: &mut BytesMut, searched: &mut usize) -> Result<Parsed, ProtocolError> {
    let Some(newline) = find_from(buf, b'\n', searched) else {
        if buf.len() > INLINE_MAX {
            return protocol_error("too big inline request");
        }
        return Ok(Parsed::Incomplete);
    };
    *searched = 0;
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
mod tests;
