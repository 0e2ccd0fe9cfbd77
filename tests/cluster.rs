//! Redis Cluster behind cachet (issue 18), end to end: a 3-primary, 3-replica cluster of our
//! own (`support::cluster`), cachet in this process on `redis-cluster://`, and clients that
//! know nothing of the cluster (a raw RESP client, fred in centralized mode, redis-cli)
//! pointed at cachet.
//!
//! What is shown: single-key commands on every slot; MGET/MSET/DEL/UNLINK/EXISTS/TOUCH split
//! across slots with replies in the client's order; DBSIZE summed, KEYS and SCAN across the
//! nodes; CROSSSLOT where Redis Cluster gives it (MSETNX, a transaction or a script across
//! slots); transactions and scripts on one slot; blocking pops, SUBSCRIBE and SSUBSCRIBE; all
//! of it in RESP2 and RESP3. Then the tagging flow and EMIT, resharding and a failover under
//! load, and a TAGINVALIDATE of 100,000 keys on all three primaries. The load tests print
//! their figures: run with `--nocapture` to read them.
//!
//! Each test starts its own cluster. The three heavy ones (resharding, failover, the big
//! invalidation) take [`HEAVY`] so that they do not share the machine with each other: their
//! time limits are about cachet, not about a neighbour's load.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::cmd;
use fred::prelude::*;
use support::cluster::{Cluster, slot};
use support::resp::Value;
use support::{Proxy, RawClient};

const CROSSSLOT: &str = "-CROSSSLOT Keys in request don't hash to the same slot\r\n";

/// Taken by the load tests, one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A raw client on cachet, in RESP3 after `HELLO 3` if `resp3`.
async fn connect(proxy: &Proxy, resp3: bool) -> RawClient {
    let mut c = RawClient::connect(proxy.addr)
        .await
        .expect("connect to cachet");
    if resp3 {
        let hello = c.text(&["HELLO", "3"]).await;
        assert!(hello.starts_with('%'), "HELLO 3: {hello}");
    }
    c
}

/// The reply to `args` (owned strings), decoded.
async fn call(c: &mut RawClient, args: &[String]) -> Value {
    let raw = tokio::time::timeout(Duration::from_secs(10), c.command(args))
        .await
        .unwrap_or_else(|_| panic!("{args:?}: no reply in 10 s"))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    Value::parse(&raw)
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.items()
        .iter()
        .map(|i| String::from_utf8_lossy(i.bytes()).into_owned())
        .collect()
}

/// Keys `prefix0, prefix1, ...` until every primary owns at least `per_primary` of them.
fn keys_everywhere(cluster: &Cluster, prefix: &str, per_primary: usize) -> Vec<String> {
    let primaries = cluster.primaries();
    let ranges: Vec<(u16, Vec<(u16, u16)>)> = primaries
        .iter()
        .map(|p| (*p, cluster.slots_of(*p)))
        .collect();
    let owner = |key: &str| {
        let s = slot(key);
        ranges
            .iter()
            .find(|(_, r)| r.iter().any(|(a, b)| (*a..=*b).contains(&s)))
            .map(|(p, _)| *p)
            .expect("every slot is owned")
    };
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    let mut keys = Vec::new();
    for n in 0.. {
        let key = format!("{prefix}{n}");
        *counts.entry(owner(&key)).or_default() += 1;
        keys.push(key);
        if counts.len() == primaries.len() && counts.values().all(|c| *c >= per_primary) {
            return keys;
        }
    }
    unreachable!()
}

/// SCAN through cachet to the end, `COUNT count`; every key returned, duplicates kept.
async fn scan_all(c: &mut RawClient, extra: &[&str]) -> Vec<String> {
    let mut cursor = "0".to_owned();
    let mut keys = Vec::new();
    for _ in 0..100_000 {
        let mut args = owned(&["SCAN", &cursor]);
        args.extend(owned(extra));
        let reply = call(c, &args).await;
        let items = reply.items();
        cursor = String::from_utf8_lossy(items[0].bytes()).into_owned();
        keys.extend(strings(&items[1]));
        if cursor == "0" {
            return keys;
        }
    }
    panic!("SCAN did not finish in 100,000 calls");
}

/// The fixture itself, without cachet: the cluster forms whole, a reshard moves slots, a
/// SIGKILLed primary's replica is promoted, and dropping the cluster ends every process and
/// removes its directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_fixture_forms_reshards_fails_over_and_cleans_up() {
    let mut cluster = Cluster::start(3, 1);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    for p in &primaries {
        assert_eq!(cluster.replicas_of(*p).len(), 1, "a replica of {p}");
    }
    let key = cluster.keys_on(primaries[2], "fixture:", 1).remove(0);
    let owner = cluster.node(primaries[2]);
    assert_eq!(
        owner.command(&["SET", &key, "v"]),
        Ok(Value::Simple("OK".into()))
    );
    let count = |slots: Vec<(u16, u16)>| -> usize {
        slots.iter().map(|(a, b)| usize::from(b - a) + 1).sum()
    };
    let before = count(cluster.slots_of(primaries[1]));
    let mut reshard = cluster.reshard(primaries[0], primaries[1], 100);
    reshard.wait(Duration::from_secs(60)).await;
    assert_eq!(
        count(cluster.slots_of(primaries[1])),
        before + 100,
        "{}",
        reshard.output()
    );
    let replica = cluster.replicas_of(primaries[2])[0];
    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    let killed = cluster.kill(primaries[2]);
    let promoted = cluster.wait_master(replica, Duration::from_secs(30)).await;
    println!(
        "fixture: promotion {} ms after the SIGKILL",
        (promoted - killed).as_millis()
    );
    cluster
        .wait_owner(slot(&key), replica, Duration::from_secs(10))
        .await;
    let value = cluster.node(replica).command(&["GET", &key]);
    assert_eq!(
        value,
        Ok(Value::Bulk(b"v".to_vec())),
        "the replica had the key"
    );
    let dir = cluster.dir().to_owned();
    drop(cluster);
    assert!(!dir.exists(), "the cluster's directory is removed");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "node process {pid} still runs"
        );
    }
}

/// Routing, splitting and fan-out through cachet, in RESP2 and then RESP3 on the same cluster
/// (FLUSHALL in between, which must reach every primary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_route_split_and_fan_out_across_slots() {
    let cluster = Cluster::start(3, 1);
    let proxy = cluster.start_proxy("").await;
    for resp3 in [false, true] {
        let label = if resp3 { "RESP3" } else { "RESP2" };
        let mut c = connect(&proxy, resp3).await;
        assert_eq!(c.text(&["PING"]).await, "+PONG\r\n", "{label}");
        let keys = keys_everywhere(&cluster, "k:", 20);

        // Single-key commands on every primary's slots.
        for (i, key) in keys.iter().enumerate() {
            let set = call(&mut c, &owned(&["SET", key, &format!("v{i}")])).await;
            assert_eq!(set, Value::Simple("OK".into()), "{label} SET {key}");
        }
        for (i, key) in keys.iter().enumerate() {
            let got = call(&mut c, &owned(&["GET", key])).await;
            assert_eq!(
                got,
                Value::Bulk(format!("v{i}").into_bytes()),
                "{label} GET {key}"
            );
        }
        assert_eq!(
            cluster.dbsize(),
            keys.len() as i64,
            "{label}: the keys are in the cluster"
        );

        // Multi-key commands across slots: split, merged in the client's order.
        let mut mget = vec!["MGET".to_owned()];
        mget.extend(keys.iter().rev().cloned());
        mget.insert(3, "k:missing".into());
        let got = call(&mut c, &mget).await;
        let mut want: Vec<Value> = (0..keys.len())
            .rev()
            .map(|i| Value::Bulk(format!("v{i}").into_bytes()))
            .collect();
        want.insert(2, Value::Nil);
        assert_eq!(
            got,
            Value::Array(want),
            "{label} MGET in the client's order"
        );

        let m: Vec<String> = keys_everywhere(&cluster, "m:", 3);
        let mut mset = vec!["MSET".to_owned()];
        for (i, key) in m.iter().enumerate() {
            mset.extend([key.clone(), format!("m{i}")]);
        }
        assert_eq!(
            call(&mut c, &mset).await,
            Value::Simple("OK".into()),
            "{label} MSET"
        );
        for (i, key) in m.iter().enumerate() {
            assert_eq!(
                call(&mut c, &owned(&["GET", key])).await,
                Value::Bulk(format!("m{i}").into_bytes()),
                "{label} MSET wrote {key}"
            );
        }
        let mut exists = vec!["EXISTS".to_owned()];
        exists.extend(m.iter().cloned());
        exists.push("m:nosuch".into());
        exists.push(m[0].clone());
        assert_eq!(
            call(&mut c, &exists).await,
            Value::Int(m.len() as i64 + 1),
            "{label} EXISTS counts a repeated key twice, across slots"
        );
        let mut touch = vec!["TOUCH".to_owned()];
        touch.extend(m.iter().cloned());
        touch.push("m:nosuch".into());
        assert_eq!(
            call(&mut c, &touch).await,
            Value::Int(m.len() as i64),
            "{label} TOUCH"
        );
        let half = m.len() / 2;
        let mut del = vec!["DEL".to_owned()];
        del.extend(m[..half].iter().cloned());
        del.push("m:nosuch".into());
        assert_eq!(
            call(&mut c, &del).await,
            Value::Int(half as i64),
            "{label} DEL"
        );
        let mut unlink = vec!["UNLINK".to_owned()];
        unlink.extend(m.iter().cloned());
        assert_eq!(
            call(&mut c, &unlink).await,
            Value::Int((m.len() - half) as i64),
            "{label} UNLINK"
        );
        let mut gone = vec!["EXISTS".to_owned()];
        gone.extend(m.iter().cloned());
        assert_eq!(
            call(&mut c, &gone).await,
            Value::Int(0),
            "{label} all deleted"
        );

        // Keyless commands over every node.
        assert_eq!(
            call(&mut c, &owned(&["DBSIZE"])).await,
            Value::Int(cluster.dbsize()),
            "{label} DBSIZE is the sum over the primaries"
        );
        let all: BTreeSet<String> = keys.iter().cloned().collect();
        let listed = strings(&call(&mut c, &owned(&["KEYS", "*"])).await);
        assert_eq!(listed.len(), all.len(), "{label} KEYS: no key twice");
        assert_eq!(
            listed.into_iter().collect::<BTreeSet<_>>(),
            all,
            "{label} KEYS"
        );
        let scanned = scan_all(&mut c, &["COUNT", "7"]).await;
        assert_eq!(
            scanned.len(),
            all.len(),
            "{label} SCAN: every key exactly once"
        );
        assert_eq!(
            scanned.into_iter().collect::<BTreeSet<_>>(),
            all,
            "{label} SCAN"
        );
        let matched = scan_all(&mut c, &["MATCH", "k:1*", "COUNT", "5"]).await;
        let want: BTreeSet<String> = all
            .iter()
            .filter(|k| k.starts_with("k:1"))
            .cloned()
            .collect();
        assert_eq!(matched.len(), want.len(), "{label} SCAN MATCH: once each");
        assert_eq!(
            matched.into_iter().collect::<BTreeSet<_>>(),
            want,
            "{label} SCAN MATCH"
        );

        // MSETNX cannot be split without losing its all-or-nothing: CROSSSLOT, nothing set.
        let (a, b) = (
            &keys[0],
            keys.iter().find(|k| slot(k) != slot(&keys[0])).unwrap(),
        );
        assert_eq!(
            c.text(&["MSETNX", "x:{a}1", "1", "x:{b}2", "2"]).await,
            CROSSSLOT,
            "{label} MSETNX across slots"
        );
        assert_eq!(c.text(&["EXISTS", "x:{a}1"]).await, ":0\r\n");
        assert_eq!(
            c.text(&["MSETNX", "x:{a}1", "1", "x:{a}2", "2"]).await,
            ":1\r\n"
        );
        assert_eq!(
            c.text(&["MSETNX", "x:{a}1", "1", "x:{a}3", "3"]).await,
            ":0\r\n"
        );

        // A transaction on one hash tag runs; one across slots fails as Redis Cluster fails it.
        assert_eq!(c.text(&["MULTI"]).await, "+OK\r\n");
        assert_eq!(c.text(&["SET", "tx:{t}a", "1"]).await, "+QUEUED\r\n");
        assert_eq!(c.text(&["INCR", "tx:{t}b"]).await, "+QUEUED\r\n");
        assert_eq!(c.text(&["GET", "tx:{t}a"]).await, "+QUEUED\r\n");
        let exec = call(&mut c, &owned(&["EXEC"])).await;
        assert_eq!(
            exec,
            Value::Array(vec![
                Value::Simple("OK".into()),
                Value::Int(1),
                Value::Bulk(b"1".to_vec())
            ]),
            "{label} EXEC on one slot"
        );
        let mut across = Vec::new();
        across.push(c.text(&["MULTI"]).await);
        across.push(c.text(&["SET", a, "changed"]).await);
        across.push(c.text(&["SET", b, "changed"]).await);
        let exec = c.text(&["EXEC"]).await;
        assert!(
            exec.starts_with('-'),
            "{label} EXEC across slots must fail: {across:?} then {exec}"
        );
        assert!(
            across.iter().chain([&exec]).any(|r| r == CROSSSLOT),
            "{label} a transaction across slots gets CROSSSLOT: {across:?} then {exec}"
        );
        assert_ne!(
            c.text(&["GET", a]).await,
            "$7\r\nchanged\r\n",
            "{label} nothing ran"
        );
        assert_ne!(
            c.text(&["GET", b]).await,
            "$7\r\nchanged\r\n",
            "{label} nothing ran"
        );
        // WATCH on one slot, aborted by another client's write.
        let mut other = connect(&proxy, resp3).await;
        assert_eq!(c.text(&["WATCH", "tx:{t}a"]).await, "+OK\r\n");
        assert_eq!(other.text(&["SET", "tx:{t}a", "theirs"]).await, "+OK\r\n");
        assert_eq!(c.text(&["MULTI"]).await, "+OK\r\n");
        assert_eq!(c.text(&["SET", "tx:{t}a", "mine"]).await, "+QUEUED\r\n");
        let aborted = call(&mut c, &owned(&["EXEC"])).await;
        assert_eq!(aborted, Value::Nil, "{label} WATCH aborts the EXEC");
        assert_eq!(c.text(&["GET", "tx:{t}a"]).await, "$6\r\ntheirs\r\n");

        // Scripts run on the node of their keys' slot.
        let script =
            "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('MGET', KEYS[1], KEYS[2])";
        let got = call(
            &mut c,
            &owned(&["EVAL", script, "2", "lua:{s}1", "lua:{s}2", "hello"]),
        )
        .await;
        assert_eq!(
            got,
            Value::Array(vec![Value::Bulk(b"hello".to_vec()), Value::Nil]),
            "{label} EVAL on one slot"
        );
        assert_eq!(c.text(&["GET", "lua:{s}1"]).await, "$5\r\nhello\r\n");
        let cross = c
            .text(&["EVAL", "return redis.call('GET', KEYS[1])", "2", a, b])
            .await;
        assert_eq!(cross, CROSSSLOT, "{label} EVAL across slots");

        // PING is answered; FLUSHALL reaches every primary.
        assert_eq!(c.text(&["PING", "hi"]).await, "$2\r\nhi\r\n");
        assert_eq!(c.text(&["FLUSHALL"]).await, "+OK\r\n", "{label} FLUSHALL");
        assert_eq!(
            cluster.dbsize(),
            0,
            "{label}: FLUSHALL emptied every primary"
        );
        assert_eq!(c.text(&["DBSIZE"]).await, ":0\r\n");
    }
}

/// Reads one pushed frame (a message or a blocking command's reply) within 5 s.
async fn pushed(c: &mut RawClient, what: &str) -> Value {
    let raw = c
        .read_frame_timeout(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{what}: nothing arrived: {e}"));
    Value::parse(&raw)
}

/// The first two elements of a (un)subscribe confirmation, as text.
fn kind_and_channel(v: &Value) -> Vec<String> {
    let Value::Array(items) = v else {
        panic!("expected a (un)subscribe confirmation, got {v:?}");
    };
    items[..2]
        .iter()
        .map(|i| String::from_utf8_lossy(i.bytes()).into_owned())
        .collect()
}

fn bulks(items: &[&str]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|i| Value::Bulk(i.as_bytes().to_vec()))
            .collect(),
    )
}

/// Blocking pops woken by another client, SUBSCRIBE/PUBLISH (which the cluster propagates to
/// every node) and SSUBSCRIBE/SPUBLISH (on the channel's slot owner), in RESP2 and RESP3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_commands_and_pubsub_reach_the_right_node() {
    let cluster = Cluster::start(3, 1);
    let proxy = cluster.start_proxy("").await;
    for resp3 in [false, true] {
        let label = if resp3 { "RESP3" } else { "RESP2" };
        let mut waiter = connect(&proxy, resp3).await;
        let mut writer = connect(&proxy, resp3).await;
        // One queue per primary.
        let queues = keys_everywhere(&cluster, &format!("q{label}:"), 1);
        let owners: BTreeSet<u16> = queues.iter().map(|q| cluster.primary_for_key(q)).collect();
        let queues: Vec<String> = owners
            .iter()
            .map(|p| {
                queues
                    .iter()
                    .find(|q| cluster.primary_for_key(q) == *p)
                    .unwrap()
                    .clone()
            })
            .collect();
        for q in &queues {
            waiter.send(&["BLPOP", q, "5"]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(writer.text(&["LPUSH", q, "hello"]).await, ":1\r\n");
            assert_eq!(
                pushed(&mut waiter, "BLPOP").await,
                bulks(&[q, "hello"]),
                "{label} BLPOP {q} on node {}",
                cluster.primary_for_key(q)
            );
        }
        // The waiter is still an ordinary client afterwards.
        assert_eq!(waiter.text(&["SET", &queues[0], "x"]).await, "+OK\r\n");

        // SUBSCRIBE: a message published through another client arrives.
        let mut sub = connect(&proxy, resp3).await;
        sub.send(&["SUBSCRIBE", "news", "weather"]).await.unwrap();
        assert_eq!(
            kind_and_channel(&pushed(&mut sub, "subscribe").await),
            ["subscribe", "news"]
        );
        pushed(&mut sub, "subscribe").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = writer.text(&["PUBLISH", "news", "hi"]).await;
        assert!(n.starts_with(':'), "{label} PUBLISH: {n}");
        assert_eq!(
            pushed(&mut sub, "message").await,
            bulks(&["message", "news", "hi"]),
            "{label} SUBSCRIBE delivers"
        );
        // SSUBSCRIBE on a channel of each primary.
        let channels = keys_everywhere(&cluster, &format!("ch{label}:"), 1);
        let mut shard_channels = BTreeMap::new();
        for ch in &channels {
            shard_channels
                .entry(cluster.primary_for_key(ch))
                .or_insert(ch.clone());
        }
        let mut ssub = connect(&proxy, resp3).await;
        for ch in shard_channels.values() {
            ssub.send(&["SSUBSCRIBE", ch]).await.unwrap();
            assert_eq!(
                kind_and_channel(&pushed(&mut ssub, "ssubscribe").await),
                ["ssubscribe", ch.as_str()],
                "{label} SSUBSCRIBE {ch}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (node, ch) in &shard_channels {
            let n = writer.text(&["SPUBLISH", ch, "hey"]).await;
            assert_eq!(n, ":1\r\n", "{label} SPUBLISH {ch} (node {node})");
            assert_eq!(
                pushed(&mut ssub, "smessage").await,
                bulks(&["smessage", ch, "hey"]),
                "{label} SSUBSCRIBE {ch} delivers"
            );
        }
        writer.text(&["FLUSHALL"]).await;
    }
}

/// A fred client in centralized mode (it knows nothing of the cluster) on cachet; its command
/// attempts are 1, so a connection cachet drops is an error here, not a silent retry.
async fn fred(proxy: &Proxy, resp3: bool) -> Client {
    let mut config = Config::from_url(&proxy.url()).expect("url");
    if resp3 {
        config.version = fred::types::RespVersion::RESP3;
    }
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.max_command_attempts = 1;
        })
        .set_policy(ReconnectPolicy::new_constant(0, 50))
        .build()
        .expect("build fred client");
    client.init().await.expect("fred connects");
    client
}

fn redis_cli(proxy: &Proxy, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &proxy.addr.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// fred (RESP2 and RESP3) and redis-cli, both non-cluster clients, through cachet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_and_redis_cli_in_non_cluster_mode() {
    let cluster = Cluster::start(3, 1);
    let proxy = cluster.start_proxy("").await;
    let keys = keys_everywhere(&cluster, "f:", 5);
    for resp3 in [false, true] {
        let client = fred(&proxy, resp3).await;
        let pairs: Vec<(String, String)> = keys
            .iter()
            .map(|k| (k.clone(), format!("{k}={resp3}")))
            .collect();
        let _: () = client.mset(pairs.clone()).await.expect("MSET");
        let got: Vec<Option<String>> = client.mget(keys.clone()).await.expect("MGET");
        let want: Vec<Option<String>> = pairs.iter().map(|(_, v)| Some(v.clone())).collect();
        assert_eq!(got, want, "fred MGET, resp3={resp3}");
        for (k, v) in &pairs {
            let got: Option<String> = client.get(k).await.expect("GET");
            assert_eq!(got.as_ref(), Some(v));
        }
        let n: u64 = client.exists(keys.clone()).await.expect("EXISTS");
        assert_eq!(n as usize, keys.len());
        let _: i64 = client
            .hset("h:{x}", vec![("a", "1"), ("b", "2")])
            .await
            .expect("HSET");
        let h: std::collections::HashMap<String, String> =
            client.hgetall("h:{x}").await.expect("HGETALL");
        assert_eq!(h.len(), 2, "HGETALL, resp3={resp3}");
        let dbsize: u64 = client.dbsize().await.expect("DBSIZE");
        assert_eq!(dbsize as i64, cluster.dbsize(), "DBSIZE, resp3={resp3}");
        let n: u64 = client.del(keys.clone()).await.expect("DEL");
        assert_eq!(n as usize, keys.len(), "DEL across slots, resp3={resp3}");
        let _: u64 = client.del("h:{x}").await.expect("DEL");
        client.quit().await.expect("QUIT");
    }
    // redis-cli, one process per command, as an operator types them.
    let mut mset = vec!["MSET"];
    for k in &keys {
        mset.extend([k.as_str(), "cli"]);
    }
    assert_eq!(redis_cli(&proxy, &mset), "OK\n");
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    assert_eq!(redis_cli(&proxy, &mget), "cli\n".repeat(keys.len()));
    assert_eq!(
        redis_cli(&proxy, &["DBSIZE"]),
        format!("{}\n", keys.len()),
        "redis-cli DBSIZE"
    );
    let mut listed: Vec<String> = redis_cli(&proxy, &["--scan"])
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(listed, want, "redis-cli --scan");
    let resp3 = redis_cli(&proxy, &["-3", "MGET", &keys[0], "nosuch"]);
    // Not a terminal: redis-cli prints values raw, nil as an empty line.
    assert_eq!(resp3, "cli\n\n", "redis-cli -3");
    let mut del = vec!["DEL"];
    del.extend(keys.iter().map(String::as_str));
    assert_eq!(redis_cli(&proxy, &del), format!("{}\n", keys.len()));
}

/// The README's rules and the sessions policy (policies/sessions).
fn tagging_config(policy: &std::path::Path) -> String {
    format!(
        r#"
[ttl]
session-list = 300
school-data = 600

[[rules]]
pattern = "sessions:teacher:{{teacher}}"
tags = ["teacher:{{teacher}}", "sessions"]
ttl = "session-list"

[[policies]]
name = "sessions"
module = {:?}
events = ["session.*"]
timeout_ms = 500
"#,
        policy.display().to_string()
    )
}

/// A map reply (RESP3 map or RESP2 flat array) from fred as (key, value) pairs.
fn fred_pairs(reply: &fred::types::Value) -> Vec<(String, fred::types::Value)> {
    use fred::types::Value as F;
    match reply {
        F::Map(map) => map
            .clone()
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().expect("key").to_string(), v.clone()))
            .collect(),
        F::Array(items) => items
            .chunks(2)
            .map(|p| (p[0].as_string().expect("key"), p[1].clone()))
            .collect(),
        other => panic!("not a map: {other:?}"),
    }
}

fn fred_field(reply: &fred::types::Value, name: &str) -> fred::types::Value {
    fred_pairs(reply)
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in {reply:?}"))
        .1
}

/// The README's tagging session with redis-cli, then TAGSET and EMIT with fred (RESP2 and
/// RESP3), all through cachet on the cluster; the tagged keys lie on different primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagging_flow_and_emit_across_the_cluster() {
    let module = support::policies::policy_wasm("sessions");
    let cluster = Cluster::start(3, 1);
    let proxy = cluster.start_proxy(&tagging_config(&module)).await;
    let owners: BTreeSet<u16> = [
        "sessions:teacher:123",
        "sessions:teacher:124",
        "sessions:teacher:123:page:2",
        "sessions:teacher:123:x",
    ]
    .iter()
    .map(|k| cluster.primary_for_key(k))
    .collect();
    assert!(
        owners.len() >= 2,
        "the tagged keys are meant to be on several primaries"
    );

    // redis-cli, as in the README.
    assert_eq!(
        redis_cli(&proxy, &["SET", "sessions:teacher:123", r#"[{"id":42}]"#]),
        "OK\n"
    );
    assert_eq!(redis_cli(&proxy, &["TTL", "sessions:teacher:123"]), "300\n");
    assert_eq!(
        redis_cli(&proxy, &["SET", "sessions:teacher:124", "x", "EX", "50"]),
        "OK\n"
    );
    assert_eq!(
        redis_cli(&proxy, &["TAGS", "sessions:teacher:123"]),
        "sessions\nteacher:123\n"
    );
    let page = redis_cli(&proxy, &["TAGKEYS", "sessions", "COUNT", "100"]);
    let mut lines: Vec<&str> = page.lines().collect();
    assert_eq!(lines.first(), Some(&"0"), "TAGKEYS: one page: {page}");
    lines.remove(0);
    lines.sort();
    assert_eq!(
        lines,
        ["sessions:teacher:123", "sessions:teacher:124"],
        "TAGKEYS"
    );
    assert_eq!(redis_cli(&proxy, &["TAGINVALIDATE", "teacher:123"]), "1\n");
    assert_eq!(
        redis_cli(&proxy, &["EXISTS", "sessions:teacher:123"]),
        "0\n"
    );
    assert_eq!(
        redis_cli(
            &proxy,
            &[
                "TAGSET",
                "report:7",
                "{...}",
                "TTLCLASS",
                "school-data",
                "TAGS",
                "school:7",
                "reports"
            ]
        ),
        "OK\n"
    );
    assert_eq!(redis_cli(&proxy, &["SET", "greeting", "hello"]), "OK\n");
    assert_eq!(redis_cli(&proxy, &["TAG", "greeting", "demo"]), "1\n");
    let mut tags: Vec<String> = redis_cli(&proxy, &["TAGS", "report:7"])
        .lines()
        .map(str::to_owned)
        .collect();
    tags.sort();
    assert_eq!(tags, ["reports", "school:7"]);
    assert_eq!(
        redis_cli(&proxy, &["TAGINVALIDATE", "sessions", "demo", "reports"]),
        "3\n"
    );

    // fred: tagged writes on several primaries, then the policy invalidates them.
    for resp3 in [false, true] {
        let client = fred(&proxy, resp3).await;
        let lists = [
            "sessions:teacher:123",
            "sessions:teacher:123:page:2",
            "sessions:teacher:123:x",
        ];
        for key in lists {
            let _: fred::types::Value = client
                .custom(cmd!("TAGSET"), vec![key, "[...]", "TAGS", "teacher:123"])
                .await
                .expect("TAGSET");
        }
        let _: () = client
            .set("sessions:teacher:999", "[...]", None, None, false)
            .await
            .expect("SET");
        let reply: fred::types::Value = client
            .custom(
                cmd!("EMIT"),
                vec![
                    "session.created",
                    "sessionId",
                    "42",
                    "teacherId",
                    "123",
                    "schoolId",
                    "7",
                ],
            )
            .await
            .expect("EMIT");
        assert_eq!(
            fred_field(&reply, "deleted").as_u64(),
            Some(lists.len() as u64),
            "resp3={resp3}: {reply:?}"
        );
        let mut all: Vec<&str> = lists.to_vec();
        all.push("sessions:teacher:999");
        let left: u64 = client.exists(all).await.expect("EXISTS");
        assert_eq!(
            left, 1,
            "resp3={resp3}: only the other teacher's list is left"
        );
        let _: u64 = client.del("sessions:teacher:999").await.expect("DEL");
    }
}

/// What the load clients saw.
#[derive(Default)]
struct Tally {
    /// Commands that got the right reply.
    ok: u64,
    /// Every error: (when, what).
    errors: Vec<(Instant, String)>,
    /// Replies that were not what the client had written: (when, what).
    wrong: Vec<(Instant, String)>,
    /// Reads of a key just written that found nothing, with the write's acknowledgement
    /// time: the write may have been lost with a killed primary (asynchronous replication).
    lost: Vec<(Instant, Instant, String)>,
    /// Every confirmed write-and-read-back: (when the read came back, key).
    confirmed: Vec<(Instant, String)>,
    /// Every acknowledged write, with its value.
    written: Vec<(String, String)>,
}

impl Tally {
    fn error_kinds(&self, from: Instant, to: Instant) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for (at, e) in &self.errors {
            if *at >= from && *at < to {
                // Ports and counts vary between runs: keep the words.
                let kind: String = e.chars().filter(|c| !c.is_ascii_digit()).collect();
                *kinds.entry(kind).or_default() += 1;
            }
        }
        kinds
    }
}

/// A fred client (centralized, one attempt per command): SET `w{id}:{n}`, GET it back, and
/// GET one of its earlier keys and one of the `preloaded` keys back too (either may be in a
/// slot on the move), until `stop`.
async fn fred_writer(
    id: usize,
    proxy: SocketAddr,
    preloaded: Arc<Vec<(String, String)>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    let client = {
        let config = Config::from_url(&format!("redis://{proxy}")).expect("url");
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(5);
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5))
            .set_policy(ReconnectPolicy::new_constant(0, 20))
            .build()
            .expect("build fred client");
        client.init().await.expect("fred connects");
        client
    };
    let mut mine: Vec<(String, String)> = Vec::new();
    let mut n = 0u64;
    let note_error = |what: String| tally.lock().unwrap().errors.push((Instant::now(), what));
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("w{id}:{n}");
        let value = format!("{n}-{}", fastrand::u64(..));
        let set: Result<(), _> = client.set(&key, value.as_str(), None, None, false).await;
        if let Err(e) = set {
            note_error(format!("SET: {e}"));
            continue;
        }
        let acked = Instant::now();
        match client.get::<Option<String>, _>(&key).await {
            Ok(Some(got)) if got == value => {
                let mut t = tally.lock().unwrap();
                t.ok += 2;
                t.confirmed.push((Instant::now(), key.clone()));
                t.written.push((key.clone(), value.clone()));
            }
            Ok(None) => {
                let mut t = tally.lock().unwrap();
                t.ok += 1;
                t.lost.push((Instant::now(), acked, key.clone()));
            }
            Ok(other) => tally.lock().unwrap().wrong.push((
                Instant::now(),
                format!("GET {key}: {other:?}, wrote {value:?}"),
            )),
            Err(e) => note_error(format!("GET: {e}")),
        }
        mine.push((key, value));
        let (old, want) = &mine[fastrand::usize(..mine.len())];
        match client.get::<Option<String>, _>(old).await {
            Ok(Some(got)) if got == *want => tally.lock().unwrap().ok += 1,
            Ok(other) => tally.lock().unwrap().wrong.push((
                Instant::now(),
                format!("GET {old} (earlier): {other:?}, wrote {want:?}"),
            )),
            Err(e) => note_error(format!("GET earlier: {e}")),
        }
        if preloaded.is_empty() {
            continue;
        }
        let (old, want) = &preloaded[fastrand::usize(..preloaded.len())];
        match client.get::<Option<String>, _>(old).await {
            Ok(Some(got)) if got == *want => tally.lock().unwrap().ok += 1,
            Ok(other) => tally.lock().unwrap().wrong.push((
                Instant::now(),
                format!("GET {old} (preloaded): {other:?}, wrote {want:?}"),
            )),
            Err(e) => note_error(format!("GET preloaded: {e}")),
        }
    }
    let _ = client.quit().await;
}

/// Reads every acknowledged write back through cachet (MGET, split by cachet); returns the
/// keys whose value is not the one written.
async fn missing_writes(proxy: &Proxy, written: &[(String, String)]) -> Vec<String> {
    let mut c = RawClient::connect(proxy.addr).await.expect("connect");
    let mut missing = Vec::new();
    for chunk in written.chunks(500) {
        let mut args = vec!["MGET".to_owned()];
        args.extend(chunk.iter().map(|(k, _)| k.clone()));
        let got = call(&mut c, &args).await;
        for ((k, v), got) in chunk.iter().zip(got.items()) {
            if *got != Value::Bulk(v.as_bytes().to_vec()) {
                missing.push(format!("{k}: {got:?}, wrote {v:?}"));
            }
        }
    }
    missing
}

const WRITERS: usize = 6;
/// Keys written before a reshard, so that the slots on the move hold data (about three keys
/// a slot) and reads of them meet ASK redirects.
const PRELOADED: usize = 50_000;

/// Writes `count` keys `pre:{n}` through cachet, in MSETs of 500 keys (which cachet splits
/// by slot); returns them with their values.
async fn preload(proxy: &Proxy, count: usize) -> Vec<(String, String)> {
    let keys: Vec<(String, String)> = (0..count)
        .map(|n| (format!("pre:{n}"), format!("p{n}")))
        .collect();
    let mut c = RawClient::connect(proxy.addr).await.expect("connect");
    for chunk in keys.chunks(500) {
        let mut args = vec!["MSET".to_owned()];
        for (k, v) in chunk {
            args.extend([k.clone(), v.clone()]);
        }
        assert_eq!(
            call(&mut c, &args).await,
            Value::Simple("OK".into()),
            "preload MSET"
        );
    }
    keys
}

/// `redis-cli --cluster reshard` moves 1,000 slots from one primary to another while fred
/// clients write and read back their own keys through cachet: no client sees an error or a
/// wrong reply, and every acknowledged write is there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resharding_under_load_is_invisible_to_clients() {
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(3, 1);
    let proxy = cluster.start_proxy("").await;
    let preloaded = Arc::new(preload(&proxy, PRELOADED).await);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..WRITERS)
        .map(|id| {
            tokio::spawn(fred_writer(
                id,
                proxy.addr,
                preloaded.clone(),
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0], primaries[1]);
    let before: usize = cluster
        .slots_of(to)
        .iter()
        .map(|(a, b)| usize::from(b - a) + 1)
        .sum();
    let keys_before = tally.lock().unwrap().written.len();
    let mut reshard = cluster.reshard(from, to, 1000);
    let took = reshard.wait(Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("a writer stopped within 20 s")
            .expect("writer task");
    }
    let after: usize = cluster
        .slots_of(to)
        .iter()
        .map(|(a, b)| usize::from(b - a) + 1)
        .sum();
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let missing = missing_writes(&proxy, &tally.written).await;
    let missing_preloaded = missing_writes(&proxy, &preloaded).await;
    let start = Instant::now() - Duration::from_secs(3600);
    println!(
        "--- resharding 1,000 slots under load, {WRITERS} fred clients through cachet, \
         {PRELOADED} keys preloaded ---"
    );
    println!(
        "reshard took {:.1} s; {} keys written before it, {} in all; {} right replies, {} errors, \
         {} wrong replies, {} reads of a fresh write that found nothing, {} acknowledged writes \
         missing afterwards ({} preloaded); slots of the target {before} -> {after}",
        took.as_secs_f64(),
        keys_before,
        tally.written.len(),
        tally.ok,
        tally.errors.len(),
        tally.wrong.len(),
        tally.lost.len(),
        missing.len(),
        missing_preloaded.len()
    );
    for (kind, n) in tally.error_kinds(start, Instant::now()) {
        println!("    {n:>5} x {kind}");
    }
    for (_, w) in tally.wrong.iter().take(10) {
        println!("    wrong: {w}");
    }
    assert_eq!(
        after,
        before + 1000,
        "the reshard moved 1,000 slots:\n{}",
        reshard.output()
    );
    assert!(tally.written.len() > 100, "the writers hardly wrote");
    assert!(
        tally.errors.is_empty(),
        "errors: {:?}",
        &tally.errors[..tally.errors.len().min(20)]
    );
    assert!(
        tally.wrong.is_empty(),
        "wrong replies: {:?}",
        &tally.wrong[..tally.wrong.len().min(20)]
    );
    assert!(
        tally.lost.is_empty(),
        "fresh writes not found: {:?}",
        &tally.lost[..tally.lost.len().min(20)]
    );
    assert!(
        missing_preloaded.is_empty(),
        "preloaded keys missing: {:?}",
        &missing_preloaded[..missing_preloaded.len().min(20)]
    );
    assert!(
        missing.is_empty(),
        "acknowledged writes missing: {:?}",
        &missing[..missing.len().min(20)]
    );
}

/// A raw client: SET `c{id}:{n}`, GET it back, reconnecting after any loss; each command
/// has 2 s.
async fn raw_writer(id: usize, proxy: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) {
    const OP: Duration = Duration::from_secs(2);
    let mut conn: Option<RawClient> = None;
    let mut n = 0u64;
    let note_error = |what: String| tally.lock().unwrap().errors.push((Instant::now(), what));
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match RawClient::connect(proxy).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    note_error(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        n += 1;
        let key = format!("c{id}:{n}");
        let value = format!("{n}-{}", fastrand::u64(..));
        match tokio::time::timeout(OP, c.command(&["SET", &key, &value])).await {
            Ok(Ok(reply)) if &reply[..] == b"+OK\r\n" => {}
            Ok(Ok(reply)) => {
                note_error(format!("SET: {}", String::from_utf8_lossy(&reply).trim()));
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            Ok(Err(e)) => {
                note_error(format!("SET: {e}"));
                conn = None;
                continue;
            }
            Err(_) => {
                note_error("SET: no reply in 2 s".into());
                conn = None;
                continue;
            }
        }
        let acked = Instant::now();
        match tokio::time::timeout(OP, c.command(&["GET", &key])).await {
            Ok(Ok(reply)) => match Value::parse(&reply) {
                Value::Bulk(got) if got == value.as_bytes() => {
                    let mut t = tally.lock().unwrap();
                    t.ok += 2;
                    t.confirmed.push((Instant::now(), key.clone()));
                    t.written.push((key, value));
                }
                Value::Nil => {
                    let mut t = tally.lock().unwrap();
                    t.ok += 1;
                    t.lost.push((Instant::now(), acked, key));
                }
                Value::Error(e) => note_error(format!("GET: {e}")),
                other => tally.lock().unwrap().wrong.push((
                    Instant::now(),
                    format!("GET {key}: {other:?}, wrote {value:?}"),
                )),
            },
            Ok(Err(e)) => {
                note_error(format!("GET: {e}"));
                conn = None;
            }
            Err(_) => {
                note_error("GET: no reply in 2 s".into());
                conn = None;
            }
        }
    }
}

/// SIGKILL of a primary under load: from the moment its replica says `master` (polled every
/// 10 ms) to the first write-and-read-back of a key in the dead primary's slots through cachet
/// takes at most 1 s; no reply is wrong; errors in the gap are counted and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_under_load_recovers_within_a_second() {
    let _heavy = HEAVY.lock().await;
    let mut cluster = Cluster::start(3, 1);
    let toml = cluster.proxy_config_with(
        "command_timeout_ms = 2000\nconnect_timeout_ms = 500",
        "",
        "",
    );
    let proxy = Cluster::start_proxy_toml(&toml).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..WRITERS)
        .map(|id| tokio::spawn(raw_writer(id, proxy.addr, stop.clone(), tally.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = cluster.primaries()[0];
    let replica = cluster.replicas_of(victim)[0];
    let moved = cluster.slots_of(victim);
    let in_moved = |key: &str| {
        let s = slot(key);
        moved.iter().any(|(a, b)| (*a..=*b).contains(&s))
    };
    let killed = cluster.kill(victim);
    let promoted = cluster.wait_master(replica, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("a writer stopped within 20 s")
            .expect("writer task");
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let last_before = tally
        .confirmed
        .iter()
        .rfind(|(at, k)| *at < killed && in_moved(k))
        .map(|(at, _)| *at);
    let first_after = tally
        .confirmed
        .iter()
        .find(|(at, k)| *at > promoted && in_moved(k))
        .map(|(at, _)| *at);
    // A fresh write found missing is a write the killed primary acknowledged and never
    // replicated; one acknowledged after the kill and then not found is a wrong reply.
    let (lost, late): (Vec<_>, Vec<_>) = tally
        .lost
        .iter()
        .partition(|(_, acked, _)| *acked <= killed);
    let gap_end = first_after.unwrap_or_else(Instant::now);
    let errors = tally
        .errors
        .iter()
        .filter(|(at, _)| *at >= killed && *at < gap_end)
        .count();
    let ms = |from: Instant, to: Option<Instant>| {
        to.map_or("never".to_owned(), |to| {
            format!("{} ms", (to - from).as_millis())
        })
    };
    println!("--- SIGKILL of a primary under load, {WRITERS} raw clients through cachet ---");
    println!(
        "replica :{replica} promoted {} ms after the kill of :{victim}; first write-and-read-back \
         in the moved slots {} after the promotion ({} after the kill; the last before the kill \
         was {} before it); {errors} errors in between, {} in all; {} right replies; {} wrong; \
         {} fresh writes lost with the killed primary",
        (promoted - killed).as_millis(),
        ms(promoted, first_after),
        ms(killed, first_after),
        last_before.map_or("never".to_owned(), |at| format!(
            "{} ms",
            (killed - at).as_millis()
        )),
        tally.errors.len(),
        tally.ok,
        tally.wrong.len() + late.len(),
        lost.len()
    );
    for (kind, n) in tally.error_kinds(killed, gap_end) {
        println!("    {n:>5} x {kind}");
    }
    let after = tally.error_kinds(gap_end, Instant::now());
    for (kind, n) in &after {
        println!("    after recovery: {n:>5} x {kind}");
    }
    for (_, w) in tally.wrong.iter().take(10) {
        println!("    wrong: {w}");
    }
    let first_after = first_after.unwrap_or_else(|| {
        panic!(
            "no write-and-read-back in the moved slots after the promotion; logs:\n{}",
            cluster.logs()
        )
    });
    assert!(
        first_after - promoted <= Duration::from_secs(1),
        "traffic to the moved slots came back {} ms after the promotion",
        (first_after - promoted).as_millis()
    );
    assert!(
        tally.wrong.is_empty(),
        "wrong replies: {:?}",
        &tally.wrong[..tally.wrong.len().min(20)]
    );
    assert!(
        late.is_empty(),
        "writes acknowledged after the kill then not found: {late:?}"
    );
}

/// TAGINVALIDATE of one tag on 100,000 keys spread over the three primaries: under 1 s, and
/// no call to Redis of 10 ms or more (each primary's SLOWLOG, threshold 10,000 µs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn taginvalidate_of_100k_keys_on_three_primaries() {
    const KEYS: usize = 100_000;
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(3, 1);
    let rules = "[[rules]]\npattern = \"bulk:{n}\"\ntags = [\"bulk\"]\nttl = 3600\n";
    let proxy = cluster.start_proxy(rules).await;
    let started = Instant::now();
    let loaders: Vec<_> = (0..4)
        .map(|part| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                let mut c = RawClient::connect(addr).await.expect("connect");
                let ns: Vec<usize> = (part..KEYS).step_by(4).collect();
                for chunk in ns.chunks(1000) {
                    let mut batch = Vec::new();
                    for n in chunk {
                        batch.extend(RawClient::encode(&["SET", &format!("bulk:{n}"), "v"]));
                    }
                    c.send_raw(&batch).await.expect("write");
                    for n in chunk {
                        let reply = c
                            .read_frame_timeout(Duration::from_secs(30))
                            .await
                            .expect("SET reply");
                        assert_eq!(String::from_utf8_lossy(&reply), "+OK\r\n", "SET bulk:{n}");
                    }
                }
            })
        })
        .collect();
    for l in loaders {
        l.await.expect("loader");
    }
    let loaded = started.elapsed();
    let per_primary: Vec<(u16, usize)> = cluster
        .primaries()
        .into_iter()
        .map(|p| {
            let ranges = cluster.slots_of(p);
            let n = (0..KEYS)
                .filter(|n| {
                    let s = slot(&format!("bulk:{n}"));
                    ranges.iter().any(|(a, b)| (*a..=*b).contains(&s))
                })
                .count();
            (p, n)
        })
        .collect();
    cluster.on_primaries(&["CONFIG", "SET", "slowlog-log-slower-than", "10000"]);
    cluster.on_primaries(&["SLOWLOG", "RESET"]);
    let mut c = RawClient::connect(proxy.addr).await.expect("connect");
    let asked = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        c.command(&["TAGINVALIDATE", "bulk"]),
    )
    .await
    .expect("TAGINVALIDATE within 60 s")
    .expect("TAGINVALIDATE reply");
    let took = asked.elapsed();
    let slow = cluster.slowlogs();
    let left: i64 = cluster
        .primaries()
        .into_iter()
        .map(|p| {
            cluster
                .node(p)
                .command(&["EVAL", "return #redis.call('KEYS', 'bulk:*')", "0"])
                .expect("count")
                .int()
        })
        .sum();
    println!("--- TAGINVALIDATE of {KEYS} keys on {per_primary:?} (primary, keys) ---");
    println!(
        "loaded in {:.1} s; TAGINVALIDATE answered {} in {} ms; {left} keys left; calls of 10 ms or more: {:?}",
        loaded.as_secs_f64(),
        String::from_utf8_lossy(&reply).trim(),
        took.as_millis(),
        slow
    );
    assert_eq!(
        &reply[..],
        format!(":{KEYS}\r\n").as_bytes(),
        "TAGINVALIDATE's count"
    );
    assert_eq!(left, 0, "every key under the tag is gone");
    assert!(took < Duration::from_secs(1), "TAGINVALIDATE took {took:?}");
    assert!(
        slow.iter().all(|(_, entries)| entries.is_empty()),
        "Redis calls of 10 ms or more: {slow:?}"
    );
}

/// `cmdstat_get` calls in a node's `INFO commandstats`.
fn gets(cluster: &Cluster, port: u16) -> u64 {
    let info = cluster
        .node(port)
        .command(&["INFO", "commandstats"])
        .unwrap_or_else(|e| panic!("INFO on {port}: {e}"));
    String::from_utf8_lossy(info.bytes())
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `read_from = "replica"`: GETs outside transactions go to the replicas (which were sent
/// READONLY, or they would answer MOVED), writes and transactional reads to the primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_replica_sends_reads_to_replicas() {
    let cluster = Cluster::start(3, 1);
    let toml = cluster.proxy_config_with("", "read_from = \"replica\"", "");
    let proxy = Cluster::start_proxy_toml(&toml).await;
    let mut c = connect(&proxy, false).await;
    let keys = keys_everywhere(&cluster, "r:", 5);
    for k in &keys {
        assert_eq!(c.text(&["SET", k, "v"]).await, "+OK\r\n");
    }
    // Replication is asynchronous: wait until every replica has every key.
    for p in cluster.primaries() {
        for r in cluster.replicas_of(p) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while cluster.node(r).command(&["DBSIZE"]).map(|v| v.int())
                != cluster.node(p).command(&["DBSIZE"]).map(|v| v.int())
            {
                assert!(
                    Instant::now() < deadline,
                    "replica {r} of {p} did not catch up"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let nodes: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let before: Vec<u64> = nodes.iter().map(|p| gets(&cluster, *p)).collect();
    for _ in 0..3 {
        for k in &keys {
            assert_eq!(
                c.text(&["GET", k]).await,
                "$1\r\nv\r\n",
                "GET {k} from a replica"
            );
        }
    }
    let primaries = cluster.primaries();
    let mut on_primaries = 0;
    let mut on_replicas = 0;
    for (p, b) in nodes.iter().zip(&before) {
        let n = gets(&cluster, *p) - b;
        if primaries.contains(p) {
            on_primaries += n;
        } else {
            on_replicas += n;
        }
    }
    println!("read_from = replica: {on_replicas} GETs on replicas, {on_primaries} on primaries");
    assert_eq!(
        on_replicas,
        3 * keys.len() as u64,
        "every GET went to a replica"
    );
    assert_eq!(on_primaries, 0, "no GET went to a primary");
    // A read inside a transaction stays on the primary.
    assert_eq!(c.text(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(c.text(&["GET", &keys[0]]).await, "+QUEUED\r\n");
    assert_eq!(c.text(&["EXEC"]).await, "*1\r\n$1\r\nv\r\n");
    let owner = cluster.primary_for_key(&keys[0]);
    let i = nodes.iter().position(|p| *p == owner).unwrap();
    assert_eq!(
        gets(&cluster, owner) - before[i],
        1,
        "the transaction's GET ran on the primary"
    );
}

/// SSUBSCRIBE follows its slot: when the slot moves to another primary, the subscriber gets
/// Redis's own `sunsubscribe`, subscribes again through cachet (now on the new owner), and
/// SPUBLISH reaches it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_channel_follows_its_slot_to_another_primary() {
    let cluster = Cluster::start(3, 1);
    let proxy = cluster.start_proxy("").await;
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0], primaries[1]);
    // `redis-cli --cluster reshard` moves the lowest slots first: a channel in the lowest.
    let first = cluster.slots_of(from).iter().map(|r| r.0).min().unwrap();
    let channel = (0..)
        .map(|n| format!("sch:{n}"))
        .find(|c| slot(c) == first)
        .unwrap();
    let mut sub = connect(&proxy, false).await;
    let mut publisher = connect(&proxy, false).await;
    sub.send(&["SSUBSCRIBE", &channel]).await.unwrap();
    assert_eq!(
        kind_and_channel(&pushed(&mut sub, "ssubscribe").await),
        ["ssubscribe", channel.as_str()]
    );
    assert_eq!(
        publisher.text(&["SPUBLISH", &channel, "before"]).await,
        ":1\r\n"
    );
    assert_eq!(
        pushed(&mut sub, "smessage").await,
        bulks(&["smessage", &channel, "before"])
    );
    let mut reshard = cluster.reshard(from, to, 1);
    reshard.wait(Duration::from_secs(60)).await;
    cluster.wait_owner(first, to, Duration::from_secs(10)).await;
    assert_eq!(
        kind_and_channel(&pushed(&mut sub, "sunsubscribe on migration").await),
        ["sunsubscribe", channel.as_str()],
        "the subscriber hears that its slot moved"
    );
    sub.send(&["SSUBSCRIBE", &channel]).await.unwrap();
    assert_eq!(
        kind_and_channel(&pushed(&mut sub, "ssubscribe again").await),
        ["ssubscribe", channel.as_str()]
    );
    assert_eq!(
        publisher.text(&["SPUBLISH", &channel, "after"]).await,
        ":1\r\n",
        "SPUBLISH reaches the new owner, where the subscriber now is"
    );
    assert_eq!(
        pushed(&mut sub, "smessage after the move").await,
        bulks(&["smessage", &channel, "after"])
    );
}

/// Hostile bytes, alone and behind a good command, reach no node link: the session refuses
/// them (Redis's own errors) before the router sees anything, the router's links stay up,
/// and another client's commands across every primary keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_never_reaches_the_cluster_router() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Not beside the timed tests: starting a cluster takes the CPU they measure with.
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(3, 0);
    let proxy = cluster.start_proxy("").await;
    let good = fred(&proxy, false).await;
    let keys = keys_everywhere(&cluster, "h:", 3);
    for garbage in [
        &b"*2\r\n$3\r\nGET\r\n$-5\r\n"[..],
        b"*1\r\n*1\r\n$4\r\nPING\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$99999999999\r\n",
        b"$4\r\nPING\r\n",
    ] {
        let mut bad = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        bad.write_all(garbage).await.unwrap();
        let mut reply = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut reply))
            .await
            .expect("a reply or a close")
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&reply[..n]);
        assert!(n == 0 || text.starts_with("-ERR "), "{garbage:?}: {text:?}");
        for k in &keys {
            let _: () = good
                .set(k, "v", None, None, false)
                .await
                .expect("SET after hostile input");
            let v: Option<String> = good.get(k).await.expect("GET after hostile input");
            assert_eq!(v.as_deref(), Some("v"));
        }
    }
    // Behind a good command on the same connection.
    let mut bad = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    bad.write_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$-5\r\n")
        .await
        .unwrap();
    let mut reply = vec![0u8; 256];
    let mut got = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut reply)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&reply[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("+PONG\r\n-ERR Protocol error"), "{text:?}");
    let n: u64 = good
        .exists(keys.clone())
        .await
        .expect("EXISTS across primaries");
    assert_eq!(n as usize, keys.len());
}
