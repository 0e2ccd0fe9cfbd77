//! The admin endpoint end to end: cachet runs in-process in front of its own `redis-server`,
//! with its admin listener on a free port; clients (fred, a raw RESP client, redis-cli) send
//! known sequences of commands, and `/health`, `/metrics`, `/ready`, `/live` and `INFO` are
//! read over real HTTP and RESP.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::InfoKind;
use serde_json::Value;
use support::{RawClient, RedisServer, fred_client};

/// cachet with its admin listener, both on free ports; shut down on drop.
struct Cachet {
    addr: SocketAddr,
    admin: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Cachet {
    /// Starts cachet and waits until `/health` says Redis is connected.
    async fn start(redis: &RedisServer, tweak: impl FnOnce(&mut cachet::Config)) -> Self {
        let cachet = Self::start_unready(redis, tweak).await;
        cachet
            .health_until("connected", |_, json| {
                json["data"]["health"]["redis"]["connected"] == true
            })
            .await;
        cachet
    }

    async fn start_unready(redis: &RedisServer, tweak: impl FnOnce(&mut cachet::Config)) -> Self {
        let mut config = cachet::Config::default();
        config.upstream.url = cachet::config::RedisUrl::parse(&redis.url()).expect("url");
        config.health.interval_ms = 100;
        // This machine runs many builds at once: a slow PING must not decide these tests,
        // which are about the other figures (the latency levels have a unit test).
        config.health.thresholds.redis_latency_ms.warning = 5_000.0;
        config.health.thresholds.redis_latency_ms.critical = 10_000.0;
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(cachet::run_with_admin(
            config,
            listener,
            Some(admin),
            async move {
                let _ = rx.await;
            },
        ));
        Cachet {
            addr,
            admin: admin_addr,
            shutdown: Some(tx),
        }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(self.http(path)).await.expect("admin answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    async fn health(&self) -> (u16, Value) {
        let (status, body) = self.get("/health").await;
        let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, json)
    }

    /// Polls `/health` until `done` holds (the monitor checks every 100 ms here).
    async fn health_until(&self, what: &str, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, json) = self.health().await;
            if done(status, &json) {
                return (status, json);
            }
            assert!(Instant::now() < deadline, "never {what}: {status} {json:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/metrics`, parsed by a Prometheus text-format parser.
    async fn metrics(&self) -> prometheus_parse::Scrape {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .unwrap_or_else(|e| panic!("unparsable /metrics ({e}):\n{body}"))
    }
}

impl Drop for Cachet {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The value of `name` whose labels include all of `labels` (0 when absent).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a scalar"),
        })
        .sum()
}

/// Every key of the original system's response, at the path it has there.
fn assert_original_shape(json: &Value) {
    let paths: &[&[&str]] = &[
        &["success"],
        &["data", "health", "overall"],
        &["data", "health", "redis", "connected"],
        &["data", "health", "redis", "latency"],
        &["data", "health", "redis", "memoryUsage"],
        &["data", "health", "redis", "keyCount"],
        &["data", "health", "cache", "hitRate"],
        &["data", "health", "cache", "errorRate"],
        &["data", "health", "cache", "avgResponseTime"],
        &["data", "health", "cache", "totalOperations"],
        &["data", "metrics", "hits"],
        &["data", "metrics", "misses"],
        &["data", "metrics", "invalidations"],
        &["data", "metrics", "errors"],
        &["data", "metrics", "hitRate"],
        &["data", "metrics", "uptime"],
    ];
    for path in paths {
        let mut at = json;
        for key in *path {
            at = at
                .get(key)
                .unwrap_or_else(|| panic!("no {} in {json:#}", path.join(".")));
        }
    }
    assert_eq!(json["success"], true);
}

async fn fred_set_and_get(url: &str, hits: &[&str], misses: &[&str]) {
    let client = fred_client(url, false).await;
    for key in hits {
        let _: () = client.set(*key, "v", None, None, false).await.unwrap();
    }
    for key in hits {
        let value: Option<String> = client.get(*key).await.unwrap();
        assert_eq!(value.as_deref(), Some("v"));
    }
    for key in misses {
        let value: Option<String> = client.get(*key).await.unwrap();
        assert_eq!(value, None);
    }
    client.quit().await.unwrap();
}

#[tokio::test]
async fn counts_agree_with_a_known_sequence_of_commands() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis, |_| {}).await;
    fred_set_and_get(&cachet.url(), &["a", "b", "c"], &["x", "y"]).await;
    // MGET counts each element; an error reply (WRONGTYPE) is neither hit nor miss.
    let mut raw = RawClient::connect(cachet.addr).await.unwrap();
    assert_eq!(
        raw.text(&["MGET", "a", "nope", "b"]).await,
        "*3\r\n$1\r\nv\r\n$-1\r\n$1\r\nv\r\n"
    );
    raw.text(&["LPUSH", "list", "1"]).await;
    assert!(raw.text(&["GET", "list"]).await.starts_with("-WRONGTYPE"));

    let scrape = cachet.metrics().await;
    assert_eq!(
        sample(&scrape, "cachet_hits_total", &[("rule", "none")]),
        5.0
    );
    assert_eq!(
        sample(&scrape, "cachet_misses_total", &[("rule", "none")]),
        3.0
    );
    assert_eq!(
        sample(&scrape, "cachet_commands_total", &[("cmd", "get")]),
        6.0
    );
    assert_eq!(
        sample(&scrape, "cachet_commands_total", &[("cmd", "set")]),
        3.0
    );
    assert_eq!(
        sample(&scrape, "cachet_commands_total", &[("cmd", "mget")]),
        1.0
    );
    assert_eq!(
        sample(&scrape, "cachet_errors_total", &[]),
        0.0,
        "WRONGTYPE is Redis's answer"
    );
    let latency_count = sample(&scrape, "cachet_command_duration_seconds_count", &[]);
    let all_commands = sample(&scrape, "cachet_commands_total", &[]);
    assert!(latency_count >= 11.0, "{latency_count} latencies");
    assert!(
        all_commands >= latency_count,
        "{all_commands} < {latency_count}"
    );
    assert!(sample(&scrape, "cachet_upstream_ping_seconds_count", &[]) >= 1.0);

    let (status, json) = cachet.health().await;
    assert_eq!(status, 200);
    assert_original_shape(&json);
    // No rule matches these keys: they are no cached data, so the headline hit rate (of
    // rule-matched lookups) has nothing to say; every lookup's figure is beside it.
    let metrics = &json["data"]["metrics"];
    assert_eq!(
        (metrics["hits"].as_u64(), metrics["misses"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        (metrics["allHits"].as_u64(), metrics["allMisses"].as_u64()),
        (Some(5), Some(3))
    );
    assert_eq!(metrics["hitRate"], Value::Null);
    let cache = &json["data"]["health"]["cache"];
    assert_eq!(cache["hitRate"], Value::Null);
    assert_eq!(cache["hitRateAllLookups"].as_f64(), Some(62.5));
    assert_eq!(cache["window"]["hitRateAllLookups"].as_f64(), Some(62.5));
    assert_eq!(cache["window"]["seconds"], 60);
    let total = cache["totalOperations"].as_u64().unwrap();
    assert_eq!(total as f64, all_commands);
    // 62.5 % of lookups hit, but none of them is cached data: nothing to judge.
    assert_eq!(json["data"]["health"]["overall"], "healthy", "{json:#}");
}

/// One rule, `cached:{id}`: what the hit rate judges.
fn cached_rule(config: &mut cachet::Config) {
    let rules = r#"
        [[rules]]
        name = "cached"
        pattern = "cached:{id}"
        tags = ["cached"]
        ttl = 60
    "#;
    config.rules = cachet::Config::from_toml(rules, "rules").unwrap().rules;
}

#[tokio::test]
async fn hits_and_misses_are_counted_by_rule() {
    let redis = RedisServer::start();
    let rules = r#"
        [[rules]]
        name = "session"
        pattern = "session:{id}"
        tags = ["session:{id}"]
        ttl = 60
    "#;
    let cachet = Cachet::start(&redis, |config| {
        config.rules = cachet::Config::from_toml(rules, "rules").unwrap().rules;
    })
    .await;
    let mut raw = RawClient::connect(cachet.addr).await.unwrap();
    raw.text(&["SET", "session:1", "x"]).await;
    raw.text(&["SET", "plain", "x"]).await;
    assert_eq!(raw.text(&["GET", "session:1"]).await, "$1\r\nx\r\n");
    assert_eq!(raw.text(&["GET", "session:2"]).await, "$-1\r\n");
    assert_eq!(raw.text(&["GET", "plain"]).await, "$1\r\nx\r\n");
    raw.text(&["MGET", "session:1", "plain", "session:3"]).await;
    assert_eq!(raw.text(&["TAGINVALIDATE", "session:1"]).await, ":1\r\n");
    // cachet's own commands are counted under their names, not as "other".
    assert!(
        raw.text(&["EMIT", "nobody.listens"])
            .await
            .starts_with("*24\r\n")
    );
    assert!(raw.text(&["POLICY", "LIST"]).await.starts_with('*'));

    let scrape = cachet.metrics().await;
    for cmd in ["emit", "policy"] {
        let counted = sample(&scrape, "cachet_commands_total", &[("cmd", cmd)]);
        assert_eq!(counted, 1.0, "{cmd}");
    }
    assert_eq!(
        sample(&scrape, "cachet_commands_total", &[("cmd", "other")]),
        0.0
    );
    let rule = |name, rule| sample(&scrape, name, &[("rule", rule)]);
    assert_eq!(rule("cachet_hits_total", "session"), 2.0);
    assert_eq!(rule("cachet_misses_total", "session"), 2.0);
    assert_eq!(rule("cachet_hits_total", "none"), 2.0);
    assert_eq!(rule("cachet_misses_total", "none"), 0.0);
    assert_eq!(sample(&scrape, "cachet_invalidations_total", &[]), 1.0);
    assert_eq!(sample(&scrape, "cachet_keys_invalidated_total", &[]), 1.0);
    assert_eq!(
        sample(
            &scrape,
            "cachet_commands_total",
            &[("cmd", "taginvalidate")]
        ),
        1.0
    );
    let (_, json) = cachet.health().await;
    assert_eq!(json["data"]["metrics"]["invalidations"], 1);
}

#[tokio::test]
async fn healthy_degraded_and_unhealthy() {
    let mut redis = RedisServer::start();
    let cachet = Cachet::start(&redis, |config| {
        cached_rule(config);
        config.health.min_lookups = 2;
    })
    .await;
    let connected = |json: &Value| json["data"]["health"]["redis"]["connected"] == true;
    let (status, json) = cachet
        .health_until("connected", |_, json| connected(json))
        .await;
    // No lookups yet: no hit rate, and nothing to complain about.
    assert_eq!(status, 200, "{json:#}");
    assert_original_shape(&json);
    let health = &json["data"]["health"];
    assert_eq!(health["overall"], "healthy", "{json:#}");
    assert_eq!(health["cache"]["hitRate"], Value::Null);
    assert_eq!(
        health["redis"]["memoryBasis"], "system",
        "maxmemory is 0 here"
    );
    assert!(health["redis"]["memoryUsage"].as_f64().unwrap() < 100.0);
    assert!(health["redis"]["usedMemory"].as_u64().unwrap() > 0);
    assert!(health["redis"]["latency"].as_f64().unwrap() < 1000.0);
    assert!(json["data"]["metrics"]["uptime"].as_u64().unwrap() > 0);

    // The key count is Redis's DBSIZE, as of the next check.
    let direct = fred_client(&redis.url(), false).await;
    for i in 0..7 {
        let _: () = direct
            .set(format!("k{i}"), i, None, None, false)
            .await
            .unwrap();
    }
    cachet
        .health_until("7 keys", |_, json| {
            json["data"]["health"]["redis"]["keyCount"] == 7
        })
        .await;
    direct.quit().await.unwrap();

    // One miss of cached data: fewer lookups than the window needs to judge by.
    fred_set_and_get(&cachet.url(), &[], &["cached:m1"]).await;
    let (status, json) = cachet.health().await;
    assert_eq!(status, 200, "{json:#}");
    assert_eq!(
        json["data"]["health"]["cache"]["window"]["hitRateJudged"],
        false
    );
    // Misses only: hit rate 0 %, under the critical threshold: unhealthy, so 503, and why.
    fred_set_and_get(&cachet.url(), &[], &["cached:m2"]).await;
    let (status, json) = cachet.health().await;
    assert_eq!(
        (status, &json["data"]["health"]["overall"]),
        (503, &Value::from("unhealthy"))
    );
    assert_eq!(json["data"]["health"]["cache"]["hitRate"], 0.0);
    assert_eq!(
        json["data"]["health"]["reasons"],
        serde_json::json!([
            "hit rate 0.0% over the last 60 s (2 rule-matched lookups) is below the critical 60"
        ])
    );
    let rule = &json["data"]["health"]["cache"]["rules"][0];
    assert_eq!(
        (&rule["rule"], &rule["misses"], &rule["window"]["lookups"]),
        (&Value::from("cached"), &Value::from(2), &Value::from(2)),
        "{json:#}"
    );

    // Redis stopped: unhealthy, 503, not connected, and the real cause (nothing listens);
    // clients get errors, which are counted.
    redis.stop();
    let (status, json) = cachet
        .health_until("the cause", |_, json| {
            json["data"]["health"]["reasons"][0]
                .as_str()
                .is_some_and(|r| r.contains("Connection refused"))
        })
        .await;
    assert_eq!(status, 503);
    assert_eq!(json["data"]["health"]["overall"], "unhealthy");
    assert!(!connected(&json), "{json:#}");
    let error = json["data"]["health"]["redis"]["error"].as_str().unwrap();
    assert!(error.contains("Connection refused"), "{json:#}");
    let mut raw = RawClient::connect(cachet.addr).await.unwrap();
    let reply = raw.text(&["GET", "k1"]).await;
    assert!(reply.starts_with("-ERR upstream"), "{reply}");
    let (_, json) = cachet.health().await;
    assert!(
        json["data"]["metrics"]["errors"].as_u64().unwrap() >= 1,
        "{json:#}"
    );
    assert!(
        json["data"]["health"]["cache"]["errorRate"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    // Back again: connected, and the reconnect is counted.
    redis.restart();
    cachet
        .health_until("reconnected", |_, json| connected(json))
        .await;
    // The control connection reconnects on its own schedule (backoff up to 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = cachet.metrics().await;
        let reconnects = sample(&scrape, "cachet_upstream_reconnects_total", &[]);
        let pool = sample(&scrape, "cachet_upstream_pool_reconnects_total", &[]);
        if reconnects >= 1.0 && pool >= 1.0 {
            assert_eq!(reconnects, 1.0, "one restart, one reconnect");
            assert_eq!(
                pool, 1.0,
                "one pooled connection, one restart: one reconnect"
            );
            break;
        }
        assert!(Instant::now() < deadline, "reconnect never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client's bad input is the client's problem: 300 connections that send what is not RESP
/// (unauthenticated, with `upstream.password` set), after 1,000 good commands, leave
/// `/health` healthy with an error rate of 0, and are counted on their own.
#[tokio::test]
async fn garbage_from_clients_does_not_make_cachet_unhealthy() {
    let redis = RedisServer::start_with(&["--requirepass", "pw"]);
    let cachet = Cachet::start(&redis, |config| {
        config.upstream.password = Some(cachet::config::Secret::new("pw"));
    })
    .await;
    let mut good = RawClient::connect(cachet.addr).await.unwrap();
    assert_eq!(good.text(&["AUTH", "pw"]).await, "+OK\r\n");
    for i in 0..1_000 {
        good.send(&["SET", &format!("k{i}"), "v"]).await.unwrap();
    }
    for _ in 0..1_000 {
        assert_eq!(&good.read_frame().await.unwrap()[..], b"+OK\r\n");
    }
    const GARBAGE: [&[u8]; 3] = [b"*x\r\n", b"*1\r\n$y\r\n", b"*1\r\n$-7\r\n"];
    for n in 0..300 {
        let mut bad = RawClient::connect(cachet.addr).await.unwrap();
        bad.send_raw(GARBAGE[n % GARBAGE.len()]).await.unwrap();
        let reply = bad.read_frame().await.unwrap();
        assert!(reply.starts_with(b"-ERR Protocol error"), "{reply:?}");
        assert!(bad.closed_within(Duration::from_secs(5)).await);
    }
    // Counted before the error reply is sent, and `/health` reads the counters as it answers.
    let (status, json) = cachet.health().await;
    assert_eq!(json["data"]["health"]["overall"], "healthy", "{json:#}");
    assert_eq!(status, 200, "{json:#}");
    assert_eq!(
        json["data"]["cachet"]["clientProtocolErrors"], 300,
        "{json:#}"
    );
    assert_eq!(
        json["data"]["health"]["cache"]["errorRate"], 0.0,
        "{json:#}"
    );
    assert_eq!(json["data"]["metrics"]["errors"], 0, "{json:#}");
    let scrape = cachet.metrics().await;
    assert_eq!(
        sample(&scrape, "cachet_client_protocol_errors_total", &[]),
        300.0
    );
    assert_eq!(sample(&scrape, "cachet_errors_total", &[]), 0.0);
    assert_eq!(good.text(&["GET", "k1"]).await, "$1\r\nv\r\n");
}

#[tokio::test]
async fn a_crossed_warning_threshold_is_degraded_but_still_200() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis, |config| {
        cached_rule(config);
        config.health.min_lookups = 1;
        config.health.thresholds.hit_rate.warning = 101.0;
    })
    .await;
    fred_set_and_get(&cachet.url(), &["cached:a"], &[]).await;
    let (status, json) = cachet
        .health_until("connected", |_, json| {
            json["data"]["health"]["redis"]["connected"] == true
        })
        .await;
    assert_eq!(json["data"]["metrics"]["hitRate"], 100.0);
    assert_eq!(
        (status, &json["data"]["health"]["overall"]),
        (200, &Value::from("degraded"))
    );
    let scrape = cachet.metrics().await;
    assert_eq!(sample(&scrape, "cachet_health_overall", &[]), 1.0);
}

#[tokio::test]
async fn ready_waits_for_the_upstream_and_live_does_not() {
    let mut redis = RedisServer::start();
    redis.stop();
    let cachet = Cachet::start_unready(&redis, |_| {}).await;
    assert_eq!(cachet.get("/live").await.0, 200);
    let (status, body) = cachet.get("/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(cachet.health().await.0, 503);
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cachet.get("/ready").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready after Redis started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cachet.get("/live").await.0, 200);
}

#[tokio::test]
async fn a_token_guards_every_route_but_live() {
    let redis = RedisServer::start();
    let cachet = Cachet::start_unready(&redis, |config| {
        config.admin.token = Some(cachet::config::Secret::new("s3cret"));
    })
    .await;
    for path in ["/health", "/metrics", "/ready", "/api/history"] {
        assert_eq!(cachet.get(path).await.0, 401, "{path} without a token");
        let client = reqwest::Client::new();
        let wrong = client
            .get(cachet.http(path))
            .bearer_auth("s3cre")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status().as_u16(), 401, "{path} with a wrong token");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let right = client
                .get(cachet.http(path))
                .bearer_auth("s3cret")
                .send()
                .await
                .unwrap();
            let status = right.status().as_u16();
            if status == 200 {
                break;
            }
            // /ready and /health may say 503 until the upstream is up; never 401.
            assert_eq!(status, 503, "{path} with the token");
            assert!(Instant::now() < deadline, "{path} never 200");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(cachet.get("/live").await.0, 200);
}

#[tokio::test]
async fn info_carries_a_cachet_section_through_fred_and_redis_cli() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis, |_| {}).await;
    fred_set_and_get(&cachet.url(), &["a", "b"], &["c"]).await;

    for resp3 in [false, true] {
        let client = fred_client(&cachet.url(), resp3).await;
        let everything: String = client.info(None).await.unwrap();
        assert!(everything.contains("# Server"), "{everything}");
        let ours = everything
            .split("# cachet\r\n")
            .nth(1)
            .expect("a # cachet section");
        let fields: HashMap<&str, &str> = ours.lines().filter_map(|l| l.split_once(':')).collect();
        // No rule matches: no cached data, so no hit rate; every lookup's figures beside it.
        assert_eq!(fields["hits"], "0", "{ours}");
        assert_eq!(fields["hit_rate"], "-");
        assert_eq!(fields["hits_all_lookups"], "2", "{ours}");
        assert_eq!(fields["misses_all_lookups"], "1");
        assert_eq!(fields["hit_rate_all_lookups"], "66.67");
        assert_eq!(fields["window_seconds"], "60");
        assert_eq!(fields["invalidations"], "0");
        assert_eq!(fields["cachet_version"], env!("CARGO_PKG_VERSION"));
        assert!(["healthy", "degraded", "unhealthy"].contains(&fields["overall"]));

        let memory: String = client.info(Some(InfoKind::Memory)).await.unwrap();
        assert!(memory.contains("used_memory:") && !memory.contains("# cachet"));
        let only: String = client
            .custom(fred::cmd!("INFO"), vec!["cachet"])
            .await
            .unwrap();
        assert!(
            only.starts_with("# cachet\r\n") && !only.contains("# Server"),
            "{only}"
        );
        client.quit().await.unwrap();
    }

    // redis-cli runs as a child process: cachet shares this test's runtime, so wait for it
    // without blocking the runtime.
    let port = cachet.addr.port().to_string();
    let cli = |args: &'static [&'static str]| {
        let port = port.clone();
        async move {
            let out = tokio::process::Command::new("redis-cli")
                .args(["-p", &port])
                .args(args)
                .output()
                .await
                .expect("redis-cli installed");
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let all = cli(&["INFO", "all"]).await;
    assert!(
        all.contains("# Keyspace") && all.contains("# cachet"),
        "{all}"
    );
    let only = cli(&["-3", "INFO", "cachet"]).await;
    assert!(
        only.contains("hits_all_lookups:2") && !only.contains("# Server"),
        "{only}"
    );
    let two = cli(&["INFO", "server", "cachet"]).await;
    assert!(
        two.contains("redis_version:") && two.contains("misses_all_lookups:1"),
        "{two}"
    );
    assert!(!two.contains("# Memory"), "{two}");
    // A raw RESP3 client sees Redis's verbatim string type, with the section inside.
    let mut raw = RawClient::connect(cachet.addr).await.unwrap();
    raw.command(&["HELLO", "3"]).await.unwrap();
    let reply = raw.command(&["INFO"]).await.unwrap();
    assert!(reply.starts_with(b"=") && reply.windows(8).any(|w| w == b"# cachet"));
}

/// Redis's port closed at start: `/health` names the refusal within a second, not "no reply
/// within 2000 ms" after four, even with the original system's 30 s check interval.
#[tokio::test]
async fn a_closed_port_is_reported_as_refused_at_once() {
    let mut redis = RedisServer::start();
    redis.stop();
    let started = Instant::now();
    let cachet = Cachet::start_unready(&redis, |config| {
        config.health.interval_ms = 30_000;
    })
    .await;
    let (status, json) = cachet
        .health_until("the cause", |_, json| {
            json["data"]["health"]["redis"]["checkedAt"] != 0
        })
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, 503);
    let error = json["data"]["health"]["redis"]["error"].as_str().unwrap();
    assert!(error.contains("Connection refused"), "{json:#}");
    let reasons = &json["data"]["health"]["reasons"];
    assert!(
        reasons[0]
            .as_str()
            .unwrap()
            .starts_with("Redis unreachable: "),
        "{json:#}"
    );
}

/// Redis lost between two checks (30 s apart): the pool notices at once, and the report
/// gives the cause within a couple of seconds instead of at the next interval.
#[tokio::test]
async fn redis_lost_between_checks_is_explained_at_once() {
    let mut redis = RedisServer::start();
    let cachet = Cachet::start(&redis, |config| {
        config.health.interval_ms = 30_000;
    })
    .await;
    // A pooled command, so the pool has seen Redis.
    let mut raw = RawClient::connect(cachet.addr).await.unwrap();
    assert_eq!(raw.text(&["SET", "k", "v"]).await, "+OK\r\n");
    redis.stop();
    let (status, json) = cachet
        .health_until("refused", |_, json| {
            json["data"]["health"]["redis"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("Connection refused"))
        })
        .await;
    assert_eq!(status, 503, "{json:#}");
}

/// A cold cache, as after a restart: a few misses of cached data and a few errors do not make
/// an instance unhealthy (too few to judge over the window), and the JSON says so.
#[tokio::test]
async fn a_cold_cache_is_healthy() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis, cached_rule).await;
    fred_set_and_get(&cachet.url(), &[], &["cached:1", "cached:2", "cached:3"]).await;
    let (status, json) = cachet.health().await;
    assert_eq!(status, 200, "{json:#}");
    let health = &json["data"]["health"];
    assert_eq!(health["overall"], "healthy", "{json:#}");
    assert_eq!(health["reasons"], serde_json::json!([]));
    let window = &health["cache"]["window"];
    assert_eq!(window["lookups"], 3);
    assert_eq!(window["hitRate"], 0.0);
    assert_eq!(window["hitRateJudged"], false);
    assert_eq!(window["minLookups"], 100);
    // The seed's cumulative figure is kept as it was.
    assert_eq!(health["cache"]["hitRate"], 0.0);
}

/// `/api/history` opens with what the sampler recorded server-side, one point a second.
#[tokio::test]
async fn the_history_is_kept_server_side() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis, cached_rule).await;
    let mut raw = RawClient::connect(cachet.addr).await.unwrap();
    for i in 0..50 {
        raw.text(&["SET", &format!("cached:{i}"), "v"]).await;
        raw.text(&["GET", &format!("cached:{i}")]).await;
    }
    // A sample a second, from the first check on: two points within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    let json = loop {
        let (status, body) = cachet.get("/api/history?range=60").await;
        assert_eq!(status, 200, "{body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        if json["t"].as_array().unwrap().len() >= 3 {
            break json;
        }
        assert!(Instant::now() < deadline, "{json:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let t = json["t"].as_array().unwrap();
    assert_eq!(json["stepMs"], 1000);
    let ops: f64 = json["ops"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .sum();
    assert!(ops >= 50.0, "100 commands over the points: {json:#}");
    let rule_hits = json["rules"][0]["hitRate"].as_array().unwrap();
    assert!(rule_hits.contains(&Value::from(100.0)), "{json:#}");
    // Only what is newer than `since`.
    let last = t.last().unwrap().as_u64().unwrap();
    let (_, newer) = cachet
        .get(&format!("/api/history?range=60&since={last}"))
        .await;
    let newer: Value = serde_json::from_str(&newer).unwrap();
    assert!(newer["t"].as_array().unwrap().len() <= 1, "{newer:#}");
}

/// `/api/history`'s query is checked: what is not a number is refused with 400, and a range
/// past a day is cut to a day (the history holds no more), so no query makes it work harder.
#[tokio::test]
async fn the_history_query_is_bounded() {
    let redis = RedisServer::start();
    let cachet = Cachet::start(&redis, |_| {}).await;
    for bad in [
        "range=abc",
        "since=-1",
        "range=1e9",
        "range=99999999999999999999999",
    ] {
        let (status, body) = cachet.get(&format!("/api/history?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = cachet.get("/api/history?range=999999999").await;
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["rangeMs"], 86_400_000);
    assert_eq!(json["stepMs"], 60_000);
}
