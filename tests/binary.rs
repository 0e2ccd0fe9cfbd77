//! The `cachet` binary itself: flags, environment overrides, and a clean exit on SIGTERM with a
//! command still in flight.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{RawClient, RedisServer, free_port};

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "cachet did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_replies_and_exits_zero() {
    let redis = RedisServer::start();
    let port = free_port();
    // Upstream from the environment of the original system, listen address from CACHET_LISTEN.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cachet"))
        // No admin listener: its default port may be taken on the machine running the tests.
        .env("CACHET_ADMIN_LISTEN", "")
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PORT", redis.port.to_string())
        .env("CACHET_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cachet");
    wait_for_port(port);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut client = RawClient::connect(addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.text(&["PING"]).await != "+PONG\r\n" {
        assert!(Instant::now() < deadline, "cachet never answered PING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(client.text(&["SET", "k", "v"]).await, "+OK\r\n");

    // A blocking command in flight when the signal arrives must still be answered.
    client.send(&["BLPOP", "nothing", "1"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let reply = client.read_frame().await.expect("in-flight reply");
    assert_eq!(&reply[..], b"*-1\r\n");

    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "cachet did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening after exit"
    );
}

#[test]
fn flags_beat_the_environment() {
    let output = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let output = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["--upstream", "http://nope"])
        .env("REDIS_PORT", "6390")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unsupported upstream url scheme"),
        "{stderr}"
    );
}

/// Configs whose error is on a secret's line, one for every field that holds a secret
/// (`upstream.password`, the password in `upstream.url`, `admin.token`, and a warmer url with
/// credentials), each written wrong in the ways that used to print the secret.
const SECRET_CONFIGS: &[&str] = &[
    "[upstream]\npassword = [\"Zq8Xw3Kp\"]\n",
    "[upstream]\npassword = \"Zq8Xw3Kp\n",
    "[upstream]\npassword = \"\"\"Zq8Xw3Kp",
    "[upstream]\npasword = \"Zq8Xw3Kp\"\n",
    "[upstream]\npassword = \"Zq8Xw3Kp\"\npassword = \"Zq8Xw3Kp\"\n",
    "upstream = { url = \"redis://x\", password = 0.5Zq8Xw3Kp }\n",
    "[upstream]\nurl = \"redis://app:Zq8Xw3Kp@db:99999\"\n",
    "[upstream]\nurl = \"redis://app:Zq8Xw3Kp@db:6379/x\"\n",
    "[upstream]\nurl = \"redis:/app:Zq8Xw3Kp@db\"\n",
    "[admin]\ntoken = 8675309\n",
    "[admin]\ntoken = [\"Zq8Xw3Kp\"]\n",
    "[warmers.w]\nhttp = \"http://u:Zq8Xw3Kp@h/x\"\n",
];

/// Runs `command` to its exit, or kills it after 10 s (a config cachet should refuse but
/// accepts would otherwise start serving and never exit).
fn output_within_10s(command: &mut Command) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = command
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: std::fs::read(out).unwrap(),
        stderr: std::fs::read(err).unwrap(),
    }
}

fn assert_masked(output: &std::process::Output, secrets: &[&str], what: &str) {
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(1), "{what}: {printed}");
    for secret in secrets {
        assert!(
            !printed.contains(secret),
            "{what} printed {secret}:\n{printed}"
        );
    }
    assert!(printed.contains("****"), "{what}: no mask in\n{printed}");
}

#[test]
fn config_errors_print_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = ["Zq8Xw3Kp", "8675309"];
    for (n, text) in SECRET_CONFIGS.iter().enumerate() {
        let path = dir.path().join(format!("{n}.toml"));
        std::fs::write(&path, text).unwrap();
        let check = output_within_10s(
            Command::new(env!("CARGO_BIN_EXE_cachet"))
                .arg("check-config")
                .arg(&path),
        );
        assert_masked(&check, &secrets, &format!("check-config {text:?}"));
        let start = output_within_10s(
            Command::new(env!("CARGO_BIN_EXE_cachet"))
                .arg("--config")
                .arg(&path)
                .env("CACHET_ADMIN_LISTEN", "")
                .env("RUST_LOG", "trace"),
        );
        assert_masked(&start, &secrets, &format!("--config {text:?}"));
    }
    for url in [
        "redis://app:Zq8Xw3Kp@db:99999",
        "redis://app:Zq8Xw3Kp@db/256",
        ":Zq8Xw3Kp@db",
    ] {
        let start = output_within_10s(
            Command::new(env!("CARGO_BIN_EXE_cachet"))
                .args(["--upstream", url])
                .env("CACHET_ADMIN_LISTEN", "")
                .env("CACHET_LISTEN", "127.0.0.1:0"),
        );
        assert_masked(&start, &secrets, &format!("--upstream {url}"));
    }
}

/// A valid config whose password Redis refuses: nothing cachet or fred logs while it retries,
/// at the most verbose level, holds the password.
#[test]
fn a_refused_password_is_never_logged() {
    let redis = RedisServer::start_with(&["--requirepass", "the-right-one"]);
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cachet.toml");
    std::fs::write(
        &path,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"\"\n\
             [upstream]\nurl = \"redis://default:Zq8Xw3Kp@127.0.0.1:{}/3\"\n",
            redis.port
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cachet");
    wait_for_port(port);
    // A client's command makes the pool's handshake run and fail too.
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut client, b"*1\r\n$4\r\nPING\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.contains("WRONGPASS"),
        "the refusal was logged:\n{printed}"
    );
    assert!(!printed.contains("Zq8Xw3Kp"), "{printed}");
    assert!(
        printed.contains("redis://default:****@127.0.0.1"),
        "{printed}"
    );
}

/// `--help` names every environment variable the config reads (from the same list), the log
/// variables, and the defaults of the flags.
#[test]
fn help_lists_the_environment_and_the_defaults() {
    let output = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for var in cachet::config::env::VARIABLES {
        assert!(
            help.contains(&format!("  {:<29} {}", var.name, var.help)),
            "{} missing from\n{help}",
            var.name
        );
    }
    for text in [
        "CACHET_LOG_FORMAT",
        "RUST_LOG",
        "NO_COLOR",
        "--listen 127.0.0.1:6380",
        "--upstream redis://127.0.0.1:6379",
        "--threads 0",
        "admin listener 127.0.0.1:9121",
        "[default: text]",
        "uninstall",
    ] {
        assert!(help.contains(text), "{text} missing from\n{help}");
    }
}

/// Runs cachet in front of `redis` with stderr going to a file, answers one PING, stops it
/// with SIGTERM and returns what it logged.
fn logs_of_a_run(redis: &RedisServer, args: &[&str], envs: &[(&str, &str)]) -> Vec<u8> {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(args)
        .args(["--upstream", &redis.url(), "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env("CACHET_ADMIN_LISTEN", "")
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start cachet");
    wait_for_port(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        use std::io::{Read, Write};
        stream.write_all(b"PING\r\n").unwrap();
        let mut reply = [0u8; 7];
        if stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "cachet never answered PING");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Time for anything logged once the pool is up (a second command table load, say).
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::read(log).unwrap()
}

#[test]
fn logs_to_a_file_have_no_colours_and_json_logs_parse() {
    let redis = RedisServer::start();
    let text = logs_of_a_run(&redis, &[], &[]);
    let shown = String::from_utf8_lossy(&text);
    assert!(!text.contains(&0x1b), "ESC in\n{shown}");
    assert!(shown.contains("cachet serving"), "{shown}");
    assert_eq!(shown.matches("command table loaded").count(), 1, "{shown}");
    assert!(!shown.contains("Some("), "{shown}");

    for (args, envs) in [
        (&["--log-format", "json"][..], &[][..]),
        (&[][..], &[("CACHET_LOG_FORMAT", "json")][..]),
    ] {
        let json = logs_of_a_run(&redis, args, envs);
        let shown = String::from_utf8_lossy(&json);
        assert!(!json.contains(&0x1b), "ESC in\n{shown}");
        let mut messages = Vec::new();
        for line in shown.lines() {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}\n{shown}"));
            assert!(value["level"].is_string(), "{line}");
            messages.push(value["fields"]["message"].as_str().unwrap_or("").to_owned());
        }
        assert!(messages.iter().any(|m| m == "cachet serving"), "{shown}");
    }
}
