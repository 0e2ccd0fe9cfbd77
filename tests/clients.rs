//! Real clients through cachet: fred (RESP2 and RESP3), `redis-cli` as a subprocess, AUTH with
//! a password-protected upstream, per-client CLIENT state, MONITOR, CLIENT TRACKING, and many
//! concurrent clients whose replies must never cross.
//!
//! Every test starts its own `redis-server` on a free port and its own cachet in-process.

mod support;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;
use fred::types::streams::XReadResponse;
use support::{Conn, Proxy, RawClient, RedisServer, fred_client};
use tokio::io::AsyncWriteExt;

const STEP: Duration = Duration::from_secs(10);

/// Awaits `fut` for at most 10 s; a hang fails the test with `what`.
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn setup() -> (RedisServer, Proxy) {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    (redis, proxy)
}

async fn raw(addr: SocketAddr) -> Conn {
    Conn::connect(addr).await.expect("connect")
}

/// Sends each input (raw bytes) and reads exactly one reply frame for it.
async fn replies(addr: SocketAddr, inputs: &[&[u8]]) -> Vec<String> {
    let mut c = raw(addr).await;
    let mut out = Vec::new();
    for input in inputs {
        c.send_raw(input).await.expect("send");
        let reply = c
            .read_frame_timeout(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("no reply to {:?}: {e}", text(input)));
        out.push(text(&reply));
    }
    out
}

// ------------------------------------------------------------------------------------------
// fred
// ------------------------------------------------------------------------------------------

async fn fred_basic_ops(resp3: bool) {
    let (redis, proxy) = setup().await;
    let c = fred_client(&proxy.url(), resp3).await;

    within("basic ops", async {
        // strings
        let _: () = c.set("b:k", "v", None, None, false).await.unwrap();
        let v: Option<String> = c.get("b:k").await.unwrap();
        assert_eq!(v.as_deref(), Some("v"));
        let missing: Option<String> = c.get("b:missing").await.unwrap();
        assert_eq!(missing, None);
        let old: Option<String> = c.set("b:k", "v2", None, None, true).await.unwrap();
        assert_eq!(old.as_deref(), Some("v"));
        let _: () = c
            .set("b:ttl", "x", Some(Expiration::EX(100)), None, false)
            .await
            .unwrap();
        let ttl: i64 = c.ttl("b:ttl").await.unwrap();
        assert!((1..=100).contains(&ttl), "ttl {ttl}");

        // counters
        let n: i64 = c.incr("b:n").await.unwrap();
        assert_eq!(n, 1);
        let n: i64 = c.incr_by("b:n", 10).await.unwrap();
        assert_eq!(n, 11);
        let n: i64 = c.decr("b:n").await.unwrap();
        assert_eq!(n, 10);
        let err = c.incr::<i64, _>("b:k").await.unwrap_err();
        assert!(
            err.details().contains("not an integer"),
            "INCR of a string: {err:?}"
        );

        // hashes
        let added: i64 = c.hset("b:h", [("a", "1"), ("b", "2")]).await.unwrap();
        assert_eq!(added, 2);
        let a: String = c.hget("b:h", "a").await.unwrap();
        assert_eq!(a, "1");
        let all: HashMap<String, String> = c.hgetall("b:h").await.unwrap();
        assert_eq!(
            all,
            HashMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])
        );
        let n: i64 = c.hincrby("b:h", "a", 5).await.unwrap();
        assert_eq!(n, 6);
        let err = c.get::<Option<String>, _>("b:h").await.unwrap_err();
        assert!(
            err.details().contains("WRONGTYPE"),
            "GET of a hash: {err:?}"
        );

        // lists
        let len: i64 = c.rpush("b:l", vec!["a", "b", "c"]).await.unwrap();
        assert_eq!(len, 3);
        let len: i64 = c.lpush("b:l", "z").await.unwrap();
        assert_eq!(len, 4);
        let items: Vec<String> = c.lrange("b:l", 0, -1).await.unwrap();
        assert_eq!(items, vec!["z", "a", "b", "c"]);
        let first: String = c.lpop("b:l", None).await.unwrap();
        assert_eq!(first, "z");
        let len: i64 = c.llen("b:l").await.unwrap();
        assert_eq!(len, 3);

        // keys
        let deleted: i64 = c.del(vec!["b:k", "b:missing"]).await.unwrap();
        assert_eq!(deleted, 1);
        let exists: i64 = c.exists("b:k").await.unwrap();
        assert_eq!(exists, 0);
    })
    .await;

    // What went through cachet is really in Redis.
    let direct = fred_client(&redis.url(), false).await;
    let n: i64 = direct.get("b:n").await.unwrap();
    assert_eq!(n, 10);
    let items: Vec<String> = direct.lrange("b:l", 0, -1).await.unwrap();
    assert_eq!(items, vec!["a", "b", "c"]);
    c.quit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_basic_ops_resp2() {
    fred_basic_ops(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_basic_ops_resp3() {
    fred_basic_ops(true).await;
}

async fn fred_pipeline_10000(resp3: bool) {
    let (_redis, proxy) = setup().await;
    let c = fred_client(&proxy.url(), resp3).await;
    let p = c.pipeline();
    for i in 0..10_000u32 {
        if i % 2 == 0 {
            let _: () = p
                .set(format!("p:{i}"), format!("value-{i}"), None, None, false)
                .await
                .unwrap();
        } else {
            let _: () = p.get(format!("p:{}", i - 1)).await.unwrap();
        }
    }
    let results: Vec<Value> = within("pipeline of 10,000", p.all()).await.unwrap();
    assert_eq!(results.len(), 10_000);
    for (i, r) in results.into_iter().enumerate() {
        let r: String = r.convert().unwrap();
        if i % 2 == 0 {
            assert_eq!(r, "OK", "reply {i}");
        } else {
            assert_eq!(r, format!("value-{}", i - 1), "reply {i}");
        }
    }
    let size: i64 = c.dbsize().await.unwrap();
    assert_eq!(size, 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_pipeline_10000_resp2() {
    fred_pipeline_10000(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_pipeline_10000_resp3() {
    fred_pipeline_10000(true).await;
}

async fn fred_transaction(resp3: bool) {
    let (_redis, proxy) = setup().await;
    let c = fred_client(&proxy.url(), resp3).await;
    let _: () = c.set("t:n", 41, None, None, false).await.unwrap();
    let trx = c.multi();
    let _: () = trx.incr("t:n").await.unwrap();
    let _: () = trx.set("t:k", "x", None, None, false).await.unwrap();
    let _: () = trx.get("t:k").await.unwrap();
    let _: () = trx.rpush("t:l", vec!["a", "b"]).await.unwrap();
    let results: Vec<Value> = within("EXEC", trx.exec(true)).await.unwrap();
    assert_eq!(results.len(), 4, "{results:?}");
    assert_eq!(results[0].clone().convert::<i64>().unwrap(), 42);
    assert_eq!(results[1].clone().convert::<String>().unwrap(), "OK");
    assert_eq!(results[2].clone().convert::<String>().unwrap(), "x");
    assert_eq!(results[3].clone().convert::<i64>().unwrap(), 2);

    // The same client carries on normally after its transaction.
    let n: i64 = c.get("t:n").await.unwrap();
    assert_eq!(n, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_transaction_resp2() {
    fred_transaction(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_transaction_resp3() {
    fred_transaction(true).await;
}

async fn fred_watch_conflict(resp3: bool) {
    let (_redis, proxy) = setup().await;
    let a = fred_client(&proxy.url(), resp3).await;
    let b = fred_client(&proxy.url(), resp3).await;
    let _: () = a.set("w:k", "initial", None, None, false).await.unwrap();

    // A watches, B modifies, A's transaction must be aborted (EXEC returns nil).
    within("WATCH", a.watch("w:k")).await.unwrap();
    let _: () = b.set("w:k", "from-b", None, None, false).await.unwrap();
    let trx = a.multi();
    let _: () = trx.set("w:k", "from-a", None, None, false).await.unwrap();
    let result: Value = within("EXEC after conflict", trx.exec(true)).await.unwrap();
    assert!(
        result.is_null(),
        "EXEC after a conflicting write must be nil: {result:?}"
    );
    let v: String = b.get("w:k").await.unwrap();
    assert_eq!(v, "from-b");

    // Without a conflict the watched transaction goes through.
    within("WATCH", a.watch("w:k")).await.unwrap();
    let trx = a.multi();
    let _: () = trx.set("w:k", "from-a", None, None, false).await.unwrap();
    let result: Value = within("EXEC", trx.exec(true)).await.unwrap();
    assert!(!result.is_null(), "EXEC without conflict: {result:?}");
    let v: String = b.get("w:k").await.unwrap();
    assert_eq!(v, "from-a");

    // A write by A itself between WATCH and MULTI also aborts (same connection semantics).
    within("WATCH", a.watch("w:k")).await.unwrap();
    let _: () = b.set("w:k", "again-b", None, None, false).await.unwrap();
    within("UNWATCH", a.unwatch()).await.unwrap();
    let trx = a.multi();
    let _: () = trx
        .set("w:k", "after-unwatch", None, None, false)
        .await
        .unwrap();
    let result: Value = within("EXEC after UNWATCH", trx.exec(true)).await.unwrap();
    assert!(
        !result.is_null(),
        "UNWATCH must clear the watch: {result:?}"
    );
    let v: String = b.get("w:k").await.unwrap();
    assert_eq!(v, "after-unwatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_watch_conflict_resp2() {
    fred_watch_conflict(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_watch_conflict_resp3() {
    fred_watch_conflict(true).await;
}

/// fred resolves (P)(UN)SUBSCRIBE futures without waiting for the server to act on them
/// (seen against Redis behind a plain TCP relay), so wait until Redis reports the expected
/// subscriber counts, asked through cachet.
async fn wait_subscriptions(publisher: &Client, channel: &str, numsub: i64, numpat: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let subs: Vec<Value> = publisher.pubsub_numsub(channel).await.unwrap();
        let subs = subs.get(1).and_then(|v| v.as_i64()).unwrap_or(-1);
        let pats: i64 = publisher.pubsub_numpat().await.unwrap();
        if (subs, pats) == (numsub, numpat) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PUBSUB NUMSUB {channel} / NUMPAT: {subs} / {pats}, expected {numsub} / {numpat}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fred_pubsub(resp3: bool) {
    let (_redis, proxy) = setup().await;
    let mut config = Config::from_url(&proxy.url()).unwrap();
    if resp3 {
        config.version = fred::types::RespVersion::RESP3;
    }
    let sub = Builder::from_config(config)
        .build_subscriber_client()
        .unwrap();
    within("subscriber init", sub.init()).await.unwrap();
    let mut rx = sub.message_rx();
    within("SUBSCRIBE", sub.subscribe("news")).await.unwrap();

    let publisher = fred_client(&proxy.url(), resp3).await;
    wait_subscriptions(&publisher, "news", 1, 0).await;
    let receivers: i64 = publisher.publish("news", "hello").await.unwrap();
    assert_eq!(receivers, 1, "PUBLISH counts the one subscriber");
    let msg = within("message", rx.recv()).await.unwrap();
    assert_eq!(&*msg.channel, "news");
    assert_eq!(msg.value.convert::<String>().unwrap(), "hello");

    // A pattern subscription on the same client gets its own copy.
    within("PSUBSCRIBE", sub.psubscribe("ne*")).await.unwrap();
    wait_subscriptions(&publisher, "news", 1, 1).await;
    let receivers: i64 = publisher.publish("news", "second").await.unwrap();
    assert_eq!(receivers, 2);
    let mut got = Vec::new();
    for _ in 0..2 {
        let msg = within("message", rx.recv()).await.unwrap();
        got.push((msg.kind, msg.value.convert::<String>().unwrap()));
    }
    assert!(got.iter().all(|(_, v)| v == "second"), "{got:?}");
    assert!(
        got.iter()
            .any(|(k, _)| *k == fred::types::MessageKind::Message),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|(k, _)| *k == fred::types::MessageKind::PMessage),
        "{got:?}"
    );

    if resp3 {
        // RESP3: a subscribed connection can still run ordinary commands.
        let _: () = sub.set("ps:k", "v", None, None, false).await.unwrap();
        let v: String = within("GET while subscribed", sub.get("ps:k"))
            .await
            .unwrap();
        assert_eq!(v, "v");
    }

    within("UNSUBSCRIBE", sub.unsubscribe("news"))
        .await
        .unwrap();
    within("PUNSUBSCRIBE", sub.punsubscribe("ne*"))
        .await
        .unwrap();
    wait_subscriptions(&publisher, "news", 0, 0).await;
    let receivers: i64 = publisher.publish("news", "nobody").await.unwrap();
    assert_eq!(receivers, 0, "nobody subscribed any more");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "no message after unsubscribing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_pubsub_resp2() {
    fred_pubsub(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_pubsub_resp3() {
    fred_pubsub(true).await;
}

/// RESP3 pub/sub byte for byte: subscribe confirmations and messages are push frames, and the
/// subscribed client can interleave ordinary commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_pubsub_pushes() {
    let (_redis, proxy) = setup().await;
    let mut a = raw(proxy.addr).await;
    let hello = a.text(&["HELLO", "3"]).await;
    assert!(hello.starts_with('%'), "HELLO 3 answers a map: {hello:?}");
    assert_eq!(
        a.text(&["SUBSCRIBE", "ch"]).await,
        ">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    let mut b = raw(proxy.addr).await;
    assert_eq!(b.text(&["PUBLISH", "ch", "hi"]).await, ":1\r\n");
    let push = within("push", a.read_frame()).await.unwrap();
    assert_eq!(
        text(&push),
        ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    );

    assert_eq!(a.text(&["SET", "r3:k", "v"]).await, "+OK\r\n");
    assert_eq!(b.text(&["PUBLISH", "ch", "again"]).await, ":1\r\n");
    let push = within("push", a.read_frame()).await.unwrap();
    assert_eq!(
        text(&push),
        ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nagain\r\n"
    );
    assert_eq!(a.text(&["GET", "r3:k"]).await, "$1\r\nv\r\n");

    assert_eq!(
        a.text(&["UNSUBSCRIBE", "ch"]).await,
        ">3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n"
    );
    assert_eq!(b.text(&["PUBLISH", "ch", "gone"]).await, ":0\r\n");
    assert_eq!(a.text(&["PING"]).await, "+PONG\r\n");
}

/// RESP2 pub/sub byte for byte, including Redis's refusal of ordinary commands while
/// subscribed (compared with a direct connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_pubsub_context() {
    let (redis, proxy) = setup().await;
    let script: &[&[u8]] = &[
        b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nc2\r\n",
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"*2\r\n$11\r\nUNSUBSCRIBE\r\n$2\r\nc2\r\n",
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
    ];
    let direct = replies(redis.addr(), script).await;
    let proxied = replies(proxy.addr, script).await;
    assert_eq!(proxied, direct);
    assert!(
        direct[1].starts_with("-ERR Can't execute 'get'"),
        "{direct:?}"
    );

    let mut a = raw(proxy.addr).await;
    a.text(&["SUBSCRIBE", "c2"]).await;
    let mut b = raw(proxy.addr).await;
    assert_eq!(b.text(&["PUBLISH", "c2", "m"]).await, ":1\r\n");
    let msg = within("message", a.read_frame()).await.unwrap();
    assert_eq!(text(&msg), "*3\r\n$7\r\nmessage\r\n$2\r\nc2\r\n$1\r\nm\r\n");
}

async fn fred_blpop(resp3: bool) {
    let (_redis, proxy) = setup().await;
    let a = fred_client(&proxy.url(), resp3).await;
    let b = fred_client(&proxy.url(), resp3).await;
    let started = Instant::now();
    let waiter = tokio::spawn(async move {
        let popped: Option<(String, String)> = a.blpop("bq", 5.0).await.unwrap();
        (popped, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While A blocks, other clients are served without delay.
    let t = Instant::now();
    let _: () = b.set("bq:other", "x", None, None, false).await.unwrap();
    let v: String = b.get("bq:other").await.unwrap();
    assert_eq!(v, "x");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "others blocked for {:?}",
        t.elapsed()
    );
    assert!(
        !waiter.is_finished(),
        "BLPOP returned before anything was pushed"
    );

    let _: i64 = b.lpush("bq", "item").await.unwrap();
    let (popped, elapsed) = within("BLPOP", waiter).await.unwrap();
    assert_eq!(popped, Some(("bq".to_owned(), "item".to_owned())));
    assert!(elapsed < Duration::from_secs(2), "BLPOP took {elapsed:?}");
    let len: i64 = b.llen("bq").await.unwrap();
    assert_eq!(len, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_blpop_unblocked_by_lpush_resp2() {
    fred_blpop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_blpop_unblocked_by_lpush_resp3() {
    fred_blpop(true).await;
}

async fn fred_xread_block(resp3: bool) {
    let (_redis, proxy) = setup().await;
    let a = fred_client(&proxy.url(), resp3).await;
    let b = fred_client(&proxy.url(), resp3).await;
    let _: String = b
        .xadd("xs", false, None::<()>, "*", ("old", "1"))
        .await
        .unwrap();
    let started = Instant::now();
    let waiter = tokio::spawn(async move {
        let r: XReadResponse<String, String, String, String> =
            a.xread_map(Some(10), Some(5_000), "xs", "$").await.unwrap();
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "XREAD BLOCK returned before anything was added"
    );
    let id: String = b
        .xadd("xs", false, None::<()>, "*", ("field", "value"))
        .await
        .unwrap();
    let (r, elapsed) = within("XREAD BLOCK", waiter).await.unwrap();
    assert!(elapsed < Duration::from_secs(2), "XREAD took {elapsed:?}");
    let entries = r.get("xs").unwrap_or_else(|| panic!("no xs in {r:?}"));
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].0, id);
    assert_eq!(entries[0].1.get("field").map(String::as_str), Some("value"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_xread_block_resp2() {
    fred_xread_block(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_xread_block_resp3() {
    fred_xread_block(true).await;
}

async fn fred_select_db1(resp3: bool) {
    let (redis, proxy) = setup().await;
    let db0 = fred_client(&proxy.url(), resp3).await;
    let db1 = fred_client(&format!("{}/1", proxy.url()), resp3).await;
    let _: () = db0.set("dbk", "zero", None, None, false).await.unwrap();
    let _: () = db1.set("dbk", "one", None, None, false).await.unwrap();
    let _: () = db1.set("only1", "x", None, None, false).await.unwrap();

    let v: String = db0.get("dbk").await.unwrap();
    assert_eq!(v, "zero");
    let v: String = db1.get("dbk").await.unwrap();
    assert_eq!(v, "one");
    let n: i64 = db0.exists("only1").await.unwrap();
    assert_eq!(n, 0, "a db 1 key leaked into db 0");
    let size0: i64 = db0.dbsize().await.unwrap();
    let size1: i64 = db1.dbsize().await.unwrap();
    assert_eq!((size0, size1), (1, 2));

    // Clients that never selected anything still work in db 0 (no SELECT leaked into the
    // shared connections), before and after the db 1 client goes away.
    for round in 0..2 {
        let fresh = fred_client(&proxy.url(), !resp3).await;
        let v: String = fresh.get("dbk").await.unwrap();
        assert_eq!(v, "zero", "round {round}");
        let mut r = raw(proxy.addr).await;
        assert_eq!(
            r.text(&["GET", "dbk"]).await,
            "$4\r\nzero\r\n",
            "round {round}"
        );
        if round == 0 {
            db1.quit().await.unwrap();
        }
    }

    // And Redis agrees about where things went.
    let mut direct = raw(redis.addr()).await;
    assert_eq!(direct.text(&["SELECT", "1"]).await, "+OK\r\n");
    assert_eq!(direct.text(&["GET", "dbk"]).await, "$3\r\none\r\n");
    assert_eq!(direct.text(&["GET", "only1"]).await, "$1\r\nx\r\n");

    // A raw client switching databases back and forth.
    let mut r = raw(proxy.addr).await;
    assert_eq!(r.text(&["SELECT", "1"]).await, "+OK\r\n");
    assert_eq!(r.text(&["GET", "dbk"]).await, "$3\r\none\r\n");
    assert_eq!(r.text(&["SELECT", "0"]).await, "+OK\r\n");
    assert_eq!(r.text(&["GET", "dbk"]).await, "$4\r\nzero\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_select_db1_isolated_resp2() {
    fred_select_db1(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_select_db1_isolated_resp3() {
    fred_select_db1(true).await;
}

async fn fred_eval_evalsha(resp3: bool) {
    let (_redis, proxy) = setup().await;
    let c = fred_client(&proxy.url(), resp3).await;
    let script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])";
    let r: String = within("EVAL", c.eval(script, "ev:a", "one")).await.unwrap();
    assert_eq!(r, "one");
    let n: i64 = c
        .eval(
            "return #KEYS + #ARGV",
            vec!["k1", "k2"],
            vec!["a", "b", "c"],
        )
        .await
        .unwrap();
    assert_eq!(n, 5);

    let sha: String = c.script_load(script).await.unwrap();
    assert_eq!(sha.len(), 40, "{sha:?}");
    let r: String = c.evalsha(&sha, "ev:b", "two").await.unwrap();
    assert_eq!(r, "two");
    // Scripts are server-wide: another client finds it too.
    let other = fred_client(&proxy.url(), !resp3).await;
    let r: String = other.evalsha(&sha, "ev:c", "three").await.unwrap();
    assert_eq!(r, "three");
    let exists: Vec<bool> = other.script_exists(vec![sha.as_str()]).await.unwrap();
    assert_eq!(exists, vec![true]);

    let err = c
        .evalsha::<Value, _, _, _>("0123456789012345678901234567890123456789", "ev:d", "x")
        .await
        .unwrap_err();
    assert!(err.details().contains("NOSCRIPT"), "{err:?}");
    let err = c
        .eval::<Value, _, _, _>("return redis.call('INCR', KEYS[1])", "ev:a", ())
        .await
        .unwrap_err();
    assert!(err.details().contains("not an integer"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_eval_evalsha_resp2() {
    fred_eval_evalsha(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_eval_evalsha_resp3() {
    fred_eval_evalsha(true).await;
}

async fn fred_scan_1000(resp3: bool) {
    let (_redis, proxy) = setup().await;
    let c = fred_client(&proxy.url(), resp3).await;
    let pairs: Vec<(String, String)> = (0..1000)
        .map(|i| (format!("scan:{i}"), i.to_string()))
        .collect();
    let _: () = c.mset(pairs).await.unwrap();
    let _: () = c
        .mset(vec![("other:1", "x"), ("other:2", "y")])
        .await
        .unwrap();

    let mut seen = HashSet::new();
    let mut cursor = "0".to_owned();
    let mut pages = 0;
    loop {
        let (next, keys): (String, Vec<String>) = within(
            "SCAN",
            c.scan_page(cursor.clone(), "scan:*", Some(100), None),
        )
        .await
        .unwrap();
        pages += 1;
        seen.extend(keys);
        cursor = next;
        if cursor == "0" {
            break;
        }
        assert!(pages < 10_000, "SCAN never finished");
    }
    let expected: HashSet<String> = (0..1000).map(|i| format!("scan:{i}")).collect();
    assert_eq!(seen.len(), 1000, "pages: {pages}");
    assert_eq!(seen, expected);
    assert!(pages > 1, "1000 keys at COUNT 100 need several pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_scan_1000_keys_resp2() {
    fred_scan_1000(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_scan_1000_keys_resp3() {
    fred_scan_1000(true).await;
}

// ------------------------------------------------------------------------------------------
// redis-cli
// ------------------------------------------------------------------------------------------

struct CliOutput {
    stdout: String,
    stderr: String,
    ok: bool,
}

async fn redis_cli(port: u16, args: &[&str], stdin: Option<Vec<u8>>) -> CliOutput {
    let mut cmd = tokio::process::Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("redis-cli must be installed");
    let writer = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("stdin");
        tokio::spawn(async move {
            pipe.write_all(&input).await.expect("write to redis-cli");
            pipe.shutdown().await.ok();
        })
    });
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("redis-cli {args:?} did not finish"))
        .expect("redis-cli output");
    if let Some(w) = writer {
        w.await.unwrap();
    }
    CliOutput {
        stdout: text(&output.stdout),
        stderr: text(&output.stderr),
        ok: output.status.success(),
    }
}

/// Runs the same redis-cli invocation directly against Redis and through cachet.
async fn cli_both(redis: u16, proxy: u16, args: &[&str]) -> (String, String) {
    let direct = redis_cli(redis, args, None).await;
    let proxied = redis_cli(proxy, args, None).await;
    (
        direct.stdout + &direct.stderr,
        proxied.stdout + &proxied.stderr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_plain_commands() {
    let (redis, proxy) = setup().await;
    let port = proxy.addr.port();
    // stdout is not a tty, so redis-cli defaults to raw output.
    let out = redis_cli(port, &["SET", "cli:k", "hello world"], None).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "OK\n");
    assert_eq!(
        redis_cli(port, &["GET", "cli:k"], None).await.stdout,
        "hello world\n"
    );
    assert_eq!(
        redis_cli(port, &["--no-raw", "GET", "cli:k"], None)
            .await
            .stdout,
        "\"hello world\"\n"
    );
    assert_eq!(
        redis_cli(port, &["--no-raw", "INCR", "cli:n"], None)
            .await
            .stdout,
        "(integer) 1\n"
    );
    assert_eq!(
        redis_cli(port, &["--no-raw", "GET", "cli:none"], None)
            .await
            .stdout,
        "(nil)\n"
    );
    assert_eq!(
        redis_cli(port, &["--no-raw", "RPUSH", "cli:l", "a", "b"], None)
            .await
            .stdout,
        "(integer) 2\n"
    );
    assert_eq!(
        redis_cli(port, &["--no-raw", "LRANGE", "cli:l", "0", "-1"], None)
            .await
            .stdout,
        "1) \"a\"\n2) \"b\"\n"
    );
    assert_eq!(
        redis_cli(port, &["-n", "2", "SET", "cli:db2", "x"], None)
            .await
            .stdout,
        "OK\n"
    );
    assert_eq!(
        redis_cli(port, &["-n", "2", "GET", "cli:db2"], None)
            .await
            .stdout,
        "x\n"
    );
    assert_eq!(
        redis_cli(port, &["GET", "cli:db2"], None).await.stdout,
        "\n"
    );

    // Errors look exactly like Redis's own.
    let (direct, proxied) = cli_both(redis.port, port, &["--no-raw", "INCR", "cli:k"]).await;
    assert_eq!(proxied, direct);
    assert!(direct.contains("ERR value is not an integer"), "{direct}");
    let (direct, proxied) = cli_both(redis.port, port, &["--no-raw", "NOSUCHCOMMAND", "x"]).await;
    assert_eq!(proxied, direct);
}

/// Commands read from stdin (one per line), and inline-protocol commands sent with `--pipe`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_inline_mode() {
    let (_redis, proxy) = setup().await;
    let port = proxy.addr.port();
    let out = redis_cli(
        port,
        &[],
        Some(b"SET inl:a 1\nINCR inl:a\nGET inl:a\nSET inl:s \"two words\"\nGET inl:s\n".to_vec()),
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, "OK\n2\n2\nOK\ntwo words\n");

    // --pipe forwards the bytes as they are: here, inline commands.
    let mut input = Vec::new();
    for i in 0..100 {
        input.extend_from_slice(format!("SET inl:p{i} \"value {i}\"\r\n").as_bytes());
    }
    let out = redis_cli(port, &["--pipe"], Some(input)).await;
    assert!(out.ok, "{} {}", out.stdout, out.stderr);
    let all = out.stdout + &out.stderr;
    assert!(all.contains("errors: 0, replies: 100"), "{all}");
    let mut c = raw(proxy.addr).await;
    assert_eq!(c.text(&["GET", "inl:p99"]).await, "$8\r\nvalue 99\r\n");
}

/// Inline commands sent by hand get exactly the replies Redis gives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_inline_commands_match_redis() {
    let (redis, proxy) = setup().await;
    let script: &[&[u8]] = &[
        b"PING\r\n",
        b"SET ik \"hello world\"\r\n",
        b"GET ik\r\n",
        b"\r\nECHO 'single quoted'\r\n",
        b"ECHO lf-only\n",
        b"INCR ik\r\n",
        b"SET ik2 \"tab\\there\"\r\n",
        b"GET ik2\r\n",
        b"NOSUCHCOMMAND a b\r\n",
        b"   RPUSH   il   a   b   \r\n",
        b"*1\r\n$4\r\nPING\r\n",
    ];
    let direct = replies(redis.addr(), script).await;
    let mut c = raw(redis.addr()).await;
    c.text(&["FLUSHALL"]).await;
    let proxied = replies(proxy.addr, script).await;
    assert_eq!(proxied, direct);
    assert_eq!(direct[2], "$11\r\nhello world\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_pipe_mass_insertion() {
    let (_redis, proxy) = setup().await;
    let mut input = Vec::with_capacity(20_000 * 48);
    for i in 0..20_000 {
        input.extend_from_slice(&RawClient::encode(&[
            "SET".to_owned(),
            format!("mass:{i}"),
            format!("value-{i}"),
        ]));
    }
    let started = Instant::now();
    let out = redis_cli(proxy.addr.port(), &["--pipe"], Some(input)).await;
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(out.ok, "{all}");
    assert!(all.contains("errors: 0, replies: 20000"), "{all}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let mut c = raw(proxy.addr).await;
    assert_eq!(c.text(&["DBSIZE"]).await, ":20000\r\n");
    assert_eq!(
        c.text(&["GET", "mass:19999"]).await,
        "$11\r\nvalue-19999\r\n"
    );
    assert_eq!(c.text(&["GET", "mass:0"]).await, "$7\r\nvalue-0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_resp3_mode() {
    let (redis, proxy) = setup().await;
    let port = proxy.addr.port();
    let out = redis_cli(port, &["-3", "--no-raw", "HELLO", "3"], None).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("\"proto\" => (integer) 3"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("\"server\" => "), "{}", out.stdout);
    assert!(out.stdout.contains("\"version\" => "), "{}", out.stdout);
    assert!(
        out.stdout.lines().next().unwrap_or("").starts_with("1# "),
        "{}",
        out.stdout
    );

    // RESP3 types reach a RESP3 client, RESP2 types a RESP2 one, exactly as from Redis.
    redis_cli(port, &["HSET", "r3:h", "f", "v"], None).await;
    redis_cli(port, &["ZADD", "r3:z", "1.5", "m"], None).await;
    for args in [
        &["-3", "--no-raw", "HGETALL", "r3:h"][..],
        &["--no-raw", "HGETALL", "r3:h"][..],
        &["-3", "--no-raw", "ZSCORE", "r3:z", "m"][..],
        &["--no-raw", "ZSCORE", "r3:z", "m"][..],
        &["-3", "--no-raw", "GET", "r3:none"][..],
        &["-3", "--no-raw", "SMEMBERS", "r3:none"][..],
        &["-3", "--raw", "HGETALL", "r3:h"][..],
    ] {
        let (direct, proxied) = cli_both(redis.port, port, args).await;
        assert_eq!(proxied, direct, "redis-cli {args:?}");
    }
    let out = redis_cli(port, &["-3", "--no-raw", "ZSCORE", "r3:z", "m"], None).await;
    assert_eq!(out.stdout, "(double) 1.5\n");
    let out = redis_cli(port, &["-3", "--no-raw", "HGETALL", "r3:h"], None).await;
    assert_eq!(out.stdout, "1# \"f\" => \"v\"\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_raw_output() {
    let (redis, proxy) = setup().await;
    let port = proxy.addr.port();
    redis_cli(port, &["RPUSH", "raw:l", "a", "b c", "d"], None).await;
    redis_cli(port, &["SET", "raw:multi", "line1\nline2"], None).await;
    assert_eq!(
        redis_cli(port, &["--raw", "LRANGE", "raw:l", "0", "-1"], None)
            .await
            .stdout,
        "a\nb c\nd\n"
    );
    assert_eq!(
        redis_cli(port, &["--raw", "GET", "raw:multi"], None)
            .await
            .stdout,
        "line1\nline2\n"
    );
    assert_eq!(
        redis_cli(port, &["--raw", "INCR", "raw:n"], None)
            .await
            .stdout,
        "1\n"
    );
    assert_eq!(
        redis_cli(port, &["--raw", "GET", "raw:none"], None)
            .await
            .stdout,
        "\n"
    );
    for args in [
        &["--raw", "INCR", "raw:l"][..],
        &["--raw", "HGETALL", "raw:l"][..],
        &["--raw", "LRANGE", "raw:l", "0", "-1"][..],
        &["--raw", "EXISTS", "raw:l", "raw:multi", "raw:none"][..],
    ] {
        let (direct, proxied) = cli_both(redis.port, port, args).await;
        assert_eq!(proxied, direct, "redis-cli {args:?}");
    }
}

// ------------------------------------------------------------------------------------------
// AUTH
// ------------------------------------------------------------------------------------------

/// Redis with `--requirepass pw` and users `app` (everything) and `reader` (reads only),
/// cachet configured with the password.
async fn auth_setup() -> (RedisServer, Proxy) {
    let redis = RedisServer::start_with(&["--requirepass", "pw"]);
    let mut admin = raw(redis.addr()).await;
    assert_eq!(admin.text(&["AUTH", "pw"]).await, "+OK\r\n");
    for args in [
        &["ACL", "SETUSER", "app", "on", ">apppw", "~*", "+@all"][..],
        &[
            "ACL",
            "SETUSER",
            "reader",
            "on",
            ">readpw",
            "~*",
            "-@all",
            "+@read",
            "+@connection",
            "+acl|whoami",
        ][..],
    ] {
        assert_eq!(admin.text(args).await, "+OK\r\n");
    }
    assert_eq!(admin.text(&["SET", "auth:k", "secret"]).await, "+OK\r\n");
    let proxy = Proxy::start_with(&redis.url(), |cfg| {
        cfg.upstream.password = Some(cachet::config::Secret::new("pw"));
    })
    .await;
    (redis, proxy)
}

/// Without AUTH: NOAUTH; a wrong password: WRONGPASS; both exactly as Redis says them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_noauth_and_wrongpass_like_redis() {
    let (redis, proxy) = auth_setup().await;
    let direct_noauth = raw(redis.addr()).await.text(&["GET", "auth:k"]).await;
    assert!(direct_noauth.starts_with("-NOAUTH"), "{direct_noauth}");
    let mut anon = raw(proxy.addr).await;
    assert_eq!(anon.text(&["GET", "auth:k"]).await, direct_noauth);
    assert_eq!(
        anon.text(&["SET", "auth:k", "overwritten"]).await,
        direct_noauth
    );

    let direct_wrong = raw(redis.addr()).await.text(&["AUTH", "nope"]).await;
    assert!(direct_wrong.starts_with("-WRONGPASS"), "{direct_wrong}");
    assert_eq!(
        anon.text(&["AUTH", "nope"]).await,
        direct_wrong,
        "AUTH nope"
    );
    assert_eq!(
        anon.text(&["GET", "auth:k"]).await,
        direct_noauth,
        "still not authenticated"
    );
    let direct_wrong_user = raw(redis.addr()).await.text(&["AUTH", "app", "nope"]).await;
    assert_eq!(
        anon.text(&["AUTH", "app", "nope"]).await,
        direct_wrong_user,
        "AUTH app nope"
    );
    assert_eq!(
        anon.text(&["AUTH", "ghost", "apppw"]).await,
        direct_wrong_user,
        "AUTH ghost apppw"
    );
    assert_eq!(
        anon.text(&["GET", "auth:k"]).await,
        direct_noauth,
        "still not authenticated"
    );
    // ... and can still authenticate properly afterwards.
    assert_eq!(anon.text(&["AUTH", "pw"]).await, "+OK\r\n");
    assert_eq!(anon.text(&["GET", "auth:k"]).await, "$6\r\nsecret\r\n");
}

/// AUTH pw (the default user, as configured in cachet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_default_user_password() {
    let (_redis, proxy) = auth_setup().await;
    let mut c = raw(proxy.addr).await;
    assert_eq!(c.text(&["AUTH", "pw"]).await, "+OK\r\n");
    assert_eq!(c.text(&["GET", "auth:k"]).await, "$6\r\nsecret\r\n");
    assert_eq!(c.text(&["SET", "auth:k2", "v"]).await, "+OK\r\n");
    assert_eq!(c.text(&["ACL", "WHOAMI"]).await, "$7\r\ndefault\r\n");
    let mut d = raw(proxy.addr).await;
    assert_eq!(d.text(&["AUTH", "default", "pw"]).await, "+OK\r\n");
    assert_eq!(d.text(&["GET", "auth:k2"]).await, "$1\r\nv\r\n");
    let f2 = fred_client(
        &format!("redis://:pw@127.0.0.1:{}", proxy.addr.port()),
        false,
    )
    .await;
    let who: String = f2.acl_whoami().await.unwrap();
    assert_eq!(who, "default");
    let f3 = fred_client(
        &format!("redis://:pw@127.0.0.1:{}", proxy.addr.port()),
        true,
    )
    .await;
    let v: String = f3.get("auth:k2").await.unwrap();
    assert_eq!(v, "v");
}

/// AUTH app apppw as the first command of a fresh (unauthenticated) client; ACL WHOAMI says
/// app, and other clients are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_as_another_user() {
    let (_redis, proxy) = auth_setup().await;
    let mut app = raw(proxy.addr).await;
    assert_eq!(app.text(&["AUTH", "app", "apppw"]).await, "+OK\r\n");
    assert_eq!(app.text(&["ACL", "WHOAMI"]).await, "$3\r\napp\r\n");
    assert_eq!(app.text(&["SET", "auth:app", "1"]).await, "+OK\r\n");
    let mut other = raw(proxy.addr).await;
    assert_eq!(other.text(&["AUTH", "pw"]).await, "+OK\r\n");
    assert_eq!(other.text(&["ACL", "WHOAMI"]).await, "$7\r\ndefault\r\n");
    assert_eq!(app.text(&["ACL", "WHOAMI"]).await, "$3\r\napp\r\n");

    // HELLO 3 AUTH as another user, from a fresh client.
    let mut h = raw(proxy.addr).await;
    let hello = h.text(&["HELLO", "3", "AUTH", "app", "apppw"]).await;
    assert!(hello.starts_with('%'), "{hello}");
    assert_eq!(h.text(&["ACL", "WHOAMI"]).await, "$3\r\napp\r\n");

    // fred with the user in the URL, both protocols.
    for resp3 in [false, true] {
        let f = fred_client(
            &format!("redis://app:apppw@127.0.0.1:{}", proxy.addr.port()),
            resp3,
        )
        .await;
        let who: String = f.acl_whoami().await.unwrap();
        assert_eq!(who, "app", "resp3: {resp3}");
        let v: String = f.get("auth:app").await.unwrap();
        assert_eq!(v, "1");
    }
}

/// A user's ACL really applies to what goes through cachet, and a client can switch users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_user_permissions_apply() {
    let (redis, proxy) = auth_setup().await;
    let mut direct_reader = raw(redis.addr()).await;
    direct_reader.text(&["AUTH", "reader", "readpw"]).await;
    let direct_noperm = direct_reader.text(&["SET", "auth:k", "x"]).await;
    assert!(direct_noperm.starts_with("-NOPERM"), "{direct_noperm}");

    // Authenticated as the default user first, then as reader.
    let mut reader = raw(proxy.addr).await;
    assert_eq!(reader.text(&["AUTH", "pw"]).await, "+OK\r\n");
    assert_eq!(reader.text(&["AUTH", "reader", "readpw"]).await, "+OK\r\n");
    assert_eq!(reader.text(&["GET", "auth:k"]).await, "$6\r\nsecret\r\n");
    assert_eq!(reader.text(&["SET", "auth:k", "x"]).await, direct_noperm);
    assert_eq!(reader.text(&["ACL", "WHOAMI"]).await, "$6\r\nreader\r\n");
    // A wrong password for another user leaves the client as it was.
    let direct_wrong = raw(redis.addr()).await.text(&["AUTH", "app", "nope"]).await;
    assert_eq!(reader.text(&["AUTH", "app", "nope"]).await, direct_wrong);
    assert_eq!(reader.text(&["ACL", "WHOAMI"]).await, "$6\r\nreader\r\n");
    // Back to the default user on the same connection.
    assert_eq!(reader.text(&["AUTH", "default", "pw"]).await, "+OK\r\n");
    assert_eq!(reader.text(&["SET", "auth:k", "x"]).await, "+OK\r\n");
    assert_eq!(reader.text(&["ACL", "WHOAMI"]).await, "$7\r\ndefault\r\n");
}

// ------------------------------------------------------------------------------------------
// Per-client state
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_setname_getname_isolated() {
    let (_redis, proxy) = setup().await;
    let mut a = raw(proxy.addr).await;
    let mut b = raw(proxy.addr).await;
    let mut c = raw(proxy.addr).await;
    assert_eq!(a.text(&["CLIENT", "SETNAME", "alpha"]).await, "+OK\r\n");
    assert_eq!(b.text(&["CLIENT", "SETNAME", "beta"]).await, "+OK\r\n");
    for _ in 0..3 {
        assert_eq!(a.text(&["CLIENT", "GETNAME"]).await, "$5\r\nalpha\r\n");
        assert_eq!(b.text(&["CLIENT", "GETNAME"]).await, "$4\r\nbeta\r\n");
        assert_eq!(c.text(&["CLIENT", "GETNAME"]).await, "$-1\r\n");
    }
    // Pipelined interleaving.
    a.send(&["CLIENT", "GETNAME"]).await.unwrap();
    b.send(&["CLIENT", "GETNAME"]).await.unwrap();
    a.send(&["CLIENT", "SETNAME", "alpha2"]).await.unwrap();
    a.send(&["CLIENT", "GETNAME"]).await.unwrap();
    assert_eq!(text(&b.read_frame().await.unwrap()), "$4\r\nbeta\r\n");
    assert_eq!(text(&a.read_frame().await.unwrap()), "$5\r\nalpha\r\n");
    assert_eq!(text(&a.read_frame().await.unwrap()), "+OK\r\n");
    assert_eq!(text(&a.read_frame().await.unwrap()), "$6\r\nalpha2\r\n");
    assert_eq!(b.text(&["CLIENT", "GETNAME"]).await, "$4\r\nbeta\r\n");
    // Clearing the name.
    assert_eq!(b.text(&["CLIENT", "SETNAME", ""]).await, "+OK\r\n");
    assert_eq!(b.text(&["CLIENT", "GETNAME"]).await, "$-1\r\n");
    assert!(
        a.text(&["CLIENT", "SETNAME", "has space"])
            .await
            .starts_with("-ERR")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_distinct_per_client() {
    let (_redis, proxy) = setup().await;
    let mut ids = HashSet::new();
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut c = raw(proxy.addr).await;
        let reply = c.text(&["CLIENT", "ID"]).await;
        assert!(reply.starts_with(':'), "{reply}");
        assert_eq!(
            c.text(&["CLIENT", "ID"]).await,
            reply,
            "a client's id is stable"
        );
        assert!(ids.insert(reply.clone()), "id {reply} given twice");
        clients.push(c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_id_closes_that_client() {
    let (_redis, proxy) = setup().await;
    let mut victim = raw(proxy.addr).await;
    let mut bystander = raw(proxy.addr).await;
    let mut killer = raw(proxy.addr).await;
    let id = victim.text(&["CLIENT", "ID"]).await;
    let id = id.trim_start_matches(':').trim_end().to_owned();
    assert_eq!(victim.text(&["PING"]).await, "+PONG\r\n");

    assert_eq!(killer.text(&["CLIENT", "KILL", "ID", &id]).await, ":1\r\n");
    assert!(
        victim.closed_within(Duration::from_secs(2)).await,
        "killed client still open"
    );
    assert_eq!(
        killer.text(&["CLIENT", "KILL", "ID", &id]).await,
        ":0\r\n",
        "already gone"
    );
    assert_eq!(
        killer.text(&["CLIENT", "KILL", "ID", "987654321"]).await,
        ":0\r\n"
    );
    assert_eq!(bystander.text(&["PING"]).await, "+PONG\r\n");
    assert_eq!(killer.text(&["PING"]).await, "+PONG\r\n");

    // A client can be killed while it is blocked.
    let mut blocked = raw(proxy.addr).await;
    let id = blocked.text(&["CLIENT", "ID"]).await;
    let id = id.trim_start_matches(':').trim_end().to_owned();
    blocked.send(&["BLPOP", "kill:q", "5"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(killer.text(&["CLIENT", "KILL", "ID", &id]).await, ":1\r\n");
    assert!(
        blocked.closed_within(Duration::from_secs(2)).await,
        "killed blocked client still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_restores_a_fresh_connection() {
    let (_redis, proxy) = setup().await;
    let mut c = raw(proxy.addr).await;
    let id = c.text(&["CLIENT", "ID"]).await;
    assert_eq!(c.text(&["SET", "rs:k", "db0"]).await, "+OK\r\n");
    assert_eq!(c.text(&["CLIENT", "SETNAME", "named"]).await, "+OK\r\n");
    assert_eq!(c.text(&["SELECT", "1"]).await, "+OK\r\n");
    assert_eq!(c.text(&["SET", "rs:k", "db1"]).await, "+OK\r\n");
    assert_eq!(c.text(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(c.text(&["SET", "rs:k", "in-multi"]).await, "+QUEUED\r\n");

    assert_eq!(c.text(&["RESET"]).await, "+RESET\r\n");
    assert_eq!(c.text(&["CLIENT", "GETNAME"]).await, "$-1\r\n");
    assert_eq!(
        c.text(&["GET", "rs:k"]).await,
        "$3\r\ndb0\r\n",
        "RESET goes back to db 0"
    );
    assert_eq!(c.text(&["EXEC"]).await, "-ERR EXEC without MULTI\r\n");
    assert_eq!(
        c.text(&["CLIENT", "ID"]).await,
        id,
        "RESET keeps the connection"
    );
    assert_eq!(c.text(&["SELECT", "1"]).await, "+OK\r\n");
    assert_eq!(
        c.text(&["GET", "rs:k"]).await,
        "$3\r\ndb1\r\n",
        "the queued SET never ran"
    );

    // RESET also leaves RESP3 and subscriptions.
    let mut s = raw(proxy.addr).await;
    s.text(&["HELLO", "3"]).await;
    s.text(&["SUBSCRIBE", "rs:ch"]).await;
    assert_eq!(s.text(&["RESET"]).await, "+RESET\r\n");
    let mut p = raw(proxy.addr).await;
    assert_eq!(p.text(&["PUBLISH", "rs:ch", "x"]).await, ":0\r\n");
    assert_eq!(
        s.text(&["HGETALL", "nothing"]).await,
        "*0\r\n",
        "back to RESP2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_replies_ok_and_closes() {
    let (_redis, proxy) = setup().await;
    let mut c = raw(proxy.addr).await;
    assert_eq!(c.text(&["SET", "q:k", "v"]).await, "+OK\r\n");
    // QUIT after pipelined commands: their replies come first.
    c.send_raw(
        &[
            RawClient::encode(&["GET", "q:k"]),
            RawClient::encode(&["QUIT"]),
        ]
        .concat(),
    )
    .await
    .unwrap();
    assert_eq!(text(&c.read_frame().await.unwrap()), "$1\r\nv\r\n");
    assert_eq!(text(&c.read_frame().await.unwrap()), "+OK\r\n");
    assert!(
        c.closed_within(Duration::from_secs(2)).await,
        "still open after QUIT"
    );

    let mut inline = raw(proxy.addr).await;
    inline.send_raw(b"QUIT\r\n").await.unwrap();
    assert_eq!(text(&inline.read_frame().await.unwrap()), "+OK\r\n");
    assert!(inline.closed_within(Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_sees_other_clients_commands() {
    let (_redis, proxy) = setup().await;
    let mut m = raw(proxy.addr).await;
    assert_eq!(m.text(&["MONITOR"]).await, "+OK\r\n");
    let mut c = raw(proxy.addr).await;
    assert_eq!(
        c.text(&["SET", "monitor:key", "monitored-value"]).await,
        "+OK\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = m
            .read_frame_timeout(remaining)
            .await
            .expect("MONITOR never showed the SET");
        let line = text(&line);
        assert!(
            line.starts_with('+'),
            "monitor lines are simple strings: {line:?}"
        );
        if line.contains("\"monitor:key\"") {
            assert!(
                line.contains("\"SET\" \"monitor:key\" \"monitored-value\""),
                "{line}"
            );
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tracking_resp3_invalidation() {
    let (_redis, proxy) = setup().await;
    let mut writer = raw(proxy.addr).await;
    assert_eq!(writer.text(&["SET", "tk", "v1"]).await, "+OK\r\n");

    let mut t = raw(proxy.addr).await;
    assert!(t.text(&["HELLO", "3"]).await.starts_with('%'));
    assert_eq!(t.text(&["CLIENT", "TRACKING", "ON"]).await, "+OK\r\n");
    assert_eq!(t.text(&["GET", "tk"]).await, "$2\r\nv1\r\n");

    assert_eq!(writer.text(&["SET", "tk", "v2"]).await, "+OK\r\n");
    let push = t
        .read_frame_timeout(Duration::from_secs(3))
        .await
        .expect("no invalidation push");
    assert_eq!(text(&push), ">2\r\n$10\r\ninvalidate\r\n*1\r\n$2\r\ntk\r\n");

    // Reading again re-tracks the key; the next change invalidates again.
    assert_eq!(t.text(&["GET", "tk"]).await, "$2\r\nv2\r\n");
    assert_eq!(writer.text(&["DEL", "tk"]).await, ":1\r\n");
    let push = t
        .read_frame_timeout(Duration::from_secs(3))
        .await
        .expect("no second invalidation push");
    assert_eq!(text(&push), ">2\r\n$10\r\ninvalidate\r\n*1\r\n$2\r\ntk\r\n");
    // No invalidation for a key that was not read.
    assert_eq!(writer.text(&["SET", "untracked", "x"]).await, "+OK\r\n");
    assert!(
        t.read_frame_timeout(Duration::from_millis(300))
            .await
            .is_err(),
        "invalidation for a key the client never read"
    );
    assert_eq!(t.text(&["PING"]).await, "+PONG\r\n");
}

// ------------------------------------------------------------------------------------------
// Replies reach the right client
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_clients_get_their_own_replies() {
    let (_redis, proxy) = setup().await;
    let addr = proxy.addr;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for client in 0..50 {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await.expect("connect");
            barrier.wait().await;
            for i in 0..200 {
                let key = format!("conc:{client}:{}", i % 7);
                let value = format!(
                    "client-{client}-iteration-{i}-{}",
                    "x".repeat((client * 7 + i) % 50)
                );
                // SET and GET pipelined in one write.
                let mut both = RawClient::encode(&["SET", key.as_str(), value.as_str()]);
                both.extend_from_slice(&RawClient::encode(&["GET", key.as_str()]));
                c.send_raw(&both).await.expect("send");
                let set: Bytes = c.read_frame().await.expect("SET reply");
                assert_eq!(text(&set), "+OK\r\n", "client {client} iteration {i}");
                let get = c.read_frame().await.expect("GET reply");
                assert_eq!(
                    text(&get),
                    format!("${}\r\n{value}\r\n", value.len()),
                    "client {client} iteration {i}"
                );
            }
        }));
    }
    for t in tasks {
        within("client task", t).await.unwrap();
    }
}
