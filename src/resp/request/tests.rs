//! Unit tests of the request framer: multibulk and inline requests, Redis's own protocol
//! errors and length grammar, the size limits (unauthenticated clients too), and requests
//! split anywhere or arriving in many reads.

use super::*;

const LIMITS: Limits = Limits {
    max_bulk_len: 1024,
    max_array_len: 16,
    max_query_buffer: 1 << 20,
};

fn parse(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Request>, ProtocolError> {
    RequestParser::default().parse(buf, limits, true)
}

fn parse_all(input: &[u8]) -> Result<Vec<Vec<String>>, ProtocolError> {
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    let mut parser = RequestParser::default();
    while let Some(req) = parser.parse(&mut buf, &LIMITS, true)? {
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
    let mut buf =
        BytesMut::from(&b"*4\r\n$3\r\nSET\r\n$12\r\nkey:0000\r\n42\r\n$0\r\n\r\n$1\r\nv\r\n"[..]);
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
    let got =
        parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n\r\nset a \"b c\\n\"\n*0\r\n").unwrap();
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
#[test]
fn lengths_follow_redis_grammar() {
    // Lengths Redis's string2ll refuses: Redis closes the connection on them, so cachet
    // must never forward them to a shared one.
    for bad in [
        &b"*1\r\n$04\r\nPING\r\n"[..],
        b"*1\r\n$+4\r\nPING\r\n",
        b"*1\r\n$ 4\r\nPING\r\n",
        b"*1\r\n$\r\n",
        b"*1\r\n$-0\r\n",
        b"*1\r\n$-1\r\n",
        b"*1\r\n$99999999999999999999\r\n",
    ] {
        let err = parse_all(bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Protocol error: invalid bulk length",
            "{bad:?}"
        );
    }
    for bad in [
        &b"*01\r\n$4\r\nPING\r\n"[..],
        b"*+1\r\n$4\r\nPING\r\n",
        b"*\r\n",
        b"*1 \r\n",
        b"*2147483648\r\n",
        b"*1\rX$4\r\nPING\r\n",
    ] {
        let err = parse_all(bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Protocol error: invalid multibulk length",
            "{bad:?}"
        );
    }
    // Counts of zero or less are empty requests, skipped as Redis skips them.
    let got = parse_all(b"*0\r\n*-1\r\n*-5\r\n*1\r\n$4\r\nPING\r\n").unwrap();
    assert_eq!(got, vec![vec!["PING"]]);
    let err = parse_all(b"*1\r\n$4\r\nPINGxx").unwrap_err();
    assert_eq!(
        err.to_string(),
        "Protocol error: expected CRLF after a bulk string"
    );
    assert_eq!(redis_number(b"9223372036854775807"), Some(i64::MAX));
    assert_eq!(redis_number(b"-9223372036854775808"), Some(i64::MIN));
    assert_eq!(redis_number(b"9223372036854775808"), None);
    assert_eq!(redis_number(b"-0"), None);
    assert_eq!(redis_number(b"10"), Some(10));
}

#[test]
fn nested_arrays_are_refused_at_the_first_header() {
    // The stack overflow of issue 13: a big command, then a million nested headers.
    let mut input = command(&["SET", "k", &"v".repeat(1_000_000)]);
    input.extend(std::iter::repeat_n(&b"*1\r\n"[..], 1_000_000).flatten());
    let mut buf = BytesMut::from(&input[..]);
    let mut parser = RequestParser::default();
    let set = parser.parse(&mut buf, &BIG, true).unwrap().unwrap();
    assert_eq!(set.args.len(), 3);
    let err = parser.parse(&mut buf, &BIG, true).unwrap_err();
    assert_eq!(err.to_string(), "Protocol error: expected '$', got '*'");
    let err = parse_all(b"*2\r\n$3\r\nGET\r\n%1\r\n").unwrap_err();
    assert_eq!(err.to_string(), "Protocol error: expected '$', got '%'");
}

#[test]
fn unauthenticated_clients_get_redis_limits() {
    let mut parser = RequestParser::default();
    let eleven = command(&["DEL"; 11]);
    let err = parser
        .parse(&mut BytesMut::from(&eleven[..]), &BIG, false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Protocol error: unauthenticated multibulk length"
    );
    // Refused at the header, before any of the 200 MB arrives.
    let err = RequestParser::default()
        .parse(
            &mut BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$200000000\r\nxx"[..]),
            &BIG,
            false,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Protocol error: unauthenticated bulk length"
    );
    let ten = command(&["DEL"; 10]);
    let mut buf = BytesMut::from(&ten[..]);
    assert!(
        RequestParser::default()
            .parse(&mut buf, &BIG, false)
            .unwrap()
            .is_some()
    );
    let mut buf = BytesMut::from(&command(&["AUTH", &"p".repeat(16 * 1024)])[..]);
    assert!(
        RequestParser::default()
            .parse(&mut buf, &BIG, false)
            .unwrap()
            .is_some()
    );
}

#[test]
fn split_anywhere_gives_the_same_requests() {
    let input: &[u8] =
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nPING\r\n*0\r\n*2\r\n$3\r\nGET\r\n$10\r\nab\r\ncd\r\nef\r\n";
    let whole = parse_all(input).unwrap();
    for chunk in 1..input.len() {
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(req) = parser.parse(&mut buf, &LIMITS, true).unwrap() {
                assert_eq!(&req.raw[..], &Request::from_args(req.args.clone()).raw[..]);
                got.push(
                    req.args
                        .iter()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>(),
                );
            }
        }
        assert_eq!(got, whole, "chunks of {chunk}");
        assert!(buf.is_empty());
    }
}

#[test]
fn a_request_arriving_in_many_reads_is_checked_once() {
    // 300,000 arguments (2.1 MB). Re-walking the buffer on every read, as the old
    // decoder did, costs quadratic time: about 4 GB of scanning in 1 KB reads.
    let args = vec!["x"; 300_000];
    let input = command(&args);
    let started = std::time::Instant::now();
    let mut buf = BytesMut::from(&input[..]);
    RequestParser::default()
        .parse(&mut buf, &BIG, true)
        .unwrap()
        .unwrap();
    let at_once = started.elapsed();
    let started = std::time::Instant::now();
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::new();
    let mut done = None;
    for piece in input.chunks(1024) {
        buf.extend_from_slice(piece);
        if let Some(request) = parser.parse(&mut buf, &BIG, true).unwrap() {
            done = Some(request);
        }
    }
    let chunked = started.elapsed();
    assert_eq!(done.expect("complete").args.len(), 300_000);
    assert!(
        chunked < at_once * 10 + std::time::Duration::from_millis(500),
        "in 1 KB reads {chunked:?}, at once {at_once:?}"
    );
}

#[test]
fn a_line_arriving_a_byte_at_a_time_is_searched_once() {
    for line in [
        format!("SET k {}\r\n", "v".repeat(60_000)),
        format!("*1\r\n${}\r\n", "1".repeat(60_000)),
    ] {
        let started = std::time::Instant::now();
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::new();
        let mut outcome = Ok(None);
        for byte in line.as_bytes() {
            buf.extend_from_slice(&[*byte]);
            outcome = parser.parse(&mut buf, &BIG, true);
            if !matches!(outcome, Ok(None)) {
                break;
            }
        }
        // Searched from the start on every byte it is 1.8 billion comparisons.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        match &line[..1] {
            "S" => assert_eq!(outcome.unwrap().unwrap().args.len(), 3),
            _ => assert_eq!(
                outcome.unwrap_err().to_string(),
                "Protocol error: invalid bulk length"
            ),
        }
    }
    let err = parse_all(b"*2\r\n$3\r\nGET\r\n\r\n").unwrap_err();
    assert_eq!(err.to_string(), "Protocol error: expected '$', got ' '");
}

const BIG: Limits = Limits {
    max_bulk_len: 512 << 20,
    max_array_len: i32::MAX as u64,
    max_query_buffer: 1 << 30,
};

/// A command as a client library encodes it.
fn command(args: &[&str]) -> Vec<u8> {
    let args = args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes()));
    Request::from_args(args.collect()).raw.to_vec()
}
