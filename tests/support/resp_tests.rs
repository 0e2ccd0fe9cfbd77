//! Tests of the tests' RESP reader (`support::resp`): every frame type, RESP2 and RESP3,
//! decoded; every prefix incomplete, and resumed byte by byte; bad input an error, never a
//! panic; the bounds on size and nesting; reading from a socket. Run by tests/harness.rs.

use std::time::Duration;

use crate::support::resp::*;

/// Every frame type, RESP2 and RESP3, and what it decodes to.
fn cases() -> Vec<(&'static [u8], Frame)> {
    let line = |k: u8, t: &str| Frame::Line(k, t.as_bytes().to_vec());
    let blob = |k: u8, t: &str| Frame::Blob(k, Some(t.as_bytes().to_vec()));
    vec![
        (b"+OK\r\n", line(b'+', "OK")),
        (b"-ERR no\r\n", line(b'-', "ERR no")),
        (b":-12\r\n", line(b':', "-12")),
        (b"$5\r\nhe\r\no\r\n", blob(b'$', "he\r\no")),
        (b"$0\r\n\r\n", blob(b'$', "")),
        (b"$-1\r\n", Frame::Blob(b'$', None)),
        (b"*-1\r\n", Frame::Agg(b'*', None)),
        (b"*0\r\n", Frame::Agg(b'*', Some(vec![]))),
        (b"_\r\n", line(b'_', "")),
        (b"#t\r\n", line(b'#', "t")),
        (b",1.5\r\n", line(b',', "1.5")),
        (b",-inf\r\n", line(b',', "-inf")),
        (
            b"(123456789012345678901234567890\r\n",
            line(b'(', "123456789012345678901234567890"),
        ),
        (b"!3\r\nbad\r\n", blob(b'!', "bad")),
        (b"=8\r\ntxt:some\r\n", blob(b'=', "txt:some")),
        (
            b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n",
            Frame::Agg(
                b'*',
                Some(vec![
                    line(b':', "1"),
                    Frame::Agg(b'*', Some(vec![blob(b'$', "x")])),
                ]),
            ),
        ),
        (
            b"%1\r\n+k\r\n~2\r\n_\r\n#f\r\n",
            Frame::Agg(
                b'%',
                Some(vec![
                    line(b'+', "k"),
                    Frame::Agg(b'~', Some(vec![line(b'_', ""), line(b'#', "f")])),
                ]),
            ),
        ),
        (
            b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nm\r\n",
            Frame::Agg(
                b'>',
                Some(vec![
                    blob(b'$', "message"),
                    blob(b'$', "ch"),
                    blob(b'$', "m"),
                ]),
            ),
        ),
        (
            b"|1\r\n+ttl\r\n:3\r\n*1\r\n+a\r\n",
            Frame::Attr(
                vec![line(b'+', "ttl"), line(b':', "3")],
                Box::new(Frame::Agg(b'*', Some(vec![line(b'+', "a")]))),
            ),
        ),
    ]
}

#[test]
fn decodes_every_frame_type() {
    for (bytes, want) in cases() {
        assert_eq!(decode_whole(bytes), Ok(want), "{}", escape(bytes));
    }
}

#[test]
fn waits_for_every_prefix_and_leaves_what_follows() {
    for (bytes, _) in cases() {
        for cut in 0..bytes.len() {
            assert_eq!(
                frame_len(&bytes[..cut]),
                Ok(None),
                "{}",
                escape(&bytes[..cut])
            );
        }
        let mut two = bytes.to_vec();
        two.extend_from_slice(b"+next\r\n");
        assert_eq!(frame_len(&two), Ok(Some(bytes.len())), "{}", escape(bytes));
    }
}

#[test]
fn resumes_byte_by_byte() {
    for (bytes, _) in cases() {
        let mut scanner = Scanner::default();
        for cut in 0..bytes.len() {
            assert_eq!(scanner.scan(&bytes[..cut]), Ok(None), "{}", escape(bytes));
        }
        assert_eq!(scanner.scan(bytes), Ok(Some(bytes.len())));
        // Then it starts afresh, for the frame after.
        let mut two = bytes.to_vec();
        two.extend_from_slice(bytes);
        let first = scanner.scan(&two).unwrap();
        assert_eq!(first, Some(bytes.len()));
    }
}

#[test]
fn values_are_loose() {
    let v = |b: &[u8]| Value::parse(b);
    assert_eq!(v(b"$-1\r\n"), Value::Nil);
    assert_eq!(v(b"*-1\r\n"), Value::Nil);
    assert_eq!(v(b"_\r\n"), Value::Nil);
    assert_eq!(v(b"#t\r\n"), Value::Int(1));
    assert_eq!(v(b":7\r\n").int(), 7);
    assert_eq!(v(b"=8\r\ntxt:some\r\n").bytes(), b"txt:some");
    assert_eq!(
        v(b"%1\r\n+k\r\n$1\r\nv\r\n").strings(),
        vec![b"k".to_vec(), b"v".to_vec()]
    );
    assert_eq!(v(b"|1\r\n+a\r\n+b\r\n:4\r\n"), Value::Int(4));
    assert_eq!(v(b"!3\r\nbad\r\n"), Value::Error("bad".into()));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let bad: &[&[u8]] = &[
        b"?\r\n",
        b"\r\n",
        b"$x\r\n",
        b"$-2\r\n",
        b"$+1\r\nx\r\n",
        b"$ 1\r\nx\r\n",
        b"$3\r\nabcd\r\n",
        b"$99999999999999999999999\r\n",
        b"*-5\r\n",
        b"~-1\r\n",
        b"%-1\r\n",
        b"!-1\r\n",
        b"*1\r\n?\r\n",
        b":12a\r\n",
        b":\r\n",
        b"#x\r\n",
        b"_x\r\n",
        b",one\r\n",
        b"(12a\r\n",
        b"=3\r\nabc\r\n",
        b"*2\r\n+a\rb\r\n+c\r\n",
    ];
    for input in bad {
        assert!(frame_len(input).is_err(), "{} was accepted", escape(input));
        assert!(decode(input).is_err(), "{} was decoded", escape(input));
    }
    // A byte that starts no element fails at once, without waiting for a line end.
    for input in [&b"x"[..], b"\n", b"*2\r\n:1\r\nGET"] {
        assert!(
            frame_len(input).is_err(),
            "{} was not refused",
            escape(input)
        );
    }
    // Not a frame but the start of one: incomplete, not invalid.
    assert_eq!(frame_len(b"$3\r\nab"), Ok(None));
    assert_eq!(
        decode_whole(b"$3\r\nab").unwrap_err().reason,
        "incomplete frame"
    );
    assert!(decode_whole(b"+a\r\n+b\r\n").is_err(), "trailing bytes");
}

#[test]
fn frames_are_bounded() {
    // A bulk claiming 512 MiB and more, an aggregate whose elements cannot fit, one
    // whose pairs cannot: errors at once, before any of it arrives.
    let huge = format!("${}\r\n", MAX_FRAME);
    assert!(frame_len(huge.as_bytes()).is_err());
    let fits = format!("${}\r\n", MAX_FRAME - 16);
    assert_eq!(frame_len(fits.as_bytes()), Ok(None));
    let many = format!("*{}\r\n", MAX_FRAME / 3);
    assert!(frame_len(many.as_bytes()).is_err());
    let pairs = format!("%{}\r\n", MAX_FRAME / 5);
    assert!(frame_len(pairs.as_bytes()).is_err());
    assert!(frame_len(b"*18446744073709551615\r\n").is_err());
    // Nesting: MAX_DEPTH levels are fine, one more is not.
    let nested = |depth: usize| {
        let mut b = b"*1\r\n".repeat(depth);
        b.extend_from_slice(b":1\r\n");
        b
    };
    assert!(decode_whole(&nested(MAX_DEPTH)).is_ok());
    assert!(frame_len(&nested(MAX_DEPTH + 1)).is_err());
    assert!(frame_len(&b"*1\r\n".repeat(1_000_000)).is_err());
}

#[tokio::test]
async fn reads_frames_split_across_reads() {
    let (mut a, mut b) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for chunk in [
            &b"*2\r\n$3\r\nab"[..],
            b"c\r\n",
            b":1\r\n+OK\r\n$-1",
            b"\r\n",
        ] {
            a.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        a
    });
    let mut reader = Reader::default();
    let timeout = Duration::from_secs(5);
    assert_eq!(
        &reader.read(&mut b, timeout).await.unwrap()[..],
        b"*2\r\n$3\r\nabc\r\n:1\r\n"
    );
    assert_eq!(&reader.read(&mut b, timeout).await.unwrap()[..], b"+OK\r\n");
    assert_eq!(&reader.read(&mut b, timeout).await.unwrap()[..], b"$-1\r\n");
    let a = writer.await.unwrap();
    let short = Duration::from_millis(50);
    let err = reader.read(&mut b, short).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    drop(a);
    let err = reader.read(&mut b, timeout).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}
