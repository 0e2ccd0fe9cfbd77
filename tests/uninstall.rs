//! `cachet uninstall`: after a cachet with rules has written through to a real Redis (tagged
//! writes, TAGSET, an invalidation), the binary lists what it would remove, removes exactly
//! that, and leaves every application key, including ones that look like cachet's.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use fred::prelude::*;
use fred::types::CustomCommand;
use support::{Proxy, RawClient, RedisServer, fred_client};

const CONFIG: &str = r#"
[ttl]
session-list = 300

[[rules]]
pattern = "sessions:teacher:{teacher}"
tags = ["teacher:{teacher}", "sessions"]
ttl = "session-list"
"#;

async fn keys(redis: &Client) -> BTreeSet<String> {
    let keys: Vec<String> = redis
        .custom(CustomCommand::new_static("KEYS", None, false), vec!["*"])
        .await
        .unwrap();
    keys.into_iter().collect()
}

async fn libraries(redis: &Client) -> usize {
    let list: Vec<Value> = redis
        .custom(
            CustomCommand::new_static("FUNCTION", None, false),
            vec!["LIST"],
        )
        .await
        .unwrap();
    list.len()
}

fn uninstall(redis: &RedisServer, args: &[&str]) -> (String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .arg("uninstall")
        .args(args)
        .args(["--upstream", &redis.url()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(
        output.status.success(),
        "uninstall {args:?}: {stdout}\n{stderr}\nredis log:\n{}",
        redis.log()
    );
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_removes_cachet_s_keys_streams_and_library_and_nothing_else() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |config| {
        let url = config.upstream.url.clone();
        *config = cachet::Config::from_toml(CONFIG, "test").unwrap();
        config.upstream.url = url;
    })
    .await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    // A rule write whose tags name the key (no index entry) plus one that needs the tag
    // set `sessions`, a TAGSET, a TAG, and an invalidation that leaves an epoch.
    for command in [
        &["SET", "sessions:teacher:1", "[1]"][..],
        &["TAGSET", "report:7", "{}", "TAGS", "school:7", "reports"],
        &["TAGSET", "report:8", "{}", "EX", "600", "TAGS", "reports"],
        &["SET", "greeting", "hello"],
        &["TAG", "greeting", "demo"],
    ] {
        let reply = client.text(command).await;
        assert!(
            reply.starts_with('+') || reply.starts_with(':'),
            "{command:?}: {reply}"
        );
    }
    assert_eq!(client.text(&["TAGINVALIDATE", "school:7"]).await, ":1\r\n");
    drop(client);
    proxy.shutdown().await.unwrap();

    let redis_client = fred_client(&redis.url(), false).await;
    // cachet's dead-letter stream (default name), as a failed policy call leaves it, and
    // application keys: a warmer's stream (the application's), keys that start like cachet's
    // but are not of its types or shapes.
    for (cmd, args) in [
        ("XADD", vec!["cachet:policy:dead", "*", "event", "x"]),
        ("XADD", vec!["cachet:warm", "*", "warmer", "w"]),
        ("SET", vec!["cachet:t:{reports}:copy", "app"]),
        ("SET", vec!["cachet:e:not-a-tag", "app"]),
        ("SADD", vec!["cachet:k:{x}:y", "app"]),
        (
            "SET",
            vec!["cachet:t:{lookalike}", "a string, not a tag set"],
        ),
    ] {
        let _: Value = redis_client
            .custom(CustomCommand::new_static(cmd, None, false), args)
            .await
            .unwrap();
    }
    let before = keys(&redis_client).await;
    assert_eq!(libraries(&redis_client).await, 1);
    let ours: BTreeSet<String> = [
        "cachet:t:{sessions}",
        "cachet:t:{reports}",
        "cachet:t:{demo}",
        "cachet:k:{report:8}:report:8",
        "cachet:k:{greeting}:greeting",
        "cachet:e:{school:7}",
        "cachet:policy:dead",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert!(ours.is_subset(&before), "{before:#?}");

    // A dry run lists them and removes nothing.
    let (listed, summary) = uninstall(&redis, &["--dry-run"]);
    let names: BTreeSet<String> = listed
        .lines()
        .map(|line| line.split_once('\t').expect("kind<TAB>name").1.to_owned())
        .collect();
    let mut expected = ours.clone();
    expected.insert("cachet".to_owned());
    assert_eq!(names, expected, "{listed}");
    assert!(summary.contains("would remove"), "{summary}");
    assert!(listed.contains("function library\tcachet"), "{listed}");
    assert_eq!(keys(&redis_client).await, before);
    assert_eq!(libraries(&redis_client).await, 1);

    // Without --yes (or --dry-run) nothing happens.
    let refused = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["uninstall", "--upstream", &redis.url()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(keys(&redis_client).await, before);

    let (_, summary) = uninstall(&redis, &["--yes"]);
    assert!(
        summary.contains(
            ": tag sets 3, drain sets 0, epochs 1, key tag sets 2, streams 1, function library 1"
        ),
        "{summary}"
    );
    let after = keys(&redis_client).await;
    let kept: BTreeSet<String> = before.difference(&ours).cloned().collect();
    assert_eq!(after, kept);
    for app_key in [
        "sessions:teacher:1",
        "report:8",
        "greeting",
        "cachet:warm",
        "cachet:t:{lookalike}",
    ] {
        assert!(after.contains(app_key), "{app_key} is gone: {after:#?}");
    }
    assert_eq!(libraries(&redis_client).await, 0);

    // Nothing left to remove.
    let (listed, _) = uninstall(&redis, &["--yes"]);
    assert_eq!(listed, "");
    redis_client.quit().await.unwrap();
}
