//! README.md's command sessions, run as written, in order, against the `cachet` binary with
//! `examples/cachet.toml` (ports and the policy's path adjusted, nothing else), in front of a
//! fresh redis-server; each reply is compared with the README's.
//!
//! The convention (README, "Two commands"): in a fenced block, a line `$ redis-cli ...` is a
//! command and the lines after it, up to the next `$ ` line or the end of the block, are what
//! redis-cli prints, exactly. `…` in a reply stands for any text within its line (an id, a
//! version, a time). The command runs in bash as written, with `-p 6380` pointed at the test's
//! cachet and `--no-raw` added: redis-cli prints `(integer) 1` to a terminal but `1` to a pipe,
//! and the README shows what a terminal shows. A line `$ cargo run -q --manifest-path
//! examples/NAME/Cargo.toml` runs that example package's binary against the test's cachet and
//! compares its output the same way.
//! Other `$ ` lines (`curl`, ...) are not run; their output is not compared.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::policies::policy_wasm;
use support::{RedisServer, free_port};

/// One command of the README and what it prints.
#[derive(Debug)]
struct Step {
    /// 1-based line in README.md.
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// The steps of every fenced block, in README order.
fn steps(readme: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    let mut open = false;
    for (i, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            in_block = !in_block;
            open = false;
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            open = command.starts_with("redis-cli ") || command.starts_with(EXAMPLE_RUN);
            if open {
                steps.push(Step {
                    line: i + 1,
                    command: command.to_owned(),
                    expected: Vec::new(),
                });
            }
        } else if open {
            steps
                .last_mut()
                .expect("open")
                .expected
                .push(line.to_owned());
        }
    }
    steps
}

/// Whether `got` is `pattern`, where `…` stands for any text.
fn matches(pattern: &str, got: &str) -> bool {
    let mut parts = pattern.split('…');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = got.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (n, part) in parts.iter().enumerate() {
        if n + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `examples/cachet.toml` with only its addresses and the policy module's path changed; each
/// change must find its line, so a changed example cannot make the test run something else.
fn config(redis_url: &str, port: u16, sessions: &Path) -> String {
    let text = std::fs::read_to_string(root().join("examples/cachet.toml")).expect("read config");
    let admin = free_port();
    let mut text = text;
    for (from, to) in [
        (
            "listen = \"127.0.0.1:6380\"".to_owned(),
            format!("listen = \"127.0.0.1:{port}\""),
        ),
        (
            "url = \"redis://127.0.0.1:6379\"".to_owned(),
            format!("url = \"{redis_url}\""),
        ),
        (
            "listen = \"127.0.0.1:9121\"".to_owned(),
            format!("listen = \"127.0.0.1:{admin}\""),
        ),
        (
            "module = \"policies/out/sessions.wasm\"".to_owned(),
            format!("module = {:?}", sessions.display().to_string()),
        ),
    ] {
        assert_eq!(
            text.matches(&from).count(),
            1,
            "examples/cachet.toml should hold `{from}` once"
        );
        text = text.replace(&from, &to);
    }
    text
}

/// How the README runs an example package (`examples/NAME/Cargo.toml`).
const EXAMPLE_RUN: &str = "cargo run -q --manifest-path examples/";

/// The binary of example package `name`, built into this test's own target directory
/// (`target/readme-examples`), so it shares nothing with the build under test and a rerun
/// is incremental.
fn example(name: &str) -> PathBuf {
    let target = root().join("target").join("readme-examples");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = root().join("examples").join(name).join("Cargo.toml");
    let status = Command::new(cargo)
        .args(["build", "-q", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .current_dir(root())
        .status()
        .expect("run cargo build for the example");
    assert!(
        status.success(),
        "cargo build --manifest-path {manifest:?} failed"
    );
    target.join("debug").join(name)
}

/// Runs one step; its output, lines without their ends.
fn run(step: &Step, port: u16) -> Result<Vec<String>, String> {
    let output = if let Some(rest) = step.command.strip_prefix("redis-cli ") {
        assert!(
            rest.contains("-p 6380 "),
            "README.md:{}: redis-cli without -p 6380",
            step.line
        );
        let command = format!(
            "redis-cli --no-raw {}",
            rest.replace("-p 6380 ", &format!("-p {port} "))
        );
        Command::new("bash")
            .args(["-c", &command])
            .output()
            .map_err(|e| e.to_string())?
    } else {
        let name = step
            .command
            .strip_prefix(EXAMPLE_RUN)
            .and_then(|r| r.strip_suffix("/Cargo.toml"))
            .expect("an example package's name");
        Command::new(example(name))
            .arg(format!("redis://127.0.0.1:{port}"))
            .output()
            .map_err(|e| e.to_string())?
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    // redis-cli exits 1 after printing an error reply, which the README may well show.
    let error_reply = stdout.starts_with("(error)");
    if !(output.status.success() || error_reply) || !output.stderr.is_empty() {
        return Err(format!(
            "{}; stdout {stdout:?}, stderr {:?}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(stdout.lines().map(str::to_owned).collect())
}

/// Why `got` is not what `step` expects, if it is not.
fn compare(step: &Step, got: &[String]) -> Option<String> {
    let fits = got.len() == step.expected.len()
        && step.expected.iter().zip(got).all(|(e, g)| matches(e, g));
    (!fits).then(|| {
        format!(
            "README.md:{}: $ {}\n  expected:\n    {}\n  got:\n    {}",
            step.line,
            step.command,
            step.expected.join("\n    "),
            got.join("\n    ")
        )
    })
}

struct Cachet {
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for Cachet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cachet {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn start_cachet(config_text: &str, port: u16, dir: &Path) -> Cachet {
    let config_path = dir.join("cachet.toml");
    std::fs::write(&config_path, config_text).expect("write config");
    let log = dir.join("cachet.log");
    let child = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .arg("--config")
        .arg(&config_path)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start cachet");
    let mut cachet = Cachet { child, log };
    // Compiling the policy comes before listening.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = cachet.child.try_wait().expect("wait") {
            panic!("cachet exited with {status}:\n{}", cachet.log());
        }
        let pong = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "PING"])
            .output()
            .is_ok_and(|o| o.stdout == b"PONG\n");
        if pong {
            return cachet;
        }
        assert!(
            Instant::now() < deadline,
            "cachet did not answer PING:\n{}",
            cachet.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_readme_sessions_print_what_the_readme_shows() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("read README.md");
    let steps = steps(&readme);
    // Every section with a session: a moved block must not make this pass on nothing.
    for must in [
        "SET greeting hello",
        "TAGINVALIDATE teacher:123",
        "WARM teacher-sessions teacherId 123",
        "EMIT session.created",
        "COMMAND GETKEYS TAGSET",
        "cargo run -q --manifest-path examples/cache-aside/Cargo.toml",
    ] {
        assert!(
            steps.iter().any(|s| s.command.contains(must)),
            "no README step runs `{must}`: {steps:#?}"
        );
    }
    let sessions = policy_wasm("sessions");
    let redis = RedisServer::start();
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let cachet = start_cachet(&config(&redis.url(), port, &sessions), port, dir.path());
    let mut wrong = Vec::new();
    for step in &steps {
        match run(step, port) {
            Ok(got) => wrong.extend(compare(step, &got)),
            Err(error) => wrong.push(format!(
                "README.md:{}: $ {}: {error}",
                step.line, step.command
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} README steps differ:\n\n{}\n\ncachet's log:\n{}\nRedis's log:\n{}",
        wrong.len(),
        steps.len(),
        wrong.join("\n\n"),
        cachet.log(),
        redis.log()
    );
}

#[test]
fn placeholders_match_within_a_line_only() {
    assert!(matches("(integer) 1", "(integer) 1"));
    assert!(!matches("(integer) 1", "(integer) 12"));
    assert!(matches(
        "4# \"id\" => (integer) …",
        "4# \"id\" => (integer) 4294967297"
    ));
    assert!(matches("…", ""));
    assert!(matches("a…b…c", "aXXbYYc"));
    assert!(!matches("a…b…c", "aXXbYY"));
    assert!(!matches("a…", "b"));
}
