//! Replies cachet writes itself, encoded by `redis-protocol` in the client's protocol version.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::BytesFrame as Frame3;

use super::Protocol;

/// A reply built by cachet, independent of protocol version until encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(&'static str),
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    Null,
    Array(Vec<Reply>),
    /// A map in RESP3; a flat array of keys and values in RESP2, as HGETALL replies.
    Map(Vec<(Reply, Reply)>),
    /// Text: a verbatim string (`=len\r\ntxt:...`) in RESP3, a bulk string in RESP2, as
    /// Redis answers INFO or CLIENT LIST.
    Verbatim(Bytes),
}

impl Reply {
    pub fn ok() -> Self {
        Reply::Simple("OK")
    }

    /// An error reply; `message` starts with its code (`ERR ...`, `NOAUTH ...`).
    pub fn error(message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        message.retain(|c| c != '\r' && c != '\n');
        Reply::Error(message)
    }

    pub fn encode(&self, protocol: Protocol) -> Bytes {
        let mut out = BytesMut::new();
        match protocol {
            Protocol::Resp2 => {
                redis_protocol::resp2::encode::extend_encode(&mut out, &self.to_resp2(), false)
                    .expect("locally built frames always encode");
            }
            Protocol::Resp3 => self.extend_resp3(&mut out),
        }
        out.freeze()
    }

    fn to_resp2(&self) -> Frame2 {
        match self {
            Reply::Simple(s) => Frame2::SimpleString(Bytes::from_static(s.as_bytes())),
            Reply::Error(e) => Frame2::Error(e.as_str().into()),
            Reply::Integer(i) => Frame2::Integer(*i),
            Reply::Bulk(b) | Reply::Verbatim(b) => Frame2::BulkString(b.clone()),
            Reply::Null => Frame2::Null,
            Reply::Array(items) => Frame2::Array(items.iter().map(Reply::to_resp2).collect()),
            Reply::Map(pairs) => Frame2::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [k.to_resp2(), v.to_resp2()])
                    .collect(),
            ),
        }
    }

    /// Appends the RESP3 encoding. Aggregates are written here, header then elements, so a
    /// map keeps the order cachet built it in (redis-protocol's own map type is a hash map);
    /// every element is encoded by redis-protocol.
    fn extend_resp3(&self, out: &mut BytesMut) {
        let scalar = match self {
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                items.iter().for_each(|item| item.extend_resp3(out));
                return;
            }
            Reply::Map(pairs) => {
                out.extend_from_slice(format!("%{}\r\n", pairs.len()).as_bytes());
                for (key, value) in pairs {
                    key.extend_resp3(out);
                    value.extend_resp3(out);
                }
                return;
            }
            Reply::Verbatim(text) => {
                out.extend_from_slice(format!("={}\r\ntxt:", text.len() + 4).as_bytes());
                out.extend_from_slice(text);
                out.extend_from_slice(b"\r\n");
                return;
            }
            Reply::Simple(s) => Frame3::SimpleString {
                data: Bytes::from_static(s.as_bytes()),
                attributes: None,
            },
            Reply::Error(e) => Frame3::SimpleError {
                data: e.as_str().into(),
                attributes: None,
            },
            Reply::Integer(i) => Frame3::Number {
                data: *i,
                attributes: None,
            },
            Reply::Bulk(b) => Frame3::BlobString {
                data: b.clone(),
                attributes: None,
            },
            Reply::Null => Frame3::Null,
        };
        redis_protocol::resp3::encode::complete::extend_encode(out, &scalar, false)
            .expect("locally built frames always encode");
    }
}

/// `-ERR {message}`, for the hot error paths (upstream down) that repeat the same text.
pub fn error_bytes(message: &str) -> Bytes {
    Reply::error(message).encode(Protocol::Resp2)
}

/// Rewrites the `id` field of a HELLO reply (a RESP3 map, or a RESP2 flat array) to `id`,
/// leaving every other byte as Redis sent it. `None` if the frame is not a HELLO reply (an
/// error, say), which is then passed on as is.
pub fn replace_hello_id(frame: &Bytes, id: i64) -> Option<Bytes> {
    if !matches!(frame.first(), Some(b'%' | b'*')) {
        return None;
    }
    let header_end = frame.windows(2).position(|w| w == b"\r\n")? + 2;
    let mut pos = header_end;
    let mut previous_was_id_key = false;
    while pos < frame.len() {
        let len = super::reply_frame(&frame[pos..]).ok()??.len;
        let element = &frame[pos..pos + len];
        if previous_was_id_key {
            let mut out = BytesMut::with_capacity(frame.len() + 16);
            out.extend_from_slice(&frame[..pos]);
            out.extend_from_slice(&Reply::Integer(id).encode(super::Protocol::Resp3));
            out.extend_from_slice(&frame[pos + len..]);
            return Some(out.freeze());
        }
        previous_was_id_key = element == b"$2\r\nid\r\n" || element == b"+id\r\n";
        pos += len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_integer_follow_the_protocol() {
        assert_eq!(&Reply::Null.encode(Protocol::Resp2)[..], b"$-1\r\n");
        assert_eq!(&Reply::Null.encode(Protocol::Resp3)[..], b"_\r\n");
        assert_eq!(&Reply::Integer(7).encode(Protocol::Resp3)[..], b":7\r\n");
        assert_eq!(
            &Reply::error("ERR a\r\nb").encode(Protocol::Resp2)[..],
            b"-ERR ab\r\n"
        );
    }

    #[test]
    fn maps_keep_their_order_in_resp3_and_flatten_in_resp2() {
        let pairs: Vec<(Reply, Reply)> = (0..20)
            .map(|i| (Reply::Bulk(Bytes::from(format!("k{i}"))), Reply::Integer(i)))
            .collect();
        let reply = Reply::Array(vec![Reply::Map(pairs), Reply::Simple("OK")]);
        let mut want3 = String::from("*2\r\n%20\r\n");
        let mut want2 = String::from("*2\r\n*40\r\n");
        for i in 0..20 {
            let pair = format!("${}\r\nk{i}\r\n:{i}\r\n", format!("k{i}").len());
            want3 += &pair;
            want2 += &pair;
        }
        want3 += "+OK\r\n";
        want2 += "+OK\r\n";
        assert_eq!(reply.encode(Protocol::Resp3), Bytes::from(want3));
        assert_eq!(reply.encode(Protocol::Resp2), Bytes::from(want2));
    }
}
#[cfg(test)]
mod hello_tests {
    use super::*;

    #[test]
    fn hello_id_is_replaced_in_both_shapes() {
        let resp3 = Bytes::from_static(
            b"%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$2\r\nid\r\n:427\r\n$5\r\nproto\r\n:3\r\n",
        );
        let out = replace_hello_id(&resp3, 99).expect("rewritten");
        assert_eq!(
            &out[..],
            &b"%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$2\r\nid\r\n:99\r\n$5\r\nproto\r\n:3\r\n"[..]
        );
        let resp2 = Bytes::from_static(b"*4\r\n$2\r\nid\r\n:427\r\n$5\r\nproto\r\n:2\r\n");
        let out = replace_hello_id(&resp2, 99).expect("rewritten");
        assert_eq!(
            &out[..],
            &b"*4\r\n$2\r\nid\r\n:99\r\n$5\r\nproto\r\n:2\r\n"[..]
        );
    }
}

/// Removes the library `name` from a `FUNCTION LIST` reply (an array of one map per library,
/// a flat array in RESP2, each starting with `library_name`), leaving every other byte as
/// Redis sent it. `None` if the frame is not such a reply (an error, say), or holds no such
/// library: then it is passed on as is.
pub fn without_library(frame: &[u8], name: &[u8]) -> Option<Bytes> {
    if frame.first() != Some(&b'*') {
        return None;
    }
    let header_end = frame.windows(2).position(|w| w == b"\r\n")? + 2;
    let count: usize = std::str::from_utf8(&frame[1..header_end - 2])
        .ok()?
        .parse()
        .ok()?;
    // The bulk strings an entry for `name` starts with, after its own header.
    let mut wanted = Vec::new();
    wanted.extend_from_slice(b"$12\r\nlibrary_name\r\n");
    wanted.extend_from_slice(format!("${}\r\n", name.len()).as_bytes());
    wanted.extend_from_slice(name);
    wanted.extend_from_slice(b"\r\n");
    let mut kept = Vec::with_capacity(frame.len());
    let mut removed = 0;
    let mut pos = header_end;
    for _ in 0..count {
        let len = super::reply_frame(&frame[pos..]).ok()??.len;
        let entry = &frame[pos..pos + len];
        let body = entry.windows(2).position(|w| w == b"\r\n")? + 2;
        if matches!(entry.first(), Some(b'*' | b'%')) && entry[body..].starts_with(&wanted) {
            removed += 1;
        } else {
            kept.extend_from_slice(entry);
        }
        pos += len;
    }
    if removed == 0 || pos != frame.len() {
        return None;
    }
    let mut out = format!("*{}\r\n", count - removed).into_bytes();
    out.extend_from_slice(&kept);
    Some(Bytes::from(out))
}

#[cfg(test)]
mod library_tests {
    use super::*;

    fn entry(resp3: bool, name: &str) -> String {
        let head = if resp3 { "%3\r\n" } else { "*6\r\n" };
        format!(
            "{head}$12\r\nlibrary_name\r\n${}\r\n{name}\r\n$6\r\nengine\r\n$3\r\nLUA\r\n$9\r\nfunctions\r\n*0\r\n",
            name.len()
        )
    }

    #[test]
    fn cachets_library_is_cut_out_byte_for_byte() {
        for resp3 in [false, true] {
            let reply = format!(
                "*3\r\n{}{}{}",
                entry(resp3, "mylib"),
                entry(resp3, "cachet"),
                entry(resp3, "cachet2")
            );
            let cut = without_library(reply.as_bytes(), b"cachet").expect("cut");
            let expected = format!("*2\r\n{}{}", entry(resp3, "mylib"), entry(resp3, "cachet2"));
            assert_eq!(String::from_utf8_lossy(&cut), expected);
        }
        // Nothing to cut, an error, an empty list: passed on as they are.
        let only_mine = format!("*1\r\n{}", entry(false, "mylib"));
        assert!(without_library(only_mine.as_bytes(), b"cachet").is_none());
        assert!(without_library(b"-ERR x\r\n", b"cachet").is_none());
        assert!(without_library(b"*0\r\n", b"cachet").is_none());
        let alone = format!("*1\r\n{}", entry(true, "cachet"));
        assert_eq!(
            &without_library(alone.as_bytes(), b"cachet").unwrap()[..],
            b"*0\r\n"
        );
        // Truncated input is never misread.
        assert!(without_library(&alone.as_bytes()[..alone.len() - 3], b"cachet").is_none());
    }
}
