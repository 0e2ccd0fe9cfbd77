//! Fixtures for tests about ACL users: a direct admin connection to the test Redis, its view
//! of the connections each user holds, and users created there.

use std::time::{Duration, Instant};

use super::resp::Value;
use super::{RawClient, RedisServer};

/// A connection straight to `redis` (signed in with `password` as `default` if given).
pub async fn admin(redis: &RedisServer, password: Option<&str>) -> RawClient {
    let mut c = RawClient::connect(redis.addr())
        .await
        .expect("connect to Redis");
    if let Some(password) = password {
        assert_eq!(c.text(&["AUTH", password]).await, "+OK\r\n");
    }
    c
}

/// Runs `ACL SETUSER name rules...` at Redis; panics unless it is accepted.
pub async fn set_user(admin: &mut RawClient, name: &str, rules: &[&str]) {
    let mut args = vec!["ACL", "SETUSER", name];
    args.extend_from_slice(rules);
    let reply = admin.text(&args).await;
    assert_eq!(reply, "+OK\r\n", "ACL SETUSER {name} {rules:?}");
}

/// The lines of Redis's `CLIENT LIST` for connections signed in as `user`.
pub async fn connections_of(admin: &mut RawClient, user: &str) -> Vec<String> {
    let reply = admin
        .command(&["CLIENT", "LIST"])
        .await
        .expect("CLIENT LIST");
    let text = String::from_utf8_lossy(Value::parse(&reply).bytes()).into_owned();
    let field = format!(" user={user} ");
    text.lines()
        .filter(|line| line.contains(&field))
        .map(str::to_owned)
        .collect()
}

/// Waits (up to `within`) until `user` holds `count` connections at Redis; returns their
/// lines, or panics with what it saw last.
pub async fn expect_connections(
    admin: &mut RawClient,
    user: &str,
    count: usize,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let lines = connections_of(admin, user).await;
        if lines.len() == count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} connections of {user} at Redis, saw {}:\n{}",
            lines.len(),
            lines.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis's `total_connections_received`.
pub async fn connections_received(admin: &mut RawClient) -> u64 {
    let reply = admin.command(&["INFO", "stats"]).await.expect("INFO");
    let text = String::from_utf8_lossy(Value::parse(&reply).bytes()).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_connections_received in INFO stats")
}
