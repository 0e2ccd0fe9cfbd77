//! Policies end to end: EMIT through cachet to a real WebAssembly policy and a real
//! redis-server. The `misbehave` guest (policies/misbehave) does what its event's name says:
//! behave, loop, hoard memory, trap, fail, return too much, emit itself forever. Every
//! sandbox limit is tripped here while other clients' GET/SET traffic is timed; reloads run
//! under load; dead letters are replayed; a component that imports WASI is refused.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::cmd;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::Value;
use support::policies::{policy_wasm, wasip2_component};
use support::{Proxy, RawClient, RedisServer, fred_client};

/// The deadline of calls in tests that are not about deadlines: generous, so that a machine
/// busy with parallel builds cannot fail a well-behaved call.
const RELAXED_MS: u64 = 500;
/// The deadline in the sandbox test: the default (10 ms) plus room for a loaded machine, still
/// far below the 100 ms gap the concurrent traffic must never see.
const SANDBOX_MS: u64 = 50;

fn policy(module: &Path) -> cachet::config::PolicyConfig {
    policy_with(module, RELAXED_MS)
}

fn policy_with(module: &Path, timeout_ms: u64) -> cachet::config::PolicyConfig {
    toml::from_str(&format!(
        "name = \"misbehave\"\nmodule = {:?}\nevents = [\"misbehave.*\"]\ntimeout_ms = {timeout_ms}\n",
        module.display().to_string()
    ))
    .expect("policy config")
}

async fn start(redis: &RedisServer, module: &Path) -> Proxy {
    start_with_timeout(redis, module, RELAXED_MS).await
}

async fn start_with_timeout(redis: &RedisServer, module: &Path, timeout_ms: u64) -> Proxy {
    let module = module.to_owned();
    Proxy::start_with(&redis.url(), move |config| {
        config.policies = vec![policy_with(&module, timeout_ms)];
        config.events.log_stream = Some("cachet:events".to_owned());
    })
    .await
}

async fn emit(client: &Client, args: &[&str]) -> Result<Value, fred::error::Error> {
    let args: Vec<Value> = args.iter().map(|a| Value::from(*a)).collect();
    client.custom(cmd!("EMIT"), args).await
}

/// A map reply (RESP3 map or RESP2 flat array) as (key, value) pairs.
fn pairs(reply: &Value) -> Vec<(String, Value)> {
    match reply {
        Value::Map(map) => map
            .clone()
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().expect("key").to_string(), v.clone()))
            .collect(),
        Value::Array(items) => items
            .chunks(2)
            .map(|p| (p[0].as_string().expect("key"), p[1].clone()))
            .collect(),
        other => panic!("not a map: {other:?}"),
    }
}

fn field(reply: &Value, name: &str) -> Value {
    pairs(reply)
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in {reply:?}"))
        .1
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().map(|i| i.as_string().expect("text")).collect(),
        other => panic!("not an array: {other:?}"),
    }
}

#[tokio::test]
async fn emit_runs_the_policy_and_its_actions_reach_redis() {
    let redis = RedisServer::start();
    let proxy = start(&redis, &policy_wasm("misbehave")).await;
    let direct = fred_client(&redis.url(), false).await;
    for resp3 in [false, true] {
        let client = fred_client(&proxy.url(), resp3).await;
        for key in ["a", "b"] {
            let _: Value = client
                .custom(cmd!("TAGSET"), vec![key, "1", "TAGS", "teacher:123"])
                .await
                .expect("TAGSET");
        }
        let _: () = client.set("k", "v", None, None, false).await.expect("SET");
        let _: Value = client
            .custom(cmd!("TAGSET"), vec!["k", "v", "TAGS", "other"])
            .await
            .expect("TAGSET");
        let reply = emit(
            &client,
            &[
                "misbehave.ok",
                "tag",
                "teacher:123",
                "key",
                "k",
                "warm",
                "9",
            ],
        )
        .await
        .expect("EMIT");
        assert_eq!(strings(&field(&reply, "policies")), ["misbehave"]);
        assert_eq!(strings(&field(&reply, "tags")), ["teacher:123"]);
        assert_eq!(strings(&field(&reply, "keys")), ["k"]);
        assert_eq!(field(&reply, "deleted").as_u64(), Some(3), "{reply:?}");
        assert!(strings(&field(&reply, "errors")).is_empty());
        // No warmer is configured yet: the request is refused, and counted as such.
        assert_eq!(field(&reply, "warm").as_u64(), Some(0));
        assert_eq!(field(&reply, "warm_refused").as_u64(), Some(1));
        let left: u64 = direct.exists(vec!["a", "b", "k"]).await.expect("EXISTS");
        assert_eq!(left, 0, "every key the policy named is gone");
        let names = cachet::tags::index::Names::new("cachet").expect("names");
        let tags: Value = direct
            .custom(cmd!("EXISTS"), vec![Value::Bytes(names.key_tags(b"k"))])
            .await
            .expect("EXISTS");
        assert_eq!(tags.as_u64(), Some(0), "the deleted key left the index");
    }
    let logged: Value = direct
        .custom(cmd!("XRANGE"), vec!["cachet:events", "-", "+"])
        .await
        .expect("XRANGE");
    let logged = format!("{logged:?}");
    assert!(
        logged.contains("misbehave.ok") && logged.contains("teacher:123"),
        "{logged}"
    );
}

#[tokio::test]
async fn host_imports_read_the_tag_index() {
    let redis = RedisServer::start();
    let proxy = start(&redis, &policy_wasm("misbehave")).await;
    let client = fred_client(&proxy.url(), true).await;
    let _: Value = client
        .custom(cmd!("TAGSET"), vec!["x", "1", "TAGS", "u1", "u2"])
        .await
        .expect("TAGSET");
    let _: Value = client
        .custom(cmd!("TAGSET"), vec!["y", "1", "TAGS", "u2"])
        .await
        .expect("TAGSET");
    let reply = emit(&client, &["misbehave.tags-of", "key", "x"])
        .await
        .expect("EMIT");
    let mut tags = strings(&field(&reply, "tags"));
    tags.sort();
    assert_eq!(tags, ["u1", "u2"]);
    assert_eq!(field(&reply, "deleted").as_u64(), Some(2), "x and y");
    let sizes = emit(&client, &["misbehave.sizes", "tag", "u1", "key", "x"])
        .await
        .expect("EMIT");
    assert!(strings(&field(&sizes, "errors")).is_empty());
}

/// A policy that makes host calls without end is stopped at the host-call cap (64 by
/// default): the EMIT fails as a limit, fast, the calls are counted in
/// `cachet_policy_host_calls_total`, and the next call behaves.
#[tokio::test]
async fn host_calls_are_capped_per_call_and_counted() {
    let redis = RedisServer::start();
    let (addr, admin_addr, stop) = start_with_admin(&redis, |config| {
        config.policies = vec![policy(&policy_wasm("misbehave"))];
    })
    .await;
    let mut client = RawClient::connect(addr).await.unwrap();
    let began = Instant::now();
    let reply = client.text(&["EMIT", "misbehave.host-loop"]).await;
    assert!(
        reply.starts_with("-ERR policy misbehave: more than 64 host calls in one call"),
        "{reply}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    let ok = client.text(&["EMIT", "misbehave.ok", "tag", "t"]).await;
    assert!(ok.contains("misbehave"), "{ok}");
    let metrics = reqwest::get(format!("http://{admin_addr}/metrics"))
        .await
        .expect("admin answers")
        .text()
        .await
        .expect("body");
    let value = |name: &str, labels: &[&str]| -> String {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{metrics}"))
            .to_owned()
    };
    // 64 made, the 65th refused; misbehave.ok makes none.
    let policy = "policy=\"misbehave\"";
    assert_eq!(value("cachet_policy_host_calls_total", &[policy]), "65");
    assert_eq!(
        value("cachet_policy_errors_total", &[policy, "kind=\"limit\""]),
        "1"
    );
    let _ = stop.send(());
}

/// Times a GET/SET loop on its own connection; returns the longest gap between replies.
fn traffic(proxy: &Proxy, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(Duration, u64)> {
    let addr = proxy.addr;
    tokio::spawn(async move {
        let mut client = RawClient::connect(addr).await.expect("connect");
        let mut longest = Duration::ZERO;
        let mut count = 0;
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let value = count.to_string();
            assert_eq!(client.text(&["SET", "traffic", &value]).await, "+OK\r\n");
            let got = client.text(&["GET", "traffic"]).await;
            assert!(got.ends_with(&format!("{value}\r\n")), "{got}");
            longest = longest.max(last.elapsed());
            last = Instant::now();
            count += 1;
        }
        (longest, count)
    })
}

#[tokio::test]
async fn every_sandbox_limit_trips_while_others_are_served() {
    let redis = RedisServer::start();
    let proxy = start_with_timeout(&redis, &policy_wasm("misbehave"), SANDBOX_MS).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(&proxy, stop.clone());
    let mut client = RawClient::connect(proxy.addr).await.expect("connect");
    let timed_out = format!("timed out after {SANDBOX_MS} ms");
    let cases = [
        ("misbehave.loop", timed_out.as_str()),
        ("misbehave.memory", "memory limit of 32 MiB reached"),
        ("misbehave.trap", "trapped: "),
        ("misbehave.error", "asked to fail"),
        (
            "misbehave.many",
            "returned 5000 actions, more than the limit of 1000",
        ),
        ("misbehave.huge", "bytes of actions, more than the limit of"),
    ];
    for round in 0..2 {
        for (event, expect) in cases {
            let began = Instant::now();
            let reply = client.text(&["EMIT", event]).await;
            assert!(
                reply.starts_with("-ERR policy misbehave: ") && reply.contains(expect),
                "round {round}, {event}: {reply}"
            );
            assert!(
                began.elapsed() < Duration::from_secs(2),
                "{event} took {:?}",
                began.elapsed()
            );
            // A poisoned instance is replaced: the next call behaves.
            let ok = client.text(&["EMIT", "misbehave.ok", "tag", "t"]).await;
            assert!(ok.contains("misbehave"), "after {event}: {ok}");
        }
    }
    // Follow-ups that never end stop at the depth limit, and the reply says so.
    client.send(&["HELLO", "3"]).await.expect("HELLO");
    client.read_frame().await.expect("HELLO reply");
    let reply = client.text(&["EMIT", "misbehave.followup"]).await;
    assert!(
        reply.contains("follow-up event 'misbehave.followup' dropped: depth limit 4 reached"),
        "{reply}"
    );
    assert!(reply.contains("followups\r\n:4\r\n"), "{reply}");
    stop.store(true, Ordering::Relaxed);
    let (longest, served) = load.await.expect("traffic task");
    assert!(served > 100, "only {served} GET/SET rounds");
    assert!(
        longest < Duration::from_millis(100),
        "a GET/SET waited {longest:?} while policies misbehaved"
    );
    let list = client.text(&["POLICY", "LIST"]).await;
    assert!(list.contains("traps\r\n:6\r\n"), "{list}");
    assert!(list.contains("errors\r\n:12\r\n"), "{list}");
}

#[tokio::test]
async fn failed_events_are_kept_and_replayed_once_fixed() {
    let redis = RedisServer::start();
    let proxy = start(&redis, &policy_wasm("misbehave")).await;
    let client = fred_client(&proxy.url(), false).await;
    let direct = fred_client(&redis.url(), false).await;
    let _: Value = client
        .custom(
            cmd!("TAGSET"),
            vec!["misbehave:broken", "1", "TAGS", "broken"],
        )
        .await
        .expect("TAGSET");
    let _: () = client
        .set("victim", "v", None, None, false)
        .await
        .expect("SET");
    let failed = emit(&client, &["misbehave.flaky", "key", "victim"]).await;
    let error = failed.expect_err("the policy fails").to_string();
    assert!(error.contains("policy misbehave: still broken"), "{error}");
    let dead: u64 = direct
        .custom(cmd!("XLEN"), vec!["cachet:policy:dead"])
        .await
        .expect("XLEN");
    assert_eq!(dead, 1);

    let still: Value = client
        .custom(cmd!("POLICY"), vec!["REPLAY"])
        .await
        .expect("REPLAY");
    assert_eq!(field(&still, "replayed").as_u64(), Some(1));
    assert_eq!(field(&still, "succeeded").as_u64(), Some(0));
    let dead: u64 = direct
        .custom(cmd!("XLEN"), vec!["cachet:policy:dead"])
        .await
        .expect("XLEN");
    assert_eq!(dead, 1, "a replay that fails keeps its one entry");

    // "Fix the policy": it fails only while that key carries the tag.
    let _: u64 = client.del("misbehave:broken").await.expect("DEL");
    let fixed: Value = client
        .custom(cmd!("POLICY"), vec!["REPLAY", "misbehave", "COUNT", "10"])
        .await
        .expect("REPLAY");
    assert_eq!(field(&fixed, "succeeded").as_u64(), Some(1), "{fixed:?}");
    let dead: u64 = direct
        .custom(cmd!("XLEN"), vec!["cachet:policy:dead"])
        .await
        .expect("XLEN");
    assert_eq!(dead, 0, "a replayed success leaves the stream");
    let exists: u64 = direct.exists("victim").await.expect("EXISTS");
    assert_eq!(exists, 0, "the replayed event deleted its key");
}

/// `bytes` with a custom section appended: a valid component with another digest.
fn variant(bytes: &[u8], n: u8) -> Vec<u8> {
    let name = b"cachet-test";
    let mut out = bytes.to_vec();
    out.push(0);
    out.push((1 + name.len() + 1) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.push(n);
    out
}

fn replace(path: &Path, bytes: &[u8]) {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, bytes).expect("write module");
    std::fs::rename(&staging, path).expect("swap module");
}

async fn digest(client: &mut RawClient) -> String {
    let list = client.text(&["POLICY", "LIST"]).await;
    let at = list.find("sha256:").expect("digest");
    list[at..at + 71].to_owned()
}

#[tokio::test]
async fn modules_reload_under_load_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let module: PathBuf = dir.path().join("misbehave.wasm");
    let original = std::fs::read(policy_wasm("misbehave")).expect("read component");
    std::fs::write(&module, &original).expect("write module");
    let redis = RedisServer::start();
    let module_path = module.clone();
    let proxy = Proxy::start_with(&redis.url(), move |config| {
        config.policies = vec![policy(&module_path)];
        config.events.watch_ms = 50;
    })
    .await;
    let mut admin = RawClient::connect(proxy.addr).await.expect("connect");
    let first = digest(&mut admin).await;

    let stop = Arc::new(AtomicBool::new(false));
    let emitted = Arc::new(AtomicU64::new(0));
    let mut emitters = Vec::new();
    for _ in 0..3 {
        let (stop, emitted, addr) = (stop.clone(), emitted.clone(), proxy.addr);
        emitters.push(tokio::spawn(async move {
            let mut client = RawClient::connect(addr).await.expect("connect");
            while !stop.load(Ordering::Relaxed) {
                let reply = client.text(&["EMIT", "misbehave.ok", "tag", "t"]).await;
                assert!(
                    reply.starts_with("*"),
                    "an EMIT failed during reloads: {reply}"
                );
                emitted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Swapped files are picked up by the watcher; POLICY RELOAD forces a reload.
    for n in 0..4 {
        replace(&module, &variant(&original, n));
        let reply = admin.text(&["POLICY", "RELOAD", "misbehave"]).await;
        assert!(reply.contains("replaced"), "{reply}");
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    assert_ne!(first, digest(&mut admin).await);
    // Without a command: the watcher sees the file change.
    let before = digest(&mut admin).await;
    replace(&module, &variant(&original, 9));
    let deadline = Instant::now() + Duration::from_secs(5);
    while digest(&mut admin).await == before {
        assert!(
            Instant::now() < deadline,
            "the changed file was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reloaded = digest(&mut admin).await;

    // A broken file: refused, the previous version keeps serving.
    replace(&module, b"\0asm not really");
    let reply = admin.text(&["POLICY", "RELOAD", "misbehave"]).await;
    assert!(
        reply.starts_with(
            "-ERR policy misbehave: reload failed, the previous version keeps serving"
        ),
        "{reply}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(digest(&mut admin).await, reloaded);
    stop.store(true, Ordering::Relaxed);
    for emitter in emitters {
        emitter.await.expect("emitter");
    }
    assert!(emitted.load(Ordering::Relaxed) > 10);
    let list = admin.text(&["POLICY", "LIST"]).await;
    assert!(list.contains("failed_reloads"), "{list}");
}

#[tokio::test]
async fn a_component_that_imports_wasi_is_refused_by_name() {
    let wasi = wasip2_component("misbehave");
    let report = cachet::policy::check::check(&wasi, "misbehave.ok", &[], None).expect("check");
    let refused = report.refused.expect("refused");
    assert!(
        refused.contains("imports what cachet does not provide") && refused.contains("wasi:"),
        "{refused}"
    );
    let redis = RedisServer::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut config = cachet::Config::default();
    config.upstream.url = cachet::config::RedisUrl::parse(&redis.url()).expect("url");
    config.policies = vec![policy(&wasi)];
    let error = cachet::run(config, listener, std::future::pending())
        .await
        .expect_err("cachet refuses to start with it");
    assert!(error.to_string().contains("wasi:"), "{error}");

    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["policy", "check"])
        .arg(&wasi)
        .output()
        .expect("run cachet");
    assert_eq!(cli.status.code(), Some(1));
    let out = String::from_utf8_lossy(&cli.stdout);
    assert!(
        out.contains("cachet would refuse it") && out.contains("wasi:"),
        "{out}"
    );
}

#[tokio::test]
async fn policy_check_prints_the_actions_as_json() {
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["policy", "check", "--json", "--event", "misbehave.ok"])
        .arg(policy_wasm("misbehave"))
        .args(["tag", "teacher:1", "key", "k"])
        .output()
        .expect("run cachet");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("one JSON document");
    assert_eq!(doc["loadable"], true);
    assert_eq!(doc["imports"][1], "cachet:policy/host@0.1.0", "{doc}");
    assert_eq!(doc["actions"][0]["invalidate-tag"], "teacher:1");
    assert_eq!(doc["actions"][1]["delete-key"], "k");
    let failing = std::process::Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["policy", "check", "--event", "misbehave.loop"])
        .arg(policy_wasm("misbehave"))
        .output()
        .expect("run cachet");
    assert_eq!(failing.status.code(), Some(1));
    // `policy check` uses the default limits: a 10 ms deadline.
    assert!(String::from_utf8_lossy(&failing.stdout).contains("timed out after 10 ms"));
}

#[tokio::test]
async fn bad_emits_get_redis_style_errors_and_the_client_is_still_served() {
    let redis = RedisServer::start();
    let module = policy_wasm("misbehave");
    let proxy = Proxy::start_with(&redis.url(), move |config| {
        config.policies = vec![policy(&module)];
        config.events.max_event_bytes = 1024;
    })
    .await;
    let mut client = RawClient::connect(proxy.addr).await.expect("connect");
    let arity = "-ERR wrong number of arguments for 'emit' command\r\n";
    assert_eq!(client.text(&["EMIT"]).await, arity);
    assert_eq!(client.text(&["EMIT", "misbehave.ok", "tag"]).await, arity);
    let big = "x".repeat(2000);
    assert!(
        client
            .text(&["EMIT", "misbehave.ok", "tag", &big])
            .await
            .starts_with("-ERR event too large: 2015 bytes, the limit is 1024")
    );
    let long = "e".repeat(300);
    assert!(
        client
            .text(&["EMIT", &long])
            .await
            .starts_with("-ERR event name must be 1 to 256 bytes")
    );
    let reply = client
        .command(&[&b"EMIT"[..], b"misbehave.\xff"])
        .await
        .expect("reply");
    assert_eq!(&reply[..], b"-ERR event name must be UTF-8\r\n");
    let reply = client
        .command(&[&b"EMIT"[..], b"misbehave.ok", b"\xfe", b"v"])
        .await
        .expect("reply");
    assert_eq!(&reply[..], b"-ERR event field names must be UTF-8\r\n");
    assert_eq!(
        client.text(&["POLICY", "FROB"]).await,
        "-ERR unknown subcommand 'FROB'. Try POLICY LIST, POLICY RELOAD, POLICY REPLAY, \
         POLICY DROP.\r\n"
    );
    assert_eq!(
        client.text(&["POLICY", "DROP"]).await,
        "-ERR wrong number of arguments for 'policy|drop' command\r\n"
    );
    assert_eq!(
        client.text(&["POLICY", "DROP", "1-0", "nope"]).await,
        "-ERR Invalid stream ID specified as stream command argument\r\n"
    );
    assert_eq!(
        client.text(&["POLICY", "REPLAY", "COUNT", "x"]).await,
        "-ERR value is not an integer or out of range\r\n"
    );
    assert_eq!(
        client.text(&["POLICY", "RELOAD", "nope"]).await,
        "-ERR no policy named 'nope'\r\n"
    );
    assert_eq!(client.text(&["MULTI"]).await, "+OK\r\n");
    assert!(
        client
            .text(&["EMIT", "misbehave.ok"])
            .await
            .contains("cannot run inside MULTI")
    );
    assert!(client.text(&["EXEC"]).await.starts_with("-EXECABORT"));
    assert_eq!(client.text(&["PING"]).await, "+PONG\r\n");
}

#[tokio::test]
async fn time_waiting_for_redis_does_not_count_against_the_deadline() {
    let redis = RedisServer::start();
    let proxy = start_with_timeout(&redis, &policy_wasm("misbehave"), SANDBOX_MS).await;
    let client = fred_client(&proxy.url(), false).await;
    let _: Value = client
        .custom(cmd!("TAGSET"), vec!["x", "1", "TAGS", "u1"])
        .await
        .expect("TAGSET");
    // Redis busy for 200 ms (a script spinning on TIME) while the policy asks it for a key's
    // tags: the host import waits far beyond the policy's deadline.
    let busy = keep_busy(&redis, 200).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let began = Instant::now();
    let reply = emit(&client, &["misbehave.tags-of", "key", "x"])
        .await
        .expect("the call succeeds although it waited for Redis");
    assert!(
        began.elapsed() > Duration::from_millis(100),
        "the EMIT did not wait for the busy Redis: {:?}",
        began.elapsed()
    );
    assert_eq!(strings(&field(&reply, "tags")), ["u1"]);
    busy.await.expect("busy script");
}

/// Keeps Redis busy for `ms` milliseconds (a script spinning on TIME), from a connection of
/// its own; await the handle to know it is over.
async fn keep_busy(redis: &RedisServer, ms: u64) -> tokio::task::JoinHandle<()> {
    let direct = fred_client(&redis.url(), false).await;
    let script = format!(
        "local s = redis.call('TIME') local t = s repeat t = redis.call('TIME') \
         until (t[1] - s[1]) * 1000000 + (t[2] - s[2]) > {} return 1",
        ms * 1000
    );
    tokio::spawn(async move {
        let _: Value = direct
            .custom(cmd!("EVAL"), vec![script.as_str(), "0"])
            .await
            .expect("EVAL");
    })
}

/// Host calls wait for Redis off the deadline, but within a budget of their own: with
/// `host_timeout_ms = 50` and Redis busy for 300 ms, the host call gives up at 50 ms and the
/// call fails as a limit instead of holding a policy thread for the whole wait.
#[tokio::test]
async fn a_host_call_past_the_host_time_budget_fails_the_call() {
    let redis = RedisServer::start();
    let module = policy_wasm("misbehave");
    let proxy = Proxy::start_with(&redis.url(), move |config| {
        config.policies = vec![
            toml::from_str(&format!(
                "name = \"misbehave\"\nmodule = {:?}\nevents = [\"misbehave.*\"]\n\
                 timeout_ms = {SANDBOX_MS}\nhost_timeout_ms = 50\n",
                module.display().to_string()
            ))
            .expect("policy config"),
        ];
    })
    .await;
    let mut client = RawClient::connect(proxy.addr).await.expect("connect");
    let busy = keep_busy(&redis, 300).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let began = Instant::now();
    let reply = client
        .text(&["EMIT", "misbehave.tags-of", "key", "x"])
        .await;
    let took = began.elapsed();
    assert!(
        reply.starts_with("-ERR policy misbehave: host calls waited more than 50 ms"),
        "{reply}"
    );
    // The EMIT's own reply needs Redis too (its dead letter), so it ends after the script;
    // the policy thread was free long before.
    assert!(took < Duration::from_secs(2), "{took:?}");
    busy.await.expect("busy script");
    let ok = client.text(&["EMIT", "misbehave.ok", "tag", "t"]).await;
    assert!(ok.contains("misbehave"), "{ok}");
}

#[tokio::test]
async fn the_sessions_policy_invalidates_a_teachers_session_lists() {
    let redis = RedisServer::start();
    let module = policy_wasm("sessions");
    let proxy = Proxy::start_with(&redis.url(), move |config| {
        config.policies = vec![
            toml::from_str(&format!(
                "name = \"sessions\"\nmodule = {:?}\nevents = [\"session.*\"]\ntimeout_ms = {RELAXED_MS}\n",
                module.display().to_string()
            ))
            .expect("policy config"),
        ];
    })
    .await;
    let client = fred_client(&proxy.url(), true).await;
    for key in ["sessions:teacher:123", "sessions:teacher:123:page:2"] {
        let _: Value = client
            .custom(cmd!("TAGSET"), vec![key, "[...]", "TAGS", "teacher:123"])
            .await
            .expect("TAGSET");
    }
    let _: () = client
        .set("sessions:teacher:999", "[...]", None, None, false)
        .await
        .expect("SET");
    let reply = emit(
        &client,
        &[
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
    assert_eq!(strings(&field(&reply, "policies")), ["sessions"]);
    assert_eq!(field(&reply, "deleted").as_u64(), Some(2), "{reply:?}");
    let left: u64 = client
        .exists(vec![
            "sessions:teacher:123",
            "sessions:teacher:123:page:2",
            "sessions:teacher:999",
        ])
        .await
        .expect("EXISTS");
    assert_eq!(left, 1, "only the other teacher's list is left");
}

#[tokio::test]
async fn sighup_reloads_every_policy() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let config = dir.path().join("cachet.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[upstream]\nurl = \"{}\"\n\
             [[policies]]\nname = \"misbehave\"\nmodule = {:?}\nevents = [\"misbehave.*\"]\n\
             [events]\nwatch_ms = 0\n",
            redis.url(),
            policy_wasm("misbehave").display().to_string()
        ),
    )
    .expect("write config");
    let mut cachet = std::process::Command::new(env!("CARGO_BIN_EXE_cachet"))
        // No admin listener: its default port may be taken on the machine running the tests.
        .env("CACHET_ADMIN_LISTEN", "")
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start cachet");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        if let Ok(client) = RawClient::connect(addr).await {
            break client;
        }
        assert!(Instant::now() < deadline, "cachet did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        client
            .text(&["POLICY", "LIST"])
            .await
            .contains("$7\r\nreloads\r\n:0\r\n")
    );
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &cachet.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client
        .text(&["POLICY", "LIST"])
        .await
        .contains("$7\r\nreloads\r\n:1\r\n")
    {
        assert!(Instant::now() < deadline, "SIGHUP reloaded nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = cachet.kill();
    let _ = cachet.wait();
}

/// cachet with an admin listener, for tests that read `/metrics`: the RESP and admin
/// addresses, and the sender that stops it.
async fn start_with_admin(
    redis: &RedisServer,
    tweak: impl FnOnce(&mut cachet::Config),
) -> (
    std::net::SocketAddr,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
) {
    let mut config = cachet::Config::default();
    config.upstream.url = cachet::config::RedisUrl::parse(&redis.url()).expect("url");
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cachet::run_with_admin(
        config,
        listener,
        Some(admin),
        async move {
            let _ = stopped.await;
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(mut client) = RawClient::connect(addr).await
            && client.text(&["PING"]).await == "+PONG\r\n"
        {
            break;
        }
        assert!(Instant::now() < deadline, "cachet did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (addr, admin_addr, stop)
}

/// The value of the first sample of `name` whose labels include every one of `labels`; 0
/// when there is none (a counter never incremented has no sample with labels).
async fn metric(admin: std::net::SocketAddr, name: &str, labels: &[&str]) -> u64 {
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("admin answers")
        .text()
        .await
        .expect("body");
    metrics
        .lines()
        .find(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && labels.iter().all(|x| l.contains(x))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().expect("a count"))
}

/// A module file that cachet refuses, left in place, is reported once per change of the file:
/// not on every tick of the watcher (`watch_ms`), not when the file is only touched.
#[tokio::test]
async fn a_bad_module_left_in_place_is_reported_once_per_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let module: PathBuf = dir.path().join("misbehave.wasm");
    let original = std::fs::read(policy_wasm("misbehave")).expect("read component");
    std::fs::write(&module, &original).expect("write module");
    let redis = RedisServer::start();
    let module_path = module.clone();
    let (addr, admin, stop) = start_with_admin(&redis, move |config| {
        config.policies = vec![policy(&module_path)];
        config.events.watch_ms = 20;
    })
    .await;
    let mut client = RawClient::connect(addr).await.expect("connect");
    let failed = || {
        metric(
            admin,
            "cachet_policy_reloads_total",
            &["outcome=\"failed\""],
        )
    };
    let replaced = || metric(admin, "cachet_policy_reloads_total", &["outcome=\"ok\""]);
    // Waits until the watcher has had many ticks to report again.
    let settle = || tokio::time::sleep(Duration::from_millis(500));
    let wait_for = |what: &'static str, want: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = match what {
                "failed" => failed().await,
                _ => replaced().await,
            };
            if now >= want {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{what} stayed at {now}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    settle().await;
    assert_eq!(
        (failed().await, replaced().await),
        (0, 0),
        "nothing changed yet"
    );
    replace(&module, b"\0asm not really");
    assert_eq!(wait_for("failed", 1).await, 1);
    settle().await;
    assert_eq!(failed().await, 1, "the same bad file is not reported again");
    let list = client.text(&["POLICY", "LIST"]).await;
    assert!(list.contains("failed_reloads\r\n:1\r\n"), "{list}");

    // Touched (a new time, the same bytes): still nothing new.
    replace(&module, b"\0asm not really");
    settle().await;
    assert_eq!(
        failed().await,
        1,
        "a touched bad file is not reported again"
    );

    // Another bad file is another report; a good one serves, and the first bad one, put
    // back after it, is news again.
    replace(&module, b"\0asm still not");
    assert_eq!(wait_for("failed", 2).await, 2);
    replace(&module, &variant(&original, 1));
    assert_eq!(wait_for("ok", 1).await, 1);
    replace(&module, b"\0asm not really");
    assert_eq!(wait_for("failed", 3).await, 3);
    settle().await;
    assert_eq!((failed().await, replaced().await), (3, 1));
    let ok = client.text(&["EMIT", "misbehave.ok", "tag", "t"]).await;
    assert!(
        ok.contains("misbehave"),
        "the good version keeps serving: {ok}"
    );

    // POLICY RELOAD is asked for: it tries, and reports, every time.
    for _ in 0..2 {
        let reply = client.text(&["POLICY", "RELOAD", "misbehave"]).await;
        assert!(
            reply.starts_with("-ERR policy misbehave: reload failed"),
            "{reply}"
        );
    }
    assert_eq!(failed().await, 5);
    settle().await;
    assert_eq!(
        failed().await,
        5,
        "nor does the watcher report it after a reload"
    );
    let _ = stop.send(());
}

/// An EMIT nobody subscribes to is like a PUBLISH nobody hears: the ordinary reply with no
/// policies and nothing done, in RESP2 and RESP3, counted in cachet_events_unrouted_total.
#[tokio::test]
async fn an_event_nobody_subscribes_to_gets_the_empty_result() {
    let redis = RedisServer::start();
    let module = policy_wasm("misbehave");
    let (addr, admin, stop) = start_with_admin(&redis, move |config| {
        config.policies = vec![policy(&module)];
    })
    .await;
    let url = format!("redis://{addr}");
    for resp3 in [false, true] {
        let client = fred_client(&url, resp3).await;
        let routed = emit(&client, &["misbehave.ok"]).await.expect("EMIT");
        let reply = emit(&client, &["nobody.cares", "id", "1"])
            .await
            .expect("the empty result, not an error");
        let keys = |reply: &Value| {
            let mut keys: Vec<String> = pairs(reply).into_iter().map(|(k, _)| k).collect();
            keys.sort();
            keys
        };
        assert_eq!(keys(&reply), keys(&routed), "resp3 {resp3}: same shape");
        for (key, value) in pairs(&reply) {
            match (key.as_str(), &value) {
                ("policies" | "tags" | "keys" | "errors", Value::Array(items)) => {
                    assert!(items.is_empty(), "{key}: {value:?}")
                }
                ("duration_us", _) => {}
                (_, Value::Integer(0)) => {}
                _ => panic!("resp3 {resp3}: {key} = {value:?}"),
            }
        }
    }
    // On the wire: a flat array of 12 pairs in RESP2, a map of 12 in RESP3, as any EMIT.
    let mut raw = RawClient::connect(addr).await.expect("connect");
    assert!(
        raw.text(&["EMIT", "nobody.cares"])
            .await
            .starts_with("*24\r\n$8\r\npolicies\r\n*0\r\n")
    );
    raw.text(&["HELLO", "3"]).await;
    assert!(
        raw.text(&["EMIT", "nobody.cares"])
            .await
            .starts_with("%12\r\n$8\r\npolicies\r\n*0\r\n")
    );
    assert_eq!(metric(admin, "cachet_events_unrouted_total", &[]).await, 4);
    let _ = stop.send(());

    // `[events] unrouted = "error"` keeps the strict answer.
    let module = policy_wasm("misbehave");
    let strict = Proxy::start_with(&redis.url(), move |config| {
        config.policies = vec![policy(&module)];
        config.events.unrouted = cachet::config::policy::Unrouted::Error;
    })
    .await;
    let mut client = RawClient::connect(strict.addr).await.expect("connect");
    assert_eq!(
        client.text(&["EMIT", "nobody.cares"]).await,
        "-ERR no policy subscribes to event 'nobody.cares'\r\n"
    );
}

/// A poison event that will never replay is dropped from the dead-letter stream, by id or
/// every one of a policy's; the reply counts what was removed, as XDEL does.
#[tokio::test]
async fn poison_events_are_dropped_from_the_dead_letter_stream() {
    let redis = RedisServer::start();
    let proxy = start(&redis, &policy_wasm("misbehave")).await;
    let client = fred_client(&proxy.url(), true).await;
    let direct = fred_client(&redis.url(), false).await;
    for n in 0..3 {
        let failed = emit(&client, &["misbehave.error", "n", &n.to_string()]).await;
        assert!(failed.is_err(), "misbehave.error fails");
    }
    let dead_ids = || async {
        let entries: Value = direct
            .custom(cmd!("XRANGE"), vec!["cachet:policy:dead", "-", "+"])
            .await
            .expect("XRANGE");
        match entries {
            Value::Array(entries) => entries
                .into_iter()
                .map(|e| match e {
                    Value::Array(mut parts) => parts.remove(0).as_string().expect("id"),
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        }
    };
    let ids = dead_ids().await;
    assert_eq!(ids.len(), 3);
    // A replay fails again, and says which entry failed.
    let replayed: Value = client
        .custom(cmd!("POLICY"), vec!["REPLAY", "COUNT", "1"])
        .await
        .expect("REPLAY");
    assert!(
        strings(&field(&replayed, "errors"))[0].starts_with(&format!("{}: ", ids[0])),
        "{replayed:?}"
    );

    let dropped: u64 = client
        .custom(cmd!("POLICY"), vec!["DROP", ids[0].as_str(), "99-0"])
        .await
        .expect("DROP");
    assert_eq!(dropped, 1, "one of the two ids was there");
    assert_eq!(dead_ids().await, ids[1..]);

    let other: u64 = client
        .custom(cmd!("POLICY"), vec!["DROP", "someone-else", "ALL"])
        .await
        .expect("DROP");
    assert_eq!(other, 0);
    let dropped: u64 = client
        .custom(cmd!("POLICY"), vec!["DROP", "misbehave", "all"])
        .await
        .expect("DROP");
    assert_eq!(dropped, 2);
    assert!(dead_ids().await.is_empty());
    let again: u64 = client
        .custom(cmd!("POLICY"), vec!["DROP", "misbehave", "ALL"])
        .await
        .expect("DROP");
    assert_eq!(again, 0, "an empty (or missing) stream: nothing to drop");
}
