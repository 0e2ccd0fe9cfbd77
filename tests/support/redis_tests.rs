//! Tests of the Redis fixture (`support::RedisServer`): the server a test talks to is the
//! fixture's own child, a lost port race moves it to another port, and a child that dies
//! while starting, or cannot restart on its port, fails the test at once with its log. Run by
//! tests/harness.rs.

use std::time::{Duration, Instant};

use crate::support::RedisServer;

#[test]
fn the_server_answering_is_the_fixtures_own_child() {
    let redis = RedisServer::start();
    assert!(redis.pid().is_some());
    assert_eq!(redis.answering_pid().unwrap(), redis.pid());
    let locked = RedisServer::start_with(&["--requirepass", "pw"]);
    assert_eq!(locked.answering_pid().unwrap(), locked.pid());
}

#[test]
fn a_taken_port_moves_the_fixture_to_another() {
    let other = RedisServer::start();
    let ours = RedisServer::start_on(other.port, &[]);
    assert_ne!(ours.port, other.port);
    assert!(
        ours.log().contains("Address already in use"),
        "the first child did not lose the port race; log:\n{}",
        ours.log()
    );
    assert_eq!(ours.answering_pid().unwrap(), ours.pid());
    assert_eq!(other.answering_pid().unwrap(), other.pid());
}

#[test]
fn a_child_that_dies_while_starting_fails_at_once_with_its_log() {
    let started = Instant::now();
    let failed = RedisServer::try_start_with(&["--loadmodule", "/nonexistent/module.so"]);
    let message = failed.err().expect("the fixture must not start");
    assert!(message.contains("exited while starting"), "{message}");
    assert!(
        message.contains("/nonexistent/module.so"),
        "no log in: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}: the fixture waited out its deadline",
        started.elapsed()
    );
}

#[test]
fn a_restart_on_a_port_taken_meanwhile_fails_at_once() {
    let mut ours = RedisServer::start();
    ours.stop();
    let other = RedisServer::start_on(ours.port, &[]);
    assert_eq!(other.port, ours.port, "the port was free to take");
    let started = Instant::now();
    let message = ours.try_restart().expect_err("the restart must fail");
    assert!(message.contains("another process took port"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(other.answering_pid().unwrap(), other.pid());
}
