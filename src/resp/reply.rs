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
            }
            Protocol::Resp3 => redis_protocol::resp3::encode::complete::extend_encode(
                &mut out,
                &self.to_resp3(),
                false,
            ),
        }
        .expect("locally built frames always encode");
        out.freeze()
    }

    fn to_resp2(&self) -> Frame2 {
        match self {
            Reply::Simple(s) => Frame2::SimpleString(Bytes::from_static(s.as_bytes())),
            Reply::Error(e) => Frame2::Error(e.as_str().into()),
            Reply::Integer(i) => Frame2::Integer(*i),
            Reply::Bulk(b) => Frame2::BulkString(b.clone()),
            Reply::Null => Frame2::Null,
            Reply::Array(items) => Frame2::Array(items.iter().map(Reply::to_resp2).collect()),
        }
    }

    fn to_resp3(&self) -> Frame3 {
        match self {
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
            Reply::Array(items) => Frame3::Array {
                data: items.iter().map(Reply::to_resp3).collect(),
                attributes: None,
            },
        }
    }
}

/// `-ERR {message}`, for the hot error paths (upstream down) that repeat the same text.
pub fn error_bytes(message: &str) -> Bytes {
    Reply::error(message).encode(Protocol::Resp2)
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
}
