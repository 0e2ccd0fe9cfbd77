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
