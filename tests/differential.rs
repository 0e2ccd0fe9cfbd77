//! Differential test: cachet must be transparent.
//!
//! The same command sequence goes to Redis A directly and to cachet in front of Redis B (two
//! separate `redis-server` fixtures, so both sides start from identical state), and every reply is
//! compared frame by frame, as raw bytes. The sequence runs in RESP2 and in RESP3 (`HELLO 3` first
//! on every connection), once command by command (with a second and third connection on the same
//! side for WATCH aborts, blocking pops woken by another client, and pub/sub), and once pipelined:
//! every command of connection 0 in a single write, all replies read afterwards.
//!
//! Replies are read, and decoded for the normalizers, by the tests' own RESP2/RESP3 reader
//! (`support::resp`), independent of cachet's.
//!
//! # Normalizers
//!
//! Almost every step is compared byte for byte (`Norm::Exact`). The few replies that legitimately
//! differ between two Redis servers are compared through a normalizer; the set is kept small:
//!
//! | normalizer        | what it compares                                   | used for |
//! |-------------------|----------------------------------------------------|----------|
//! | `Shape`           | frame types, aggregate lengths, nesting (not values) | TIME, LASTSAVE, CLIENT ID, OBJECT IDLETIME/FREQ, MEMORY USAGE/STATS/DOCTOR, ACL GENPASS, RANDOMKEY, SRANDMEMBER/HRANDFIELD/ZRANDMEMBER with a count on >1 elements, SPOP with a count, XINFO CONSUMERS and extended XPENDING (idle times) |
//! | `Near(n)`         | both integers, at most `n` apart                    | TTL / PTTL right after setting an expiry (a second may tick between the two sides) |
//! | `Unordered`       | same multiset of elements, recursively              | replies in hash-table order, which depends on each server's random hash seed: KEYS, SCAN, SMEMBERS/SUNION/SDIFF/SSCAN of non-integer sets, CONFIG GET with a glob, COMMAND LIST, PUBSUB CHANNELS, FUNCTION LIST of 2 libraries |
//! | `Hello`           | everything but the value of the `id` field          | HELLO replies (the connection id differs) |
//! | `Plus(n)`         | both integers, cachet's exactly `n` more            | COMMAND COUNT (cachet's own commands are in it, README "Tags and TTL classes") |
//! | `Fields(keep)`    | same list of field names; equal values for `keep`   | INFO sections and CLIENT INFO (ports, fds, addresses, ages differ) |
//!
//! A difference that is a real transparency bug must not be normalized away: add the command
//! with `Norm::Exact` and fix the proxy.
//!
//! `DIFF_TRACE=1 cargo test --test differential -- --nocapture` prints every step of the
//! sequential runs with its direct reply.
//!
//! Command coverage is guarded by `differential_covers_at_least_150_commands`: it counts the
//! distinct command names of the sequence, checks each is a command Redis knows, and requires at
//! least 150.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::resp::{Frame, Reader, decode_whole, escape as esc};
use support::{Proxy, RawClient, RedisServer};

/// How long one reply may take on either side before the run is declared broken.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The sequence must keep covering at least this many distinct Redis commands.
const MIN_DISTINCT_COMMANDS: usize = 150;
/// Deliberately unknown command names (error cases); not counted as coverage.
const BOGUS_COMMANDS: &[&str] = &["FOOBAR"];

/// SHA1 of the script `return ARGV[1]` (what SCRIPT LOAD answers; the step checks it).
const SHA_ECHO: &str = "098e0f0d1448c0a81dafe820f66d460eb09263da";
/// A SHA1 no script has.
const SHA_MISSING: &str = "ffffffffffffffffffffffffffffffffffffffff";

const LIB_ECHO: &str = "#!lua name=dlib_echo\nredis.register_function('d_echo', function(keys, args) return args[1] end)";
const LIB_RO: &str = "#!lua name=dlib_ro\nredis.register_function{function_name='d_get', \
     callback=function(keys, args) return redis.call('GET', keys[1]) end, flags={'no-writes'}}";
/// Loaded, dumped and flushed before the run, so the sequence can FUNCTION RESTORE it.
const LIB_RESTORED: &str = "#!lua name=dlib_restored\n\
     redis.register_function('d_restored', function(keys, args) return 'restored' end)";

/// Fields of CLIENT INFO whose values must match (the others are ids, ports, fds, ages, buffers).
const CLIENT_INFO_KEEP: &[&str] = &[
    "name", "db", "sub", "psub", "multi", "flags", "cmd", "user", "resp",
];
const INFO_SERVER_KEEP: &[&str] = &[
    "redis_version",
    "redis_mode",
    "os",
    "arch_bits",
    "multiplexing_api",
];

// ---------------------------------------------------------------------------------------------
// RESP frames
// ---------------------------------------------------------------------------------------------

/// A client connection that reads whole RESP2/RESP3 frames as raw bytes.
struct Conn {
    stream: TcpStream,
    reader: Reader,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            reader: Reader::default(),
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    async fn read_frame(&mut self) -> std::io::Result<Vec<u8>> {
        let raw = self.reader.read(&mut self.stream, READ_TIMEOUT).await?;
        Ok(raw.to_vec())
    }

    async fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Vec<u8>> {
        self.send(&RawClient::encode(args)).await?;
        self.read_frame().await
    }
}

/// Writes `payload` in one write while reading `frames` replies (concurrently, so that neither
/// side can stall the other on full socket buffers). Returns the replies read and, if reading
/// stopped early, why.
async fn pipeline(
    addr: SocketAddr,
    payload: &[u8],
    frames: usize,
) -> (Vec<Vec<u8>>, Option<std::io::Error>) {
    let mut conn = match Conn::connect(addr).await {
        Ok(c) => c,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let (mut rd, mut wr) = conn.stream.split();
    let mut reader = Reader::default();
    let write = async { wr.write_all(payload).await };
    let read = async {
        let mut replies = Vec::with_capacity(frames);
        for _ in 0..frames {
            match reader.read(&mut rd, READ_TIMEOUT).await {
                Ok(raw) => replies.push(raw.to_vec()),
                Err(e) => return (replies, Some(e)),
            }
        }
        (replies, None)
    };
    let (written, (replies, err)) = tokio::join!(write, read);
    match (written, err) {
        (_, Some(e)) => (replies, Some(e)),
        (Err(e), None) => (replies, Some(e)),
        (Ok(()), None) => (replies, None),
    }
}

// ---------------------------------------------------------------------------------------------
// Normalizers
// ---------------------------------------------------------------------------------------------

/// How a step's direct and proxied replies are compared; see the table in the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Norm {
    Exact,
    Shape,
    Near(i64),
    Plus(i64),
    Unordered,
    Hello,
    Fields(&'static [&'static str]),
}

fn shape(node: &Frame) -> String {
    match node {
        Frame::Line(t, _) => (*t as char).to_string(),
        Frame::Blob(t, None) => format!("{}nil", *t as char),
        Frame::Blob(t, Some(_)) => (*t as char).to_string(),
        Frame::Agg(t, None) => format!("{}nil", *t as char),
        Frame::Agg(t, Some(children)) => format!(
            "{}{}[{}]",
            *t as char,
            children.len(),
            children.iter().map(shape).collect::<Vec<_>>().join(",")
        ),
        Frame::Attr(attributes, described) => format!(
            "|{}[{}]{}",
            attributes.len(),
            attributes.iter().map(shape).collect::<Vec<_>>().join(","),
            shape(described)
        ),
    }
}

/// Sorts every aggregate's elements (map entries as key/value pairs), recursively.
fn canonical(node: &Frame) -> Frame {
    let sort_pairs = |children: &[Frame]| {
        let children: Vec<Frame> = children.iter().map(canonical).collect();
        let mut pairs: Vec<Vec<Frame>> = children.chunks(2).map(|c| c.to_vec()).collect();
        pairs.sort();
        pairs.concat()
    };
    match node {
        Frame::Agg(b'%', Some(children)) => Frame::Agg(b'%', Some(sort_pairs(children))),
        Frame::Agg(t, Some(children)) => {
            let mut children: Vec<Frame> = children.iter().map(canonical).collect();
            children.sort();
            Frame::Agg(*t, Some(children))
        }
        Frame::Attr(attributes, described) => {
            Frame::Attr(sort_pairs(attributes), Box::new(canonical(described)))
        }
        other => other.clone(),
    }
}

fn scalar_text(node: &Frame) -> Option<&[u8]> {
    match node {
        Frame::Line(_, text) | Frame::Blob(_, Some(text)) => Some(text),
        _ => None,
    }
}

/// HELLO's reply (a map in RESP3, a flat array in RESP2) with the `id` value replaced by 0.
fn mask_hello(node: &Frame) -> Frame {
    match node {
        Frame::Agg(t, Some(children)) if *t == b'%' || *t == b'*' => {
            let mut children = children.clone();
            for i in (0..children.len().saturating_sub(1)).step_by(2) {
                if scalar_text(&children[i]) == Some(b"id") {
                    children[i + 1] = Frame::Line(b':', b"0".to_vec());
                }
            }
            Frame::Agg(*t, Some(children))
        }
        other => other.clone(),
    }
}

/// `INFO` text (`key:value` lines, `# Section` headers) or `CLIENT INFO` text (`key=value`
/// separated by spaces) as a list of pairs. Verbatim strings lose their `txt:` prefix.
fn fields(node: &Frame) -> Option<Vec<(String, String)>> {
    let Frame::Blob(kind, Some(data)) = node else {
        return None;
    };
    let data = if *kind == b'=' {
        &data[4.min(data.len())..]
    } else {
        &data[..]
    };
    let text = String::from_utf8_lossy(data);
    let pairs = if text.contains("\r\n") {
        text.split("\r\n")
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| match l.split_once(':') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect()
    } else {
        text.split_whitespace()
            .map(|t| match t.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (t.to_string(), String::new()),
            })
            .collect()
    };
    Some(pairs)
}

/// `Ok` when the two replies match under `norm`, else why not.
fn compare(norm: Norm, direct: &[u8], proxied: &[u8]) -> Result<(), String> {
    if direct == proxied {
        return Ok(());
    }
    if norm == Norm::Exact {
        return Err("bytes differ".into());
    }
    let a = decode_whole(direct).map_err(|e| format!("direct reply unparsable: {e}"))?;
    let b = decode_whole(proxied).map_err(|e| format!("proxied reply unparsable: {e}"))?;
    match norm {
        Norm::Exact => unreachable!(),
        Norm::Shape => {
            let (sa, sb) = (shape(&a), shape(&b));
            if sa == sb {
                Ok(())
            } else {
                Err(format!("shapes differ: {sa} vs {sb}"))
            }
        }
        Norm::Near(tolerance) => match (&a, &b) {
            (Frame::Line(b':', x), Frame::Line(b':', y)) => {
                let parse = |v: &[u8]| String::from_utf8_lossy(v).parse::<i64>().ok();
                match (parse(x), parse(y)) {
                    (Some(x), Some(y)) if (x - y).abs() <= tolerance => Ok(()),
                    _ => Err(format!("integers more than {tolerance} apart")),
                }
            }
            _ => Err("not both integers".into()),
        },
        Norm::Plus(n) => match (&a, &b) {
            (Frame::Line(b':', x), Frame::Line(b':', y)) => {
                let parse = |v: &[u8]| String::from_utf8_lossy(v).parse::<i64>().ok();
                match (parse(x), parse(y)) {
                    (Some(x), Some(y)) if y == x + n => Ok(()),
                    _ => Err(format!("proxied is not direct + {n}")),
                }
            }
            _ => Err("not both integers".into()),
        },
        Norm::Unordered => {
            if canonical(&a) == canonical(&b) {
                Ok(())
            } else {
                Err("differ even ignoring element order".into())
            }
        }
        Norm::Hello => {
            if mask_hello(&a) == mask_hello(&b) {
                Ok(())
            } else {
                Err("differ beyond the `id` field".into())
            }
        }
        Norm::Fields(keep) => {
            if a.kind() != b.kind() {
                return Err("frame types differ".into());
            }
            let (Some(fa), Some(fb)) = (fields(&a), fields(&b)) else {
                return Err("not both text replies".into());
            };
            let (ka, kb): (Vec<&str>, Vec<&str>) = (
                fa.iter().map(|(k, _)| k.as_str()).collect(),
                fb.iter().map(|(k, _)| k.as_str()).collect(),
            );
            if ka != kb {
                return Err(format!("field names differ: {ka:?} vs {kb:?}"));
            }
            let mut diffs = Vec::new();
            for ((k, va), (_, vb)) in fa.iter().zip(fb.iter()) {
                if keep.contains(&k.as_str()) && va != vb {
                    diffs.push(format!("{k}: {va:?} vs {vb:?}"));
                }
            }
            if diffs.is_empty() {
                Ok(())
            } else {
                Err(format!("field values differ: {}", diffs.join(", ")))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The command sequence
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    /// Send the command, read `frames` replies, compare them.
    Call,
    /// Send the command and read nothing yet (a blocking command woken up later).
    Send,
    /// Send nothing; read `frames` pending frames (pushed messages, a woken blocking command).
    Read,
}

#[derive(Clone, Debug)]
struct Step {
    conn: usize,
    args: Vec<Vec<u8>>,
    /// Bytes sent instead of `args` (inline commands).
    inline: Option<Vec<u8>>,
    action: Action,
    frames: usize,
    norm: Norm,
    /// The exact direct reply expected (a sanity check that the sequence tests what it means to).
    expect: Option<Vec<u8>>,
}

impl Step {
    fn wire(&self) -> Vec<u8> {
        match &self.inline {
            Some(raw) => raw.clone(),
            None => RawClient::encode(&self.args),
        }
    }

    fn describe(&self) -> String {
        let what = match (&self.inline, self.action) {
            (_, Action::Read) => format!("(read {} pending frame(s))", self.frames),
            (Some(raw), _) => format!("inline {:?}", esc(raw)),
            (None, _) => self
                .args
                .iter()
                .map(|a| {
                    if a.len() > 60 {
                        format!("{}...({} bytes)", esc(&a[..40]), a.len())
                    } else {
                        esc(a)
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        };
        format!("conn{} `{what}`", self.conn)
    }

    fn norm(&mut self, norm: Norm) -> &mut Self {
        self.norm = norm;
        self
    }

    fn frames(&mut self, frames: usize) -> &mut Self {
        self.frames = frames;
        self
    }

    fn expect(&mut self, raw: &str) -> &mut Self {
        self.expect = Some(raw.as_bytes().to_vec());
        self
    }
}

#[derive(Default)]
struct Script {
    steps: Vec<Step>,
}

impl Script {
    fn push(
        &mut self,
        conn: usize,
        args: Vec<Vec<u8>>,
        action: Action,
        frames: usize,
    ) -> &mut Step {
        self.steps.push(Step {
            conn,
            args,
            inline: None,
            action,
            frames,
            norm: Norm::Exact,
            expect: None,
        });
        self.steps.last_mut().unwrap()
    }

    fn split(line: &str) -> Vec<Vec<u8>> {
        line.split_whitespace()
            .map(|w| w.as_bytes().to_vec())
            .collect()
    }

    /// A command on connection 0, split on whitespace.
    fn cmd(&mut self, line: &str) -> &mut Step {
        self.on(0, line)
    }

    /// A command on connection `conn`, split on whitespace.
    fn on(&mut self, conn: usize, line: &str) -> &mut Step {
        self.push(conn, Self::split(line), Action::Call, 1)
    }

    /// A command on connection 0 with arguments given one by one (spaces, binary data).
    fn argv(&mut self, args: &[&[u8]]) -> &mut Step {
        self.push(
            0,
            args.iter().map(|a| a.to_vec()).collect(),
            Action::Call,
            1,
        )
    }

    fn argv_owned(&mut self, args: Vec<Vec<u8>>) -> &mut Step {
        self.push(0, args, Action::Call, 1)
    }

    fn send_on(&mut self, conn: usize, line: &str) -> &mut Step {
        self.push(conn, Self::split(line), Action::Send, 0)
    }

    fn read_on(&mut self, conn: usize, frames: usize) -> &mut Step {
        self.push(conn, Vec::new(), Action::Read, frames)
    }

    fn inline(&mut self, raw: &[u8]) -> &mut Step {
        let step = self.push(0, Vec::new(), Action::Call, 1);
        step.inline = Some(raw.to_vec());
        step
    }
}

/// Payloads made before the run (the same Redis version produces them on both sides).
struct Payloads {
    /// `DUMP` of the string "hello dump", for RESTORE.
    dump: Vec<u8>,
    /// `FUNCTION DUMP` of `LIB_RESTORED`, for FUNCTION RESTORE.
    function_dump: Vec<u8>,
}

/// The whole sequence. Connection 0 does most of the work; connection 1 is a second client of the
/// same side (WATCH abort, waking blocked clients, publishing); connection 2 blocks and subscribes.
fn script(p: &Payloads) -> Vec<Step> {
    use Norm::*;
    let mut s = Script::default();

    // --- connection ---------------------------------------------------------------------------
    s.cmd("PING").expect("+PONG\r\n");
    s.cmd("PING hello");
    s.argv(&[b"ECHO", b"bin\r\n\x00\xffsafe"]);
    s.cmd("ECHO");
    s.inline(b"PING\r\n");
    s.inline(b"ECHO inline-arg\r\n");
    s.cmd("SELECT 0").expect("+OK\r\n");
    s.cmd("SELECT 99");
    s.cmd("SELECT notanumber");
    s.cmd("CLIENT GETNAME");
    s.cmd("CLIENT SETNAME diff-conn0").expect("+OK\r\n");
    s.cmd("CLIENT GETNAME");
    s.argv(&[b"CLIENT", b"SETNAME", b"has space"]);
    s.cmd("CLIENT GETNAME");
    s.on(1, "CLIENT GETNAME");
    s.on(1, "CLIENT SETNAME diff-conn1");
    s.on(1, "CLIENT GETNAME");
    s.cmd("CLIENT GETNAME");
    s.cmd("CLIENT ID").norm(Shape);
    s.cmd("CLIENT INFO").norm(Fields(CLIENT_INFO_KEEP));
    s.cmd("CLIENT GETREDIR");
    s.cmd("CLIENT TRACKINGINFO");
    s.cmd("CLIENT NOSUCHSUBCOMMAND");
    s.cmd("HELLO").norm(Hello);
    s.cmd("HELLO 4");
    s.cmd("AUTH onlypassword");
    s.cmd("FOOBAR x y");
    s.cmd("GET");
    s.cmd("DBSIZE").expect(":0\r\n");

    // --- strings ------------------------------------------------------------------------------
    s.cmd("SET str:a hello").expect("+OK\r\n");
    s.cmd("GET str:a");
    s.cmd("GET str:missing");
    s.cmd("SET str:a world XX GET");
    s.cmd("SET str:a x NX");
    s.cmd("SET str:new v NX");
    s.cmd("SET str:a hello EX 1000");
    s.cmd("TTL str:a").norm(Near(2));
    s.cmd("SET str:a hello2 KEEPTTL");
    s.cmd("PTTL str:a").norm(Near(2000));
    s.cmd("SET str:a v EX 0");
    s.cmd("SET str:a v XX NX");
    s.cmd("GETSET str:a hello");
    s.cmd("GETDEL str:new");
    s.cmd("GETDEL str:new");
    s.cmd("GETEX str:a EX 2000");
    s.cmd("TTL str:a").norm(Near(2));
    s.cmd("GETEX str:a PERSIST");
    s.cmd("TTL str:a").expect(":-1\r\n");
    s.cmd("MSET str:m1 1 str:m2 2 str:m3 3");
    s.cmd("MGET str:m1 str:m2 str:missing str:m3");
    s.cmd("MSET str:m1");
    s.cmd("MSETNX str:m1 x str:m4 y");
    s.cmd("MSETNX str:m4 x str:m5 y");
    s.cmd("SETNX str:m4 z");
    s.cmd("SETNX str:m6 z");
    s.cmd("SETEX str:ex 1000 val");
    s.cmd("SETEX str:ex -1 val");
    s.cmd("PSETEX str:pex 1000000 val");
    s.cmd("PTTL str:pex").norm(Near(2000));
    s.cmd("APPEND str:a -tail");
    s.cmd("APPEND str:fresh abc");
    s.cmd("STRLEN str:a");
    s.cmd("STRLEN str:missing");
    s.cmd("INCR str:counter").expect(":1\r\n");
    s.cmd("INCRBY str:counter 41");
    s.cmd("DECR str:counter");
    s.cmd("DECRBY str:counter 10");
    s.cmd("INCR str:a");
    s.cmd("INCRBY str:counter 9223372036854775807");
    s.cmd("INCRBYFLOAT str:float 10.5");
    s.cmd("INCRBYFLOAT str:float 0.1");
    s.cmd("INCRBYFLOAT str:float 5.0e3");
    s.cmd("INCRBYFLOAT str:a 1");
    s.cmd("GETRANGE str:a 0 3");
    s.cmd("GETRANGE str:a -4 -1");
    s.cmd("SUBSTR str:a 1 2");
    s.cmd("SETRANGE str:a 2 XY");
    s.cmd("SETRANGE str:zero 5 pad");
    s.cmd("GET str:zero");
    s.cmd("SET str:l1 ohmytext");
    s.cmd("SET str:l2 mynewtext");
    s.cmd("LCS str:l1 str:l2");
    s.cmd("LCS str:l1 str:l2 LEN");
    s.cmd("LCS str:l1 str:l2 IDX MINMATCHLEN 2 WITHMATCHLEN");
    let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    s.argv(&[b"SET", b"str:big", &big]);
    s.cmd("STRLEN str:big");
    s.cmd("GET str:big");
    s.cmd("GETRANGE str:big 199990 -1");
    s.cmd("OBJECT ENCODING str:a");
    s.cmd("OBJECT ENCODING str:counter");
    s.cmd("OBJECT ENCODING str:big");
    s.cmd("OBJECT REFCOUNT str:a");

    // --- bitmaps ------------------------------------------------------------------------------
    s.cmd("SETBIT bit:a 7 1").expect(":0\r\n");
    s.cmd("SETBIT bit:a 7 0");
    s.cmd("SETBIT bit:a 100 1");
    s.cmd("SETBIT bit:a 3 1");
    s.cmd("SETBIT bit:a 1 2");
    s.cmd("GETBIT bit:a 100");
    s.cmd("GETBIT bit:a 1000");
    s.cmd("BITCOUNT bit:a");
    s.cmd("BITCOUNT bit:a 0 0");
    s.cmd("BITCOUNT bit:a 0 20 BIT");
    s.cmd("BITPOS bit:a 1");
    s.cmd("BITPOS bit:a 0");
    s.cmd("BITPOS bit:a 1 2 -1 BYTE");
    s.cmd("SET bit:b foobar");
    s.cmd("SET bit:c abcdef");
    s.cmd("BITOP AND bit:and bit:b bit:c");
    s.cmd("GET bit:and");
    s.cmd("BITOP OR bit:or bit:b bit:c");
    s.cmd("BITOP XOR bit:xor bit:b bit:c");
    s.cmd("GET bit:xor");
    s.cmd("BITOP NOT bit:not bit:b");
    s.cmd("GET bit:not");
    s.cmd("BITOP NOT bit:x bit:b bit:c");
    s.cmd("BITFIELD bit:f SET u8 0 255 GET u8 0 INCRBY u4 4 3 OVERFLOW SAT INCRBY i8 0 200");
    s.cmd("BITFIELD_RO bit:f GET u8 0 GET i4 4");
    s.cmd("BITFIELD_RO bit:f SET u8 0 1");

    // --- lists --------------------------------------------------------------------------------
    s.cmd("LPUSH list:a c b a").expect(":3\r\n");
    s.cmd("RPUSH list:a d e");
    s.cmd("LPUSHX list:missing x");
    s.cmd("RPUSHX list:a f");
    s.cmd("LRANGE list:a 0 -1");
    s.cmd("LRANGE list:a -2 -1");
    s.cmd("LRANGE list:a 10 20");
    s.cmd("LINDEX list:a 0");
    s.cmd("LINDEX list:a -1");
    s.cmd("LINDEX list:a 99");
    s.cmd("LLEN list:a");
    s.cmd("LINSERT list:a BEFORE c bb");
    s.cmd("LINSERT list:a AFTER zz x");
    s.cmd("LSET list:a 0 A");
    s.cmd("LSET list:a 99 x");
    s.cmd("LPOS list:a c");
    s.cmd("LPOS list:a nosuch");
    s.cmd("RPUSH list:a c c");
    s.cmd("LPOS list:a c RANK -1");
    s.cmd("LPOS list:a c COUNT 0");
    s.cmd("LREM list:a 2 c");
    s.cmd("LTRIM list:a 0 4");
    s.cmd("LRANGE list:a 0 -1");
    s.cmd("LPOP list:a");
    s.cmd("LPOP list:a 2");
    s.cmd("RPOP list:a");
    s.cmd("RPOP list:missing");
    s.cmd("LPOP list:missing 2");
    s.cmd("RPUSH list:src 1 2 3 4");
    s.cmd("RPOPLPUSH list:src list:dst");
    s.cmd("LMOVE list:src list:dst LEFT RIGHT");
    s.cmd("LMOVE list:src list:dst UP DOWN");
    s.cmd("LMPOP 2 list:missing list:src RIGHT COUNT 10");
    s.cmd("LMPOP 1 list:missing LEFT");
    s.cmd("LRANGE list:dst 0 -1");
    s.cmd("OBJECT ENCODING list:dst");
    let mut big_list: Vec<Vec<u8>> = vec![b"RPUSH".to_vec(), b"list:big".to_vec()];
    big_list.extend((0..1000).map(|i| format!("item-{i}").into_bytes()));
    s.argv_owned(big_list);
    s.cmd("LLEN list:big");
    s.cmd("LRANGE list:big 0 -1");
    s.cmd("OBJECT ENCODING list:big");
    s.cmd("LPUSH str:a x");

    // --- hashes -------------------------------------------------------------------------------
    s.cmd("HSET hash:a f1 v1 f2 v2").expect(":2\r\n");
    s.cmd("HSET hash:a f1 v1b");
    s.cmd("HGET hash:a f1");
    s.cmd("HGET hash:a nosuch");
    s.cmd("HMSET hash:a f3 v3 f4 4");
    s.cmd("HMGET hash:a f1 nosuch f3");
    s.cmd("HGETALL hash:a");
    s.cmd("HGETALL hash:missing");
    s.cmd("HKEYS hash:a");
    s.cmd("HVALS hash:a");
    s.cmd("HLEN hash:a");
    s.cmd("HEXISTS hash:a f1");
    s.cmd("HEXISTS hash:a nosuch");
    s.cmd("HSTRLEN hash:a f1");
    s.cmd("HSETNX hash:a f1 x");
    s.cmd("HSETNX hash:a f5 x");
    s.cmd("HINCRBY hash:a f4 10");
    s.cmd("HINCRBY hash:a f1 1");
    s.cmd("HINCRBYFLOAT hash:a f6 1.5");
    s.cmd("HDEL hash:a f5 nosuch");
    s.cmd("HRANDFIELD hash:a").norm(Shape);
    s.cmd("HRANDFIELD hash:a 2 WITHVALUES").norm(Shape);
    s.cmd("HSET hash:one only 1");
    s.cmd("HRANDFIELD hash:one");
    s.cmd("HRANDFIELD hash:one -3 WITHVALUES");
    s.cmd("HSCAN hash:a 0");
    s.cmd("HSCAN hash:a 0 MATCH f* COUNT 100");
    s.cmd("HSET hash:a f1");
    s.cmd("HGET str:a f1");
    s.cmd("OBJECT ENCODING hash:a");

    // --- sets ---------------------------------------------------------------------------------
    s.cmd("SADD set:i 3 1 2 5 8").expect(":5\r\n");
    s.cmd("SADD set:i 1");
    s.cmd("SMEMBERS set:i");
    s.cmd("SISMEMBER set:i 3");
    s.cmd("SISMEMBER set:i 4");
    s.cmd("SMISMEMBER set:i 1 4 5");
    s.cmd("SCARD set:i");
    s.cmd("SADD set:j 2 3 4 100");
    s.cmd("SINTER set:i set:j");
    s.cmd("SINTERCARD 2 set:i set:j");
    s.cmd("SINTERCARD 2 set:i set:j LIMIT 1");
    s.cmd("SINTERSTORE set:ij set:i set:j");
    s.cmd("SUNION set:i set:j");
    s.cmd("SUNIONSTORE set:u set:i set:j");
    s.cmd("SDIFF set:i set:j");
    s.cmd("SDIFFSTORE set:d set:i set:j");
    s.cmd("SMOVE set:i set:j 8");
    s.cmd("SMOVE set:i set:j 999");
    s.cmd("SREM set:i 1 999");
    s.cmd("SMEMBERS set:i");
    s.cmd("SADD set:s apple banana cherry");
    s.cmd("SMEMBERS set:s").norm(Unordered);
    s.cmd("SUNION set:s set:i").norm(Unordered);
    s.cmd("SDIFF set:s set:none").norm(Unordered);
    s.cmd("SRANDMEMBER set:s").norm(Shape);
    s.cmd("SRANDMEMBER set:s 2").norm(Shape);
    s.cmd("SRANDMEMBER set:s 5").norm(Unordered);
    s.cmd("SRANDMEMBER set:s -2").norm(Shape);
    s.cmd("SADD set:one solo");
    s.cmd("SRANDMEMBER set:one -3");
    s.cmd("SPOP set:one");
    s.cmd("SPOP set:one");
    s.cmd("SADD set:pop 1 2 3 4 5");
    s.cmd("SPOP set:pop 2").norm(Shape);
    s.cmd("SCARD set:pop");
    s.cmd("SPOP set:pop 10").norm(Shape);
    s.cmd("EXISTS set:pop");
    s.cmd("SSCAN set:i 0");
    s.cmd("SSCAN set:s 0 MATCH * COUNT 100").norm(Unordered);
    s.cmd("SADD set:s");
    s.cmd("SADD str:a x");
    s.cmd("OBJECT ENCODING set:i");
    s.cmd("OBJECT ENCODING set:s");

    // --- sorted sets --------------------------------------------------------------------------
    s.cmd("ZADD z:a 1 one 2 two 3 three").expect(":3\r\n");
    s.cmd("ZADD z:a NX 10 one 4 four");
    s.cmd("ZADD z:a XX CH 1.5 one");
    s.cmd("ZADD z:a GT 1 two");
    s.cmd("ZADD z:a LT CH 1 two");
    s.cmd("ZADD z:a INCR 2 one");
    s.cmd("ZADD z:a NX XX 1 a");
    s.cmd("ZADD z:a 1");
    s.cmd("ZADD z:a nan x");
    s.cmd("ZADD z:a 5.5 five -inf minf +inf pinf");
    s.cmd("ZINCRBY z:a 0.25 two");
    s.cmd("ZSCORE z:a one");
    s.cmd("ZSCORE z:a nosuch");
    s.cmd("ZSCORE z:a pinf");
    s.cmd("ZMSCORE z:a one nosuch two");
    s.cmd("ZRANK z:a three");
    s.cmd("ZREVRANK z:a three");
    s.cmd("ZRANK z:a nosuch");
    s.cmd("ZCOUNT z:a 1 3");
    s.cmd("ZCOUNT z:a (1 +inf");
    s.cmd("ZCARD z:a");
    s.cmd("ZRANGE z:a 0 -1");
    s.cmd("ZRANGE z:a 0 -1 WITHSCORES");
    s.cmd("ZRANGE z:a 0 2 REV WITHSCORES");
    s.cmd("ZRANGE z:a (1 5 BYSCORE LIMIT 1 2 WITHSCORES");
    s.cmd("ZRANGE z:a 5 (1 BYSCORE REV");
    s.cmd("ZRANGEBYSCORE z:a -inf +inf WITHSCORES");
    s.cmd("ZRANGEBYSCORE z:a 2 (5 LIMIT 0 1");
    s.cmd("ZREVRANGEBYSCORE z:a +inf 2 WITHSCORES");
    s.cmd("ZREVRANGE z:a 0 1 WITHSCORES");
    s.cmd("ZADD z:lex 0 a 0 b 0 c 0 d 0 e");
    s.cmd("ZRANGEBYLEX z:lex [b (d");
    s.cmd("ZREVRANGEBYLEX z:lex + - LIMIT 1 2");
    s.cmd("ZLEXCOUNT z:lex - +");
    s.cmd("ZRANGE z:lex [a [c BYLEX");
    s.cmd("ZRANGEBYLEX z:lex b d");
    s.cmd("ZRANGESTORE z:stored z:a 0 2");
    s.cmd("ZREM z:a four nosuch");
    s.cmd("ZREMRANGEBYRANK z:stored 0 0");
    s.cmd("ZREMRANGEBYSCORE z:a 100 200");
    s.cmd("ZREMRANGEBYLEX z:lex [a [b");
    s.cmd("ZADD z:b 1 one 10 ten 3 three");
    s.cmd("ZUNION 2 z:a z:b WITHSCORES");
    s.cmd("ZUNION 2 z:a z:b WEIGHTS 1 2 AGGREGATE MAX WITHSCORES");
    s.cmd("ZUNIONSTORE z:u 2 z:a z:b");
    s.cmd("ZINTER 2 z:a z:b WITHSCORES");
    s.cmd("ZINTERSTORE z:i 2 z:a z:b AGGREGATE MIN");
    s.cmd("ZINTERCARD 2 z:a z:b");
    s.cmd("ZINTERCARD 2 z:a z:b LIMIT 1");
    s.cmd("ZDIFF 2 z:a z:b WITHSCORES");
    s.cmd("ZDIFFSTORE z:d 2 z:a z:b");
    s.cmd("ZPOPMIN z:u");
    s.cmd("ZPOPMAX z:u 2");
    s.cmd("ZPOPMIN z:missing");
    s.cmd("ZMPOP 2 z:missing z:u MIN COUNT 2");
    s.cmd("ZMPOP 1 z:missing MAX");
    s.cmd("ZRANDMEMBER z:a").norm(Shape);
    s.cmd("ZRANDMEMBER z:a 2 WITHSCORES").norm(Shape);
    s.cmd("ZADD z:one 7 solo");
    s.cmd("ZRANDMEMBER z:one -2 WITHSCORES");
    s.cmd("ZSCAN z:a 0");
    s.cmd("ZSCAN z:a 0 MATCH t*");
    s.cmd("OBJECT ENCODING z:a");
    s.cmd("ZADD str:a 1 x");

    // --- hyperloglog --------------------------------------------------------------------------
    s.cmd("PFADD hll:a a b c d").expect(":1\r\n");
    s.cmd("PFADD hll:a a");
    s.cmd("PFCOUNT hll:a");
    s.cmd("PFADD hll:b c d e f");
    s.cmd("PFCOUNT hll:a hll:b");
    s.cmd("PFMERGE hll:m hll:a hll:b");
    s.cmd("PFCOUNT hll:m");
    s.cmd("GET hll:m");
    s.cmd("PFADD str:a x");
    let mut many: Vec<Vec<u8>> = vec![b"PFADD".to_vec(), b"hll:big".to_vec()];
    many.extend((0..500).map(|i| format!("e{i}").into_bytes()));
    s.argv_owned(many);
    s.cmd("PFCOUNT hll:big");

    // --- geo ----------------------------------------------------------------------------------
    s.cmd("GEOADD geo:sicily 13.361389 38.115556 Palermo 15.087269 37.502669 Catania")
        .expect(":2\r\n");
    s.cmd("GEOADD geo:sicily XX CH 13.361389 38.115556 Palermo");
    s.cmd("GEOADD geo:sicily 200 100 bad");
    s.cmd("GEOPOS geo:sicily Palermo nosuch");
    s.cmd("GEODIST geo:sicily Palermo Catania");
    s.cmd("GEODIST geo:sicily Palermo Catania km");
    s.cmd("GEODIST geo:sicily Palermo nosuch");
    s.cmd("GEOHASH geo:sicily Palermo Catania");
    s.cmd("GEOSEARCH geo:sicily FROMLONLAT 15 37 BYRADIUS 200 km ASC WITHCOORD WITHDIST WITHHASH");
    s.cmd("GEOSEARCH geo:sicily FROMMEMBER Palermo BYBOX 400 400 km DESC COUNT 1");
    s.cmd("GEOSEARCHSTORE geo:store geo:sicily FROMLONLAT 15 37 BYRADIUS 200 km STOREDIST");
    s.cmd("ZRANGE geo:store 0 -1 WITHSCORES");
    s.cmd("GEORADIUS geo:sicily 15 37 200 km WITHDIST ASC");
    s.cmd("GEORADIUSBYMEMBER geo:sicily Palermo 300 km ASC");
    s.cmd("GEORADIUS_RO geo:sicily 15 37 200 km WITHCOORD ASC");
    s.cmd("GEORADIUSBYMEMBER_RO geo:sicily Palermo 300 km COUNT 1 ASC");

    // --- streams (explicit IDs only: `*` would generate time-based IDs) ----------------------
    s.cmd("XADD st:a 1-1 f1 v1").expect("$3\r\n1-1\r\n");
    s.cmd("XADD st:a 1-2 f2 v2");
    s.cmd("XADD st:a 2-0 f3 v3 f4 v4");
    s.cmd("XADD st:a 1-0 x y");
    s.cmd("XADD st:none NOMKSTREAM 5-0 f v");
    s.cmd("XADD st:a MAXLEN = 10 3-0 f v");
    s.cmd("XLEN st:a");
    s.cmd("XRANGE st:a - +");
    s.cmd("XRANGE st:a - + COUNT 2");
    s.cmd("XRANGE st:a (1-1 +");
    s.cmd("XREVRANGE st:a + - COUNT 1");
    s.cmd("XREAD COUNT 10 STREAMS st:a 0-0");
    s.cmd("XREAD STREAMS st:a st:none 1-2 0-0");
    s.cmd("XREAD STREAMS st:a $");
    s.cmd("XDEL st:a 1-2 9-9");
    s.cmd("XTRIM st:a MAXLEN 10");
    s.cmd("XTRIM st:a MINID 1-5");
    s.cmd("XSETID st:a 10-0");
    s.cmd("XSETID st:a 1-0");
    s.cmd("XINFO STREAM st:a");
    s.cmd("XADD st:g 1-0 a 1");
    s.cmd("XADD st:g 2-0 b 2");
    s.cmd("XADD st:g 3-0 c 3");
    s.cmd("XGROUP CREATE st:g grp 0").expect("+OK\r\n");
    s.cmd("XGROUP CREATE st:g grp 0");
    s.cmd("XGROUP CREATE st:nostream grp $");
    s.cmd("XGROUP CREATE st:mk grp $ MKSTREAM");
    s.cmd("XGROUP CREATECONSUMER st:g grp alice");
    s.cmd("XREADGROUP GROUP grp alice COUNT 2 STREAMS st:g >");
    s.cmd("XREADGROUP GROUP grp bob STREAMS st:g >");
    s.cmd("XREADGROUP GROUP grp bob STREAMS st:g 0");
    s.cmd("XREADGROUP GROUP grp alice BLOCK 100 STREAMS st:g >");
    s.cmd("XPENDING st:g grp");
    s.cmd("XPENDING st:g grp - + 10").norm(Shape);
    s.cmd("XPENDING st:g grp - + 10 alice").norm(Shape);
    s.cmd("XACK st:g grp 1-0 9-0");
    s.cmd("XCLAIM st:g grp bob 0 2-0 JUSTID");
    s.cmd("XCLAIM st:g grp bob 0 2-0");
    s.cmd("XAUTOCLAIM st:g grp alice 0 0-0 COUNT 10");
    s.cmd("XAUTOCLAIM st:g grp alice 0 0-0 COUNT 10 JUSTID");
    s.cmd("XINFO GROUPS st:g");
    s.cmd("XINFO CONSUMERS st:g grp").norm(Shape);
    s.cmd("XGROUP SETID st:g grp 0");
    s.cmd("XGROUP DELCONSUMER st:g grp bob");
    s.cmd("XGROUP DESTROY st:g grp");
    s.cmd("XINFO STREAM st:g");
    s.cmd("XINFO GROUPS st:g");
    s.cmd("XADD str:a 1-0 f v");

    // --- keys / generic -----------------------------------------------------------------------
    s.cmd("SET k:a hello");
    s.cmd("SET k:n 12345");
    s.cmd("TYPE k:a");
    s.cmd("TYPE list:a");
    s.cmd("TYPE hash:a");
    s.cmd("TYPE set:i");
    s.cmd("TYPE z:a");
    s.cmd("TYPE st:a");
    s.cmd("TYPE k:missing");
    s.cmd("EXISTS k:a k:n k:missing k:a").expect(":3\r\n");
    s.cmd("EXPIRE k:a 1000").expect(":1\r\n");
    s.cmd("TTL k:a").norm(Near(2));
    s.cmd("PTTL k:a").norm(Near(2000));
    s.cmd("EXPIRE k:a 1000 NX");
    s.cmd("EXPIRE k:a 2000 GT");
    s.cmd("EXPIRE k:a 1500 LT");
    s.cmd("EXPIRE k:missing 10 XX");
    s.cmd("PEXPIRE k:a 5000000");
    s.cmd("PTTL k:a").norm(Near(2000));
    s.cmd("EXPIREAT k:a 4102444800");
    s.cmd("EXPIRETIME k:a");
    s.cmd("PEXPIRETIME k:a");
    s.cmd("PEXPIREAT k:a 4102444800123");
    s.cmd("PEXPIRETIME k:a");
    s.cmd("EXPIRETIME k:n");
    s.cmd("EXPIRETIME k:missing");
    s.cmd("PERSIST k:a").expect(":1\r\n");
    s.cmd("PERSIST k:a");
    s.cmd("TTL k:a");
    s.cmd("TTL k:missing");
    s.cmd("EXPIRE k:a notanumber");
    s.cmd("RENAME k:a k:b").expect("+OK\r\n");
    s.cmd("RENAME k:missing k:x");
    s.cmd("RENAMENX k:b k:n");
    s.cmd("GET k:b");
    s.cmd("COPY k:b k:c");
    s.cmd("COPY k:b k:c");
    s.cmd("COPY k:b k:c REPLACE");
    s.cmd("COPY k:b k:d DB 1");
    s.cmd("DUMP k:b");
    s.cmd("DUMP k:missing");
    s.argv(&[b"RESTORE", b"k:r", b"0", &p.dump])
        .expect("+OK\r\n");
    s.cmd("GET k:r");
    s.argv(&[b"RESTORE", b"k:r", b"0", &p.dump]);
    s.argv(&[
        b"RESTORE",
        b"k:r",
        b"4102444800000",
        &p.dump,
        b"REPLACE",
        b"ABSTTL",
    ]);
    s.cmd("PEXPIRETIME k:r");
    s.argv(&[b"RESTORE", b"k:r2", b"0", &p.dump, b"IDLETIME", b"100"]);
    s.cmd("OBJECT IDLETIME k:r2").norm(Shape);
    s.cmd("RESTORE k:bad 0 not-a-dump-payload");
    s.cmd("OBJECT ENCODING k:n");
    s.cmd("OBJECT REFCOUNT k:n");
    s.cmd("OBJECT FREQ k:n");
    s.cmd("OBJECT ENCODING k:missing");
    s.cmd("OBJECT HELP");
    s.cmd("OBJECT NOSUCHSUB k:n");
    s.cmd("TOUCH k:b k:n k:missing");
    s.cmd("UNLINK k:c k:missing");
    s.cmd("DEL k:r2 k:missing");
    s.cmd("MOVE k:n 1").expect(":1\r\n");
    s.cmd("MOVE k:n 1");
    s.cmd("GET k:n");
    s.cmd("SWAPDB 0 1").expect("+OK\r\n");
    s.cmd("GET k:n");
    s.cmd("DBSIZE");
    s.cmd("SWAPDB 0 1");
    s.cmd("GET k:n");
    s.cmd("KEYS k:*").norm(Unordered);
    s.cmd("KEYS *").norm(Unordered);
    s.cmd("SCAN 0 MATCH str:* COUNT 1000").norm(Unordered);
    s.cmd("SCAN 0 COUNT 1000 TYPE hash").norm(Unordered);
    s.cmd("RANDOMKEY").norm(Shape);
    s.cmd("DBSIZE");
    s.cmd("RPUSH sort:l 3 1 2 10");
    s.cmd("SORT sort:l");
    s.cmd("SORT sort:l DESC LIMIT 0 2");
    s.cmd("SORT sort:l ALPHA");
    s.cmd("MSET sort:w_1 30 sort:w_2 20 sort:w_3 10 sort:w_10 0 sort:o_1 one sort:o_2 two sort:o_3 three sort:o_10 ten");
    s.cmd("SORT sort:l BY sort:w_* GET sort:o_* GET #");
    s.cmd("SORT sort:l BY nosort");
    s.cmd("SORT sort:l STORE sort:dst");
    s.cmd("LRANGE sort:dst 0 -1");
    s.cmd("SORT_RO sort:l DESC");
    s.cmd("SORT_RO sort:l STORE sort:x");
    s.cmd("RPUSH sort:bad a b");
    s.cmd("SORT sort:bad");
    s.cmd("SADD sort:set 5 3 9");
    s.cmd("SORT sort:set");
    s.cmd("WAIT 0 0");

    // --- server -------------------------------------------------------------------------------
    s.cmd("DBSIZE");
    s.cmd("CONFIG GET maxmemory");
    s.cmd("CONFIG GET maxmemory*").norm(Unordered);
    s.cmd("CONFIG GET nosuchparameter");
    s.cmd("CONFIG SET maxmemory-policy allkeys-lfu")
        .expect("+OK\r\n");
    s.cmd("OBJECT FREQ k:b").norm(Shape);
    s.cmd("OBJECT IDLETIME k:b");
    s.cmd("CONFIG SET maxmemory-policy noeviction");
    s.cmd("CONFIG GET maxmemory-policy");
    s.cmd("OBJECT IDLETIME k:b").norm(Shape);
    s.cmd("CONFIG SET nosuchparameter 1");
    s.cmd("CONFIG REWRITE");
    s.cmd("CONFIG RESETSTAT");
    s.cmd("CONFIG GET");
    s.cmd("COMMAND COUNT")
        .norm(Plus(cachet::resp::commands::OWN_COMMANDS.len() as i64));
    s.cmd("COMMAND INFO get lmove nosuchcommand");
    s.cmd("COMMAND DOCS get");
    s.cmd("COMMAND GETKEYS MSET a 1 b 2");
    s.cmd("COMMAND GETKEYSANDFLAGS LMOVE a b LEFT RIGHT");
    s.cmd("COMMAND GETKEYS GET");
    s.cmd("COMMAND LIST FILTERBY ACLCAT hyperloglog")
        .norm(Unordered);
    s.cmd("TIME").norm(Shape);
    s.cmd("LASTSAVE").norm(Shape);
    s.cmd("MEMORY USAGE str:a").norm(Shape);
    s.cmd("MEMORY USAGE k:missing");
    s.cmd("MEMORY STATS").norm(Shape);
    s.cmd("MEMORY DOCTOR").norm(Shape);
    s.cmd("INFO server").norm(Fields(INFO_SERVER_KEEP));
    s.cmd("INFO clients").norm(Fields(&[]));
    s.cmd("INFO keyspace").norm(Fields(&[]));
    s.cmd("ROLE");
    s.cmd("ACL WHOAMI");
    s.cmd("ACL USERS");
    s.cmd("ACL CAT");
    s.cmd("ACL LIST");
    s.cmd("ACL GETUSER default");
    s.cmd("ACL DRYRUN default SET k v");
    s.cmd("ACL SETUSER alice on >secret ~a:* +get")
        .expect("+OK\r\n");
    s.cmd("ACL GETUSER alice");
    s.cmd("ACL DRYRUN alice SET a:1 v");
    s.cmd("ACL DRYRUN alice GET a:1");
    s.cmd("ACL LIST");
    s.cmd("ACL DELUSER alice nosuchuser");
    s.cmd("ACL GENPASS").norm(Shape);
    s.cmd("LATENCY LATEST");
    s.cmd("LATENCY RESET");
    s.cmd("SLOWLOG RESET");
    s.cmd("SLOWLOG GET 0");
    s.cmd("MODULE LIST");
    s.cmd("DEBUG SLEEP 0");

    // --- transactions -------------------------------------------------------------------------
    s.cmd("MULTI").expect("+OK\r\n");
    s.cmd("SET tx:a 1").expect("+QUEUED\r\n");
    s.cmd("INCR tx:a");
    s.cmd("LPUSH tx:a x");
    s.cmd("GET tx:a");
    s.cmd("EXEC");
    s.cmd("MULTI");
    s.cmd("SET tx:b 1");
    s.cmd("DISCARD").expect("+OK\r\n");
    s.cmd("GET tx:b");
    s.cmd("EXEC");
    s.cmd("DISCARD");
    s.cmd("MULTI");
    s.cmd("MULTI");
    s.cmd("SET tx:c");
    s.cmd("EXEC");
    s.cmd("GET tx:c");
    // WATCH aborted by another client of the same side.
    s.cmd("SET tx:w original");
    s.cmd("WATCH tx:w").expect("+OK\r\n");
    s.on(1, "SET tx:w changed").expect("+OK\r\n");
    s.cmd("MULTI");
    s.cmd("SET tx:w mine");
    s.cmd("EXEC");
    s.cmd("GET tx:w");
    // UNWATCH: the other client's write no longer aborts.
    s.cmd("WATCH tx:w");
    s.cmd("UNWATCH").expect("+OK\r\n");
    s.on(1, "SET tx:w again");
    s.cmd("MULTI");
    s.cmd("SET tx:w mine");
    s.cmd("EXEC");
    s.cmd("GET tx:w");
    // WATCH without interference.
    s.cmd("WATCH tx:w tx:v");
    s.cmd("MULTI");
    s.cmd("INCR tx:v");
    s.cmd("WATCH tx:v");
    s.cmd("EXEC");
    s.cmd("MULTI");
    s.cmd("BLPOP tx:empty 1");
    s.cmd("PING");
    s.cmd("EXEC");

    // --- scripting ----------------------------------------------------------------------------
    s.argv(&[b"EVAL", b"return 1", b"0"]).expect(":1\r\n");
    s.argv(&[b"EVAL", b"return {1, 'two', {3, false}, nil, 5}", b"0"]);
    s.argv(&[
        b"EVAL",
        b"return redis.call('SET', KEYS[1], ARGV[1])",
        b"1",
        b"lua:k",
        b"v",
    ]);
    s.argv(&[
        b"EVAL",
        b"return redis.call('GET', KEYS[1])",
        b"1",
        b"lua:k",
    ]);
    s.argv(&[
        b"EVAL",
        b"return redis.pcall('INCR', KEYS[1])",
        b"1",
        b"lua:k",
    ]);
    s.argv(&[
        b"EVAL",
        b"return redis.call('INCR', KEYS[1])",
        b"1",
        b"lua:k",
    ]);
    s.argv(&[b"EVAL", b"return redis.error_reply('MYERR custom')", b"0"]);
    s.argv(&[b"EVAL", b"return redis.status_reply('FINE')", b"0"]);
    s.argv(&[b"EVAL", b"return 3.99", b"0"]);
    s.argv(&[b"EVAL", b"return true", b"0"]);
    s.argv(&[b"EVAL", b"return false", b"0"]);
    s.argv(&[
        b"EVAL",
        b"redis.setresp(3); return redis.call('HGETALL', KEYS[1])",
        b"1",
        b"hash:a",
    ]);
    s.argv(&[
        b"EVAL",
        b"redis.setresp(3); return redis.call('ZSCORE', KEYS[1], 'two')",
        b"1",
        b"z:a",
    ]);
    s.argv(&[b"EVAL", b"return {double=3.5}", b"0"]);
    s.argv(&[b"EVAL", b"return {map={a=1}}", b"0"]);
    s.argv(&[b"EVAL", b"return {set={a=true}}", b"0"]);
    s.argv(&[
        b"EVAL",
        b"return {big_number='123456789012345678901234567890'}",
        b"0",
    ]);
    s.argv(&[b"EVAL", b"this is not lua", b"0"]);
    s.argv(&[b"EVAL", b"return 1", b"1"]);
    s.argv(&[b"EVAL", b"return 1", b"-1"]);
    s.argv(&[b"SCRIPT", b"LOAD", b"return ARGV[1]"])
        .expect(&format!("$40\r\n{SHA_ECHO}\r\n"));
    s.cmd(&format!("EVALSHA {SHA_ECHO} 0 hi"));
    s.cmd(&format!("EVALSHA_RO {SHA_ECHO} 0 hi"));
    s.cmd(&format!("EVALSHA {SHA_MISSING} 0"));
    s.cmd(&format!("SCRIPT EXISTS {SHA_ECHO} {SHA_MISSING}"));
    s.argv(&[
        b"EVAL_RO",
        b"return redis.call('GET', KEYS[1])",
        b"1",
        b"lua:k",
    ]);
    s.argv(&[
        b"EVAL_RO",
        b"return redis.call('DEL', KEYS[1])",
        b"1",
        b"lua:k",
    ]);
    s.cmd("SCRIPT KILL");
    s.cmd("SCRIPT FLUSH").expect("+OK\r\n");
    s.cmd(&format!("SCRIPT EXISTS {SHA_ECHO}"));
    s.cmd(&format!("EVALSHA {SHA_ECHO} 0 hi"));
    s.argv(&[b"FUNCTION", b"LOAD", LIB_ECHO.as_bytes()])
        .expect("$9\r\ndlib_echo\r\n");
    s.argv(&[b"FUNCTION", b"LOAD", LIB_ECHO.as_bytes()]);
    s.argv(&[b"FUNCTION", b"LOAD", b"REPLACE", LIB_ECHO.as_bytes()]);
    s.argv(&[b"FUNCTION", b"LOAD", LIB_RO.as_bytes()]);
    s.argv(&[b"FUNCTION", b"LOAD", b"#!lua name=broken\nthis is not lua"]);
    s.cmd("FCALL d_echo 0 hello");
    s.cmd("FCALL_RO d_get 1 lua:k");
    s.cmd("FCALL_RO d_echo 0 x");
    s.cmd("FCALL nosuchfunction 0");
    s.cmd("FUNCTION LIST LIBRARYNAME dlib_echo");
    s.cmd("FUNCTION LIST WITHCODE LIBRARYNAME dlib_ro");
    s.cmd("FUNCTION LIST").norm(Unordered);
    s.cmd("FUNCTION STATS");
    s.cmd("FUNCTION DELETE dlib_ro").expect("+OK\r\n");
    s.cmd("FUNCTION DELETE dlib_ro");
    s.cmd("FUNCTION DUMP");
    s.argv(&[b"FUNCTION", b"RESTORE", &p.function_dump])
        .expect("+OK\r\n");
    s.argv(&[b"FUNCTION", b"RESTORE", &p.function_dump]);
    s.argv(&[b"FUNCTION", b"RESTORE", &p.function_dump, b"REPLACE"]);
    s.cmd("FCALL d_restored 0");
    s.cmd("FUNCTION FLUSH").expect("+OK\r\n");
    s.cmd("FUNCTION LIST");
    s.cmd("FCALL d_echo 0 hello");

    // --- blocking commands --------------------------------------------------------------------
    s.cmd("RPUSH bl:a x y");
    s.cmd("BLPOP bl:a 1");
    s.cmd("BRPOP bl:a 1");
    s.cmd("BLPOP bl:empty 0.1");
    s.cmd("RPUSH bl:a 1 2 3");
    s.cmd("BRPOPLPUSH bl:a bl:b 1");
    s.cmd("BLMOVE bl:a bl:b LEFT RIGHT 1");
    s.cmd("BLMPOP 1 2 bl:empty bl:a LEFT COUNT 5");
    s.cmd("ZADD bl:z 1 a 2 b 3 c");
    s.cmd("BZPOPMIN bl:z 1");
    s.cmd("BZPOPMAX bl:z 1");
    s.cmd("BZMPOP 1 1 bl:z MIN");
    s.cmd("BZPOPMIN bl:zempty 0.1");
    s.cmd("XREAD BLOCK 100 STREAMS bl:s 0-0");
    s.cmd("BLPOP bl:a notatimeout");
    // Blocked clients woken up by another client (the replies do not depend on who came first).
    s.send_on(2, "BLPOP bl:wake 5");
    s.on(1, "RPUSH bl:wake hello").expect(":1\r\n");
    s.read_on(2, 1);
    s.send_on(2, "XREAD BLOCK 5000 STREAMS st:wake 0-0");
    s.on(1, "XADD st:wake 5-1 f v");
    s.read_on(2, 1);
    s.send_on(2, "BZPOPMAX z:wake 5");
    s.on(1, "ZADD z:wake 4 four");
    s.read_on(2, 1);

    // --- pub/sub ------------------------------------------------------------------------------
    s.cmd("PUBLISH news hello").expect(":0\r\n");
    s.cmd("PUBSUB CHANNELS");
    s.cmd("PUBSUB NUMSUB news other");
    s.cmd("PUBSUB NUMPAT");
    s.cmd("SPUBLISH shard hi");
    s.cmd("PUBSUB SHARDCHANNELS");
    s.cmd("PUBSUB SHARDNUMSUB shard");
    s.on(2, "SUBSCRIBE news weather").frames(2);
    s.on(2, "PSUBSCRIBE ne*");
    s.on(2, "SSUBSCRIBE shard");
    s.on(2, "PING");
    s.on(2, "GET k:b");
    s.on(1, "PUBSUB CHANNELS").norm(Unordered);
    s.on(1, "PUBSUB NUMSUB news weather nobody");
    s.on(1, "PUBSUB NUMPAT");
    s.on(1, "PUBSUB SHARDCHANNELS");
    s.on(1, "PUBSUB SHARDNUMSUB shard");
    s.on(1, "PUBLISH news hi").expect(":2\r\n");
    s.read_on(2, 2);
    s.on(1, "SPUBLISH shard hey").expect(":1\r\n");
    s.read_on(2, 1);
    s.on(1, "PUBLISH weather rain").expect(":1\r\n");
    s.read_on(2, 1);
    s.on(2, "UNSUBSCRIBE news");
    s.on(2, "PUNSUBSCRIBE");
    s.on(2, "SUNSUBSCRIBE");
    s.on(1, "PUBLISH weather still");
    s.read_on(2, 1);
    s.on(2, "UNSUBSCRIBE");
    s.on(1, "PUBLISH news bye").expect(":0\r\n");
    s.on(1, "PUBSUB NUMSUB news weather");
    s.on(2, "PING");
    s.on(2, "CLIENT GETNAME");

    // --- protocol switches, RESET, flushes ----------------------------------------------------
    s.cmd("HELLO 3 SETNAME via-hello").norm(Hello);
    s.cmd("CLIENT GETNAME");
    s.cmd("HGETALL hash:a");
    s.cmd("ZSCORE z:a two");
    s.cmd("HELLO 2").norm(Hello);
    s.cmd("HGETALL hash:a");
    s.cmd("CLIENT GETNAME");
    s.cmd("MULTI");
    s.cmd("RESET").expect("+RESET\r\n");
    s.cmd("CLIENT GETNAME");
    s.cmd("EXEC");
    s.cmd("PING");
    s.cmd("FLUSHDB ASYNC");
    s.cmd("DBSIZE");
    s.cmd("FLUSHALL SYNC");
    s.cmd("DBSIZE").expect(":0\r\n");
    s.on(1, "QUIT").expect("+OK\r\n");
    s.cmd("QUIT").expect("+OK\r\n");
    s.steps
}

/// Distinct command names of the sequence (first argument, upper-cased), without the bogus ones.
fn command_names(steps: &[Step]) -> BTreeSet<String> {
    steps
        .iter()
        .filter_map(|s| s.args.first())
        .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
        .filter(|n| !BOGUS_COMMANDS.contains(&n.as_str()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Running it
// ---------------------------------------------------------------------------------------------

/// Redis A (direct), Redis B and cachet in front of B.
struct Fixture {
    direct: RedisServer,
    upstream: RedisServer,
    proxy: Proxy,
    payloads: Payloads,
}

impl Fixture {
    async fn start() -> Fixture {
        let direct = RedisServer::start();
        let upstream = RedisServer::start();
        let pa = make_payloads(direct.addr()).await;
        let pb = make_payloads(upstream.addr()).await;
        assert_eq!(pa.dump, pb.dump, "the two redis-servers DUMP differently");
        let proxy = Proxy::start(&upstream.url()).await;
        Fixture {
            direct,
            upstream,
            proxy,
            payloads: pa,
        }
    }

    fn steps(&self) -> Vec<Step> {
        script(&self.payloads)
    }

    /// Panics listing every problem, with both Redis logs, if there are any.
    fn check(&self, label: &str, compared: usize, problems: &[String]) {
        if problems.is_empty() {
            eprintln!("[{label}] {compared} replies compared, all equal");
            return;
        }
        let shown: Vec<&String> = problems.iter().take(40).collect();
        let more = problems.len().saturating_sub(shown.len());
        panic!(
            "[{label}] cachet is not transparent: {} problem(s) in {compared} compared replies\n\n{}{}\n\n\
             --- Redis A (direct) log, tail ---\n{}\n--- Redis B (behind cachet) log, tail ---\n{}",
            problems.len(),
            shown
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join("\n\n"),
            if more > 0 {
                format!("\n\n... and {more} more")
            } else {
                String::new()
            },
            tail(&self.direct.log(), 40),
            tail(&self.upstream.log(), 40),
        );
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Makes the DUMP and FUNCTION DUMP payloads on `addr` and leaves its data as it found it (empty).
async fn make_payloads(addr: SocketAddr) -> Payloads {
    let mut c = Conn::connect(addr).await.expect("connect for payloads");
    let mut bulk = async |args: &[&[u8]]| -> Vec<u8> {
        let raw = c.call(args).await.expect("payload reply");
        match decode_whole(&raw) {
            Ok(Frame::Blob(b'$', Some(data))) => data,
            Ok(Frame::Line(b'+', _)) => Vec::new(),
            other => panic!(
                "unexpected reply {other:?} to {:?}",
                args.iter().map(|a| esc(a)).collect::<Vec<_>>()
            ),
        }
    };
    bulk(&[b"SELECT", b"9"]).await;
    bulk(&[b"SET", b"dump:src", b"hello dump"]).await;
    let dump = bulk(&[b"DUMP", b"dump:src"]).await;
    bulk(&[b"FLUSHDB"]).await;
    bulk(&[b"FUNCTION", b"LOAD", LIB_RESTORED.as_bytes()]).await;
    let function_dump = bulk(&[b"FUNCTION", b"DUMP"]).await;
    bulk(&[b"FUNCTION", b"FLUSH"]).await;
    Payloads {
        dump,
        function_dump,
    }
}

fn mismatch(
    label: &str,
    index: usize,
    step: &Step,
    why: &str,
    direct: &[u8],
    proxied: &[u8],
) -> String {
    format!(
        "[{label}] step #{index} {} (normalizer {:?}): {why}\n    direct : {}\n    cachet : {}",
        step.describe(),
        step.norm,
        esc(direct),
        esc(proxied)
    )
}

async fn exec(conn: &mut Conn, step: &Step) -> std::io::Result<Vec<Vec<u8>>> {
    if step.action != Action::Read {
        conn.send(&step.wire()).await?;
    }
    let mut frames = Vec::new();
    if step.action != Action::Send {
        for _ in 0..step.frames {
            frames.push(conn.read_frame().await?);
        }
    }
    Ok(frames)
}

/// Runs the sequence command by command on both sides, comparing as it goes.
/// Returns the number of replies compared and the problems found.
async fn run_sequential(
    label: &str,
    steps: &[Step],
    resp3: bool,
    direct: SocketAddr,
    proxied: SocketAddr,
) -> (usize, Vec<String>) {
    let trace = std::env::var_os("DIFF_TRACE").is_some();
    let mut problems = Vec::new();
    let mut compared = 0;
    let conns = steps.iter().map(|s| s.conn).max().unwrap_or(0) + 1;
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..conns {
        a.push(
            Conn::connect(direct)
                .await
                .expect("connect to direct redis"),
        );
        match Conn::connect(proxied).await {
            Ok(c) => b.push(c),
            Err(e) => {
                problems.push(format!(
                    "[{label}] cannot connect to cachet (connection {i}): {e}"
                ));
                return (compared, problems);
            }
        }
    }
    if resp3 {
        for i in 0..conns {
            let hello: [&[u8]; 2] = [b"HELLO", b"3"];
            let ra = a[i].call(&hello).await.expect("HELLO 3 on direct redis");
            let step = Step {
                conn: i,
                args: vec![b"HELLO".to_vec(), b"3".to_vec()],
                inline: None,
                action: Action::Call,
                frames: 1,
                norm: Norm::Hello,
                expect: None,
            };
            match b[i].call(&hello).await {
                Ok(rb) => {
                    compared += 1;
                    if let Err(why) = compare(Norm::Hello, &ra, &rb) {
                        problems.push(mismatch(label, 0, &step, &why, &ra, &rb));
                    }
                }
                Err(e) => {
                    problems.push(format!(
                        "[{label}] HELLO 3 on cachet connection {i} failed: {e}\n    direct : {}",
                        esc(&ra)
                    ));
                    return (compared, problems);
                }
            }
        }
    }
    for (index, step) in steps.iter().enumerate() {
        let ra = match exec(&mut a[step.conn], step).await {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!(
                    "[{label}] step #{index} {}: DIRECT Redis failed (a bug in this test): {e}",
                    step.describe()
                ));
                return (compared, problems);
            }
        };
        if let (Some(expected), Some(got)) = (&step.expect, ra.first())
            && expected != got
        {
            problems.push(format!(
                "[{label}] step #{index} {}: the direct reply is not what the sequence expects \
                 (a bug in this test)\n    expected: {}\n    direct  : {}",
                step.describe(),
                esc(expected),
                esc(got)
            ));
        }
        let rb = match exec(&mut b[step.conn], step).await {
            Ok(r) => r,
            Err(e) => {
                let direct: Vec<u8> = ra.concat();
                problems.push(format!(
                    "[{label}] step #{index} {}: cachet failed: {e}\n    direct : {}\n    (run stopped: later replies would be out of step)",
                    step.describe(), esc(&direct)
                ));
                return (compared, problems);
            }
        };
        if trace {
            eprintln!(
                "[{label}] #{index} {} => {}",
                step.describe(),
                esc(&ra.concat())
            );
        }
        for (fa, fb) in ra.iter().zip(rb.iter()) {
            compared += 1;
            if let Err(why) = compare(step.norm, fa, fb) {
                problems.push(mismatch(label, index, step, &why, fa, fb));
            }
        }
    }
    (compared, problems)
}

/// Sends every connection-0 command of the sequence in one write to each side and compares the
/// replies in order.
async fn run_pipelined(
    label: &str,
    steps: &[Step],
    resp3: bool,
    direct: SocketAddr,
    proxied: SocketAddr,
) -> (usize, Vec<String>) {
    let hello = Step {
        conn: 0,
        args: vec![b"HELLO".to_vec(), b"3".to_vec()],
        inline: None,
        action: Action::Call,
        frames: 1,
        norm: Norm::Hello,
        expect: None,
    };
    let mut chosen: Vec<(usize, &Step)> = Vec::new();
    if resp3 {
        chosen.push((0, &hello));
    }
    chosen.extend(
        steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn == 0 && s.action == Action::Call),
    );
    let payload: Vec<u8> = chosen.iter().flat_map(|(_, s)| s.wire()).collect();
    let frames: usize = chosen.iter().map(|(_, s)| s.frames).sum();
    let (ra, ea) = pipeline(direct, &payload, frames).await;
    let (rb, eb) = pipeline(proxied, &payload, frames).await;
    let mut problems = Vec::new();
    if let Some(e) = ea {
        problems.push(format!(
            "[{label}] DIRECT Redis pipeline failed after {} replies (a bug in this test): {e}",
            ra.len()
        ));
        return (0, problems);
    }
    let mut compared = 0;
    let mut at = 0;
    'steps: for (index, step) in &chosen {
        for _ in 0..step.frames {
            let Some(fb) = rb.get(at) else { break 'steps };
            compared += 1;
            if let Err(why) = compare(step.norm, &ra[at], fb) {
                problems.push(mismatch(label, *index, step, &why, &ra[at], fb));
            }
            at += 1;
        }
    }
    if let Some(e) = eb {
        let next = chosen
            .iter()
            .flat_map(|(i, s)| std::iter::repeat_n((i, s), s.frames))
            .nth(rb.len());
        // First, so that it is shown even when the mismatches before it fill the report.
        problems.insert(
            0,
            format!(
                "[{label}] cachet pipeline stopped after {} of {frames} replies: {e}{}",
                rb.len(),
                match next {
                    Some((i, s)) => format!(
                        "\n    next expected: step #{i} {}\n    direct : {}",
                        s.describe(),
                        esc(&ra[rb.len()])
                    ),
                    None => String::new(),
                }
            ),
        );
    }
    (compared, problems)
}

async fn sequential(resp3: bool) {
    let label = if resp3 {
        "RESP3 sequential"
    } else {
        "RESP2 sequential"
    };
    let f = Fixture::start().await;
    let steps = f.steps();
    let (compared, problems) =
        run_sequential(label, &steps, resp3, f.direct.addr(), f.proxy.addr).await;
    f.check(label, compared, &problems);
}

async fn pipelined(resp3: bool) {
    let label = if resp3 {
        "RESP3 pipelined"
    } else {
        "RESP2 pipelined"
    };
    let f = Fixture::start().await;
    let steps = f.steps();
    let (compared, problems) =
        run_pipelined(label, &steps, resp3, f.direct.addr(), f.proxy.addr).await;
    f.check(label, compared, &problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_resp2_sequential() {
    sequential(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_resp3_sequential() {
    sequential(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_resp2_pipelined() {
    pipelined(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_resp3_pipelined() {
    pipelined(true).await;
}

// ---- issue 15: framing edges and the replication stream (bugs 4, 5)

/// Bug 5: Redis skips a multibulk whose count is zero or negative and answers the next
/// command; so must cachet, byte for byte, with the connection still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_positive_multibulk_counts_are_skipped_as_redis_skips_them() {
    let f = Fixture::start().await;
    for prefix in ["*-10\r\n", "*-1\r\n", "*0\r\n", "*-10\r\n*0\r\n"] {
        let mut replies = Vec::new();
        for addr in [f.direct.addr(), f.proxy.addr] {
            let mut c = RawClient::connect(addr).await.expect("connect");
            let mut bytes = prefix.as_bytes().to_vec();
            bytes.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
            c.send_raw(&bytes).await.expect("send");
            let reply = c.read_frame_timeout(READ_TIMEOUT).await;
            let pong = c.command(&["ECHO", "still here"]).await;
            let text = |r: std::io::Result<bytes::Bytes>| r.map(|r| esc(&r));
            replies.push(format!("{:?} then {:?}", text(reply), text(pong)));
        }
        assert_eq!(
            replies[0], replies[1],
            "after {prefix:?}: direct, then cachet"
        );
        assert!(replies[0].starts_with("Ok(\"+PONG"), "{}", replies[0]);
    }
}

async fn read_more(c: &mut RawClient, got: &mut Vec<u8>, deadline: tokio::time::Instant) {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 64 * 1024];
    let n = tokio::time::timeout_at(deadline, c.stream.read(&mut chunk))
        .await
        .expect("the replication stream stalled")
        .expect("read");
    assert!(n > 0, "closed mid-stream after {:?}", esc(got));
    got.extend_from_slice(&chunk[..n]);
}

/// What a replication stream looked like: the reply line before the payload (PSYNC's
/// `+FULLRESYNC`, without its run id and offset), the payload's header kind and magic, and
/// whether a write made afterwards arrived as a command.
async fn replication_stream(addr: SocketAddr, psync: bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut c = RawClient::connect(addr).await.expect("connect");
    match psync {
        true => c.send(&["PSYNC", "?", "-1"]).await,
        false => c.send(&["SYNC"]).await,
    }
    .expect("send");
    let mut got: Vec<u8> = Vec::new();
    let mut shape = String::new();
    // Newlines are keepalives while Redis writes the RDB file.
    loop {
        while got.first() == Some(&b'\n') {
            got.remove(0);
        }
        if let Some(end) = got.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&got[..end]).into_owned();
            got.drain(..end + 2);
            if line.starts_with("+FULLRESYNC") {
                shape.push_str("+FULLRESYNC; ");
                continue;
            }
            let len: usize = line
                .strip_prefix('$')
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a payload header: {line:?}"));
            while got.len() < len {
                read_more(&mut c, &mut got, deadline).await;
            }
            shape.push_str(&format!("payload {}; ", String::from_utf8_lossy(&got[..5])));
            got.drain(..len);
            break;
        }
        read_more(&mut c, &mut got, deadline).await;
    }
    let mut writer = RawClient::connect(addr).await.expect("connect");
    assert_eq!(
        writer.text(&["SET", "replicated-key", "v"]).await,
        "+OK\r\n"
    );
    while !got.windows(14).any(|w| w == b"replicated-key") {
        read_more(&mut c, &mut got, deadline).await;
    }
    shape.push_str("then the write as a command");
    shape
}

/// Bug 4: SYNC and PSYNC deliver the replication stream (an RDB payload with no closing CRLF,
/// then the commands) through cachet as directly; before, cachet could not frame the payload
/// and the client got "invalid RESP from Redis".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_psync_stream_replication_through_cachet() {
    let f = Fixture::start().await;
    for psync in [false, true] {
        let direct = replication_stream(f.direct.addr(), psync).await;
        let proxied = replication_stream(f.proxy.addr, psync).await;
        assert_eq!(direct, proxied, "psync: {psync}");
        assert!(direct.contains("payload REDIS"), "{direct}");
    }
    // Everyone else is still served.
    let mut c = RawClient::connect(f.proxy.addr).await.expect("connect");
    assert_eq!(c.text(&["PING"]).await, "+PONG\r\n");
}

// ---- issue 15: CLIENT LIST / INFO / KILL over cachet's clients (bugs 7, 8)

/// The field names of a CLIENT LIST line, in order.
fn field_names(line: &str) -> Vec<String> {
    line.split(' ')
        .map(|f| f.split('=').next().unwrap_or_default().to_owned())
        .collect()
}

/// The CLIENT LIST reply's lines (RESP2 bulk).
async fn client_lines(c: &mut RawClient) -> Vec<String> {
    let reply = c.text(&["CLIENT", "LIST"]).await;
    let body = reply.split_once("\r\n").map(|(_, b)| b).unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with("id="))
        .map(str::to_owned)
        .collect()
}

fn field<'l>(line: &'l str, name: &str) -> &'l str {
    line.split(' ')
        .find_map(|f| f.strip_prefix(name).and_then(|f| f.strip_prefix('=')))
        .unwrap_or_default()
}

/// Bad arguments get Redis's own errors, and the kinds of reply match, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_and_kill_errors_are_redis_errors() {
    let f = Fixture::start().await;
    for resp3 in [false, true] {
        let mut sides = Vec::new();
        for addr in [f.direct.addr(), f.proxy.addr] {
            let mut c = RawClient::connect(addr).await.expect("connect");
            if resp3 {
                c.command(&["HELLO", "3"]).await.expect("hello");
            }
            let mut replies = Vec::new();
            for args in [
                &["CLIENT", "KILL", "id", "abc"][..],
                &["CLIENT", "KILL", "id", "0"],
                &["CLIENT", "KILL", "type", "foo"],
                &["CLIENT", "KILL", "skipme", "maybe"],
                &["CLIENT", "KILL", "foo", "bar"],
                &["CLIENT", "KILL", "id", "5", "type"],
                &["CLIENT", "KILL", "1.1.1.1:1"],
                &["CLIENT", "KILL", "id", "99999"],
                &["CLIENT", "KILL", "type", "master"],
                &["CLIENT", "KILL"],
                &["CLIENT", "LIST", "type", "foo"],
                &["CLIENT", "LIST", "id", "x"],
                &["CLIENT", "LIST", "foo"],
                &["CLIENT", "LIST", "type"],
                &["CLIENT", "LIST", "id", "99999"],
                &["CLIENT", "LIST", "type", "replica"],
            ] {
                let reply = c.command(args).await.expect("reply");
                replies.push(format!("{args:?} -> {}", esc(&reply)));
            }
            sides.push(replies);
        }
        assert_eq!(sides[0], sides[1], "resp3: {resp3}: direct, then cachet");
    }
}

/// CLIENT LIST and CLIENT INFO through cachet show cachet's clients, with the ids CLIENT ID
/// gives, their own addresses and names, in Redis's format; CLIENT KILL finds them by id,
/// address (old and new form), type and user, and a client that kills itself is answered
/// first. No filter reaches cachet's own connections to Redis: the pool connection that
/// served before is the one serving after (before, `SKIPME no` killed it and every other
/// client got `-ERR upstream unavailable`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_list_and_kill_act_on_cachets_clients_only() {
    let f = Fixture::start().await;
    let mut admin = RawClient::connect(f.upstream.addr())
        .await
        .expect("connect");
    let pool_before: Vec<String> = client_lines(&mut admin)
        .await
        .into_iter()
        .filter(|l| field(l, "name") == "cachet:pool")
        .map(|l| field(&l, "id").to_owned())
        .collect();
    assert!(!pool_before.is_empty(), "no pool connection at Redis");

    let mut direct = RawClient::connect(f.direct.addr()).await.expect("connect");
    let direct_line = client_lines(&mut direct).await.remove(0);

    let mut a = RawClient::connect(f.proxy.addr).await.expect("connect");
    let mut b = RawClient::connect(f.proxy.addr).await.expect("connect");
    assert_eq!(a.text(&["CLIENT", "SETNAME", "c1"]).await, "+OK\r\n");
    assert_eq!(b.text(&["CLIENT", "SETNAME", "c2"]).await, "+OK\r\n");
    let b_id = b.text(&["CLIENT", "ID"]).await;
    let b_id = b_id.trim_start_matches(':').trim_end();
    // Until the readiness probe's connection (from `Proxy::start`) has been noticed gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut lines = client_lines(&mut a).await;
    while lines.len() != 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        lines = client_lines(&mut a).await;
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(field_names(&lines[0]), field_names(&direct_line));
    let b_line = lines
        .iter()
        .find(|l| field(l, "name") == "c2")
        .expect("c2 listed");
    assert_eq!(field(b_line, "id"), b_id);
    assert_eq!(
        field(b_line, "addr"),
        b.stream.local_addr().unwrap().to_string(),
        "the client's own address"
    );
    assert_eq!(field(b_line, "cmd"), "client|id");
    let mine = a.text(&["CLIENT", "INFO"]).await;
    assert!(
        mine.contains(" name=c1 ") && mine.contains(" cmd=client|info "),
        "{mine}"
    );
    let by_id = a.text(&["CLIENT", "LIST", "ID", b_id]).await;
    assert!(
        by_id.contains(" name=c2 ") && !by_id.contains(" name=c1 "),
        "{by_id}"
    );

    // Old form by address: +OK, and B is gone.
    let b_addr = field(b_line, "addr").to_owned();
    assert_eq!(a.text(&["CLIENT", "KILL", &b_addr]).await, "+OK\r\n");
    assert!(b.closed_within(Duration::from_secs(2)).await);
    assert_eq!(
        a.text(&["CLIENT", "KILL", &b_addr]).await,
        "-ERR No such client\r\n"
    );

    // New form: a subscriber by TYPE, then everyone but the caller, then the caller itself.
    let mut sub = RawClient::connect(f.proxy.addr).await.expect("connect");
    sub.command(&["SUBSCRIBE", "ch"]).await.expect("subscribed");
    let mut other = RawClient::connect(f.proxy.addr).await.expect("connect");
    assert_eq!(other.text(&["PING"]).await, "+PONG\r\n");
    assert_eq!(
        a.text(&["CLIENT", "KILL", "TYPE", "pubsub"]).await,
        ":1\r\n"
    );
    assert!(sub.closed_within(Duration::from_secs(2)).await);
    assert_eq!(
        a.text(&["CLIENT", "KILL", "USER", "default"]).await,
        ":1\r\n"
    );
    assert!(other.closed_within(Duration::from_secs(2)).await);
    assert_eq!(a.text(&["CLIENT", "KILL", "SKIPME", "no"]).await, ":1\r\n");
    assert!(a.closed_within(Duration::from_secs(2)).await);

    // cachet's own connection to Redis was never touched, and serves at once.
    let mut fresh = RawClient::connect(f.proxy.addr).await.expect("connect");
    assert_eq!(fresh.text(&["SET", "k", "v"]).await, "+OK\r\n");
    let pool_after: Vec<String> = client_lines(&mut admin)
        .await
        .into_iter()
        .filter(|l| field(l, "name") == "cachet:pool")
        .map(|l| field(&l, "id").to_owned())
        .collect();
    assert_eq!(pool_before, pool_after);
}

/// CLIENT GETREDIR answers the id the client redirected to, as it knows it (cachet's id
/// through cachet), 0 when tracking without a redirect, -1 with tracking off; as Redis does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getredir_names_the_redirect_as_the_client_gave_it() {
    let f = Fixture::start().await;
    for addr in [f.direct.addr(), f.proxy.addr] {
        let mut target = RawClient::connect(addr).await.expect("connect");
        let mut tracker = RawClient::connect(addr).await.expect("connect");
        let id = target.text(&["CLIENT", "ID"]).await;
        let id = id.trim_start_matches(':').trim_end().to_owned();
        assert_eq!(tracker.text(&["CLIENT", "GETREDIR"]).await, ":-1\r\n");
        assert_eq!(
            tracker
                .text(&["CLIENT", "TRACKING", "on", "REDIRECT", &id])
                .await,
            "+OK\r\n"
        );
        assert_eq!(
            tracker.text(&["CLIENT", "GETREDIR"]).await,
            format!(":{id}\r\n"),
            "{addr}"
        );
        assert_eq!(
            tracker.text(&["CLIENT", "TRACKING", "off"]).await,
            "+OK\r\n"
        );
        assert_eq!(tracker.text(&["CLIENT", "GETREDIR"]).await, ":-1\r\n");
    }
}

/// A MULTI that cachet cannot open a connection for (here: Redis refuses the new
/// connection's `HELLO 3`, a password having been set at Redis directly) must not let the
/// commands pipelined after it run one by one on the pool: they are refused, EXEC answers
/// `-EXECABORT`, and nothing is written. Before, the SET ran and EXEC said "without MULTI".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_without_a_connection_runs_none_of_its_commands() {
    let f = Fixture::start().await;
    let mut c = RawClient::connect(f.proxy.addr).await.expect("connect");
    let hello = c.text(&["HELLO", "3"]).await;
    assert!(hello.starts_with('%'), "{hello}");
    let mut admin = RawClient::connect(f.upstream.addr())
        .await
        .expect("connect");
    assert_eq!(
        admin.text(&["CONFIG", "SET", "requirepass", "pw"]).await,
        "+OK\r\n"
    );

    let pipeline = |tail: &[&[&str]]| {
        let mut bytes = RawClient::encode(&["MULTI"]);
        for args in tail {
            bytes.extend_from_slice(&RawClient::encode(args));
        }
        bytes
    };
    c.send_raw(&pipeline(&[
        &["SET", "tx-key", "1"],
        &["INCR", "tx-n"],
        &["EXEC"],
        &["GET", "tx-key"],
    ]))
    .await
    .expect("send");
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.push(String::from_utf8_lossy(&c.read_frame().await.expect("reply")).into_owned());
    }
    assert!(
        replies[0].starts_with("-ERR upstream refused the connection setup"),
        "{replies:?}"
    );
    assert!(
        replies[1].starts_with("-ERR command not queued"),
        "{replies:?}"
    );
    assert!(
        replies[2].starts_with("-ERR command not queued"),
        "{replies:?}"
    );
    assert_eq!(
        replies[3],
        "-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    assert_eq!(replies[4], "_\r\n", "nothing was written: {replies:?}");

    // DISCARD ends it too, and the client is back to normal.
    c.send_raw(&pipeline(&[
        &["SET", "tx-key", "2"],
        &["DISCARD"],
        &["PING"],
    ]))
    .await
    .expect("send");
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(String::from_utf8_lossy(&c.read_frame().await.expect("reply")).into_owned());
    }
    assert!(
        replies[1].starts_with("-ERR command not queued"),
        "{replies:?}"
    );
    assert_eq!(&replies[2..], ["+OK\r\n", "+PONG\r\n"], "{replies:?}");

    // Once Redis takes new connections again, MULTI works.
    admin.send(&["AUTH", "pw"]).await.expect("send");
    admin.read_frame().await.expect("auth");
    assert_eq!(
        admin.text(&["CONFIG", "SET", "requirepass", ""]).await,
        "+OK\r\n"
    );
    c.send_raw(&pipeline(&[&["SET", "tx-key", "3"], &["EXEC"]]))
        .await
        .expect("send");
    let mut replies = Vec::new();
    for _ in 0..3 {
        replies.push(String::from_utf8_lossy(&c.read_frame().await.expect("reply")).into_owned());
    }
    assert_eq!(replies, ["+OK\r\n", "+QUEUED\r\n", "*1\r\n+OK\r\n"]);
}

/// The sequence keeps covering at least `MIN_DISTINCT_COMMANDS` distinct commands, each one that
/// Redis knows (checked with COMMAND INFO, so a typo cannot count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_covers_at_least_150_commands() {
    let server = RedisServer::start();
    let payloads = make_payloads(server.addr()).await;
    let names: Vec<String> = command_names(&script(&payloads)).into_iter().collect();
    let mut c = Conn::connect(server.addr()).await.expect("connect");
    let mut args: Vec<&[u8]> = vec![b"COMMAND", b"INFO"];
    args.extend(names.iter().map(|n| n.as_bytes()));
    let raw = c.call(&args).await.expect("COMMAND INFO");
    let Ok(Frame::Agg(b'*', Some(infos))) = decode_whole(&raw) else {
        panic!("unexpected COMMAND INFO reply: {}", esc(&raw));
    };
    assert_eq!(infos.len(), names.len());
    let unknown: Vec<&String> = names
        .iter()
        .zip(&infos)
        .filter(|(_, info)| {
            matches!(
                info,
                Frame::Agg(_, None) | Frame::Blob(_, None) | Frame::Line(b'_', _)
            )
        })
        .map(|(n, _)| n)
        .collect();
    assert!(
        unknown.is_empty(),
        "names in the sequence that Redis does not know: {unknown:?}"
    );
    eprintln!(
        "the differential sequence covers {} distinct commands: {names:?}",
        names.len()
    );
    assert!(
        names.len() >= MIN_DISTINCT_COMMANDS,
        "the differential sequence covers only {} distinct commands (< {MIN_DISTINCT_COMMANDS}): {names:?}",
        names.len()
    );
}

// ---- issue 15: work on other connections (bugs 2, 3)

/// Commands that act on other connections' work (SCRIPT KILL, FUNCTION KILL, CLIENT UNPAUSE,
/// SHUTDOWN, ...) must reach Redis while cachet's shared connection waits behind that work,
/// and answer as Redis does. Each scenario runs on its own connections against Redis A
/// directly, then against cachet in front of Redis B; every reply is compared byte for byte,
/// and the kill or unpause must be answered within [`PROMPT`] on both sides.
mod issue15_other_connections {
    use std::time::Instant;

    use super::*;

    /// What a kill or unpause may take while the pool is blocked.
    const PROMPT: Duration = Duration::from_millis(100);
    /// Long enough for Redis to call a script busy (`lua-time-limit` is set to 100 ms).
    const BUSY_AFTER: Duration = Duration::from_millis(300);
    /// The pool's timeout in these tests: shorter than the pauses, so a pause cachet knows of
    /// must hold it off.
    const POOL_TIMEOUT_MS: u64 = 1_000;

    /// One reply as a scenario saw it: what was asked, the bytes (or why none came), and
    /// whether it had to be prompt.
    struct Seen {
        what: &'static str,
        reply: Vec<u8>,
        took: Duration,
        prompt: bool,
    }

    struct Side {
        addr: SocketAddr,
        resp3: bool,
        seen: Vec<Seen>,
    }

    impl Side {
        async fn open(&self) -> Conn {
            let mut conn = Conn::connect(self.addr).await.expect("connect");
            if self.resp3 {
                conn.call(&[b"HELLO", b"3"]).await.expect("HELLO 3");
            }
            conn
        }

        /// Reads one reply (or notes why there is none: EOF, timeout) and records it.
        async fn read(
            &mut self,
            conn: &mut Conn,
            what: &'static str,
            since: Instant,
            prompt: bool,
        ) {
            let reply = match conn
                .reader
                .read(&mut conn.stream, Duration::from_secs(10))
                .await
            {
                Ok(bytes) => bytes.to_vec(),
                Err(e) => format!("<no reply: {:?}>", e.kind()).into_bytes(),
            };
            self.seen.push(Seen {
                what,
                reply,
                took: since.elapsed(),
                prompt,
            });
        }

        /// Sends one command and records its reply.
        async fn call(
            &mut self,
            conn: &mut Conn,
            what: &'static str,
            args: &[&[u8]],
            prompt: bool,
        ) {
            let since = Instant::now();
            conn.send(&RawClient::encode(args)).await.expect("send");
            self.read(conn, what, since, prompt).await;
        }
    }

    /// Runs `scenario` on both sides and compares what each saw.
    async fn compare_sides<F>(label: &str, resp3: bool, scenario: F)
    where
        F: AsyncFn(&mut Side),
    {
        let direct = RedisServer::start();
        let upstream = RedisServer::start();
        let proxy = Proxy::start_with(&upstream.url(), |c| {
            c.upstream.command_timeout_ms = POOL_TIMEOUT_MS;
        })
        .await;
        let mut a = Side {
            addr: direct.addr(),
            resp3,
            seen: Vec::new(),
        };
        let mut b = Side {
            addr: proxy.addr,
            resp3,
            seen: Vec::new(),
        };
        scenario(&mut a).await;
        scenario(&mut b).await;
        let mut problems = Vec::new();
        for (da, db) in a.seen.iter().zip(&b.seen) {
            if da.reply != db.reply {
                problems.push(format!(
                    "{}: replies differ\n    direct : {}\n    cachet : {}",
                    da.what,
                    esc(&da.reply),
                    esc(&db.reply)
                ));
            }
            for (side, seen) in [("direct", da), ("cachet", db)] {
                if seen.prompt && seen.took > PROMPT {
                    problems.push(format!(
                        "{}: answered after {:?} {side} (at most {PROMPT:?}): {}",
                        seen.what,
                        seen.took,
                        esc(&seen.reply)
                    ));
                }
            }
        }
        assert_eq!(
            a.seen.len(),
            b.seen.len(),
            "[{label}] the scenario is not deterministic"
        );
        assert!(
            problems.is_empty(),
            "[{label}] {} problem(s):\n{}\n--- Redis B (behind cachet) log, tail ---\n{}",
            problems.len(),
            problems.join("\n"),
            tail(&upstream.log(), 20)
        );
        eprintln!(
            "[{label}] {} replies compared, all equal and in time",
            a.seen.len()
        );
    }

    /// Bug 2: a busy script is killed through cachet at once; the EVAL gets Redis's own error.
    async fn script_kill(side: &mut Side) {
        let mut admin = side.open().await;
        let mut runner = side.open().await;
        let mut killer = side.open().await;
        side.call(
            &mut admin,
            "CONFIG SET lua-time-limit",
            &[b"CONFIG", b"SET", b"lua-time-limit", b"100"],
            false,
        )
        .await;
        side.call(
            &mut killer,
            "SCRIPT KILL, nothing running",
            &[b"SCRIPT", b"KILL"],
            true,
        )
        .await;
        let since = Instant::now();
        runner
            .send(&RawClient::encode(&[
                b"EVAL" as &[u8],
                b"while true do end",
                b"0",
            ]))
            .await
            .expect("send EVAL");
        tokio::time::sleep(BUSY_AFTER).await;
        side.call(
            &mut killer,
            "SCRIPT KILL x (wrong arity)",
            &[b"SCRIPT", b"KILL", b"x"],
            true,
        )
        .await;
        side.call(
            &mut killer,
            "FUNCTION KILL of an EVAL",
            &[b"FUNCTION", b"KILL"],
            true,
        )
        .await;
        side.call(
            &mut killer,
            "FUNCTION STATS",
            &[b"FUNCTION", b"STATS"],
            true,
        )
        .await;
        side.call(
            &mut killer,
            "CLIENT UNPAUSE while busy",
            &[b"CLIENT", b"UNPAUSE"],
            true,
        )
        .await;
        side.call(
            &mut killer,
            "SHUTDOWN BOGUS while busy",
            &[b"SHUTDOWN", b"BOGUS"],
            true,
        )
        .await;
        side.call(&mut killer, "SCRIPT KILL", &[b"SCRIPT", b"KILL"], true)
            .await;
        side.read(&mut runner, "the killed EVAL", since, false)
            .await;
        side.call(&mut runner, "GET after the kill", &[b"GET", b"k"], true)
            .await;
        side.call(
            &mut killer,
            "SCRIPT KILL after the kill",
            &[b"SCRIPT", b"KILL"],
            true,
        )
        .await;
    }

    /// Bug 2: a script that wrote cannot be killed (`-UNKILLABLE`); SHUTDOWN NOSAVE ends it,
    /// and Redis closes the connection that asked.
    async fn unkillable_then_shutdown(side: &mut Side) {
        let mut admin = side.open().await;
        let mut runner = side.open().await;
        let mut killer = side.open().await;
        side.call(
            &mut admin,
            "CONFIG SET lua-time-limit",
            &[b"CONFIG", b"SET", b"lua-time-limit", b"100"],
            false,
        )
        .await;
        runner
            .send(&RawClient::encode(&[
                b"EVAL" as &[u8],
                b"redis.call('SET', 'w', '1') while true do end",
                b"0",
            ]))
            .await
            .expect("send EVAL");
        tokio::time::sleep(BUSY_AFTER).await;
        side.call(
            &mut killer,
            "SCRIPT KILL of a script that wrote",
            &[b"SCRIPT", b"KILL"],
            true,
        )
        .await;
        side.call(
            &mut killer,
            "SHUTDOWN NOSAVE",
            &[b"SHUTDOWN", b"NOSAVE"],
            false,
        )
        .await;
    }

    /// Bug 3: under a WRITE pause, reads keep flowing, UNPAUSE is answered at once and the
    /// paused write completes after it; bad input gets Redis's errors.
    async fn write_pause(side: &mut Side) {
        let mut admin = side.open().await;
        let mut writer = side.open().await;
        let mut reader = side.open().await;
        side.call(
            &mut admin,
            "CLIENT PAUSE x (bad timeout)",
            &[b"CLIENT", b"PAUSE", b"x"],
            true,
        )
        .await;
        side.call(
            &mut admin,
            "CLIENT UNPAUSE x (wrong arity)",
            &[b"CLIENT", b"UNPAUSE", b"x"],
            true,
        )
        .await;
        side.call(
            &mut admin,
            "CLIENT PAUSE 20000 WRITE",
            &[b"CLIENT", b"PAUSE", b"20000", b"WRITE"],
            true,
        )
        .await;
        let since = Instant::now();
        writer
            .send(&RawClient::encode(&[b"SET" as &[u8], b"a", b"1"]))
            .await
            .expect("send SET");
        let mut publisher = side.open().await;
        publisher
            .send(&RawClient::encode(&[b"PUBLISH" as &[u8], b"c", b"m"]))
            .await
            .expect("send PUBLISH");
        tokio::time::sleep(Duration::from_millis(200)).await;
        side.call(&mut reader, "GET during the pause", &[b"GET", b"a"], true)
            .await;
        side.call(
            &mut reader,
            "EVAL_RO during the pause",
            &[b"EVAL_RO", b"return 7", b"0"],
            true,
        )
        .await;
        side.call(&mut reader, "PING during the pause", &[b"PING"], true)
            .await;
        side.call(&mut admin, "CLIENT UNPAUSE", &[b"CLIENT", b"UNPAUSE"], true)
            .await;
        side.read(&mut writer, "the paused SET", since, false).await;
        side.read(&mut publisher, "the paused PUBLISH", since, false)
            .await;
        side.call(&mut reader, "GET after the pause", &[b"GET", b"a"], true)
            .await;
        side.call(
            &mut writer,
            "SET after the pause",
            &[b"SET", b"a", b"2"],
            true,
        )
        .await;
    }

    /// Bug 3: under a pause ALL (longer than the pool's timeout), Redis postpones everything,
    /// CLIENT UNPAUSE included, until it ends: through cachet the same, not a timeout.
    async fn all_pause(side: &mut Side) {
        let mut admin = side.open().await;
        let mut reader = side.open().await;
        let mut other = side.open().await;
        side.call(
            &mut admin,
            "CLIENT PAUSE 1500 ALL",
            &[b"CLIENT", b"PAUSE", b"1500", b"ALL"],
            true,
        )
        .await;
        let since = Instant::now();
        reader
            .send(&RawClient::encode(&[b"GET" as &[u8], b"a"]))
            .await
            .expect("send GET");
        other
            .send(&RawClient::encode(&[b"CLIENT" as &[u8], b"UNPAUSE"]))
            .await
            .expect("send UNPAUSE");
        side.read(&mut reader, "GET during a pause ALL", since, false)
            .await;
        side.read(
            &mut other,
            "CLIENT UNPAUSE during a pause ALL",
            since,
            false,
        )
        .await;
        let waited = since.elapsed();
        assert!(
            waited >= Duration::from_millis(1_000),
            "the pause ALL held for {waited:?} only"
        );
        side.call(&mut reader, "GET after a pause ALL", &[b"GET", b"a"], true)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn script_kill_reaches_a_busy_script_resp2() {
        compare_sides("SCRIPT KILL, RESP2", false, script_kill).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn script_kill_reaches_a_busy_script_resp3() {
        compare_sides("SCRIPT KILL, RESP3", true, script_kill).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unkillable_script_and_shutdown_nosave() {
        compare_sides("UNKILLABLE, SHUTDOWN", false, unkillable_then_shutdown).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_pause_lets_reads_and_unpause_through_resp2() {
        compare_sides("CLIENT PAUSE WRITE, RESP2", false, write_pause).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_pause_lets_reads_and_unpause_through_resp3() {
        compare_sides("CLIENT PAUSE WRITE, RESP3", true, write_pause).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pause_all_longer_than_the_pool_timeout_ends_as_at_redis() {
        compare_sides("CLIENT PAUSE ALL", false, all_pause).await;
    }
}
// ---- issue 15: identity (bugs 1, 6, 8)
//
// Connection identity through cachet: signing in after `CONFIG SET requirepass` (bug 6),
// `CLIENT TRACKING ... REDIRECT` to cachet's own client ids (bug 1), and `CLIENT KILL` with
// filters, which must never reach cachet's own connections (bug 8). Each step goes to Redis
// directly and through cachet (in front of a Redis of its own), and the replies are compared
// byte for byte (`Norm::Hello` for HELLO, whose `id` differs).

/// Redis A (direct), Redis B, and cachet in front of B's database `db`.
async fn identity_servers(db: u32) -> (RedisServer, RedisServer, Proxy) {
    let direct = RedisServer::start();
    let upstream = RedisServer::start();
    let proxy = Proxy::start(&format!("{}/{db}", upstream.url())).await;
    (direct, upstream, proxy)
}

/// One connection to each side.
struct Pair {
    direct: Conn,
    proxied: Conn,
}

impl Pair {
    async fn open(direct: SocketAddr, proxied: SocketAddr) -> Pair {
        Pair {
            direct: Conn::connect(direct).await.expect("connect to Redis"),
            proxied: Conn::connect(proxied).await.expect("connect to cachet"),
        }
    }

    /// Sends `direct` to Redis and `proxied` to cachet; panics unless the replies match.
    async fn same_each(&mut self, norm: Norm, direct: &[&str], proxied: &[&str]) -> Vec<u8> {
        fn bytes<'a>(args: &[&'a str]) -> Vec<&'a [u8]> {
            args.iter().map(|a| a.as_bytes()).collect()
        }
        let a = self.direct.call(&bytes(direct)).await;
        let b = self.proxied.call(&bytes(proxied)).await;
        self.check(norm, &format!("{direct:?}"), a, b)
    }

    async fn same(&mut self, norm: Norm, args: &[&str]) -> Vec<u8> {
        self.same_each(norm, args, args).await
    }

    /// The next frame on both sides (a push, a pub/sub message), compared.
    async fn same_next(&mut self, norm: Norm, what: &str) -> Vec<u8> {
        let a = self.direct.read_frame().await;
        let b = self.proxied.read_frame().await;
        self.check(norm, what, a, b)
    }

    /// Every command in one write on each side; the replies compared one by one.
    async fn same_pipelined(&mut self, commands: &[&[&str]]) {
        let mut payload = Vec::new();
        for command in commands {
            payload.extend(RawClient::encode(command));
        }
        self.direct.send(&payload).await.expect("write to Redis");
        self.proxied.send(&payload).await.expect("write to cachet");
        for command in commands {
            self.same_next(Norm::Exact, &format!("pipelined {command:?}"))
                .await;
        }
    }

    fn check(
        &self,
        norm: Norm,
        what: &str,
        direct: std::io::Result<Vec<u8>>,
        proxied: std::io::Result<Vec<u8>>,
    ) -> Vec<u8> {
        let direct = direct.unwrap_or_else(|e| panic!("{what}: Redis did not answer: {e}"));
        let proxied = proxied.unwrap_or_else(|e| panic!("{what}: cachet did not answer: {e}"));
        if let Err(why) = compare(norm, &direct, &proxied) {
            panic!(
                "{what}: {why}\n  Redis:  {}\n  cachet: {}",
                esc(&direct),
                esc(&proxied)
            );
        }
        direct
    }

    /// `CLIENT ID` on each side, as text.
    async fn ids(&mut self) -> (String, String) {
        let id = |reply: Vec<u8>| String::from_utf8_lossy(&reply[1..reply.len() - 2]).into_owned();
        let a = self
            .direct
            .call(&[b"CLIENT", b"ID"])
            .await
            .expect("CLIENT ID");
        let b = self
            .proxied
            .call(&[b"CLIENT", b"ID"])
            .await
            .expect("CLIENT ID");
        (id(a), id(b))
    }

    /// Both sides closed the connection within a second.
    async fn both_closed(&mut self, what: &str) {
        let second = Duration::from_secs(1);
        assert!(
            support::closed_within(&mut self.direct.stream, second).await,
            "{what}: Redis kept the connection"
        );
        assert!(
            support::closed_within(&mut self.proxied.stream, second).await,
            "{what}: cachet kept the connection"
        );
    }
}

/// Bug 6: after `CONFIG SET requirepass`, AUTH opened a connection that sent HELLO 3 (and
/// SELECT, CLIENT SETNAME) before the client's AUTH: `-ERR upstream refused the connection
/// setup: HELLO: NOAUTH`. A refused AUTH leaves the client signed in as before, as in Redis.
async fn sign_in_after_requirepass(resp3: bool) {
    let (direct, _upstream, proxy) = identity_servers(0).await;
    let mut c = Pair::open(direct.addr(), proxy.addr).await;
    let version = if resp3 { "3" } else { "2" };
    if resp3 {
        c.same(Norm::Hello, &["HELLO", "3"]).await;
    }
    c.same(Norm::Exact, &["CLIENT", "SETNAME", "before"]).await;
    c.same(Norm::Exact, &["SET", "who", "me"]).await;
    c.same(Norm::Exact, &["CONFIG", "SET", "requirepass", "pw"])
        .await;
    c.same(Norm::Exact, &["AUTH", "wrong"]).await;
    c.same(Norm::Exact, &["GET", "who"]).await;
    c.same(Norm::Exact, &["AUTH", "pw"]).await;
    c.same(Norm::Exact, &["GET", "who"]).await;
    c.same(Norm::Exact, &["ACL", "WHOAMI"]).await;
    c.same(Norm::Exact, &["CLIENT", "GETNAME"]).await;
    c.same(Norm::Exact, &["PING"]).await;
    c.same(Norm::Hello, &["HELLO", version]).await;
    c.same(
        Norm::Hello,
        &[
            "HELLO", version, "AUTH", "default", "pw", "SETNAME", "after",
        ],
    )
    .await;
    c.same(Norm::Exact, &["CLIENT", "GETNAME"]).await;
    c.same(Norm::Exact, &["AUTH", "default", "nope"]).await;
    c.same(Norm::Exact, &["GET", "who"]).await;

    // A client that arrives now signs in with HELLO ... AUTH ... SETNAME. (Before it does,
    // Redis says NOAUTH and cachet, which has no password configured, lets it through: see
    // README, "What is transparent".)
    let mut late = Pair::open(direct.addr(), proxy.addr).await;
    late.same_pipelined(&[&["AUTH", "bad"], &["AUTH", "default", "bad"]])
        .await;
    late.same(
        Norm::Hello,
        &["HELLO", version, "AUTH", "default", "pw", "SETNAME", "late"],
    )
    .await;
    late.same(Norm::Exact, &["CLIENT", "GETNAME"]).await;
    late.same(Norm::Exact, &["GET", "who"]).await;
    late.same(Norm::Exact, &["ACL", "WHOAMI"]).await;

    // A client signed in before the password was set: a refused AUTH and the command after
    // it, in one write, see the connection as it was.
    late.same(Norm::Exact, &["CONFIG", "SET", "requirepass", ""])
        .await;
    let mut early = Pair::open(direct.addr(), proxy.addr).await;
    if resp3 {
        early.same(Norm::Hello, &["HELLO", "3"]).await;
    }
    // Answered, so Redis has accepted the direct connection while the password is unset (it
    // may otherwise accept it after the CONFIG SET below, and answer it NOAUTH).
    early.same(Norm::Exact, &["PING"]).await;
    late.same(Norm::Exact, &["CONFIG", "SET", "requirepass", "pw"])
        .await;
    // A refused HELLO ... AUTH changes nothing, the protocol included.
    let other_version = if resp3 { "2" } else { "3" };
    early
        .same_pipelined(&[
            &["HELLO", other_version, "AUTH", "default", "bad"],
            &["HGETALL", "none"],
            &["AUTH", "bad"],
            &["GET", "who"],
            &["AUTH", "pw"],
            &["GET", "who"],
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_sign_in_after_requirepass_resp2() {
    sign_in_after_requirepass(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_sign_in_after_requirepass_resp3() {
    sign_in_after_requirepass(true).await;
}

/// Bug 6 as reported, with redis-cli in RESP3; and the connection a sign-in opens is put
/// in the pool's database after the AUTH, not before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_redis_cli_auth_after_requirepass_and_the_pools_database() {
    let (direct, _upstream, proxy) = identity_servers(0).await;
    let run = |port: u16| async move {
        let mut child = tokio::process::Command::new("redis-cli")
            .args(["-3", "-p", &port.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("redis-cli");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"config set requirepass pw\nauth pw\nping\nacl whoami\n")
            .await
            .expect("write");
        drop(stdin);
        let out = child.wait_with_output().await.expect("redis-cli ran");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let expected = run(direct.addr().port()).await;
    assert_eq!(expected, "OK\nOK\nPONG\ndefault\n");
    assert_eq!(run(proxy.addr.port()).await, expected);

    let (direct, _upstream, proxy) = identity_servers(2).await;
    let mut c = Pair::open(direct.addr(), proxy.addr).await;
    c.same(Norm::Exact, &["SELECT", "2"]).await;
    c.same(Norm::Hello, &["HELLO", "3"]).await;
    c.same(Norm::Exact, &["SET", "in:two", "yes"]).await;
    c.same(Norm::Exact, &["CONFIG", "SET", "requirepass", "pw"])
        .await;
    c.same(Norm::Exact, &["AUTH", "default", "pw"]).await;
    c.same(Norm::Exact, &["GET", "in:two"]).await;
    c.same(Norm::Exact, &["HGETALL", "none"]).await;
}

/// Bug 1: `CLIENT TRACKING on REDIRECT <id>` was refused for the client's own id and for a
/// client on the pool. Invalidations reach a client that redirects to itself (RESP3) and a
/// RESP2 target subscribed to `__redis__:invalidate`, as from Redis; an id that is no
/// client's keeps Redis's error; the pool never receives a push.
async fn tracking_redirect(resp3: bool) {
    let (direct, _upstream, proxy) = identity_servers(0).await;
    let (d, p) = (direct.addr(), proxy.addr);
    let mut t = Pair::open(d, p).await;
    let mut target = Pair::open(d, p).await;
    let mut writer = Pair::open(d, p).await;
    if resp3 {
        t.same(Norm::Hello, &["HELLO", "3"]).await;
        target.same(Norm::Hello, &["HELLO", "3"]).await;
    }
    let (td, tp) = t.ids().await;
    t.same_each(
        Norm::Exact,
        &["CLIENT", "TRACKING", "on", "REDIRECT", &td],
        &["CLIENT", "TRACKING", "on", "REDIRECT", &tp],
    )
    .await;
    t.same(Norm::Exact, &["GET", "tr:self"]).await;
    writer.same(Norm::Exact, &["SET", "tr:self", "1"]).await;
    if resp3 {
        t.same_next(Norm::Exact, "the invalidation push").await;
    }
    t.same(Norm::Exact, &["CLIENT", "TRACKING", "off"]).await;

    // A target on the pool, then off with a REDIRECT (Redis checks the id then too).
    let (od, op) = target.ids().await;
    t.same_each(
        Norm::Exact,
        &["CLIENT", "TRACKING", "on", "REDIRECT", &od],
        &["CLIENT", "TRACKING", "on", "REDIRECT", &op],
    )
    .await;
    t.same_each(
        Norm::Exact,
        &["CLIENT", "TRACKING", "off", "REDIRECT", &od],
        &["CLIENT", "TRACKING", "off", "REDIRECT", &op],
    )
    .await;
    let mut fresh = Pair::open(d, p).await;
    fresh
        .same_each(
            Norm::Exact,
            &["CLIENT", "TRACKING", "off", "REDIRECT", &od],
            &["CLIENT", "TRACKING", "off", "REDIRECT", &op],
        )
        .await;
    let (fd, fp) = fresh.ids().await;
    fresh
        .same_each(
            Norm::Exact,
            &[
                "CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "tr:", "REDIRECT", &fd,
            ],
            &[
                "CLIENT", "TRACKING", "on", "BCAST", "PREFIX", "tr:", "REDIRECT", &fp,
            ],
        )
        .await;
    fresh
        .same(Norm::Exact, &["CLIENT", "TRACKING", "off"])
        .await;
    for args in [
        &["CLIENT", "TRACKING", "on", "REDIRECT", "987654321"][..],
        &["CLIENT", "TRACKING", "on", "REDIRECT", "x"],
        &["CLIENT", "TRACKING", "on", "REDIRECT"],
        &["CLIENT", "TRACKING", "on", "BOGUS", "REDIRECT", "987654321"],
    ] {
        fresh.same(Norm::Exact, args).await;
    }

    // The RESP2 way: the target subscribes to __redis__:invalidate.
    let mut sub = Pair::open(d, p).await;
    let (sd, sp) = sub.ids().await;
    sub.same(Norm::Exact, &["SUBSCRIBE", "__redis__:invalidate"])
        .await;
    let mut t2 = Pair::open(d, p).await;
    t2.same_each(
        Norm::Exact,
        &["CLIENT", "TRACKING", "on", "REDIRECT", &sd],
        &["CLIENT", "TRACKING", "on", "REDIRECT", &sp],
    )
    .await;
    t2.same(Norm::Exact, &["GET", "tr:sub"]).await;
    writer.same(Norm::Exact, &["SET", "tr:sub", "1"]).await;
    sub.same_next(Norm::Exact, "the invalidation message").await;

    // Invalidations redirected to the pool's clients leave the pool working for everyone.
    t.same_each(
        Norm::Exact,
        &["CLIENT", "TRACKING", "on", "REDIRECT", &od],
        &["CLIENT", "TRACKING", "on", "REDIRECT", &op],
    )
    .await;
    t.same(Norm::Exact, &["GET", "tr:pool"]).await;
    writer.same(Norm::Exact, &["SET", "tr:pool", "1"]).await;
    writer.same(Norm::Exact, &["FLUSHALL"]).await;
    for _ in 0..3 {
        writer.same(Norm::Exact, &["PING"]).await;
        fresh.same(Norm::Exact, &["GET", "tr:pool"]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_tracking_redirect_resp2() {
    tracking_redirect(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_tracking_redirect_resp3() {
    tracking_redirect(true).await;
}

/// Bug 8: CLIENT KILL with filters counts and closes clients as Redis does (cachet's
/// clients stand for their connections), refuses bad filters in Redis's words, and never
/// touches cachet's own connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_client_kill_filters_like_redis() {
    let (direct, _upstream, proxy) = identity_servers(0).await;
    let (d, p) = (direct.addr(), proxy.addr);
    let mut killer = Pair::open(d, p).await;
    for args in [
        &["CLIENT", "KILL"][..],
        &["CLIENT", "KILL", "TYPE", "bogus"],
        &["CLIENT", "KILL", "USER", "nosuch"],
        &["CLIENT", "KILL", "ID", "0"],
        &["CLIENT", "KILL", "ID", "abc"],
        &["CLIENT", "KILL", "SKIPME", "maybe"],
        &["CLIENT", "KILL", "TYPE", "normal", "SKIPME"],
        &["CLIENT", "KILL", "TYPE", "bogus", "USER"],
        &["CLIENT", "KILL", "FOO", "bar"],
        &["CLIENT", "KILL", "1.2.3.4:5"],
        &["CLIENT", "KILL", "TYPE"],
        &["CLIENT", "KILL", "ID", "987654321"],
        &["CLIENT", "KILL", "TYPE", "pubsub"],
        &["CLIENT", "KILL", "TYPE", "master", "SKIPME", "no"],
    ] {
        killer.same(Norm::Exact, args).await;
    }
    // The caller is spared (SKIPME yes), on the pool and on its own connection alike.
    let (kd, kp) = killer.ids().await;
    killer
        .same_each(
            Norm::Exact,
            &["CLIENT", "KILL", "ID", &kd],
            &["CLIENT", "KILL", "ID", &kp],
        )
        .await;
    killer
        .same(Norm::Exact, &["CLIENT", "KILL", "TYPE", "normal"])
        .await;
    killer.same(Norm::Exact, &["SELECT", "1"]).await;
    killer
        .same(Norm::Exact, &["CLIENT", "KILL", "TYPE", "normal"])
        .await;
    killer.same(Norm::Exact, &["PING"]).await;
    killer.same(Norm::Exact, &["SELECT", "0"]).await;

    // Another client of the same user and type is killed; the subscriber only by its type.
    let mut bystander = Pair::open(d, p).await;
    bystander.same(Norm::Exact, &["PING"]).await;
    let mut subscriber = Pair::open(d, p).await;
    subscriber.same(Norm::Exact, &["SUBSCRIBE", "ch"]).await;
    killer
        .same(Norm::Exact, &["CLIENT", "KILL", "TYPE", "normal"])
        .await;
    bystander.both_closed("TYPE normal").await;
    killer
        .same(Norm::Exact, &["CLIENT", "KILL", "TYPE", "pubsub"])
        .await;
    subscriber.both_closed("TYPE pubsub").await;
    killer.same(Norm::Exact, &["PING"]).await;

    // The old form by address, and SKIPME no: the caller itself, after its reply.
    let mut other = Pair::open(d, p).await;
    let addr = |conn: &Conn| conn.stream.local_addr().expect("addr").to_string();
    let (od, op) = (addr(&other.direct), addr(&other.proxied));
    killer
        .same_each(
            Norm::Exact,
            &["CLIENT", "KILL", &od],
            &["CLIENT", "KILL", &op],
        )
        .await;
    other.both_closed("the old form").await;
    killer
        .same(
            Norm::Exact,
            &["CLIENT", "KILL", "USER", "default", "SKIPME", "no"],
        )
        .await;
    killer.both_closed("SKIPME no").await;
}

/// Bug 8: killing cachet's pooled connection by its id or address (as Redis's own CLIENT
/// LIST shows them) finds no such client through cachet, and other clients' commands never
/// fail meanwhile. Through cachet, CLIENT KILL acts on cachet's clients only: a connection
/// made to Redis directly is not one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_cachets_own_connections_cannot_be_killed() {
    let (_direct, upstream, proxy) = identity_servers(0).await;
    let mut killer = RawClient::connect(proxy.addr).await.expect("connect");
    let mut at_redis = RawClient::connect(upstream.addr()).await.expect("connect");
    let list = at_redis.text(&["CLIENT", "LIST"]).await;
    let field = |line: &str, key: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix(&format!("{key}=")).map(str::to_owned))
            .unwrap_or_default()
    };
    let pool = list
        .lines()
        .find(|l| l.contains("name=cachet:pool"))
        .unwrap_or_else(|| panic!("no pooled connection in CLIENT LIST: {list}"));
    let (pool_id, pool_addr) = (field(pool, "id"), field(pool, "addr"));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        let addr = proxy.addr;
        tokio::spawn(async move {
            let mut c = RawClient::connect(addr).await.expect("connect");
            let mut failures = Vec::new();
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = c.text(&["PING"]).await;
                sent += 1;
                if reply != "+PONG\r\n" {
                    failures.push(reply);
                }
            }
            (sent, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let redis_addr = upstream.addr().to_string();
    for (args, expected) in [
        (vec!["CLIENT", "KILL", "ID", &pool_id], ":0\r\n"),
        (
            vec!["CLIENT", "KILL", &pool_addr],
            "-ERR No such client\r\n",
        ),
        (
            vec!["CLIENT", "KILL", "ADDR", &pool_addr, "SKIPME", "no"],
            ":0\r\n",
        ),
        (vec!["CLIENT", "KILL", "LADDR", &redis_addr], ":0\r\n"),
    ] {
        assert_eq!(killer.text(&args).await, expected, "{args:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut outsider = RawClient::connect(upstream.addr()).await.expect("connect");
    let outsider_addr = outsider.stream.local_addr().expect("addr").to_string();
    assert_eq!(
        killer
            .text(&["CLIENT", "KILL", "ADDR", &outsider_addr])
            .await,
        ":0\r\n"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failures) = hammer.await.expect("hammer");
    assert!(
        sent > 0 && failures.is_empty(),
        "{sent} PINGs, failures: {failures:?}"
    );
    assert_eq!(outsider.text(&["PING"]).await, "+PONG\r\n");
    assert_eq!(killer.text(&["PING"]).await, "+PONG\r\n");
    let after = at_redis.text(&["CLIENT", "LIST"]).await;
    assert!(
        after.contains(&format!("id={pool_id} ")),
        "the pool connection was replaced: {after}"
    );
}

// ---- issue 18: the same sequence through cachet on a Redis Cluster
//
// The sequence runs against one standalone Redis directly and through cachet in front of a
// 3-primary, 3-replica cluster (`support::cluster`), command by command and pipelined, in
// RESP2 and RESP3.
// The replies are compared as above, with two differences that a cluster makes whatever the
// proxy does:
//
// - SCAN is run to the end on both sides (the cursor moves from node to node, so one call
//   with COUNT 1000 does not return every key as one Redis does) and the keys are compared
//   as a set, each exactly once. KEYS is already compared as a set (`Unordered`).
// - PUBLISH, PUBSUB and WAIT count what the answering node sees: compared by shape
//   ([`cluster_norm`]).
// - Steps that cannot work on a cluster are left out, on both sides, before the run (both
//   sides then run the same sequence, so their data stays alike): see [`cluster_skip`]. The
//   steps left out are printed (`--nocapture`).

/// Commands that split across slots in cluster mode (README, cluster table): cachet sends
/// each node its part and merges the replies, so they keep their keys across slots.
const CLUSTER_SPLIT: &[&str] = &["MGET", "MSET", "DEL", "UNLINK", "EXISTS", "TOUCH"];

/// Why a step is left out of the cluster run, or `None` to run it. `slots` is the number of
/// distinct hash slots of its keys (from `COMMAND GETKEYS` on the standalone Redis).
fn cluster_skip(step: &Step, slots: usize) -> Option<&'static str> {
    let word = |i: usize| {
        step.args
            .get(i)
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default()
    };
    let (name, sub) = (word(0), word(1));
    let has = |w: &str| {
        step.args
            .iter()
            .any(|a| a.eq_ignore_ascii_case(w.as_bytes()))
    };
    match name.as_str() {
        // Redis Cluster has database 0 only: SELECT n, MOVE, SWAPDB, COPY ... DB n answer
        // "not allowed in cluster mode".
        "SELECT" if sub != "0" => Some("databases other than 0 (cluster mode)"),
        "MOVE" | "SWAPDB" => Some("databases other than 0 (cluster mode)"),
        "COPY" if has("DB") => Some("databases other than 0 (cluster mode)"),
        // A cluster node says so: redis_mode:cluster, its replicas in ROLE.
        "ROLE" => Some("a cluster node's ROLE lists its replicas"),
        "INFO" => Some("INFO names cluster mode and per-node figures"),
        // Each node lists its own subscribers' channels.
        "PUBSUB" if sub == "CHANNELS" || sub == "SHARDCHANNELS" => {
            Some("PUBSUB lists the answering node's channels")
        }
        // SORT BY/GET patterns must hash to the key's slot on a cluster.
        "SORT" | "SORT_RO" if has("BY") || has("GET") => {
            Some("SORT BY/GET patterns across slots (Redis Cluster refuses them)")
        }
        // Keys on several slots: CROSSSLOT on a cluster, unless cachet splits the command.
        _ if slots > 1 && !CLUSTER_SPLIT.contains(&name.as_str()) => {
            Some("keys in several slots (CROSSSLOT on a cluster)")
        }
        _ => None,
    }
}

/// Replies that count what one node sees, compared by shape on a cluster: PUBLISH's and
/// PUBSUB's counts are the answering node's own subscribers (the subscriber may be on
/// another node), WAIT counts the answering primary's replicas.
fn cluster_norm(step: &Step) -> Option<Norm> {
    let name = step.args.first()?;
    ["PUBLISH", "PUBSUB", "WAIT"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        .then_some(Norm::Shape)
}

/// The number of distinct slots of `step`'s keys, asked of Redis (`COMMAND GETKEYS`); 0 for
/// keyless commands and for those Redis cannot read keys from (wrong arity, ...).
async fn step_slots(direct: &mut Conn, step: &Step) -> usize {
    if step.args.is_empty() || step.inline.is_some() {
        return 0;
    }
    let mut args: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYS"];
    args.extend(step.args.iter().map(Vec::as_slice));
    let raw = direct.call(&args).await.expect("COMMAND GETKEYS");
    match decode_whole(&raw) {
        Ok(Frame::Agg(_, Some(keys))) => keys
            .iter()
            .filter_map(scalar_text)
            .map(redis_protocol::redis_keyslot)
            .collect::<BTreeSet<u16>>()
            .len(),
        _ => 0,
    }
}

/// SCAN with `args` (cursor replaced) to the end on `conn`: every key returned, sorted, and
/// the replies' shapes; or why it failed.
async fn scan_to_end(conn: &mut Conn, args: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, String> {
    let mut cursor = b"0".to_vec();
    let mut keys = Vec::new();
    for _ in 0..10_000 {
        let mut call: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        call[1] = &cursor;
        let raw = conn.call(&call).await.map_err(|e| e.to_string())?;
        let Ok(Frame::Agg(_, Some(parts))) = decode_whole(&raw) else {
            return Err(format!("not a SCAN reply: {}", esc(&raw)));
        };
        let (Some(next), Some(Frame::Agg(_, Some(page)))) =
            (parts.first().and_then(scalar_text), parts.get(1))
        else {
            return Err(format!("not a SCAN reply: {}", esc(&raw)));
        };
        keys.extend(page.iter().filter_map(scalar_text).map(<[u8]>::to_vec));
        cursor = next.to_vec();
        if cursor == b"0" {
            keys.sort();
            return Ok(keys);
        }
    }
    Err("SCAN did not end in 10,000 calls".into())
}

/// The sequence, sequential, on `direct` and through cachet at `proxied` (on the cluster).
async fn run_cluster_sequential(
    label: &str,
    steps: &[Step],
    resp3: bool,
    direct: SocketAddr,
    proxied: SocketAddr,
) -> (usize, Vec<String>) {
    let mut steps = steps.to_vec();
    if resp3 {
        let conns = steps.iter().map(|s| s.conn).max().unwrap_or(0) + 1;
        for conn in (0..conns).rev() {
            steps.insert(
                0,
                Step {
                    conn,
                    args: vec![b"HELLO".to_vec(), b"3".to_vec()],
                    inline: None,
                    action: Action::Call,
                    frames: 1,
                    norm: Norm::Hello,
                    expect: None,
                },
            );
        }
    }
    let conns = steps.iter().map(|s| s.conn).max().unwrap_or(0) + 1;
    let mut a = Vec::new();
    let mut b = Vec::new();
    for _ in 0..conns {
        a.push(
            Conn::connect(direct)
                .await
                .expect("connect to direct redis"),
        );
        b.push(Conn::connect(proxied).await.expect("connect to cachet"));
    }
    let mut problems = Vec::new();
    let mut compared = 0;
    for (index, step) in steps.iter().enumerate() {
        let is_scan = step
            .args
            .first()
            .is_some_and(|n| n.eq_ignore_ascii_case(b"SCAN"));
        if is_scan {
            let ra = scan_to_end(&mut a[step.conn], &step.args).await;
            let rb = scan_to_end(&mut b[step.conn], &step.args).await;
            compared += 1;
            match (ra, rb) {
                (Ok(ka), Ok(kb)) if ka == kb => {}
                (ra, rb) => problems.push(format!(
                    "[{label}] step #{index} {} (run to the end): {:?}\n    cachet: {:?}",
                    step.describe(),
                    ra.map(|k| k.iter().map(|k| esc(k)).collect::<Vec<_>>()),
                    rb.map(|k| k.iter().map(|k| esc(k)).collect::<Vec<_>>())
                )),
            }
            continue;
        }
        let ra = match exec(&mut a[step.conn], step).await {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!(
                    "[{label}] step #{index} {}: DIRECT Redis failed (a bug in this test): {e}",
                    step.describe()
                ));
                return (compared, problems);
            }
        };
        let rb = match exec(&mut b[step.conn], step).await {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!(
                    "[{label}] step #{index} {}: cachet failed: {e}\n    direct : {}\n    (run stopped)",
                    step.describe(),
                    esc(&ra.concat())
                ));
                return (compared, problems);
            }
        };
        for (fa, fb) in ra.iter().zip(rb.iter()) {
            compared += 1;
            if let Err(why) = compare(step.norm, fa, fb) {
                problems.push(mismatch(label, index, step, &why, fa, fb));
            }
        }
    }
    (compared, problems)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_through_cachet_on_a_cluster() {
    let cluster = support::cluster::Cluster::start(3, 1);
    let direct = RedisServer::start();
    let payloads = make_payloads(direct.addr()).await;
    let proxy = cluster.start_proxy("").await;
    let all = script(&payloads);
    let mut probe = Conn::connect(direct.addr()).await.expect("connect");
    let mut steps = Vec::new();
    let mut skipped: Vec<(String, &str)> = Vec::new();
    for step in all {
        let slots = step_slots(&mut probe, &step).await;
        match cluster_skip(&step, slots) {
            Some(why) => skipped.push((step.describe(), why)),
            None => {
                let mut step = step;
                if let Some(norm) = cluster_norm(&step) {
                    step.norm = norm;
                }
                steps.push(step);
            }
        }
    }
    // The sequence ends with FLUSHALL, SCRIPT FLUSH, FUNCTION FLUSH and ACL DELUSER: it can
    // run twice on the same servers.
    drop(probe);
    eprintln!(
        "cluster differential: {} steps run, {} left out:",
        steps.len(),
        skipped.len()
    );
    for (what, why) in &skipped {
        eprintln!("    {what}: {why}");
    }
    let mut failures = Vec::new();
    for resp3 in [false, true] {
        let label = if resp3 {
            "cluster, RESP3 sequential"
        } else {
            "cluster, RESP2 sequential"
        };
        let (compared, problems) =
            run_cluster_sequential(label, &steps, resp3, direct.addr(), proxy.addr).await;
        eprintln!(
            "[{label}] {compared} replies compared, {} problem(s)",
            problems.len()
        );
        failures.extend(problems);
    }
    // Pipelined: connection 0's commands in one write. SCAN cannot be run to the end inside
    // a pipeline, so it is left out here (the sequential runs compare it).
    let no_scan: Vec<Step> = steps
        .iter()
        .filter(|s| {
            !s.args
                .first()
                .is_some_and(|n| n.eq_ignore_ascii_case(b"SCAN"))
        })
        .cloned()
        .collect();
    for resp3 in [false, true] {
        let label = if resp3 {
            "cluster, RESP3 pipelined"
        } else {
            "cluster, RESP2 pipelined"
        };
        let (compared, problems) =
            run_pipelined(label, &no_scan, resp3, direct.addr(), proxy.addr).await;
        eprintln!(
            "[{label}] {compared} replies compared, {} problem(s)",
            problems.len()
        );
        failures.extend(problems);
    }
    assert!(
        failures.is_empty(),
        "cachet on a cluster is not transparent: {} problem(s)\n\n{}\n\ncluster logs:\n{}",
        failures.len(),
        failures
            .iter()
            .take(60)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n"),
        cluster.logs()
    );
}
