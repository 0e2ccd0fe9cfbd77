//! The tests' own RESP2/RESP3 reply reader, written for the tests and independent of
//! `cachet::resp`, so a test that reads replies through it does not trust the code it tests.
//! Every test reads replies through this module:
//!
//! - [`Scanner`] / [`frame_len`] find where the frame at the front of a buffer ends, without
//!   building it. The scanner resumes where it stopped, so a reply of many elements arriving
//!   over many reads is walked once.
//! - [`decode`] / [`decode_whole`] build a [`Frame`]: what was sent, type byte for type byte
//!   (RESP2's null bulk `$-1` and null array `*-1`, RESP3's `_`, maps, sets, pushes,
//!   attributes). [`Frame::value`] gives the looser [`Value`] that assertions read.
//! - [`Reader`] reads whole frames from a socket, with a deadline.
//!
//! Input is checked, and bad input is an [`Error`], never a panic: unknown type bytes, bad
//! lengths, a bulk not followed by CRLF, malformed integers, booleans and nulls. A frame may
//! not claim more than [`MAX_FRAME`] bytes, nor nest deeper than [`MAX_DEPTH`].
//!
//! Its own tests are in `resp_tests.rs` beside it, run once by tests/harness.rs.

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest frame a reply may claim to be (Redis's own default for a bulk string,
/// `proto-max-bulk-len`, is 512 MB): a length header past this is an error, not an
/// allocation.
pub const MAX_FRAME: usize = 512 * 1024 * 1024;
/// How deeply aggregates may nest.
pub const MAX_DEPTH: usize = 256;

/// Why bytes are not a valid RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Offset of the element at fault from the start of the frame.
    pub at: usize,
    pub reason: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid RESP at byte {}: {}", self.at, self.reason)
    }
}

impl std::error::Error for Error {}

fn error(at: usize, reason: impl Into<String>) -> Error {
    Error {
        at,
        reason: reason.into(),
    }
}

/// One element's header: its type byte, the text between it and CRLF, and where the next
/// byte after that CRLF is. `None` while the CRLF has not arrived.
fn header(buf: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let kind = *buf.get(at)?;
    let rest = buf.get(at + 1..)?;
    let cr = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((kind, &rest[..cr], at + 1 + cr + 2))
}

/// A length or count header: a decimal integer, `-1` allowed only where `null` is.
fn length(line: &[u8], at: usize, null: bool) -> Result<Option<usize>, Error> {
    let text = std::str::from_utf8(line).map_err(|_| error(at, "length is not text"))?;
    if text == "-1" && null {
        return Ok(None);
    }
    // Plain digits only (`-1` aside): signs, spaces and other negatives are refused.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error(at, format!("bad length {text:?}")));
    }
    match text.parse::<usize>() {
        Ok(n) if n <= MAX_FRAME => Ok(Some(n)),
        _ => Err(error(
            at,
            format!("length {text} is over the {MAX_FRAME}-byte bound"),
        )),
    }
}

/// Checks the text of a one-line element (`+ - : , # ( _`).
fn check_line(kind: u8, line: &[u8], at: usize) -> Result<(), Error> {
    if line.contains(&b'\r') || line.contains(&b'\n') {
        return Err(error(at, "CR or LF inside a line"));
    }
    let text = std::str::from_utf8(line);
    let ok = match kind {
        b'+' | b'-' => true,
        b':' => text.is_ok_and(|t| t.parse::<i64>().is_ok()),
        b'#' => line == b"t" || line == b"f",
        b'_' => line.is_empty(),
        b',' => text.is_ok_and(|t| t.parse::<f64>().is_ok()),
        b'(' => text.is_ok_and(|t| {
            let digits = t.strip_prefix('-').unwrap_or(t);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        }),
        _ => false,
    };
    match ok {
        true => Ok(()),
        false => Err(error(
            at,
            format!(
                "bad {:?} element {:?}",
                kind as char,
                String::from_utf8_lossy(line)
            ),
        )),
    }
}

/// Measures the frame at the front of a buffer that grows between calls.
///
/// It remembers how far it got: call [`Scanner::scan`] again with the same buffer, grown at
/// its end, and it carries on. Once it returns a length it starts afresh, for the frame after
/// that one. After an error the buffer is not RESP; do not scan it further.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Where the next element starts: everything before it is measured.
    next: usize,
    /// Elements still to come in each open aggregate, outermost first.
    pending: Vec<usize>,
}

impl Scanner {
    /// The length of the first frame in `buf` once all of it is there; `Ok(None)` before.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, Error> {
        loop {
            let at = self.next;
            // A byte that starts no element is an error at once, not after a line end.
            if let Some(&kind) = buf.get(at)
                && !b"+-:,#(_$!=*~>%|".contains(&kind)
            {
                return Err(error(at, format!("unknown type byte {:?}", kind as char)));
            }
            let Some((kind, line, mut end)) = header(buf, at) else {
                // Incomplete; but no complete frame is longer than the bound.
                if buf.len() > MAX_FRAME {
                    return Err(error(at, format!("a frame over {MAX_FRAME} bytes")));
                }
                return Ok(None);
            };
            if end > MAX_FRAME {
                return Err(error(at, format!("a frame over {MAX_FRAME} bytes")));
            }
            let elements = match kind {
                b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => {
                    check_line(kind, line, at)?;
                    0
                }
                b'$' | b'!' | b'=' => {
                    if let Some(n) = length(line, at, kind == b'$')? {
                        if end + n + 2 > MAX_FRAME {
                            return Err(error(at, format!("a frame over {MAX_FRAME} bytes")));
                        }
                        if buf.len() < end + n + 2 {
                            return Ok(None);
                        }
                        if &buf[end + n..end + n + 2] != b"\r\n" {
                            return Err(error(
                                at,
                                format!("bulk of {n} bytes not followed by CRLF"),
                            ));
                        }
                        if kind == b'=' && (n < 4 || buf[end + 3] != b':') {
                            return Err(error(at, "verbatim string without a `xxx:` format"));
                        }
                        end += n + 2;
                    }
                    0
                }
                b'*' | b'~' | b'>' => length(line, at, kind == b'*')?.unwrap_or(0),
                // Maps and attributes count pairs; an attribute is followed by the frame it
                // describes, one element more.
                b'%' => 2 * length(line, at, false)?.unwrap_or(0),
                b'|' => 2 * length(line, at, false)?.unwrap_or(0) + 1,
                other => {
                    return Err(error(at, format!("unknown type byte {:?}", other as char)));
                }
            };
            // Every element takes at least three bytes (`_\r\n`).
            if elements > (MAX_FRAME - end) / 3 {
                return Err(error(
                    at,
                    format!("{elements} elements claim over {MAX_FRAME} bytes"),
                ));
            }
            self.next = end;
            if elements > 0 {
                if self.pending.len() == MAX_DEPTH {
                    return Err(error(at, format!("nested deeper than {MAX_DEPTH}")));
                }
                self.pending.push(elements);
                continue;
            }
            // An element is complete: it may complete the aggregates around it too.
            loop {
                let Some(left) = self.pending.last_mut() else {
                    return Ok(Some(std::mem::take(&mut self.next)));
                };
                *left -= 1;
                if *left > 0 {
                    break;
                }
                self.pending.pop();
            }
        }
    }
}

/// The length of the first complete frame in `buf`; `Ok(None)` while it is incomplete.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, Error> {
    Scanner::default().scan(buf)
}

/// One RESP2/RESP3 frame as it was sent: type bytes kept, maps and attributes as 2n flat
/// elements (key, value, key, value...). Ordered, so that aggregates can be sorted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Frame {
    /// `+ - : , # ( _`: the type byte and the text up to CRLF.
    Line(u8, Vec<u8>),
    /// `$ ! =`: the type byte and the payload (`None` for RESP2's null bulk `$-1`).
    Blob(u8, Option<Vec<u8>>),
    /// `* ~ % >`: the type byte and the elements (`None` for RESP2's null array `*-1`).
    Agg(u8, Option<Vec<Frame>>),
    /// `|`: the attribute pairs, flat, and the frame they describe.
    Attr(Vec<Frame>, Box<Frame>),
}

/// Decodes the first frame of `buf`: the frame and its length, `Ok(None)` while incomplete.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, Error> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    let (frame, end) = build(buf, 0)?;
    debug_assert_eq!(end, len);
    Ok(Some((frame, len)))
}

/// Decodes a buffer that holds exactly one frame.
pub fn decode_whole(buf: &[u8]) -> Result<Frame, Error> {
    match decode(buf)? {
        Some((frame, len)) if len == buf.len() => Ok(frame),
        Some((_, len)) => Err(error(
            len,
            format!("{} bytes after the frame", buf.len() - len),
        )),
        None => Err(error(buf.len(), "incomplete frame")),
    }
}

/// Builds the element at `at` of a frame the scanner has measured (so complete, valid and
/// bounded in depth); returns it and where it ends.
fn build(buf: &[u8], at: usize) -> Result<(Frame, usize), Error> {
    let (kind, line, end) = header(buf, at).ok_or_else(|| error(at, "incomplete"))?;
    match kind {
        b'$' | b'!' | b'=' => match length(line, at, kind == b'$')? {
            None => Ok((Frame::Blob(kind, None), end)),
            Some(n) => Ok((
                Frame::Blob(kind, Some(buf[end..end + n].to_vec())),
                end + n + 2,
            )),
        },
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let Some(n) = length(line, at, kind == b'*')? else {
                return Ok((Frame::Agg(kind, None), end));
            };
            let n = if kind == b'%' || kind == b'|' {
                2 * n
            } else {
                n
            };
            let mut elements = Vec::with_capacity(n.min(4096));
            let mut next = end;
            for _ in 0..n {
                let (element, after) = build(buf, next)?;
                elements.push(element);
                next = after;
            }
            if kind == b'|' {
                let (described, after) = build(buf, next)?;
                return Ok((Frame::Attr(elements, Box::new(described)), after));
            }
            Ok((Frame::Agg(kind, Some(elements)), next))
        }
        _ => Ok((Frame::Line(kind, line.to_vec()), end)),
    }
}

impl Frame {
    /// The frame's type byte (`|` for an attributed frame).
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Line(kind, _) | Frame::Blob(kind, _) | Frame::Agg(kind, _) => *kind,
            Frame::Attr(..) => b'|',
        }
    }

    /// What the frame means, in the loose terms assertions use: every null is `Nil`, every
    /// aggregate an `Array` (a map's pairs flat), a boolean an `Int` (1 or 0), a verbatim
    /// string a `Bulk` with its `txt:` prefix; attributes are dropped.
    pub fn value(&self) -> Value {
        let text = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
        match self {
            Frame::Line(b'+', t) => Value::Simple(text(t)),
            Frame::Line(b'-', t) => Value::Error(text(t)),
            Frame::Line(b':', t) => Value::Int(text(t).parse().unwrap_or_default()),
            Frame::Line(b'#', t) => Value::Int(i64::from(t == b"t")),
            Frame::Line(b',', t) => Value::Double(text(t)),
            Frame::Line(b'(', t) => Value::Big(text(t)),
            Frame::Line(_, _) | Frame::Blob(_, None) | Frame::Agg(_, None) => Value::Nil,
            Frame::Blob(b'!', Some(t)) => Value::Error(text(t)),
            Frame::Blob(_, Some(payload)) => Value::Bulk(payload.clone()),
            Frame::Agg(_, Some(elements)) => {
                Value::Array(elements.iter().map(Frame::value).collect())
            }
            Frame::Attr(_, described) => described.value(),
        }
    }
}

/// A reply as tests check it; see [`Frame::value`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Double(String),
    /// A RESP3 big number (`(`), as its digits.
    Big(String),
    Nil,
    Array(Vec<Value>),
}

impl Value {
    /// Decodes a buffer holding exactly one reply; panics (with the bytes) if it does not.
    pub fn parse(bytes: &[u8]) -> Value {
        match decode_whole(bytes) {
            Ok(frame) => frame.value(),
            Err(e) => panic!("{e}: {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    /// A string's bytes (bulk or simple); panics on anything else.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Value::Bulk(b) => b,
            Value::Simple(s) => s.as_bytes(),
            other => panic!("not a string: {other:?}"),
        }
    }

    /// An array's elements; panics on anything else.
    pub fn items(&self) -> &[Value] {
        match self {
            Value::Array(items) => items,
            other => panic!("not an array: {other:?}"),
        }
    }

    /// An integer; panics on anything else.
    pub fn int(&self) -> i64 {
        match self {
            Value::Int(n) => *n,
            other => panic!("not an integer: {other:?}"),
        }
    }

    /// An array of strings, as byte vectors.
    pub fn strings(&self) -> Vec<Vec<u8>> {
        self.items().iter().map(|i| i.bytes().to_vec()).collect()
    }
}

/// Bytes as an escaped string, cut at 1,500 characters (for failure messages).
pub fn escape(bytes: &[u8]) -> String {
    let mut out: String = bytes
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if out.len() > 1500 {
        out.truncate(1500);
        out.push_str(&format!("... ({} bytes in all)", bytes.len()));
    }
    out
}

/// Reads whole frames from a byte stream: what it read past a frame stays for the next.
#[derive(Debug)]
pub struct Reader {
    buf: BytesMut,
    scanner: Scanner,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            buf: BytesMut::with_capacity(16 * 1024),
            scanner: Scanner::default(),
        }
    }
}

impl Reader {
    /// Reads until one whole frame is buffered and returns its bytes. Fails with `TimedOut`
    /// after `timeout` (what arrived of the frame stays buffered), `UnexpectedEof` when the
    /// peer closes, `InvalidData` on bytes that are not RESP; the errors show what was
    /// buffered.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        timeout: Duration,
    ) -> std::io::Result<Bytes> {
        use std::io::{Error as IoError, ErrorKind};
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.scanner.scan(&self.buf) {
                Ok(Some(len)) => return Ok(self.buf.split_to(len).freeze()),
                Ok(None) => {}
                Err(e) => {
                    self.scanner = Scanner::default();
                    return Err(IoError::new(
                        ErrorKind::InvalidData,
                        format!("bad frame: {e}; buffered: {}", escape(&self.buf)),
                    ));
                }
            }
            let n = tokio::time::timeout_at(deadline, rd.read_buf(&mut self.buf))
                .await
                .map_err(|_| {
                    IoError::new(
                        ErrorKind::TimedOut,
                        format!(
                            "no reply within {timeout:?}; buffered: {}",
                            escape(&self.buf)
                        ),
                    )
                })??;
            if n == 0 {
                return Err(IoError::new(
                    ErrorKind::UnexpectedEof,
                    format!("connection closed; buffered: {}", escape(&self.buf)),
                ));
            }
        }
    }
}
