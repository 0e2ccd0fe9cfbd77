//! Layer (a): the request decoder, in a child process of this test binary.
//!
//! Each input is fed the way a session feeds it (one chunk per socket read, decoding after
//! each), and must: not panic; take no longer than a linear budget; consume only what it was
//! given; only return requests whose forwarded bytes are the canonical encoding of their
//! arguments (what Redis reads the same way); refuse with an error reply that is one RESP
//! line; and, for valid input, return exactly the commands that were encoded. A separate
//! scaling check feeds growing inputs of a few shapes and flags time that grows faster than
//! the input.
//!
//! Only [`Decoder`] knows the decoder's API: adapt it when the API changes.
//!
//! The decoder runs in a child process so a stack overflow is a reported finding (with its
//! input saved), not the end of the test binary; after a crash the parent starts the child
//! again past the crashing input, so one run lists every distinct failure.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cachet::resp::request::{Limits, RequestParser};

use crate::inputs::{self, Input, Kind, escape};

// ---- the adapter: the only code that knows the decoder's API ----

/// What one decode step gave.
pub enum Step {
    Request {
        args: Vec<Bytes>,
        raw: Bytes,
    },
    NeedMore,
    /// The error reply the client would be sent, as bytes; the session then closes.
    Error(Bytes),
}

/// The decoder as a session drives it: bytes in as they are read, commands out.
pub struct Decoder {
    buf: BytesMut,
    parser: RequestParser,
    limits: Limits,
}

impl Decoder {
    pub fn new() -> Self {
        let proxy = cachet::Config::default().proxy;
        Decoder {
            buf: BytesMut::new(),
            parser: RequestParser::default(),
            limits: Limits {
                max_bulk_len: proxy.max_bulk_len,
                max_array_len: proxy.max_array_len,
                max_query_buffer: proxy.max_query_buffer,
            },
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn next(&mut self) -> Step {
        match self.parser.parse(&mut self.buf, &self.limits, true) {
            Ok(Some(request)) => Step::Request {
                args: request.args,
                raw: request.raw,
            },
            Ok(None) => Step::NeedMore,
            Err(err) => Step::Error(cachet::resp::reply::error_bytes(&format!("ERR {err}"))),
        }
    }

    /// Bytes received and not consumed yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

// ---- one input ----

/// A property an input broke: `check` names it (failures are grouped by check and input kind).
#[derive(Debug)]
pub struct Violation {
    pub check: &'static str,
    pub detail: String,
}

fn violation<T>(check: &'static str, detail: impl Into<String>) -> Result<T, Violation> {
    Err(Violation {
        check,
        detail: detail.into(),
    })
}

/// Time an input may take: generous for a debug build on a busy 2-core machine (1 µs a byte,
/// 10 µs a write), but linear, so a decoder that rescans its buffer on every read overruns it
/// on the bigger inputs.
fn budget(input: &Input) -> Duration {
    let writes = input.cuts.len() as u64 + 1;
    Duration::from_millis(200)
        + Duration::from_micros(input.bytes.len() as u64)
        + Duration::from_micros(10 * writes)
}

pub fn run_one(input: &Input) -> Result<(), Violation> {
    let mut decoder = Decoder::new();
    let mut fed = 0;
    let mut got: Vec<Vec<Bytes>> = Vec::new();
    let mut error = None;
    'feed: for chunk in input.chunks() {
        decoder.feed(chunk);
        fed += chunk.len();
        loop {
            let before = decoder.buffered();
            match decoder.next() {
                Step::Request { args, raw } => {
                    let after = decoder.buffered();
                    if after >= before {
                        return violation(
                            "a request consumed no input",
                            format!("{} bytes buffered before and after", before),
                        );
                    }
                    if args.is_empty() {
                        return violation("a request without a command name", "");
                    }
                    let canonical = inputs::encode_multibulk(
                        &args.iter().map(|a| a.to_vec()).collect::<Vec<_>>(),
                    );
                    if raw[..] != canonical[..] {
                        return violation(
                            "forwarded bytes are not the canonical encoding of the arguments",
                            format!(
                                "forwarded {} for arguments {:?}",
                                escape(&raw[..raw.len().min(120)]),
                                args.iter()
                                    .take(4)
                                    .map(|a| escape(&a[..a.len().min(40)]))
                                    .collect::<Vec<_>>()
                            ),
                        );
                    }
                    if after > fed {
                        return violation("more buffered than was fed", format!("{after} > {fed}"));
                    }
                    got.push(args);
                }
                Step::NeedMore => break,
                Step::Error(reply) => {
                    // One RESP error line, whatever bytes the client put in it.
                    let body = reply
                        .strip_prefix(b"-ERR ")
                        .and_then(|r| r.strip_suffix(b"\r\n"));
                    if body.is_none_or(|b| b.is_empty() || b.contains(&b'\r') || b.contains(&b'\n'))
                    {
                        return violation("an error that breaks the reply framing", escape(&reply));
                    }
                    let message = String::from_utf8_lossy(&reply).into_owned();
                    error = Some(message);
                    break 'feed;
                }
            }
        }
    }
    if let Some(expect) = &input.expect {
        if let Some(message) = error {
            return violation("valid input refused", message);
        }
        let same = got.len() == expect.len()
            && got
                .iter()
                .zip(expect)
                .all(|(g, e)| g.len() == e.len() && g.iter().zip(e).all(|(a, b)| a[..] == b[..]));
        if !same {
            return violation(
                "valid input decoded differently",
                format!("{} commands expected, {} decoded", expect.len(), got.len()),
            );
        }
        if decoder.buffered() != 0 {
            return violation(
                "valid input left bytes undecoded",
                format!("{} bytes", decoder.buffered()),
            );
        }
    }
    Ok(())
}

/// [`run_one`], with panics and the time budget turned into violations.
fn check_one(input: &Input) -> Result<(), Violation> {
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| run_one(input)));
    let elapsed = started.elapsed();
    match result {
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            violation("panic", message.to_owned())
        }
        Ok(Err(v)) => Err(v),
        Ok(Ok(())) if elapsed > budget(input) => {
            // Once more, so a moment of a busy machine is not reported as a finding.
            let again = Instant::now();
            let _ = run_one(input);
            let retry = again.elapsed();
            match retry > budget(input) {
                true => violation(
                    "slower than linear budget",
                    format!(
                        "{} bytes in {} writes took {elapsed:?} and {retry:?} (budget {:?})",
                        input.bytes.len(),
                        input.cuts.len() + 1,
                        budget(input)
                    ),
                ),
                false => Ok(()),
            }
        }
        Ok(Ok(())) => Ok(()),
    }
}

// ---- scaling ----

/// Inputs of one shape at a size, and the write size they arrive in.
struct Shape {
    name: &'static str,
    make: fn(usize) -> Vec<u8>,
    small: usize,
    chunk: usize,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "many arguments, 16 KiB reads",
        make: |n| {
            let mut cmd = vec![b"DEL".to_vec()];
            cmd.extend((0..n).map(|i| format!("k{}", i % 10).into_bytes()));
            inputs::encode_multibulk(&cmd)
        },
        small: 4_000,
        chunk: 16 * 1024,
    },
    Shape {
        name: "many arguments, 64-byte reads",
        make: |n| {
            let mut cmd = vec![b"DEL".to_vec()];
            cmd.extend((0..n).map(|i| format!("k{}", i % 10).into_bytes()));
            inputs::encode_multibulk(&cmd)
        },
        small: 500,
        chunk: 64,
    },
    Shape {
        name: "pipelined GETs, 16 KiB reads",
        make: |n| inputs::encode_multibulk(&[b"GET".to_vec(), b"k".to_vec()]).repeat(n),
        small: 5_000,
        chunk: 16 * 1024,
    },
    Shape {
        name: "one big bulk, 16 KiB reads",
        make: |n| inputs::encode_multibulk(&[b"SET".to_vec(), b"k".to_vec(), vec![b'v'; n]]),
        small: 500_000,
        chunk: 16 * 1024,
    },
    Shape {
        name: "inline line, 16-byte reads",
        make: |n| {
            let mut line = b"SET k ".to_vec();
            line.extend(vec![b'a'; n]);
            line.extend_from_slice(b"\r\n");
            line
        },
        small: 4_000,
        chunk: 16,
    },
    Shape {
        name: "nested arrays, 16 KiB reads",
        make: |n| b"*1\r\n".repeat(n),
        small: 10_000,
        chunk: 16 * 1024,
    },
];

/// Growth allowed when the input grows 8-fold: linear is 8, quadratic 64 (measured: 90 and
/// more); a busy shared machine has shown 33 for a linear shape.
const SCALING_LIMIT: f64 = 40.0;

/// The quickest of three decodes of `bytes`, arriving `chunk` bytes at a time.
fn time_shape(bytes: &[u8], chunk: usize) -> Duration {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            let mut decoder = Decoder::new();
            'feed: for piece in bytes.chunks(chunk) {
                decoder.feed(piece);
                loop {
                    match decoder.next() {
                        Step::Request { .. } => {}
                        Step::NeedMore => break,
                        Step::Error(_) => break 'feed,
                    }
                }
            }
            started.elapsed()
        })
        .min()
        .expect("three runs")
}

// ---- the child process ----

/// Lines the child prints for the parent, tab-separated after this tag.
const TAG: &str = "fuzz-decoder";

/// Exit status of a child that stopped itself on an input over its time limit (the violation
/// is already reported): the parent goes on past that input, as after a crash.
pub const EXIT_TOO_SLOW: i32 = 3;

/// How long one input may run before the child gives up on it: twice its budget, so the run
/// stays within its time when the decoder is quadratic somewhere.
fn hard_limit(input: &Input) -> Duration {
    budget(input) * 2 + Duration::from_millis(500)
}

/// The child's loop: inputs `start..` of `seed` until `deadline` (or `count` inputs), each
/// index written to `progress` first so the parent can name the input that killed it.
pub fn child_fuzz(seed: u64, start: u64, count: u64, deadline: Instant, progress: &Path) {
    let progress = std::fs::OpenOptions::new()
        .write(true)
        .open(progress)
        .expect("progress file");
    let mut seen: BTreeMap<(&'static str, Kind), u64> = BTreeMap::new();
    let started = Instant::now();
    // For the watchdog: the input running, since when (µs after `started`, 0 = none), and its
    // hard limit (µs); the totals so far.
    let current = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let totals = Arc::new(Totals::default());
    {
        let (current, totals) = (current.clone(), totals.clone());
        std::thread::spawn(move || watchdog(seed, started, &current, &totals));
    }
    let mut index = start;
    while totals.inputs.load(Relaxed) < count && Instant::now() < deadline {
        progress
            .write_at(&index.to_le_bytes(), 0)
            .expect("write progress");
        let generated = Instant::now();
        let input = inputs::input(seed, index);
        current[0].store(index, Relaxed);
        current[2].store(hard_limit(&input).as_micros() as u64, Relaxed);
        current[1].store(started.elapsed().as_micros().max(1) as u64, Relaxed);
        let result = check_one(&input);
        current[1].store(0, Relaxed);
        totals.kinds[input.kind as usize][0].fetch_add(1, Relaxed);
        totals.kinds[input.kind as usize][1]
            .fetch_add(generated.elapsed().as_micros() as u64, Relaxed);
        if let Err(v) = result {
            let n = seen.entry((v.check, input.kind)).or_insert(0);
            if *n == 0 {
                say(&format!(
                    "violation\t{index}\t{:?}\t{}\t{}",
                    input.kind, v.check, v.detail
                ));
            }
            *n += 1;
        }
        totals.inputs.fetch_add(1, Relaxed);
        totals.bytes.fetch_add(input.bytes.len() as u64, Relaxed);
        index += 1;
    }
    // The first of each was reported as it happened; these are the rest.
    for ((check, kind), n) in &seen {
        if *n > 1 {
            say(&format!("count\t{kind:?}\t{check}\t{}", n - 1));
        }
    }
    totals.report(started);
}

/// What the child has done so far, kept where the watchdog can report it too.
#[derive(Default)]
struct Totals {
    inputs: AtomicU64,
    bytes: AtomicU64,
    /// Per [`Kind`]: inputs, and microseconds spent on them (generating included).
    kinds: [[AtomicU64; 2]; Kind::ALL.len()],
}

impl Totals {
    fn report(&self, started: Instant) {
        for kind in Kind::ALL {
            let [n, micros] = &self.kinds[kind as usize];
            let secs = micros.load(Relaxed) as f64 / 1e6;
            say(&format!("kind\t{kind:?}\t{}\t{secs}", n.load(Relaxed)));
        }
        let (ran, bytes) = (self.inputs.load(Relaxed), self.bytes.load(Relaxed));
        say(&format!(
            "done\t{ran}\t{bytes}\t{}",
            started.elapsed().as_secs_f64()
        ));
    }
}

/// Ends the child when one input runs past its [`hard_limit`], reporting it first.
fn watchdog(seed: u64, started: Instant, current: &[AtomicU64; 3], totals: &Totals) {
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let since = current[1].load(Relaxed);
        if since == 0 {
            continue;
        }
        let limit = Duration::from_micros(current[2].load(Relaxed));
        let running = started
            .elapsed()
            .saturating_sub(Duration::from_micros(since));
        if running <= limit || current[1].load(Relaxed) != since {
            continue;
        }
        let index = current[0].load(Relaxed);
        let input = inputs::input(seed, index);
        say(&format!(
            "violation\t{index}\t{:?}\tslower than linear budget\t{} bytes in {} writes still running after {running:?} (budget {:?}); stopped",
            input.kind,
            input.bytes.len(),
            input.cuts.len() + 1,
            budget(&input)
        ));
        totals.report(started);
        std::process::exit(EXIT_TOO_SLOW);
    }
}

/// The scaling check, shape by shape (the shape's number goes to `progress` first).
pub fn child_scaling(progress: &Path) {
    let progress = std::fs::OpenOptions::new()
        .write(true)
        .open(progress)
        .expect("progress file");
    for (i, shape) in SHAPES.iter().enumerate() {
        progress
            .write_at(&(i as u64).to_le_bytes(), 0)
            .expect("write progress");
        let (small_input, large_input) = ((shape.make)(shape.small), (shape.make)(shape.small * 8));
        // Small and large in turns, so a busy moment weighs on both.
        let (mut small, mut large) = (Duration::MAX, Duration::MAX);
        for _ in 0..2 {
            small = small.min(time_shape(&small_input, shape.chunk));
            large = large.min(time_shape(&large_input, shape.chunk));
        }
        let ratio = large.as_secs_f64() / small.as_secs_f64().max(1e-6);
        say(&format!(
            "scaling\t{}\t{small:?}\t{large:?}\t{ratio:.1}",
            shape.name
        ));
        if ratio > SCALING_LIMIT && large > Duration::from_millis(20) {
            say(&format!(
                "violation\t-\t-\ttime grows faster than the input ({})\t8x the input took {ratio:.0}x the time ({small:?} -> {large:?})",
                shape.name
            ));
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{TAG}\t{line}");
    let _ = out.flush();
}

/// The parent's reading of one line from the child.
pub enum Report {
    Violation {
        index: Option<u64>,
        kind: String,
        check: String,
        detail: String,
    },
    Count {
        kind: String,
        check: String,
        n: u64,
    },
    Scaling(String),
    /// Inputs of one kind and the seconds they took (generating included).
    Kind {
        kind: String,
        n: u64,
        secs: f64,
    },
    Done {
        inputs: u64,
        bytes: u64,
        secs: f64,
    },
}

pub fn parse_report(line: &str) -> Option<Report> {
    // libtest prints "test decoder_child ... " before the test's first line.
    let at = line.find(TAG)?;
    let fields: Vec<&str> = line[at + TAG.len()..]
        .strip_prefix('\t')?
        .split('\t')
        .collect();
    Some(match fields[..] {
        ["violation", index, kind, check, ref detail @ ..] => Report::Violation {
            index: index.parse().ok(),
            kind: kind.to_owned(),
            check: check.to_owned(),
            detail: detail.join("\t"),
        },
        ["count", kind, check, n] => Report::Count {
            kind: kind.to_owned(),
            check: check.to_owned(),
            n: n.parse().ok()?,
        },
        ["kind", kind, n, secs] => Report::Kind {
            kind: kind.to_owned(),
            n: n.parse().ok()?,
            secs: secs.parse().ok()?,
        },
        ["scaling", ref rest @ ..] => Report::Scaling(rest.join("  ")),
        ["done", inputs, bytes, secs] => Report::Done {
            inputs: inputs.parse().ok()?,
            bytes: bytes.parse().ok()?,
            secs: secs.parse().ok()?,
        },
        _ => return None,
    })
}

pub fn shape_name(i: u64) -> &'static str {
    SHAPES.get(i as usize).map_or("?", |s| s.name)
}
