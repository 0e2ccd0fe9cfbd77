//! Warmers end to end: a real redis-server, cachet in process, and an HTTP origin in the test
//! that records every request it gets and answers as each test tells it to.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use support::{Proxy, RawClient, RedisServer, fred_client};

use cachet::warm::{Heat, Submitted, WarmRequest, Warming};

/// One request the origin received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query, as sent.
    target: String,
    host: String,
    body: Bytes,
    at: Instant,
}

/// How the origin answers its `n`th request (from 0): status, optional `Location`, and how
/// long to take.
type Answer = dyn Fn(usize) -> (StatusCode, Option<String>, Duration) + Send + Sync;

/// An HTTP server on 127.0.0.1:0 that records what it is asked.
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Most requests being answered at once.
    peak: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    async fn start(
        answer: impl Fn(usize) -> (StatusCode, Option<String>, Duration) + Send + Sync + 'static,
    ) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let peak = Arc::new(AtomicUsize::new(0));
        let answer: Arc<Answer> = Arc::new(answer);
        let (seen2, peak2) = (seen.clone(), peak.clone());
        let task = tokio::spawn(async move {
            let busy = Arc::new(AtomicUsize::new(0));
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, peak, busy, answer) =
                    (seen2.clone(), peak2.clone(), busy.clone(), answer.clone());
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (seen, peak, busy, answer) =
                        (seen.clone(), peak.clone(), busy.clone(), answer.clone());
                    async move {
                        let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        let method = request.method().to_string();
                        let target = request.uri().to_string();
                        let host = request
                            .headers()
                            .get(hyper::header::HOST)
                            .map(|h| h.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let n = {
                            let mut seen = seen.lock().unwrap();
                            seen.push(Seen {
                                method,
                                target,
                                host,
                                body,
                                at: Instant::now(),
                            });
                            seen.len() - 1
                        };
                        let (status, location, delay) = answer(n);
                        tokio::time::sleep(delay).await;
                        busy.fetch_sub(1, Ordering::SeqCst);
                        let mut response = Response::builder().status(status);
                        if let Some(location) = location {
                            response = response.header(hyper::header::LOCATION, location);
                        }
                        Ok::<_, hyper::Error>(response.body(Full::new(Bytes::new())).unwrap())
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin {
            addr,
            seen,
            peak,
            task,
        }
    }

    /// An origin that answers 204 at once.
    async fn ok() -> Origin {
        Origin::start(|_| (StatusCode::NO_CONTENT, None, Duration::ZERO)).await
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (10 s at most) and returns them.
    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "origin got {} of {n} requests: {seen:#?}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asserts that no more than `n` requests arrive within `quiet`.
    async fn stays_at(&self, n: usize, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        let seen = self.seen();
        assert_eq!(seen.len(), n, "{seen:#?}");
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// cachet in front of `redis` with the `[warmers.*]`, `[heat]`, `[ttl]` and `[[rules]]` of
/// `toml` (parsed as a config file is).
async fn cachet_with(redis: &RedisServer, toml: &str) -> Proxy {
    let parsed = cachet::Config::from_toml(toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    Proxy::start_with(&redis.url(), move |config| {
        let upstream = config.upstream.clone();
        *config = parsed;
        config.upstream = upstream;
    })
    .await
}

/// A `Warming` of its own over `toml`'s warmers, started, with its metrics registry.
async fn warming_with(
    redis: &RedisServer,
    toml: &str,
    heat: Heat,
) -> (
    Warming,
    prometheus::Registry,
    tokio_util::sync::CancellationToken,
) {
    let parsed = cachet::Config::from_toml(toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let registry = prometheus::Registry::new();
    let warming = Warming::new(&parsed.warmers, heat, &registry);
    let control = fred_client(&redis.url(), false).await;
    let stop = tokio_util::sync::CancellationToken::new();
    warming.start(&control, stop.clone());
    (warming, registry, stop)
}

/// `cachet_warm_requests_total{warmer, outcome}`.
fn count(registry: &prometheus::Registry, warmer: &str, outcome: &str) -> u64 {
    let labels = BTreeMap::from([("warmer", warmer), ("outcome", outcome)]);
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "cachet_warm_requests_total")
        .flat_map(|f| f.get_metric())
        .find(|m| {
            m.get_label()
                .iter()
                .all(|l| labels.get(l.name()) == Some(&l.value()))
        })
        .map_or(0, |m| m.get_counter().get_value() as u64)
}

/// Waits until `count(...)` reaches `n`.
async fn wait_count(registry: &prometheus::Registry, warmer: &str, outcome: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(registry, warmer, outcome) < n {
        assert!(
            Instant::now() < deadline,
            "{warmer}/{outcome} stayed at {}",
            count(registry, warmer, outcome)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn request(warmer: &str, params: &[(&str, &str)], key: Option<&str>) -> WarmRequest {
    WarmRequest {
        warmer: warmer.to_owned(),
        params: params
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        event: "session.created".to_owned(),
        reason: "test".to_owned(),
    }
}

#[tokio::test]
async fn http_warmer_calls_the_origin_with_the_templated_path_after_the_delay() {
    let redis = RedisServer::start();
    let origin = Origin::ok().await;
    let toml = format!(
        "[warmers.teacher-sessions]\n\
         http = \"http://{addr}/internal/warm/teacher/{{teacherId}}?school={{schoolId}}\"\n\
         delay_ms = 150\n\
         [warmers.session-detail]\n\
         http = \"http://{addr}/internal/warm/session/{{sessionId}}\"\n\
         method = \"POST\"\n\
         delay_ms = 10\n",
        addr = origin.addr
    );
    let proxy = cachet_with(&redis, &toml).await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    let asked = Instant::now();
    let reply = client
        .text(&[
            "WARM",
            "teacher-sessions",
            "teacherId",
            "42",
            "schoolId",
            "7 8",
        ])
        .await;
    assert_eq!(reply, "+QUEUED\r\n");
    let seen = origin.wait_for(1).await;
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].target, "/internal/warm/teacher/42?school=7%208");
    assert_eq!(seen[0].host, origin.addr.to_string());
    let waited = seen[0].at - asked;
    assert!(
        waited >= Duration::from_millis(150),
        "sent after {waited:?}"
    );

    let reply = client
        .text(&[
            "WARM",
            "session-detail",
            "sessionId",
            "9",
            "KEY",
            "session:9",
        ])
        .await;
    assert_eq!(reply, "+QUEUED\r\n");
    let seen = origin.wait_for(2).await;
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].target, "/internal/warm/session/9");
    let body: serde_json::Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(body["warmer"], "session-detail");
    assert_eq!(body["params"]["sessionId"], "9");
    assert_eq!(body["key"], "session:9");
    assert_eq!(body["reason"], "WARM");
    origin.stays_at(2, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn retries_until_the_origin_recovers_and_gives_up_after_retries() {
    let redis = RedisServer::start();
    let flaky = Origin::start(|n| {
        let status = if n < 2 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::NO_CONTENT
        };
        (status, None, Duration::ZERO)
    })
    .await;
    let down = Origin::start(|_| (StatusCode::INTERNAL_SERVER_ERROR, None, Duration::ZERO)).await;
    let toml = format!(
        "[warmers.flaky]\nhttp = \"http://{}/w\"\ndelay_ms = 0\nbackoff_ms = 40\n\
         [warmers.down]\nhttp = \"http://{}/w\"\ndelay_ms = 0\nbackoff_ms = 20\nretries = 2\n",
        flaky.addr, down.addr
    );
    let (warming, registry, _stop) = warming_with(&redis, &toml, Heat::default()).await;
    assert_eq!(
        warming.submit(request("flaky", &[], None)),
        Submitted::Queued
    );
    assert_eq!(
        warming.submit(request("down", &[], None)),
        Submitted::Queued
    );

    let seen = flaky.wait_for(3).await;
    wait_count(&registry, "flaky", "sent", 1).await;
    assert_eq!(count(&registry, "flaky", "failed"), 0);
    // Backoff: about 40 ms, then about 80 ms (each at least half that).
    assert!(seen[1].at - seen[0].at >= Duration::from_millis(20));
    assert!(seen[2].at - seen[1].at >= Duration::from_millis(40));

    down.wait_for(3).await;
    wait_count(&registry, "down", "failed", 1).await;
    assert_eq!(count(&registry, "down", "sent"), 0);
    down.stays_at(3, Duration::from_millis(200)).await;
    flaky.stays_at(3, Duration::ZERO).await;
}

#[tokio::test]
async fn a_slow_origin_times_out_and_concurrency_is_capped() {
    let redis = RedisServer::start();
    let slow = Origin::start(|_| (StatusCode::NO_CONTENT, None, Duration::from_millis(600))).await;
    let busy = Origin::start(|_| (StatusCode::NO_CONTENT, None, Duration::from_millis(100))).await;
    let toml = format!(
        "[warmers.slow]\nhttp = \"http://{}/s\"\ndelay_ms = 0\ntimeout_ms = 200\nretries = 0\n\
         [warmers.busy]\nhttp = \"http://{}/b/{{n}}\"\ndelay_ms = 0\nconcurrency = 2\n",
        slow.addr, busy.addr
    );
    let (warming, registry, _stop) = warming_with(&redis, &toml, Heat::default()).await;
    let asked = Instant::now();
    assert_eq!(
        warming.submit(request("slow", &[], None)),
        Submitted::Queued
    );
    for n in 0..7 {
        let n = n.to_string();
        assert_eq!(
            warming.submit(request("busy", &[("n", &n)], None)),
            Submitted::Queued
        );
    }
    wait_count(&registry, "slow", "failed", 1).await;
    assert!(
        asked.elapsed() < Duration::from_millis(550),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(count(&registry, "slow", "sent"), 0);
    wait_count(&registry, "busy", "sent", 7).await;
    assert_eq!(busy.peak.load(Ordering::SeqCst), 2, "concurrency = 2");
    // Seven requests of 100 ms, two at a time.
    assert!(
        asked.elapsed() >= Duration::from_millis(400),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn identical_requests_within_the_window_collapse() {
    let redis = RedisServer::start();
    let origin = Origin::ok().await;
    let toml = format!(
        "[warmers.teacher-sessions]\n\
         http = \"http://{}/internal/warm/teacher/{{teacherId}}\"\n\
         delay_ms = 100\ndedup_ms = 600\n",
        origin.addr
    );
    let proxy = cachet_with(&redis, &toml).await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(
            client
                .text(&["WARM", "teacher-sessions", "teacherId", "1"])
                .await,
        );
    }
    assert_eq!(replies[0], "+QUEUED\r\n");
    assert!(
        replies[1..].iter().all(|r| r == "+DEDUPLICATED\r\n"),
        "{replies:?}"
    );
    // Another teacher is another request.
    assert_eq!(
        client
            .text(&["WARM", "teacher-sessions", "teacherId", "2"])
            .await,
        "+QUEUED\r\n"
    );
    let seen = origin.wait_for(2).await;
    origin.stays_at(2, Duration::from_millis(150)).await;
    let first = seen
        .iter()
        .find(|s| s.target.ends_with("/1"))
        .expect("teacher 1 warmed");

    // Sent already, and asked again inside dedup_ms: queued once more, and held until the
    // window since the first send is over, for all identical requests of the meantime.
    assert_eq!(
        client
            .text(&["WARM", "teacher-sessions", "teacherId", "1"])
            .await,
        "+QUEUED\r\n"
    );
    assert_eq!(
        client
            .text(&["WARM", "teacher-sessions", "teacherId", "1"])
            .await,
        "+DEDUPLICATED\r\n"
    );
    let seen = origin.wait_for(3).await;
    let gap = seen[2].at - first.at;
    // Held until 600 ms after the first send (the origin sees both a little after cachet
    // sent them); without the window it would follow about 250 ms after the first.
    assert!(gap >= Duration::from_millis(550), "resent after {gap:?}");
    origin.stays_at(3, Duration::from_millis(100)).await;
}

/// The policy host submits from threads of its own, not tokio's.
#[tokio::test]
async fn submit_from_plain_threads_queues_one_of_many_identical_requests() {
    let redis = RedisServer::start();
    let origin = Origin::ok().await;
    let toml = format!(
        "[warmers.w]\nhttp = \"http://{}/w/{{id}}\"\ndelay_ms = 200\n",
        origin.addr
    );
    let (warming, registry, _stop) = warming_with(&redis, &toml, Heat::default()).await;
    let warming = Arc::new(warming);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let warming = warming.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| warming.submit(request("w", &[("id", "1")], Some("k"))))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outcomes: Vec<Submitted> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let queued = outcomes.iter().filter(|o| **o == Submitted::Queued).count();
    let deduplicated = outcomes
        .iter()
        .filter(|o| **o == Submitted::Deduplicated)
        .count();
    assert_eq!((queued, deduplicated), (1, 99), "{outcomes:?}");
    assert_eq!(count(&registry, "w", "deduplicated"), 99);
    origin.wait_for(1).await;
    wait_count(&registry, "w", "sent", 1).await;
    origin.stays_at(1, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn parameter_values_cannot_change_the_host_or_the_path() {
    let redis = RedisServer::start();
    let origin = Origin::ok().await;
    let toml = format!(
        "[warmers.teacher-sessions]\n\
         http = \"http://{}/internal/warm/teacher/{{teacherId}}\"\ndelay_ms = 0\n",
        origin.addr
    );
    let proxy = cachet_with(&redis, &toml).await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    for value in ["@evil:1/", "../../admin", "x?y=1#z", "//evil.example/"] {
        let reply = client
            .text(&["WARM", "teacher-sessions", "teacherId", value])
            .await;
        assert_eq!(reply, "+QUEUED\r\n", "{value}");
    }
    let mut targets: Vec<String> = origin
        .wait_for(4)
        .await
        .into_iter()
        .map(|s| {
            assert_eq!(s.host, origin.addr.to_string());
            s.target
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "/internal/warm/teacher/%2E%2E%2F%2E%2E%2Fadmin",
            "/internal/warm/teacher/%2F%2Fevil%2Eexample%2F",
            "/internal/warm/teacher/%40evil%3A1%2F",
            "/internal/warm/teacher/x%3Fy%3D1%23z",
        ]
    );
}

#[test]
fn a_template_that_could_reach_another_host_is_refused_at_load() {
    for (url, line) in [
        ("http://{host}/internal/warm", 3),
        ("http://127.0.0.1:{port}/internal/warm", 3),
        ("{scheme}://127.0.0.1:3000/x", 3),
    ] {
        let toml = format!("[warmers.w]\ndelay_ms = 5\nhttp = \"{url}\"\n");
        let err = cachet::Config::from_toml(&toml, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("line {line}")) && err.contains("in the path and query only"),
            "{url}: {err}"
        );
    }
    let err = cachet::Config::from_toml(
        "[warmers.w]\nhttp = \"http://a/x\"\nstream = \"s\"\n",
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not both"), "{err}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let redis = RedisServer::start();
    let elsewhere = Origin::ok().await;
    let location = format!("http://{}/stolen", elsewhere.addr);
    let redirecting =
        Origin::start(move |_| (StatusCode::FOUND, Some(location.clone()), Duration::ZERO)).await;
    let toml = format!(
        "[warmers.w]\nhttp = \"http://{}/w\"\ndelay_ms = 0\nbackoff_ms = 10\n",
        redirecting.addr
    );
    let (warming, registry, _stop) = warming_with(&redis, &toml, Heat::default()).await;
    assert_eq!(warming.submit(request("w", &[], None)), Submitted::Queued);
    wait_count(&registry, "w", "failed", 1).await;
    // One request: a redirect is not retried either.
    redirecting.stays_at(1, Duration::from_millis(100)).await;
    elsewhere.stays_at(0, Duration::ZERO).await;
}

#[tokio::test]
async fn stream_warmer_appends_entries_that_xreadgroup_reads() {
    let redis = RedisServer::start_with(&["--stream-node-max-entries", "4"]);
    let toml = "[warmers.session-detail]\nstream = \"cachet:warm\"\ndelay_ms = 10\nmax_len = 5\n";
    let proxy = cachet_with(&redis, toml).await;
    let worker = fred_client(&redis.url(), false).await;
    let _: () = worker
        .xgroup_create("cachet:warm", "workers", "$", true)
        .await
        .unwrap();
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    let reply = client
        .text(&[
            "WARM",
            "session-detail",
            "sessionId",
            "9",
            "KEY",
            "session:9",
        ])
        .await;
    assert_eq!(reply, "+QUEUED\r\n");
    let read: Value = worker
        .custom(
            fred::cmd!("XREADGROUP"),
            vec![
                "GROUP",
                "workers",
                "w1",
                "COUNT",
                "10",
                "BLOCK",
                "5000",
                "STREAMS",
                "cachet:warm",
                ">",
            ],
        )
        .await
        .unwrap();
    // [[stream, [[id, [field, value, ...]]]]]
    let entries = read.into_array()[0].clone().into_array()[1]
        .clone()
        .into_array();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let fields: Vec<String> = entries[0].clone().into_array()[1]
        .clone()
        .into_array()
        .into_iter()
        .map(|v| v.as_string().unwrap())
        .collect();
    let field = |name: &str| {
        let at = fields.iter().position(|f| f == name).expect(name);
        fields[at + 1].clone()
    };
    assert_eq!(field("key"), "session:9");
    assert_eq!(field("warmer"), "session-detail");
    assert_eq!(field("reason"), "WARM");
    let params: serde_json::Value = serde_json::from_str(&field("params")).unwrap();
    assert_eq!(params["sessionId"], "9");

    // Capped: MAXLEN ~ 5 trims whole stream nodes (4 entries each here).
    for n in 0..40 {
        let n = n.to_string();
        let reply = client
            .text(&["WARM", "session-detail", "sessionId", &n])
            .await;
        assert_eq!(reply, "+QUEUED\r\n");
    }
    // Wait until all 41 were added (they are sent up to 8 at a time, in any order).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: Vec<Value> = worker
            .custom(fred::cmd!("XINFO"), vec!["STREAM", "cachet:warm"])
            .await
            .unwrap();
        let at = info
            .iter()
            .position(|v| v.as_str().as_deref() == Some("entries-added"))
            .expect("entries-added");
        let added = info[at + 1].as_u64().unwrap();
        if added == 41 {
            break;
        }
        assert!(Instant::now() < deadline, "{added} entries added");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let len: u64 = worker.xlen("cachet:warm").await.unwrap();
    assert!((5..=9).contains(&len), "XLEN {len}");
}

#[tokio::test]
async fn heat_threshold_is_honoured() {
    let redis = RedisServer::start();
    let origin = Origin::ok().await;
    let toml = format!(
        "[[rules]]\npattern = \"session:{{session}}\"\ntags = [\"session:{{session}}\"]\n\
         [warmers.session-detail]\n\
         http = \"http://{}/internal/warm/session/{{sessionId}}\"\n\
         delay_ms = 0\nmin_reads = 3\n",
        origin.addr
    );
    let proxy = cachet_with(&redis, &toml).await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    for _ in 0..5 {
        client.text(&["GET", "session:1"]).await;
    }
    // Reads of keys no rule matches are not counted.
    for _ in 0..5 {
        client.text(&["GET", "other:2"]).await;
    }
    let warm = |id: &'static str, key: &'static str| {
        ["WARM", "session-detail", "sessionId", id, "KEY", key]
    };
    assert_eq!(client.text(&warm("1", "session:1")).await, "+QUEUED\r\n");
    assert_eq!(client.text(&warm("2", "session:2")).await, "+COLD\r\n");
    assert_eq!(client.text(&warm("2", "other:2")).await, "+COLD\r\n");
    // Without a key there is nothing to judge: sent.
    assert_eq!(
        client
            .text(&["WARM", "session-detail", "sessionId", "3"])
            .await,
        "+QUEUED\r\n"
    );
    let mut targets: Vec<String> = origin
        .wait_for(2)
        .await
        .into_iter()
        .map(|s| s.target)
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        ["/internal/warm/session/1", "/internal/warm/session/3"]
    );
    origin.stays_at(2, Duration::from_millis(100)).await;
}

/// Heat is the reads of the current and the previous window: two windows after the reads,
/// the key is cold again.
#[tokio::test]
async fn heat_fades_when_the_windows_turn() {
    let redis = RedisServer::start();
    let toml = "[[rules]]\npattern = \"session:{session}\"\ntags = [\"session:{session}\"]\n\
                [heat]\nwindow_secs = 1\n\
                [warmers.session-detail]\nstream = \"cachet:warm\"\nmin_reads = 3\n\
                delay_ms = 0\ndedup_ms = 0\n";
    let proxy = cachet_with(&redis, toml).await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    for _ in 0..3 {
        client.text(&["GET", "session:1"]).await;
    }
    let warm = [
        "WARM",
        "session-detail",
        "sessionId",
        "1",
        "KEY",
        "session:1",
    ];
    assert_eq!(client.text(&warm).await, "+QUEUED\r\n");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(client.text(&warm).await, "+COLD\r\n");
}

#[tokio::test]
async fn a_full_queue_refuses_until_it_drains() {
    let redis = RedisServer::start();
    let origin = Origin::ok().await;
    let toml = format!(
        "[warmers.w]\nhttp = \"http://{}/w/{{n}}\"\ndelay_ms = 300\nqueue = 3\n",
        origin.addr
    );
    let proxy = cachet_with(&redis, &toml).await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    for n in ["1", "2", "3"] {
        assert_eq!(client.text(&["WARM", "w", "n", n]).await, "+QUEUED\r\n");
    }
    assert_eq!(
        client.text(&["WARM", "w", "n", "4"]).await,
        "-ERR queue full\r\n"
    );
    origin.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(client.text(&["WARM", "w", "n", "4"]).await, "+QUEUED\r\n");
    origin.wait_for(4).await;
}

#[tokio::test]
async fn warm_errors_are_redis_style_and_the_client_keeps_going() {
    let redis = RedisServer::start();
    let toml = "[warmers.teacher-sessions]\n\
                http = \"http://127.0.0.1:9/internal/warm/teacher/{teacherId}\"\n";
    let proxy = cachet_with(&redis, toml).await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    for (command, error) in [
        (
            &["WARM"][..],
            "-ERR wrong number of arguments for 'warm' command",
        ),
        (
            &["warm", "teacher-sessions", "teacherId"],
            "-ERR wrong number of arguments for 'warm' command",
        ),
        (&["WARM", "nope"], "-ERR no warmer named 'nope'"),
        (
            &["WARM", "teacher-sessions", "KEY", "k"],
            "-ERR warmer 'teacher-sessions' needs parameter 'teacherId'",
        ),
        (
            &["WARM", "teacher-sessions", "KEY", "a", "KEY", "b"],
            "-ERR syntax error: KEY given twice",
        ),
    ] {
        assert_eq!(
            client.text(command).await,
            format!("{error}\r\n"),
            "{command:?}"
        );
    }
    assert_eq!(client.text(&["PING"]).await, "+PONG\r\n");
    // Inside MULTI it is refused, and the transaction with it.
    assert_eq!(client.text(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(
        client
            .text(&["WARM", "teacher-sessions", "teacherId", "1"])
            .await,
        "-ERR cachet's 'warm' command cannot run inside MULTI\r\n"
    );
    assert!(client.text(&["EXEC"]).await.starts_with("-EXECABORT"));
}

/// What one `Heat::record` costs: printed (for a release figure: `cargo test --release --test
/// warming -- --nocapture heat_record_cost`), and bounded loosely even in a debug build, so a
/// record that scans or allocates per key fails here.
#[test]
fn heat_record_cost() {
    let heat = Heat::default();
    let keys: Vec<String> = (0..100_000).map(|i| format!("session:{i}")).collect();
    let rounds = 10;
    let started = Instant::now();
    for _ in 0..rounds {
        for key in &keys {
            heat.record(std::hint::black_box(key.as_bytes()));
        }
    }
    let per = started.elapsed() / (rounds * keys.len()) as u32;
    println!("Heat::record: {per:?} per read over {} keys", keys.len());
    assert!(heat.estimate(b"session:1") >= rounds as u32);
    assert!(
        per < std::time::Duration::from_micros(5),
        "{per:?} per record"
    );
}
