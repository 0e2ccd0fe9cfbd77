//! Every client's own identity: clients signed in as the same ACL user share one pool opened
//! with that user's credentials, Redis judges every credential, and what a user may not do
//! it may not do through cachet either (src/upstream/identity.rs, src/session/pinning.rs).

mod support;

use std::time::Duration;

use fred::prelude::*;
use support::acl::{admin, connections_of, connections_received, expect_connections, set_user};
use support::{Proxy, RawClient, RedisServer, fred_client};

const SETTLE: Duration = Duration::from_secs(5);

async fn whoami(client: &Client) -> String {
    client
        .custom(fred::cmd!("ACL"), vec!["WHOAMI"])
        .await
        .expect("ACL WHOAMI")
}

fn id_of(line: &str) -> &str {
    line.split(' ').find(|f| f.starts_with("id=")).expect("id=")
}

fn user_url(proxy: &Proxy, user: &str, password: &str) -> String {
    format!("redis://{user}:{password}@{}", proxy.addr)
}

/// Two fred clients signed in as alice share one pooled connection signed in as alice;
/// the second, with the same password, joins without cachet opening any connection; bob
/// gets a pool of his own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_one_user_share_one_pool() {
    let redis = RedisServer::start();
    let mut root = admin(&redis, None).await;
    set_user(&mut root, "alice", &["on", ">apw", "~*", "+@all"]).await;
    set_user(&mut root, "bob", &["on", ">bpw", "~*", "+@all"]).await;
    let proxy = Proxy::start(&redis.url()).await;

    let a1 = fred_client(&user_url(&proxy, "alice", "apw"), false).await;
    let _: () = a1.set("a1", "x", None, None, false).await.unwrap();
    let who: String = whoami(&a1).await;
    assert_eq!(who, "alice");
    let alice = expect_connections(&mut root, "alice", 1, SETTLE).await;
    assert!(alice[0].contains("name=cachet:pool"), "{alice:?}");

    let before = connections_received(&mut root).await;
    let a2 = fred_client(&user_url(&proxy, "alice", "apw"), false).await;
    let _: () = a2.set("a2", "y", None, None, false).await.unwrap();
    let got: String = a2.get("a1").await.unwrap();
    assert_eq!(got, "x");
    let who: String = whoami(&a2).await;
    assert_eq!(who, "alice");
    assert_eq!(
        connections_received(&mut root).await,
        before,
        "the same user and password joined the open pool without a connection"
    );
    let alice_now = expect_connections(&mut root, "alice", 1, SETTLE).await;
    assert_eq!(
        id_of(&alice_now[0]),
        id_of(&alice[0]),
        "the same connection"
    );

    let b = fred_client(&user_url(&proxy, "bob", "bpw"), false).await;
    let who: String = whoami(&b).await;
    assert_eq!(who, "bob");
    let bob = expect_connections(&mut root, "bob", 1, SETTLE).await;
    assert!(bob[0].contains("name=cachet:pool"), "{bob:?}");
    expect_connections(&mut root, "alice", 1, SETTLE).await;

    // A second password of alice's that Redis accepts joins the same pool.
    set_user(&mut root, "alice", &[">apw2"]).await;
    let a3 = fred_client(&user_url(&proxy, "alice", "apw2"), false).await;
    let got: String = a3.get("a2").await.unwrap();
    assert_eq!(got, "y");
    expect_connections(&mut root, "alice", 1, SETTLE).await;
    for c in [a1, a2, a3, b] {
        let _ = c.quit().await;
    }
}

/// A refused AUTH (or HELLO ... AUTH) gives Redis's own error and leaves the client as it
/// was: the command pipelined after it is judged as before, never as that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_never_lets_a_later_command_through() {
    let redis = RedisServer::start_with(&["--requirepass", "pw"]);
    let mut root = admin(&redis, Some("pw")).await;
    set_user(&mut root, "alice", &["on", ">apw", "~*", "+@all"]).await;
    let proxy = Proxy::start_with(&redis.url(), |c| {
        c.upstream.password = Some(cachet::config::Secret::new("pw"));
    })
    .await;

    // Each case three times: no pool of alice's yet, one opened by a client that signed in,
    // and again with that pool open (a wrong password must not join it).
    let mut keep = Vec::new();
    for round in 0..3 {
        for (sign_in, name) in [
            (vec!["AUTH", "alice", "wrong"], "AUTH"),
            (vec!["HELLO", "3", "AUTH", "alice", "wrong"], "HELLO"),
            (vec!["HELLO", "2", "AUTH", "alice", "wrong"], "HELLO"),
        ] {
            let mut c = RawClient::connect(proxy.addr).await.unwrap();
            let mut both = RawClient::encode(&sign_in);
            both.extend(RawClient::encode(&["GET", "k"]));
            c.send_raw(&both).await.unwrap();
            let refused = String::from_utf8_lossy(&c.read_frame().await.unwrap()).into_owned();
            assert!(
                refused.starts_with("-WRONGPASS"),
                "round {round}, {name}: {refused}"
            );
            let next = String::from_utf8_lossy(&c.read_frame().await.unwrap()).into_owned();
            assert_eq!(
                next, "-NOAUTH Authentication required.\r\n",
                "round {round}, {name}"
            );
        }
        // Signed in as alice, a refused AUTH as alice leaves it alice; as cachet's user,
        // one refused as another user leaves it cachet's.
        let mut signed = RawClient::connect(proxy.addr).await.unwrap();
        assert_eq!(signed.text(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
        let mut both = RawClient::encode(&["AUTH", "alice", "nope"]);
        both.extend(RawClient::encode(&["ACL", "WHOAMI"]));
        signed.send_raw(&both).await.unwrap();
        let refused = String::from_utf8_lossy(&signed.read_frame().await.unwrap()).into_owned();
        assert!(refused.starts_with("-WRONGPASS"), "{refused}");
        assert_eq!(
            String::from_utf8_lossy(&signed.read_frame().await.unwrap()),
            "$5\r\nalice\r\n"
        );
        let mut own = RawClient::connect(proxy.addr).await.unwrap();
        assert_eq!(own.text(&["AUTH", "pw"]).await, "+OK\r\n");
        let mut both = RawClient::encode(&["AUTH", "alice", "nope"]);
        both.extend(RawClient::encode(&["ACL", "WHOAMI"]));
        own.send_raw(&both).await.unwrap();
        let refused = String::from_utf8_lossy(&own.read_frame().await.unwrap()).into_owned();
        assert!(refused.starts_with("-WRONGPASS"), "{refused}");
        assert_eq!(
            String::from_utf8_lossy(&own.read_frame().await.unwrap()),
            "$7\r\ndefault\r\n"
        );
        keep.push(signed);
    }
    // HELLO 3 AUTH with the right password: RESP3 on alice's pool, cachet's id in HELLO.
    let mut c = RawClient::connect(proxy.addr).await.unwrap();
    c.send(&["HELLO", "3", "AUTH", "alice", "apw", "SETNAME", "h3"])
        .await
        .unwrap();
    let hello = String::from_utf8_lossy(&c.read_frame().await.unwrap()).into_owned();
    assert!(hello.starts_with('%'), "{hello}");
    assert_eq!(c.text(&["ACL", "WHOAMI"]).await, "$5\r\nalice\r\n");
    assert_eq!(c.text(&["CLIENT", "GETNAME"]).await, "$2\r\nh3\r\n");
}

/// A user's pool with no client for `user_pool_idle_secs` closes; a client coming after
/// opens it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_user_pool_closes() {
    let redis = RedisServer::start();
    let mut root = admin(&redis, None).await;
    set_user(&mut root, "alice", &["on", ">apw", "~*", "+@all"]).await;
    let proxy = Proxy::start_with(&redis.url(), |c| c.upstream.user_pool_idle_secs = 1).await;
    let mut c = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(c.text(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    assert_eq!(c.text(&["SET", "k", "v"]).await, "+OK\r\n");
    expect_connections(&mut root, "alice", 1, SETTLE).await;
    // Held by a client, it stays open past the idle time.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(connections_of(&mut root, "alice").await.len(), 1);
    drop(c);
    expect_connections(&mut root, "alice", 0, SETTLE).await;
    let mut again = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(again.text(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    assert_eq!(again.text(&["GET", "k"]).await, "$1\r\nv\r\n");
    expect_connections(&mut root, "alice", 1, SETTLE).await;
}

/// Past `max_user_pools` a client keeps the connection Redis signed it in on, and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_a_client_keeps_a_connection_of_its_own() {
    let redis = RedisServer::start();
    let mut root = admin(&redis, None).await;
    set_user(&mut root, "alice", &["on", ">apw", "~*", "+@all"]).await;
    set_user(&mut root, "bob", &["on", ">bpw", "~*", "+@all"]).await;
    let proxy = Proxy::start_with(&redis.url(), |c| c.upstream.max_user_pools = 1).await;
    let a = fred_client(&user_url(&proxy, "alice", "apw"), false).await;
    let _: () = a.set("k", "v", None, None, false).await.unwrap();
    let b1 = fred_client(&user_url(&proxy, "bob", "bpw"), false).await;
    let b2 = fred_client(&user_url(&proxy, "bob", "bpw"), true).await;
    for b in [&b1, &b2] {
        let got: String = b.get("k").await.unwrap();
        assert_eq!(got, "v");
        let who: String = whoami(b).await;
        assert_eq!(who, "bob");
    }
    let alice = expect_connections(&mut root, "alice", 1, SETTLE).await;
    assert!(alice[0].contains("name=cachet:pool"));
    let bob = expect_connections(&mut root, "bob", 2, SETTLE).await;
    assert!(
        bob.iter().all(|l| !l.contains("name=cachet:pool")),
        "one connection per client past the cap: {bob:?}"
    );
}

/// MULTI/EXEC and BLPOP of a client signed in as alice run on connections signed in as
/// alice: Redis enforces her ACL inside them, byte for byte as for alice directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_blocking_commands_run_as_the_user() {
    let redis = RedisServer::start();
    let mut root = admin(&redis, None).await;
    set_user(&mut root, "alice", &["on", ">apw", "~a:*", "+@all"]).await;
    let proxy = Proxy::start(&redis.url()).await;
    let mut direct = RawClient::connect(redis.addr()).await.unwrap();
    let mut proxied = RawClient::connect(proxy.addr).await.unwrap();
    for c in [&mut direct, &mut proxied] {
        assert_eq!(c.text(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    }
    let script: &[&[&str]] = &[
        &["MULTI"],
        &["SET", "a:1", "x"],
        &["SET", "b:1", "x"],
        &["EXEC"],
        &["MULTI"],
        &["SET", "a:2", "y"],
        &["ACL", "WHOAMI"],
        &["EXEC"],
        &["BLPOP", "b:q", "0.1"],
        &["BLPOP", "a:q", "0.1"],
        &["GET", "b:1"],
        &["GET", "a:2"],
    ];
    for command in script {
        let a = direct.command(command).await.unwrap();
        let b = proxied.command(command).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            "{command:?}"
        );
    }
    // The direct connection, alice's pool, and the spares the transactions and the BLPOP
    // ran on: one, or two when a MULTI came before the connection of the one before it was
    // back among the spares (given back off the session's task).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = connections_of(&mut root, "alice").await;
    let pools = lines
        .iter()
        .filter(|l| l.contains("name=cachet:pool"))
        .count();
    assert_eq!(pools, 1, "{lines:#?}");
    assert!((3..=4).contains(&lines.len()), "{lines:#?}");
}

/// cachet's own commands for a client on alice's pool: allowed exactly where the plain
/// command they stand for is, with Redis's own NOPERM; EMIT, WARM and POLICY only by an
/// `[[acl]]` grant; an ACL change through cachet is seen at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_commands_honour_the_callers_acl() {
    let redis = RedisServer::start();
    let mut root = admin(&redis, None).await;
    set_user(&mut root, "alice", &["on", ">apw", "~a:*", "+@all"]).await;
    set_user(&mut root, "bob", &["on", ">bpw", "~*", "+@all"]).await;
    let proxy = Proxy::start_with(&redis.url(), |c| {
        let grant: cachet::config::AclGrant = toml::from_str(
            "users = [\"bob\"]\nemit = [\"session.*\"]\nwarm = true\npolicy = true\n",
        )
        .expect("grant");
        c.acl = vec![grant];
    })
    .await;
    let mut own = RawClient::connect(proxy.addr).await.unwrap();
    let mut alice = RawClient::connect(proxy.addr).await.unwrap();
    let mut direct = RawClient::connect(redis.addr()).await.unwrap();
    for c in [&mut alice, &mut direct] {
        assert_eq!(c.text(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    }
    // cachet's user tags a key alice may not touch, under the tag she will invalidate.
    assert_eq!(
        own.text(&["TAGSET", "b:1", "x", "TAGS", "t"]).await,
        "+OK\r\n"
    );
    assert_eq!(
        alice
            .text(&["TAGSET", "a:1", "x", "EX", "100", "TAGS", "t"])
            .await,
        "+OK\r\n"
    );
    let same = |proxied: String, plain: String| {
        assert!(plain.starts_with("-NOPERM"), "{plain}");
        assert_eq!(proxied, plain);
    };
    same(
        alice.text(&["TAGSET", "b:2", "x", "TAGS", "t"]).await,
        direct.text(&["SET", "b:2", "x"]).await,
    );
    same(
        alice.text(&["TAGINVALIDATE", "t"]).await,
        direct.text(&["DEL", "a:1", "b:1"]).await,
    );
    assert_eq!(
        own.text(&["EXISTS", "a:1", "b:1"]).await,
        ":2\r\n",
        "nothing deleted"
    );
    same(
        alice.text(&["TAGS", "b:1"]).await,
        direct.text(&["EXISTS", "b:1"]).await,
    );
    same(
        alice.text(&["TAG", "b:1", "u"]).await,
        direct.text(&["EXISTS", "b:1"]).await,
    );
    same(
        alice.text(&["TAGKEYS", "t"]).await,
        direct.text(&["EXISTS", "a:1", "b:1"]).await,
    );
    assert_eq!(alice.text(&["TAGS", "a:1"]).await, "*1\r\n$1\r\nt\r\n");
    for refused in [
        &["EMIT", "session.ended"][..],
        &["WARM", "w", "k"],
        &["POLICY", "RELOAD"],
    ] {
        let reply = alice.text(refused).await;
        assert!(
            reply.starts_with("-NOPERM User alice has no permissions to"),
            "{refused:?}: {reply}"
        );
    }
    // bob's grant lets him EMIT matching events (no policy handles them here: 0 called).
    let mut bob = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(bob.text(&["AUTH", "bob", "bpw"]).await, "+OK\r\n");
    assert!(
        !bob.text(&["EMIT", "session.ended"])
            .await
            .starts_with("-NOPERM")
    );
    assert!(
        bob.text(&["EMIT", "teacher.x"])
            .await
            .starts_with("-NOPERM")
    );
    // An ACL change through cachet is seen at once, not after the cache's second.
    assert_eq!(
        own.text(&["ACL", "SETUSER", "alice", "~b:*"]).await,
        "+OK\r\n"
    );
    assert_eq!(alice.text(&["TAGINVALIDATE", "t"]).await, ":2\r\n");
    assert_eq!(own.text(&["EXISTS", "a:1", "b:1"]).await, ":0\r\n");
}

/// A rule-matched write of a client on alice's pool is checked as alice and tagged by
/// cachet: allowed, it is in the index; refused, Redis's own NOPERM and nothing written. A
/// pipeline keeps its order across the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_rule_matched_writes_are_checked_then_tagged() {
    let redis = RedisServer::start();
    let mut root = admin(&redis, None).await;
    set_user(&mut root, "alice", &["on", ">apw", "~a:*", "~b:*", "+@all"]).await;
    let proxy = Proxy::start_with(&redis.url(), |c| {
        let rules = "[[rules]]\npattern = \"a:*\"\ntags = [\"ta\"]\n\n[[rules]]\npattern = \"c:*\"\ntags = [\"tc\"]\n";
        c.rules = cachet::Config::from_toml(rules, "rules").unwrap().rules;
    })
    .await;
    let mut own = RawClient::connect(proxy.addr).await.unwrap();
    let mut alice = RawClient::connect(proxy.addr).await.unwrap();
    let mut direct = RawClient::connect(redis.addr()).await.unwrap();
    for c in [&mut alice, &mut direct] {
        assert_eq!(c.text(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    }
    let mut pipeline = Vec::new();
    for command in [
        &["SET", "a:1", "1"][..],
        &["INCR", "a:1"],
        &["SET", "b:1", "x"],
        &["HSET", "a:h", "f", "v"],
        &["SET", "c:1", "x"],
        &["GET", "a:1"],
    ] {
        pipeline.extend(RawClient::encode(command));
    }
    alice.send_raw(&pipeline).await.unwrap();
    let mut replies = Vec::new();
    for _ in 0..6 {
        replies.push(String::from_utf8_lossy(&alice.read_frame().await.unwrap()).into_owned());
    }
    let refused = direct.text(&["SET", "c:1", "x"]).await;
    assert!(refused.starts_with("-NOPERM"), "{refused}");
    assert_eq!(
        replies,
        [
            "+OK\r\n",
            ":2\r\n",
            "+OK\r\n",
            ":1\r\n",
            refused.as_str(),
            "$1\r\n2\r\n"
        ]
    );
    assert_eq!(own.text(&["TAGS", "a:1"]).await, "*1\r\n$2\r\nta\r\n");
    assert_eq!(own.text(&["TAGS", "a:h"]).await, "*1\r\n$2\r\nta\r\n");
    assert_eq!(own.text(&["EXISTS", "c:1"]).await, ":0\r\n");
    assert_eq!(own.text(&["TAGINVALIDATE", "ta"]).await, ":2\r\n");
    assert_eq!(own.text(&["EXISTS", "a:1", "a:h", "b:1"]).await, ":1\r\n");
}

/// TAGINVALIDATE checks every key under the tag, in chunks of 1000, before deleting any:
/// one forbidden key among 2,500 refuses the whole call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taginvalidate_checks_every_chunk_before_deleting() {
    let redis = RedisServer::start();
    let mut root = admin(&redis, None).await;
    set_user(&mut root, "alice", &["on", ">apw", "~a:*", "+@all"]).await;
    let proxy = Proxy::start(&redis.url()).await;
    let mut own = RawClient::connect(proxy.addr).await.unwrap();
    let mut pipeline = Vec::new();
    for i in 0..2500 {
        let key = if i == 2222 {
            "z:late".to_owned()
        } else {
            format!("a:{i}")
        };
        pipeline.extend(RawClient::encode(&["TAGSET", &key, "v", "TAGS", "big"]));
    }
    own.send_raw(&pipeline).await.unwrap();
    for _ in 0..2500 {
        assert_eq!(own.read_frame().await.unwrap().as_ref(), b"+OK\r\n");
    }
    let mut alice = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(alice.text(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    let refused = alice.text(&["TAGINVALIDATE", "big"]).await;
    assert!(refused.starts_with("-NOPERM"), "{refused}");
    assert_eq!(
        own.text(&["EXISTS", "a:0", "a:1999", "a:2499", "z:late"])
            .await,
        ":4\r\n",
        "nothing deleted, not even the chunks checked before the refusal"
    );
    // With the rights, all of it goes (the decision cache is emptied by the ACL change).
    assert_eq!(
        own.text(&["ACL", "SETUSER", "alice", "~z:*"]).await,
        "+OK\r\n"
    );
    assert_eq!(alice.text(&["TAGINVALIDATE", "big"]).await, ":2500\r\n");
}

/// A password that is not UTF-8 cannot be kept for a pool: such a client keeps the
/// connection Redis signed it in on, and works. RESET takes a client on a user's pool back
/// to a new connection's state (cachet's pool, not signed in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_passwords_and_reset() {
    let redis = RedisServer::start_with(&["--requirepass", "pw"]);
    let mut root = admin(&redis, Some("pw")).await;
    let rule = [b'>', 0xff, 0xfe];
    let reply = root
        .command(&[
            &b"ACL"[..],
            b"SETUSER",
            b"bin",
            b"on",
            &rule,
            b"~*",
            b"+@all",
        ])
        .await
        .unwrap();
    assert_eq!(reply.as_ref(), b"+OK\r\n");
    set_user(&mut root, "alice", &["on", ">apw", "~*", "+@all"]).await;
    let proxy = Proxy::start_with(&redis.url(), |c| {
        c.upstream.password = Some(cachet::config::Secret::new("pw"));
    })
    .await;
    let mut bin = RawClient::connect(proxy.addr).await.unwrap();
    let reply = bin
        .command(&[&b"AUTH"[..], b"bin", &[0xff, 0xfe]])
        .await
        .unwrap();
    assert_eq!(reply.as_ref(), b"+OK\r\n");
    assert_eq!(bin.text(&["ACL", "WHOAMI"]).await, "$3\r\nbin\r\n");
    let bins = expect_connections(&mut root, "bin", 1, SETTLE).await;
    assert!(!bins[0].contains("name=cachet:pool"), "{bins:?}");

    let mut alice = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(alice.text(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    assert_eq!(alice.text(&["ACL", "WHOAMI"]).await, "$5\r\nalice\r\n");
    assert_eq!(alice.text(&["RESET"]).await, "+RESET\r\n");
    assert_eq!(
        alice.text(&["GET", "k"]).await,
        "-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(alice.text(&["AUTH", "pw"]).await, "+OK\r\n");
    assert_eq!(alice.text(&["ACL", "WHOAMI"]).await, "$7\r\ndefault\r\n");
}

/// CLIENT LIST, INFO and KILL from a client on a user's pool act on cachet's clients, as for
/// cachet's own user, once Redis says that user may run them: cachet's connections to Redis
/// stay out of reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_of_a_user_act_on_cachets_clients_if_redis_allows() {
    let redis = RedisServer::start();
    let mut root = admin(&redis, None).await;
    set_user(&mut root, "alice", &["on", ">apw", "~*", "+@all"]).await;
    set_user(
        &mut root,
        "carol",
        &["on", ">cpw", "~*", "+@all", "-client|kill", "-client|list"],
    )
    .await;
    let proxy = Proxy::start(&redis.url()).await;
    let mut own = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(own.text(&["CLIENT", "SETNAME", "victim"]).await, "+OK\r\n");
    let mut alice = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(alice.text(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    let list = alice.command(&["CLIENT", "LIST"]).await.unwrap();
    let list = String::from_utf8_lossy(support::resp::Value::parse(&list).bytes()).into_owned();
    assert!(
        list.contains("name=victim") && list.contains("user=alice"),
        "{list}"
    );
    assert!(!list.contains("cachet:pool"), "{list}");
    let info = alice.command(&["CLIENT", "INFO"]).await.unwrap();
    let info = String::from_utf8_lossy(support::resp::Value::parse(&info).bytes()).into_owned();
    assert!(
        info.contains("user=alice") && info.contains("id=4294967"),
        "{info}"
    );

    let mut carol = RawClient::connect(proxy.addr).await.unwrap();
    let mut direct = RawClient::connect(redis.addr()).await.unwrap();
    for (c, at) in [(&mut carol, "cachet"), (&mut direct, "Redis")] {
        assert_eq!(c.text(&["AUTH", "carol", "cpw"]).await, "+OK\r\n", "{at}");
    }
    for command in [
        &["CLIENT", "LIST"][..],
        &["CLIENT", "KILL", "USER", "default"],
    ] {
        let plain = direct.text(command).await;
        assert!(plain.starts_with("-NOPERM"), "{plain}");
        assert_eq!(carol.text(command).await, plain, "{command:?}");
    }
    assert!(!own.closed_within(Duration::from_millis(200)).await);

    // alice may: cachet's client signed in as default goes, cachet's pool stays.
    assert_eq!(
        alice.text(&["CLIENT", "KILL", "USER", "default"]).await,
        ":1\r\n"
    );
    assert!(own.closed_within(Duration::from_secs(2)).await);
    let mut later = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(later.text(&["PING"]).await, "+PONG\r\n");
    assert_eq!(alice.text(&["ACL", "WHOAMI"]).await, "$5\r\nalice\r\n");
}

/// SUBSCRIBE of a client on alice's pool runs on a connection signed in as alice: her
/// channel rules hold, byte for byte as for alice directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_run_as_the_user() {
    let redis = RedisServer::start();
    let mut root = admin(&redis, None).await;
    set_user(
        &mut root,
        "alice",
        &["on", ">apw", "~*", "resetchannels", "&ok*", "+@all"],
    )
    .await;
    let proxy = Proxy::start(&redis.url()).await;
    let mut direct = RawClient::connect(redis.addr()).await.unwrap();
    let mut proxied = RawClient::connect(proxy.addr).await.unwrap();
    for c in [&mut direct, &mut proxied] {
        assert_eq!(c.text(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    }
    for command in [&["SUBSCRIBE", "no"][..], &["SUBSCRIBE", "ok1"]] {
        let a = direct.command(command).await.unwrap();
        let b = proxied.command(command).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            "{command:?}"
        );
    }
    assert_eq!(root.text(&["PUBLISH", "ok1", "hi"]).await, ":2\r\n");
    let message = proxied.read_frame().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&message),
        "*3\r\n$7\r\nmessage\r\n$3\r\nok1\r\n$2\r\nhi\r\n"
    );
}
