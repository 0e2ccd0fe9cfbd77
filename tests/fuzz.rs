//! A structure-aware fuzzer for the request decoder and the session, on stable Rust, bounded in
//! time so it runs with the rest of the suite.
//!
//! * `decoder`: the decoder in a child process of this binary, input after input, plus a
//!   scaling check (`fuzz/decoder.rs`).
//! * `live`: the `cachet` binary in front of a fresh redis-server, hostile connections sending
//!   fuzz input while well-behaved clients check their replies (`fuzz/live.rs`).
//!
//! Inputs come from `fuzz/inputs.rs`. Knobs (environment):
//!
//! * `CACHET_FUZZ_SECS`: total time for both tests (default 60; a third goes to `decoder`,
//!   the rest to `live`, half with no password and half with one).
//! * `CACHET_FUZZ_SEED`: the run's seed (default: random, printed). With
//!   `CACHET_FUZZ_INPUT=N`, only input N of that seed runs, in both tests, and is saved to a
//!   file: a failure replays from the two numbers it prints.
//! * `CACHET_FUZZ_KINDS`: only these kinds of input (`Valid,Mutated,Random,Nested,OddLength,
//!   Resp3,Huge`), to get past a finding that ends every run early.
//!
//! Each test prints how many inputs it ran (`--nocapture` shows it) and, when it fails, every
//! distinct finding with the seed and index of an input that shows it.

#[path = "fuzz/decoder.rs"]
mod decoder;
#[path = "fuzz/inputs.rs"]
mod inputs;
#[path = "fuzz/live.rs"]
mod live;
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use decoder::Report;

/// The two tests take turns: each is sized to have the machine to itself for its share.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

fn total_secs() -> f64 {
    env_u64("CACHET_FUZZ_SECS").unwrap_or(60) as f64
}

fn seed() -> u64 {
    env_u64("CACHET_FUZZ_SEED").unwrap_or_else(|| fastrand::u64(..))
}

/// Writes input `index` of `seed` under the test's target directory; returns the path.
pub fn save_input(seed: u64, index: u64, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz");
    let path = dir.join(format!("input-{seed}-{index}.bin"));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(&path, bytes);
    path
}

/// The command that runs `test` again on `seed` (on input `index` alone, if given).
pub fn replay(test: &str, seed: u64, index: Option<u64>) -> String {
    let input = index.map_or(String::new(), |i| format!(" CACHET_FUZZ_INPUT={i}"));
    let kinds = std::env::var("CACHET_FUZZ_KINDS")
        .map_or(String::new(), |k| format!(" CACHET_FUZZ_KINDS={k}"));
    format!(
        "CACHET_FUZZ_SEED={seed}{input}{kinds} cargo test --test fuzz {test} -- --exact --nocapture"
    )
}

// ---- decoder ----

/// Environment the child process of `decoder` reads.
const CHILD_MODE: &str = "CACHET_FUZZ_CHILD";

/// How a child process of `decoder` ended.
#[derive(PartialEq)]
enum Exit {
    Clean,
    /// It stopped itself on an input over its time limit, reported already.
    TooSlow,
    /// Killed by a signal (a stack overflow aborts), failed, or hung.
    Crashed,
}

/// Runs `decoder_child` in a child process; returns its reports, how it ended, its stderr's
/// tail, and the progress index it last wrote.
fn run_child(
    mode: &str,
    seed: u64,
    start: u64,
    count: u64,
    secs: f64,
) -> (Vec<Report>, Exit, String, u64) {
    let progress = tempfile::NamedTempFile::new().expect("progress file");
    std::fs::write(progress.path(), u64::MAX.to_le_bytes()).expect("progress file");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "decoder_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MODE, mode)
        .env("CACHET_FUZZ_CHILD_SEED", seed.to_string())
        .env("CACHET_FUZZ_CHILD_START", start.to_string())
        .env("CACHET_FUZZ_CHILD_COUNT", count.to_string())
        .env("CACHET_FUZZ_CHILD_SECS", secs.to_string())
        .env("CACHET_FUZZ_CHILD_PROGRESS", progress.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the decoder child");
    // Read both pipes on threads so neither fills up; a hang is killed after a margin.
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let limit = Instant::now() + Duration::from_secs_f64(secs + 60.0);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let reports = out.lines().filter_map(decoder::parse_report).collect();
    let at = std::fs::read(progress.path())
        .ok()
        .and_then(|b| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)))
        .unwrap_or(u64::MAX);
    let tail: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut tail = tail[tail.len().saturating_sub(6)..].join("\n");
    let exit = match status {
        Some(s) if s.success() => Exit::Clean,
        Some(s) if s.code() == Some(decoder::EXIT_TOO_SLOW) => Exit::TooSlow,
        Some(s) => {
            tail = format!("{s}\n{tail}");
            Exit::Crashed
        }
        None => {
            tail = format!("hung: killed after {:.0} s\n{tail}", secs + 60.0);
            Exit::Crashed
        }
    };
    (reports, exit, tail, at)
}

/// Whether input `index` runs over its time again, alone in a fresh child: a finding needs
/// that, so a busy moment on a shared machine is not reported.
fn slow_again(seed: u64, index: u64) -> bool {
    let (reports, exit, _, _) = run_child("fuzz", seed, index, 1, 30.0);
    exit != Exit::Clean
        || reports
            .iter()
            .any(|r| matches!(r, Report::Violation { check, .. } if check.starts_with("slower")))
}

/// The child's entry point: does nothing unless started by `decoder` with its environment.
#[test]
#[ignore = "the child process of `decoder`; not a test of its own"]
fn decoder_child() {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return;
    };
    let seed = env_u64("CACHET_FUZZ_CHILD_SEED").expect("seed");
    let start = env_u64("CACHET_FUZZ_CHILD_START").expect("start");
    let count = env_u64("CACHET_FUZZ_CHILD_COUNT").expect("count");
    let secs: f64 = std::env::var("CACHET_FUZZ_CHILD_SECS")
        .expect("secs")
        .parse()
        .expect("secs");
    let progress = PathBuf::from(std::env::var("CACHET_FUZZ_CHILD_PROGRESS").expect("progress"));
    // cachet's session runs on the main thread (8 MiB stack) with the default `threads = 1`.
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || match mode.as_str() {
            "scaling" => decoder::child_scaling(&progress),
            _ => decoder::child_fuzz(
                seed,
                start,
                count,
                Instant::now() + Duration::from_secs_f64(secs),
                &progress,
            ),
        })
        .expect("spawn")
        .join()
        .expect("the fuzz loop does not panic");
}

#[test]
fn decoder() {
    let _turn = serial();
    let seed = seed();
    let only = env_u64("CACHET_FUZZ_INPUT");
    let secs = match only {
        Some(_) => 30.0,
        None => total_secs() / 3.0,
    };
    println!("fuzz decoder: seed {seed}, {secs:.0} s");
    let mut findings: Vec<String> = Vec::new();
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut crashes: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_kind: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    let (mut inputs, mut bytes, mut busy) = (0u64, 0u64, 0f64);

    if let Some(index) = only {
        let path = save_input(seed, index, &inputs::input(seed, index).bytes);
        println!("fuzz decoder: input {index} saved to {}", path.display());
    }
    // The scaling check first: its shapes are fixed, so it costs the same every run.
    if only.is_none() {
        let (reports, exit, tail, at) = run_child("scaling", seed, 0, 0, 60.0);
        for report in reports {
            match report {
                Report::Scaling(line) => println!("fuzz decoder: scaling {line}"),
                Report::Violation { check, detail, .. } => {
                    findings.push(format!("{check}: {detail}"))
                }
                _ => {}
            }
        }
        if exit != Exit::Clean {
            findings.push(format!(
                "the decoder crashed on the scaling shape {:?}: {tail}",
                decoder::shape_name(at)
            ));
        }
    }

    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut start = only.unwrap_or(0);
    let count = if only.is_some() { 1 } else { u64::MAX };
    let mut restarts = 0;
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        if left < 0.5 && only.is_none() {
            break;
        }
        let (mut reports, exit, tail, at) = run_child("fuzz", seed, start, count, left);
        if exit == Exit::TooSlow && only.is_none() && !slow_again(seed, at) {
            // Slow once, not when run again alone: the machine was busy, not the decoder.
            println!(
                "fuzz decoder: input #{at} ran over its time once but not again; not a finding"
            );
            reports.retain(|r| !matches!(r, Report::Violation { index: Some(i), .. } if *i == at));
        }
        for report in reports {
            match report {
                Report::Violation {
                    index,
                    kind,
                    check,
                    detail,
                } => {
                    let n = counts.entry((kind.clone(), check.clone())).or_insert(0);
                    if *n == 0 {
                        let saved =
                            index.map(|i| save_input(seed, i, &inputs::input(seed, i).bytes));
                        findings.push(format!(
                            "{check} ({kind} input #{}): {detail}\n    saved: {saved:?}\n    replay: {}",
                            index.map_or("-".into(), |i| i.to_string()),
                            replay("decoder", seed, index)
                        ));
                    }
                    *n += 1;
                }
                Report::Count { kind, check, n } => *counts.entry((kind, check)).or_insert(0) += n,
                Report::Done {
                    inputs: n,
                    bytes: b,
                    secs: s,
                } => {
                    inputs += n;
                    bytes += b;
                    busy += s;
                }
                Report::Kind { kind, n, secs } => {
                    let entry = per_kind.entry(kind).or_insert((0, 0.0));
                    entry.0 += n;
                    entry.1 += secs;
                }
                Report::Scaling(_) => {}
            }
        }
        if exit == Exit::Clean || only.is_some() {
            break;
        }
        if exit == Exit::TooSlow {
            start = at + 1;
            continue;
        }
        // The child died on input `at`: name it, then go on past it.
        let input = inputs::input(seed, at);
        let what = match tail.contains("has overflowed its stack") {
            true => "stack overflow",
            false => tail.lines().next().unwrap_or(""),
        };
        let signature = format!("{what} ({:?} input)", input.kind);
        let seen = crashes.entry(signature).or_insert(0);
        if *seen == 0 {
            let saved = save_input(seed, at, &input.bytes);
            findings.push(format!(
                "the decoder crashed ({:?} input #{at}, {}): {tail}\n    saved: {}\n    replay: {}",
                input.kind,
                input.preview(60),
                saved.display(),
                replay("decoder", seed, Some(at))
            ));
        }
        *seen += 1;
        inputs += 1;
        start = at + 1;
        restarts += 1;
        if restarts > 200 {
            findings.push("stopped after 200 crashes".into());
            break;
        }
    }
    println!(
        "fuzz decoder: {inputs} inputs ({} MB) in {busy:.1} s of decoding, {:.0} inputs/s, {} crashes (child restarted)",
        bytes >> 20,
        inputs as f64 / busy.max(1e-9),
        restarts
    );
    for (kind, (n, secs)) in &per_kind {
        println!("fuzz decoder: {n} {kind} inputs in {secs:.1} s");
    }
    for ((kind, check), n) in &counts {
        println!("fuzz decoder: {n} x {check} ({kind})");
    }
    for (signature, n) in &crashes {
        println!("fuzz decoder: {n} x crash {signature}");
    }
    assert!(
        findings.is_empty(),
        "seed {seed}: {} distinct findings:\n\n{}",
        findings.len(),
        findings.join("\n\n")
    );
}

// ---- live ----

#[test]
fn live() {
    let _turn = serial();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run_live());
}

async fn run_live() {
    let seed = seed();
    let only = env_u64("CACHET_FUZZ_INPUT");
    let secs = match only {
        Some(_) => 20.0,
        None => total_secs() * 2.0 / 3.0,
    };
    println!("fuzz live: seed {seed}, {secs:.0} s");
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut findings = Vec::new();
    let mut deaths: BTreeMap<String, u64> = BTreeMap::new();
    let (mut inputs, mut connections, mut good_ops, mut epochs) = (0, 0, 0, 0);
    // Half the time with no password, where every client may do anything; half with one,
    // where the hostile clients never authenticate and meet the limits for that.
    for phase in ["open", "password"] {
        let upstream = Arc::new(match phase {
            "open" => live::Upstream::open(),
            _ => live::Upstream::with_password(),
        });
        let deadline = Instant::now() + Duration::from_secs_f64(secs / 2.0);
        loop {
            epochs += 1;
            let result = live::epoch(&upstream, seed, next.clone(), only, deadline).await;
            println!(
                "fuzz live: epoch {epochs} ({phase}): {} inputs ({} MB) on {} connections ({} refused) in {:.1} s, {} good replies, RSS {} MB -> max {} MB{}",
                result.inputs,
                result.bytes >> 20,
                result.connections,
                result.refused,
                result.secs,
                result.good_ops,
                result.rss_base >> 20,
                result.rss_max >> 20,
                result
                    .death
                    .as_ref()
                    .map_or(String::new(), |(what, _)| format!(", cachet died: {what}"))
            );
            inputs += result.inputs;
            connections += result.connections;
            good_ops += result.good_ops;
            let label = format!("epoch {epochs} ({phase})");
            findings.extend(result.findings.into_iter().map(|f| format!("{label}: {f}")));
            let died = result.death.is_some();
            if let Some((signature, report)) = result.death {
                let seen = deaths.entry(signature).or_insert(0);
                if *seen == 0 {
                    findings.push(format!("{label}: {report}"));
                }
                *seen += 1;
            }
            // Keep going past a crash, while there is time for an epoch worth having.
            if !died
                || only.is_some()
                || deadline.saturating_duration_since(Instant::now()) < Duration::from_secs(3)
            {
                break;
            }
        }
    }
    for (signature, n) in &deaths {
        println!("fuzz live: cachet died {n} times: {signature}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "fuzz live: {inputs} inputs on {connections} connections in {elapsed:.1} s ({:.0} inputs/s), {good_ops} good replies, {epochs} cachet processes",
        inputs as f64 / elapsed
    );
    assert!(
        findings.is_empty(),
        "seed {seed} ({}): {} findings:\n\n{}",
        replay("live", seed, None),
        findings.len(),
        findings.join("\n\n"),
    );
}
