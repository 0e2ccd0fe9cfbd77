//! `upstream::acl::AclCheck` against a real Redis: its answers are Redis's own `NOPERM`
//! errors, word for word, and its cache forgets on `flush`.

mod support;

use bytes::Bytes;
use cachet::upstream::acl::{AclCheck, AclDenied};
use fred::prelude::*;
use support::{RedisServer, fred_client};

fn argv(parts: &[&str]) -> Vec<Bytes> {
    parts
        .iter()
        .map(|p| Bytes::copy_from_slice(p.as_bytes()))
        .collect()
}

async fn acl(client: &Client, args: &[&str]) {
    let _: Value = client
        .custom(fred::cmd!("ACL"), args.to_vec())
        .await
        .expect("ACL command");
}

/// What Redis itself answers `user` for `command` (`None`: it ran).
async fn direct(redis: &RedisServer, user: &str, command: &[&str]) -> Option<String> {
    let url = format!("redis://{user}:pw@127.0.0.1:{}", redis.port);
    let client = fred_client(&url, false).await;
    let reply: Result<Value, Error> = client
        .custom(fred::cmd!(command[0]), command[1..].to_vec())
        .await;
    client.quit().await.ok();
    reply.err().map(|e| e.details().to_owned())
}

#[tokio::test]
async fn decisions_are_redis_own_and_forgotten_on_flush() {
    let redis = RedisServer::start();
    let admin = fred_client(&redis.url(), false).await;
    acl(
        &admin,
        &[
            "SETUSER",
            "app",
            "on",
            ">pw",
            "~app:*",
            "resetchannels",
            "&news*",
            "+get",
            "+set",
            "+publish",
        ],
    )
    .await;
    let check = AclCheck::new(admin.clone());

    let cases: &[&[&str]] = &[
        &["GET", "app:1"],
        &["GET", "other:1"],
        &["DEL", "app:1"],
        &["SET", "app:1", "v"],
        &["PUBLISH", "ch", "x"],
        &["PUBLISH", "news:1", "x"],
        &["SPUBLISH", "news:1", "x"],
    ];
    for command in cases {
        let ours = check.check(b"app", &argv(command)).await;
        let redis_says = direct(&redis, "app", command).await;
        match (&ours, &redis_says) {
            (Ok(()), None) => {}
            (Err(AclDenied::NoPerm(line)), Some(error)) => {
                assert_eq!(line, error, "{command:?}");
            }
            _ => panic!("{command:?}: cachet says {ours:?}, Redis says {redis_says:?}"),
        }
    }
    assert!(!check.is_empty());

    // Cached: a change of rights made elsewhere is seen after flush (or a second).
    acl(&admin, &["SETUSER", "app", "+del"]).await;
    assert!(matches!(
        check.check(b"app", &argv(&["DEL", "app:1"])).await,
        Err(AclDenied::NoPerm(_))
    ));
    assert!(check.checks.with_label_values(&["refused", "cache"]).get() >= 1);
    assert!(check.checks.with_label_values(&["allowed", "redis"]).get() >= 1);
    check.flush();
    assert!(check.is_empty());
    assert_eq!(check.check(b"app", &argv(&["DEL", "app:1"])).await, Ok(()));

    // No such user, or a malformed command: not a pass, and not a NOPERM.
    for (user, command) in [("ghost", &["GET", "k"][..]), ("app", &["GET"][..])] {
        match check.check(user.as_bytes(), &argv(command)).await {
            Err(AclDenied::Upstream(line)) => assert!(line.contains("ERR"), "{line}"),
            other => panic!("{user} {command:?}: {other:?}"),
        }
    }
}
