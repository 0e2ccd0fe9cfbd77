//! Scenarios a code review found broken, each kept as a test.

mod support;

use std::time::Duration;

use support::{Proxy, RawClient, RedisServer};

fn direct(redis: &RedisServer) -> redis::Direct {
    redis::Direct(redis.port)
}

mod redis {
    /// A blocking std client straight to Redis, for checking what cachet did.
    pub struct Direct(pub u16);

    impl Direct {
        pub fn cli(&self, args: &[&str]) -> String {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &self.0.to_string()])
                .args(args)
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
    }
}

/// `HELLO 2 SETNAME auth` named the client "auth"; it must not log it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_setname_auth_does_not_authenticate() {
    let redis = RedisServer::start_with(&["--requirepass", "pw"]);
    let proxy = Proxy::start_with(&redis.url(), |c| {
        c.upstream.password = Some(cachet::config::Secret::new("pw"));
    })
    .await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    let reply = client.text(&["HELLO", "2", "SETNAME", "auth"]).await;
    assert!(reply.starts_with("-NOAUTH"), "{reply:?}");
    let reply = client.text(&["GET", "k"]).await;
    assert!(reply.starts_with("-NOAUTH"), "{reply:?}");
    let reply = client.text(&["HELLO", "2", "AUTH", "default", "pw"]).await;
    assert!(reply.starts_with('*'), "{reply:?}");
    assert_eq!(client.text(&["GET", "k"]).await, "$-1\r\n");
}

/// SELECT queued in MULTI leaves the connection on that database after EXEC: the client
/// keeps it, and it must not become another client's spare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_inside_multi_keeps_the_database() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut a = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(a.text(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.text(&["SELECT", "1"]).await, "+QUEUED\r\n");
    assert_eq!(a.text(&["SET", "k", "db1"]).await, "+QUEUED\r\n");
    assert!(a.text(&["EXEC"]).await.starts_with("*2"));
    assert_eq!(
        a.text(&["GET", "k"]).await,
        "$3\r\ndb1\r\n",
        "still on db 1"
    );
    // Another client's transaction (on a spare, if one were wrongly released) is on db 0.
    let mut b = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(b.text(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(b.text(&["GET", "k"]).await, "+QUEUED\r\n");
    assert_eq!(b.text(&["EXEC"]).await, "*1\r\n$-1\r\n");
}

/// A client that disconnects while blocked must not pop what is pushed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_client_that_leaves_pops_nothing() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut worker = RawClient::connect(proxy.addr).await.unwrap();
    worker.send(&["BLPOP", "jobs", "0"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(worker);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut producer = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(producer.text(&["LPUSH", "jobs", "x"]).await, ":1\r\n");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        direct(&redis).cli(&["LLEN", "jobs"]),
        "1",
        "the job was popped for nobody"
    );
}

/// Redis down: a rule-matched GET (sent with cachet's epoch read) gets exactly one error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_error_per_command_when_a_tagged_read_fails() {
    let mut redis = RedisServer::start();
    let rules = "[[rules]]\npattern = \"sessions:teacher:{t}\"\ntags = [\"teacher:{t}\"]\n";
    let proxy = Proxy::start_with(&redis.url(), |c| {
        let mut parsed = cachet::Config::from_toml(rules, "test").unwrap();
        parsed.upstream = c.upstream.clone();
        *c = parsed;
    })
    .await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    tokio::task::block_in_place(|| redis.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .send_raw(
            &[
                RawClient::encode(&["GET", "sessions:teacher:1"]),
                RawClient::encode(&["PING"]),
            ]
            .concat(),
        )
        .await
        .unwrap();
    let first = client.read_frame().await.unwrap();
    assert!(first.starts_with(b"-ERR upstream"), "{first:?}");
    let second = client.read_frame().await.unwrap();
    assert!(second.starts_with(b"-ERR upstream"), "{second:?}");
    // Nothing more: a third frame would answer a command never sent.
    assert!(
        client
            .read_frame_timeout(Duration::from_millis(300))
            .await
            .is_err(),
        "an extra reply arrived"
    );
}

/// CLIENT commands inside MULTI are queued, so EXEC answers one entry per queued command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_inside_multi_are_queued() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut a = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(a.text(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(a.text(&["CLIENT", "ID"]).await, "+QUEUED\r\n");
    assert_eq!(
        a.text(&["CLIENT", "SETNAME", "worker"]).await,
        "+QUEUED\r\n"
    );
    assert_eq!(a.text(&["CLIENT", "GETNAME"]).await, "+QUEUED\r\n");
    let exec = a.text(&["EXEC"]).await;
    assert!(exec.starts_with("*3\r\n:"), "{exec:?}");
    assert!(exec.ends_with("+OK\r\n$6\r\nworker\r\n"), "{exec:?}");
    assert_eq!(a.text(&["CLIENT", "GETNAME"]).await, "$6\r\nworker\r\n");
}
