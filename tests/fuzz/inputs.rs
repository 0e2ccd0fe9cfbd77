//! Fuzz inputs for the request decoder and the session, built from real commands.
//!
//! Every input is made from one seed, so a failure replays from `(seed, index)`. The kinds:
//! valid command streams (multibulk and inline, with the empty commands Redis skips), the same
//! streams mutated (bit flips, interesting bytes and tokens, deletions, truncation, splices,
//! duplicated headers, odd lengths, repeated chunks), random bytes, nested arrays, odd and huge
//! lengths, RESP3 types sent by a client, and huge inputs. Each input also says where it is cut
//! into separate writes, so incremental decoding is exercised at every kind of boundary.
//!
//! Choices go through [`Entropy`], so a coverage-guided fuzzer can drive the same generator
//! from its own bytes instead of a seeded RNG.

/// Where the generator's choices come from.
pub trait Entropy {
    /// A number in `0..n`; `n > 0`.
    fn below(&mut self, n: usize) -> usize;

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
}

impl Entropy for fastrand::Rng {
    fn below(&mut self, n: usize) -> usize {
        self.usize(..n)
    }
}

/// The seed of input `index` in a run seeded `seed` (splitmix64: neighbouring indexes give
/// unrelated inputs).
pub fn input_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Commands from the corpus, encoded as Redis expects: must decode to exactly those.
    Valid,
    /// A valid stream, then mutated.
    Mutated,
    Random,
    /// Arrays inside a request: `*1\r\n` repeated, `*2\r\n*1\r\n...`.
    Nested,
    /// Lengths Redis refuses or treats specially: `$04`, `$+4`, `*01`, `*-1`, 2^63, ...
    OddLength,
    /// RESP3 frame types a client has no business sending (`%`, `~`, `>`, `_`, ...).
    Resp3,
    /// Many arguments, big bulks, announced-but-absent gigabytes, endless header lines.
    Huge,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Valid,
        Kind::Mutated,
        Kind::Random,
        Kind::Nested,
        Kind::OddLength,
        Kind::Resp3,
        Kind::Huge,
    ];
}

/// Commands, each a list of arguments.
pub type Commands = Vec<Vec<Vec<u8>>>;

pub struct Input {
    pub kind: Kind,
    pub bytes: Vec<u8>,
    /// Offsets (ascending, inside `bytes`) where the input is cut into separate writes.
    pub cuts: Vec<usize>,
    /// For an unmutated valid input: the commands the decoder must return, in order.
    pub expect: Option<Commands>,
}

impl Input {
    /// The input as the writes a client makes.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        let mut bounds = vec![0];
        bounds.extend(self.cuts.iter().copied());
        bounds.push(self.bytes.len());
        (0..bounds.len() - 1).map(move |i| &self.bytes[bounds[i]..bounds[i + 1]])
    }

    /// The first bytes, escaped, for failure messages.
    pub fn preview(&self, max: usize) -> String {
        let shown = escape(&self.bytes[..self.bytes.len().min(max)]);
        match self.bytes.len() > max {
            true => format!("{shown}... ({} bytes)", self.bytes.len()),
            false => shown,
        }
    }
}

pub fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Input number `index` of the run seeded `seed`.
pub fn input(seed: u64, index: u64) -> Input {
    let mut rng = fastrand::Rng::with_seed(input_seed(seed, index));
    generate(&mut rng, allowed_kinds())
}

/// The kinds `CACHET_FUZZ_KINDS` (comma-separated, e.g. `Valid,Mutated`) allows; all if unset.
/// Narrowing the kinds gets past a finding that would otherwise end every run early.
pub fn allowed_kinds() -> &'static [Kind] {
    static ALLOWED: std::sync::OnceLock<Vec<Kind>> = std::sync::OnceLock::new();
    ALLOWED.get_or_init(|| match std::env::var("CACHET_FUZZ_KINDS") {
        Ok(list) => {
            let kinds: Vec<Kind> = list
                .split(',')
                .map(|name| {
                    *Kind::ALL
                        .iter()
                        .find(|k| format!("{k:?}").eq_ignore_ascii_case(name.trim()))
                        .unwrap_or_else(|| {
                            panic!("CACHET_FUZZ_KINDS: no kind {name:?} in {:?}", Kind::ALL)
                        })
                })
                .collect();
            assert!(!kinds.is_empty(), "CACHET_FUZZ_KINDS is empty");
            kinds
        }
        Err(_) => Kind::ALL.to_vec(),
    })
}

/// An input of one of the `allowed` kinds.
pub fn generate(e: &mut impl Entropy, allowed: &[Kind]) -> Input {
    // Weighted: mutated input finds the most, valid input keeps the mutations honest.
    const WEIGHTS: [(Kind, usize); 7] = [
        (Kind::Valid, 2),
        (Kind::Mutated, 4),
        (Kind::Random, 1),
        (Kind::Nested, 1),
        (Kind::OddLength, 2),
        (Kind::Resp3, 1),
        (Kind::Huge, 1),
    ];
    let weighted: Vec<Kind> = WEIGHTS
        .iter()
        .filter(|(kind, _)| allowed.contains(kind))
        .flat_map(|&(kind, weight)| std::iter::repeat_n(kind, weight))
        .collect();
    let kind = *e.pick(&weighted);
    let (bytes, expect) = match kind {
        Kind::Valid => {
            let (bytes, commands) = valid_stream(e);
            (bytes, Some(commands))
        }
        Kind::Mutated => (mutated(e), None),
        Kind::Random => (random_bytes(e), None),
        Kind::Nested => (nested(e), None),
        Kind::OddLength => (odd_length(e), None),
        Kind::Resp3 => (resp3(e), None),
        Kind::Huge => huge(e),
    };
    let cuts = cuts(e, &bytes);
    Input {
        kind,
        bytes,
        cuts,
        expect,
    }
}

// ---- commands ----

fn key(e: &mut impl Entropy) -> Vec<u8> {
    match e.below(10) {
        0 => Vec::new(),
        1 => vec![b'k'; e.range(100, 4000)],
        2 => (0..e.range(1, 12)).map(|_| e.below(256) as u8).collect(),
        3 => format!("{{t{}}}:x", e.below(4)).into_bytes(),
        // Hostile keys never start with "good:", the well-behaved clients' prefix.
        _ => format!("fuzz:{}", e.below(50)).into_bytes(),
    }
}

fn value(e: &mut impl Entropy) -> Vec<u8> {
    match e.below(12) {
        0 => Vec::new(),
        1 => b"a\r\nb\r\n*1\r\n$-1\r\n".to_vec(),
        2 => (0..e.range(1, 64)).map(|_| e.below(256) as u8).collect(),
        3 => vec![b'v'; e.range(1000, 20_000)],
        _ => format!("v{}", e.below(1_000_000)).into_bytes(),
    }
}

fn args(parts: &[&[u8]]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_vec()).collect()
}

/// One command from the corpus: what applications, redis-cli and cachet's own users send,
/// with wrong arities mixed in. Nothing that would destroy Redis or everyone's data (FLUSHALL,
/// SHUTDOWN, DEBUG, CONFIG, CLIENT KILL/PAUSE): those are Redis's to refuse, not cachet's.
pub fn command(e: &mut impl Entropy) -> Vec<Vec<u8>> {
    let k = key(e);
    let v = value(e);
    let n = e.below(5).to_string().into_bytes();
    let mut cmd = match e.below(48) {
        0..=2 => args(&[b"GET", &k]),
        3 | 4 => args(&[b"SET", &k, &v]),
        5 => args(&[b"SET", &k, &v, b"EX", b"10"]),
        6 => args(&[b"SET", &k, &v, b"PX", b"100", b"NX"]),
        7 => {
            let mut c = args(&[b"MGET"]);
            c.extend((0..e.range(1, 20)).map(|_| key(e)));
            c
        }
        8 => args(&[b"MSET", &k, &v, b"fuzz:2", b"x"]),
        9 => args(&[b"HSET", &k, b"f", &v, b"g", b"2"]),
        10 => args(&[b"HGETALL", &k]),
        11 => args(&[b"DEL", &k]),
        12 => args(&[b"INCR", &k]),
        13 => args(&[b"EXPIRE", &k, b"10"]),
        14 => args(&[b"LPUSH", &k, &v, b"b"]),
        15 => args(&[b"BLPOP", &k, b"0.01"]),
        16 => args(&[b"EVAL", b"return 1", b"0"]),
        17 => args(&[b"EVAL", b"return redis.call('GET', KEYS[1])", b"1", &k]),
        18 => args(&[b"SUBSCRIBE", b"c", b"d"]),
        19 => args(&[b"PSUBSCRIBE", b"c*"]),
        20 => args(&[b"UNSUBSCRIBE"]),
        21 => args(&[b"PUBLISH", b"c", &v]),
        22 => args(&[b"RESET"]),
        23 => args(&[b"RESET", b"x"]),
        24 => args(&[b"MULTI"]),
        25 => args(&[b"EXEC"]),
        26 => args(&[b"DISCARD"]),
        27 => args(&[b"WATCH", &k]),
        28 => args(&[b"CLIENT", b"ID"]),
        29 => args(&[b"CLIENT", b"SETNAME", b"fuzz"]),
        30 => args(&[b"CLIENT", b"TRACKING", b"ON"]),
        31 => args(&[b"CLIENT", b"REPLY", *e.pick(&[&b"OFF"[..], b"ON", b"SKIP"])]),
        32 => args(&[b"CLIENT", b"INFO"]),
        33 => args(&[b"HELLO", b"3"]),
        34 => args(&[b"HELLO", *e.pick(&[&b"2"[..], b"3", b"4", b"-1"])]),
        35 => args(&[b"HELLO", b"3", b"AUTH", b"default", b"wrong"]),
        36 => args(&[b"AUTH", b"wrong"]),
        37 => args(&[b"AUTH", b"someone", b"wrong"]),
        38 => args(&[b"SELECT", &n]),
        39 => args(&[b"WARM", b"nothing", b"id", &n]),
        40 => args(&[b"EMIT", b"session.created", b"id", &n]),
        41 => args(&[b"TAGINVALIDATE", &k]),
        42 => args(&[b"PING"]),
        43 => args(&[b"ECHO", &v]),
        44 => args(&[b"INFO", b"server"]),
        45 => args(&[b"COMMAND", b"COUNT"]),
        46 => args(&[b"MONITOR"]),
        _ => {
            let name: Vec<u8> = (0..e.range(1, 12))
                .map(|_| *e.pick(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
                .collect();
            let mut c = vec![name];
            c.extend((0..e.below(4)).map(|_| value(e)));
            c
        }
    };
    // Wrong arities: the command table and Redis refuse them; cachet must not trip over them.
    if e.one_in(8) && cmd.len() > 1 {
        cmd.pop();
    } else if e.one_in(8) {
        cmd.push(value(e));
    }
    cmd
}

/// `*N\r\n$len\r\narg\r\n...`, as every client library sends.
pub fn encode_multibulk(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// An inline command line (what redis-cli and telnet send); `None` when too long for one.
fn encode_inline(args: &[Vec<u8>], e: &mut impl Entropy) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(if e.one_in(4) { b"  \t" } else { b" " });
        }
        let plain = !arg.is_empty()
            && arg
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b":_.-{}".contains(c));
        if plain {
            out.extend_from_slice(arg);
            continue;
        }
        out.push(b'"');
        for &c in arg {
            match c {
                b'"' | b'\\' => out.extend_from_slice(&[b'\\', c]),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b' '..=b'~' => out.push(c),
                _ => out.extend_from_slice(format!("\\x{c:02x}").as_bytes()),
            }
        }
        out.push(b'"');
    }
    out.extend_from_slice(if e.one_in(3) { b"\n" } else { b"\r\n" });
    // Redis's PROTO_INLINE_MAX_SIZE is 64 KiB; stay well inside it.
    (out.len() < 32 * 1024).then_some(out)
}

/// One to eight commands back to back, with the empty commands Redis skips (`*0`, `*-1`, an
/// empty inline line) between them.
pub fn valid_stream(e: &mut impl Entropy) -> (Vec<u8>, Commands) {
    let mut bytes = Vec::new();
    let mut commands = Vec::new();
    for _ in 0..e.range(1, 8) {
        if e.one_in(10) {
            const SKIPPED: [&[u8]; 4] = [b"*0\r\n", b"*-1\r\n", b"\r\n", b"\n"];
            bytes.extend_from_slice(SKIPPED[e.below(SKIPPED.len())]);
        }
        let cmd = command(e);
        let encoded = match e.one_in(4) {
            true => encode_inline(&cmd, e).unwrap_or_else(|| encode_multibulk(&cmd)),
            false => encode_multibulk(&cmd),
        };
        bytes.extend_from_slice(&encoded);
        commands.push(cmd);
    }
    (bytes, commands)
}

// ---- mutations ----

const INTERESTING_BYTES: &[u8] = b"*$:+-_#,(=%~>!|\r\n0123456789 \t\"'\\\x00\xff";

const TOKENS: &[&[u8]] = &[
    b"*1\r\n",
    b"*2\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"$-1\r\n",
    b"$0\r\n\r\n",
    b"\r\n",
    b"\r",
    b"\n",
    b":1\r\n",
    b"+OK\r\n",
    b"-ERR x\r\n",
    b"%1\r\n",
    b"~1\r\n",
    b">1\r\n",
    b"_\r\n",
    b"#t\r\n",
    b",1.5\r\n",
    b"(1\r\n",
    b"=3\r\ntxt\r\n",
    b"$2147483648\r\n",
    b"*9223372036854775807\r\n",
    b" ",
    b"\"",
    b"'",
    b"\\x",
    b"\\",
];

/// Length strings that are not the plain decimal Redis requires, or are at its edges.
pub const ODD_NUMBERS: &[&str] = &[
    "04",
    "+4",
    "01",
    "+1",
    "-1",
    "-0",
    "0",
    "00",
    "-2",
    "-2147483648",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "536870912",
    "536870913",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    " 4",
    "4 ",
    "\t4",
    "0x4",
    "",
    "4.0",
    "1e3",
    "\u{0664}",
    "4\r",
    "4\n",
];

/// Offsets of the numbers in `*N` and `$N` header lines of a multibulk stream (walking the
/// lengths, so bulk bodies that look like headers are skipped), as (start, end) of the digits.
fn header_numbers(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let kind = bytes[pos];
        let Some(end) = bytes[pos..].windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let (start, end) = (pos + 1, pos + end);
        if kind == b'*' || kind == b'$' {
            found.push((start, end));
        }
        pos = end + 2;
        if kind == b'$' {
            let len: usize = std::str::from_utf8(&bytes[start..end])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            pos = pos.saturating_add(len).saturating_add(2);
        }
    }
    found
}

fn mutate(e: &mut impl Entropy, bytes: &mut Vec<u8>) {
    let len = bytes.len();
    match e.below(11) {
        0 if len > 0 => {
            let i = e.below(len);
            bytes[i] ^= 1 << e.below(8);
        }
        1 if len > 0 => {
            let i = e.below(len);
            bytes[i] = *e.pick(INTERESTING_BYTES);
        }
        2 if len > 0 => {
            let start = e.below(len);
            let end = (start + e.range(1, 16)).min(len);
            bytes.drain(start..end);
        }
        3 => {
            let at = e.below(len + 1);
            let token = *e.pick(TOKENS);
            bytes.splice(at..at, token.iter().copied());
        }
        4 if len > 0 => bytes.truncate(e.below(len)),
        5 => {
            // Splice: this stream's head, another's tail.
            let (other, _) = valid_stream(e);
            let at = e.below(len + 1);
            let from = e.below(other.len() + 1);
            bytes.truncate(at);
            bytes.extend_from_slice(&other[from..]);
        }
        6 => {
            // A header line, twice.
            let headers = header_numbers(bytes);
            if let Some(&(start, end)) = headers.get(e.below(headers.len().max(1))) {
                let line = bytes[start - 1..end + 2].to_vec();
                bytes.splice(start - 1..start - 1, line);
            }
        }
        7 => {
            let headers = header_numbers(bytes);
            if let Some(&(start, end)) = headers.get(e.below(headers.len().max(1))) {
                let number = odd_number(e, &bytes[start..end]);
                bytes.splice(start..end, number);
            }
        }
        8 if len > 0 => {
            // A chunk repeated: long runs of headers, CRLFs, bodies.
            let start = e.below(len);
            let end = (start + e.range(1, 32)).min(len);
            let chunk = bytes[start..end].to_vec();
            let times = *e.pick(&[2, 10, 100, 1000]);
            let repeated: Vec<u8> = chunk
                .iter()
                .copied()
                .cycle()
                .take(chunk.len() * times)
                .collect();
            bytes.splice(end..end, repeated);
        }
        9 if len > 1 => {
            let (a, b) = (e.below(len), e.below(len));
            bytes.swap(a, b);
        }
        _ => {
            let at = e.below(len + 1);
            let junk: Vec<u8> = (0..e.range(1, 8)).map(|_| e.below(256) as u8).collect();
            bytes.splice(at..at, junk);
        }
    }
}

/// A replacement for the length `current`: a near miss, a non-canonical spelling, or an edge.
fn odd_number(e: &mut impl Entropy, current: &[u8]) -> Vec<u8> {
    let n: i64 = std::str::from_utf8(current)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    match e.below(6) {
        0 => format!("0{n}").into_bytes(),
        1 => format!("+{n}").into_bytes(),
        2 => n
            .saturating_add(*e.pick(&[-1, 1, 2, -2]))
            .to_string()
            .into_bytes(),
        3 => format!("{n} ").into_bytes(),
        _ => e.pick(ODD_NUMBERS).as_bytes().to_vec(),
    }
}

fn mutated(e: &mut impl Entropy) -> Vec<u8> {
    let (mut bytes, _) = valid_stream(e);
    for _ in 0..e.range(1, 4) {
        mutate(e, &mut bytes);
    }
    bytes
}

fn random_bytes(e: &mut impl Entropy) -> Vec<u8> {
    let len = match e.below(3) {
        0 => e.below(16),
        1 => e.below(256),
        _ => e.below(4096),
    };
    let alphabet: &[u8] = match e.below(3) {
        0 => b"*$:+-\r\n0123456789abc ",
        1 => b"*$\r\n1",
        _ => &[],
    };
    let mut bytes: Vec<u8> = (0..len)
        .map(|_| match alphabet.is_empty() {
            true => e.below(256) as u8,
            false => *e.pick(alphabet),
        })
        .collect();
    if e.one_in(2) {
        bytes.insert(0, b'*');
    }
    bytes
}

// ---- structure ----

fn nested_depth(e: &mut impl Entropy) -> usize {
    *e.pick(&[1, 2, 3, 10, 100, 1000, 10_000, 100_000, 1_000_000])
}

fn nested(e: &mut impl Entropy) -> Vec<u8> {
    let mut bytes = Vec::new();
    if e.one_in(4) {
        // The crash from issue 13 (finding 1): a big SET in the same stream first.
        let big = vec![b'x'; *e.pick(&[1000, 1_000_000])];
        bytes = encode_multibulk(&[b"SET".to_vec(), b"fuzz:big".to_vec(), big]);
    }
    let depth = nested_depth(e);
    match e.below(4) {
        0 => bytes.extend(b"*1\r\n".repeat(depth)),
        1 => {
            bytes.extend(b"*2\r\n".repeat(depth));
            bytes.extend_from_slice(b"$3\r\nGET\r\n$1\r\nk\r\n");
        }
        2 => {
            // A command whose second argument is an array.
            bytes.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
            bytes.extend(b"*1\r\n".repeat(depth));
            bytes.extend_from_slice(b"$1\r\nk\r\n");
        }
        _ => {
            for _ in 0..depth.min(10_000) {
                const HEADERS: [&[u8]; 5] = [b"*1\r\n", b"*2\r\n", b"~1\r\n", b"%1\r\n", b">1\r\n"];
                bytes.extend_from_slice(HEADERS[e.below(HEADERS.len())]);
            }
            bytes.extend_from_slice(b"$4\r\nPING\r\n");
        }
    }
    bytes
}

fn odd_length(e: &mut impl Entropy) -> Vec<u8> {
    let (mut bytes, _) = valid_stream(e);
    let headers = header_numbers(&bytes);
    if headers.is_empty() {
        // All inline: an odd length in a command of its own.
        bytes.extend_from_slice(
            format!("*2\r\n${}\r\nGET\r\n$1\r\nk\r\n", e.pick(ODD_NUMBERS)).as_bytes(),
        );
        return bytes;
    }
    // Right to left, so earlier offsets stay valid.
    let mut chosen: Vec<_> = (0..e.range(1, 2))
        .map(|_| headers[e.below(headers.len())])
        .collect();
    chosen.sort();
    chosen.dedup();
    for &(start, end) in chosen.iter().rev() {
        let number = odd_number(e, &bytes[start..end]);
        bytes.splice(start..end, number);
    }
    bytes
}

fn resp3(e: &mut impl Entropy) -> Vec<u8> {
    const FRAMES: &[&[u8]] = &[
        b"%1\r\n$1\r\na\r\n$1\r\nb\r\n",
        b"~2\r\n$1\r\na\r\n$1\r\nb\r\n",
        b">2\r\n$4\r\nPING\r\n$1\r\nx\r\n",
        b"_\r\n",
        b"#t\r\n",
        b",1.5\r\n",
        b",inf\r\n",
        b"(12345678901234567890\r\n",
        b"=15\r\ntxt:Some string\r\n",
        b"|1\r\n+a\r\n+b\r\n",
        b"!5\r\nerror\r\n",
        b"+PING\r\n",
        b"-ERR\r\n",
        b":1\r\n",
    ];
    let mut bytes = Vec::new();
    for _ in 0..e.range(1, 3) {
        let frame = *e.pick(FRAMES);
        match e.below(3) {
            // On its own: Redis reads a line that does not start with `*` as an inline command.
            0 => bytes.extend_from_slice(frame),
            // As an argument of a command.
            1 => {
                bytes.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n");
                bytes.extend_from_slice(frame);
            }
            // As the command itself.
            _ => {
                bytes.extend_from_slice(b"*1\r\n");
                bytes.extend_from_slice(frame);
            }
        }
        if e.one_in(2) {
            bytes.extend(encode_multibulk(&[b"PING".to_vec()]));
        }
    }
    bytes
}

fn huge(e: &mut impl Entropy) -> (Vec<u8>, Option<Commands>) {
    match e.below(7) {
        0 => {
            // Many arguments: valid, and must decode.
            let n = *e.pick(&[1000, 10_000, 100_000]);
            let mut cmd = vec![e.pick(&[&b"MGET"[..], b"EXISTS", b"DEL"]).to_vec()];
            cmd.extend((0..n).map(|i| format!("fuzz:{}", i % 50).into_bytes()));
            (encode_multibulk(&cmd), Some(vec![cmd]))
        }
        1 => {
            // A big value: valid, and must decode.
            let len = *e.pick(&[100_000, 1_000_000, 4_000_000]);
            let cmd = vec![b"SET".to_vec(), b"fuzz:big".to_vec(), vec![b'v'; len]];
            (encode_multibulk(&cmd), Some(vec![cmd]))
        }
        2 => {
            // A bulk announced but never sent in full.
            let len = e.pick(&[
                "536870912",
                "536870913",
                "2147483648",
                "4294967296",
                "9223372036854775807",
            ]);
            let mut bytes = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${len}\r\n").into_bytes();
            bytes.extend(vec![b'x'; e.below(100_000)]);
            (bytes, None)
        }
        3 => {
            let count = e.pick(&[
                "2147483647",
                "2147483648",
                "1000000000",
                "9223372036854775807",
            ]);
            let mut bytes = format!("*{count}\r\n").into_bytes();
            bytes.extend(b"$1\r\na\r\n".repeat(e.below(10_000)));
            (bytes, None)
        }
        4 => {
            // An inline line longer than Redis's 64 KiB limit.
            let mut bytes = b"SET k ".to_vec();
            bytes.extend(vec![b'a'; e.range(64 * 1024, 200 * 1024)]);
            if e.one_in(2) {
                bytes.extend_from_slice(b"\r\n");
            }
            (bytes, None)
        }
        5 => {
            // A header line that never ends.
            let mut bytes = e.pick(&[&b"*"[..], b"*1\r\n$"]).to_vec();
            bytes.extend(vec![b'1'; e.range(1000, 200 * 1024)]);
            (bytes, None)
        }
        _ => {
            // Many small commands in one write.
            let cmd = vec![b"GET".to_vec(), b"fuzz:1".to_vec()];
            let n = *e.pick(&[1000, 10_000, 50_000]);
            (encode_multibulk(&cmd).repeat(n), Some(vec![cmd; n]))
        }
    }
}

/// Where to cut `bytes` into separate writes.
fn cuts(e: &mut impl Entropy, bytes: &[u8]) -> Vec<usize> {
    let len = bytes.len();
    if len < 2 {
        return Vec::new();
    }
    let mut cuts: Vec<usize> = match e.below(6) {
        0 => Vec::new(),
        // Every byte alone, for inputs that stay cheap that way.
        1 if len <= 2048 => (1..len).collect(),
        // Between every CR and its LF, the boundary an incremental parser most often gets wrong.
        2 => (1..len).filter(|&i| bytes[i - 1] == b'\r').collect(),
        // Socket-sized reads.
        3 => {
            let size = *e.pick(&[1, 7, 512, 4096, 16 * 1024, 64 * 1024]);
            let size = if size < 64 && len > 64 * 1024 {
                1024
            } else {
                size
            };
            (1..len.div_ceil(size)).map(|i| i * size).collect()
        }
        _ => (0..e.range(1, 8)).map(|_| e.range(1, len - 1)).collect(),
    };
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}
