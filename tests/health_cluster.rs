//! Health behind Redis Cluster: a 3-primary cluster of our own, cachet's health monitor
//! checking it through a clustered fred client, read over `/health`, `/metrics` and the INFO
//! section. Every node shows up with its latency, memory and keys; a primary killed shows
//! down, and `overall` degrades naming it, within a few seconds (at the default 30 s interval:
//! the control client's events ask for the check); a node the cluster forgets leaves `/health`
//! and its series leave `/metrics`.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachet::admin::{self, Admin};
use cachet::config::{HealthConfig, RedisUrl, UpstreamConfig};
use cachet::health::{self, Health};
use cachet::metrics::Metrics;
use cachet::upstream::Upstream;
use fred::cmd;
use fred::prelude::*;
use serde_json::Value;
use support::{RedisServer, free_port};
use tokio_util::sync::CancellationToken;

/// Three primaries (`redis-server --cluster-enabled yes`, joined by `redis-cli --cluster
/// create`), each serving a third of the slots, and `replicas` replicas of each, listed after
/// them; killed on drop with their fixtures.
struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start() -> Self {
        Self::with_replicas(0)
    }

    fn with_replicas(replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                // The bus port defaults to port + 10000, which a free port may not have room for.
                let bus = free_port().to_string();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let cluster = Cluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Settled: every node serves (cluster_state:ok) and knows every replica as one, and
        // every replica has synced (one that never did cannot take over).
        let settled = |n: &RedisServer| {
            cluster_cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                && cluster_cli(n.port, &["CLUSTER", "NODES"])
                    .matches("slave")
                    .count()
                    == 3 * replicas
                && !cluster_cli(n.port, &["INFO", "replication"])
                    .contains("master_link_status:down")
        };
        while !cluster.nodes.iter().all(settled) {
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok; log of the first node:\n{}",
                cluster.nodes[0].log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    fn address(&self, i: usize) -> String {
        self.nodes[i].addr().to_string()
    }

    /// A clustered fred client seeded with every node, as cachet's control client is.
    async fn client(&self) -> Client {
        let config = Config {
            server: ServerConfig::Clustered {
                hosts: self
                    .nodes
                    .iter()
                    .map(|n| Server::new("127.0.0.1", n.port))
                    .collect(),
                policy: Default::default(),
            },
            ..Config::default()
        };
        let client = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_constant(0, 200))
            .build()
            .expect("a clustered client");
        client.init().await.expect("the clustered client connects");
        client
    }
}

fn cluster_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The health monitor and the admin routes over `control`, with an upstream (its pool and
/// command table) on the first node; stopped on drop.
struct Monitored {
    health: Arc<Health>,
    http: Http,
    shutdown: CancellationToken,
}

impl Drop for Monitored {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn monitor(cluster: &Cluster, control: Client) -> Monitored {
    let upstream = Upstream::new(UpstreamConfig {
        url: RedisUrl::parse(&cluster.nodes[0].url()).expect("url"),
        ..UpstreamConfig::default()
    })
    .expect("upstream");
    upstream.start(vec![]);
    let metrics = Arc::new(Metrics::new());
    // The default interval, 30 s: a node lost must show at once all the same, through the
    // control client's events, and a node down is checked again every second.
    let mut config = HealthConfig::default();
    // Many builds share this machine: a slow PING must not decide these tests (the latency
    // levels have a unit test).
    config.thresholds.redis_latency_ms.warning = 5_000.0;
    config.thresholds.redis_latency_ms.critical = 10_000.0;
    let health =
        Arc::new(Health::new(config, upstream.clone(), metrics.clone(), 0).checking(control));
    assert!(health.is_cluster());
    let shutdown = CancellationToken::new();
    tokio::spawn(health::monitor(health.clone(), shutdown.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    let routes = Arc::new(Admin {
        token: None,
        health: health.clone(),
        metrics,
        upstream,
    });
    tokio::spawn(admin::serve(routes, listener, shutdown.clone()));
    Monitored {
        health,
        http: Http(admin),
        shutdown,
    }
}

/// An admin listener, read over HTTP.
struct Http(SocketAddr);

impl Http {
    async fn get(&self, path: &str) -> String {
        let url = format!("http://{}{path}", self.0);
        reqwest::get(url)
            .await
            .expect("admin answers")
            .text()
            .await
            .expect("body")
    }

    async fn health(&self) -> Value {
        serde_json::from_str(&self.get("/health").await).expect("/health is JSON")
    }

    /// Polls `/health` until `done`, for at most `within`; the last body if it never is.
    async fn health_until(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let json = self.health().await;
            if done(&json) {
                return (json, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "{what} not within {within:?}: {json:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The dashboard's DOM once headless Chromium has run its script (as tests/dashboard.rs does).
async fn dashboard(admin: SocketAddr) -> String {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{admin}/");
    tokio::task::spawn_blocking(move || {
        let out = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--virtual-time-budget=5000")
            .arg(url)
            .output()
            .expect("headless Chromium is needed: apt-get install chromium (see .ci/run)");
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

/// The opening tag of the element with `id` in serialised HTML.
fn element<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..end])
}

fn node<'a>(json: &'a Value, address: &str) -> Option<&'a Value> {
    json["data"]["health"]["redis"]["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["address"] == address)
}

fn all_up(json: &Value, count: usize) -> bool {
    json["data"]["health"]["redis"]["nodes"]
        .as_array()
        .is_some_and(|nodes| nodes.len() == count && nodes.iter().all(|n| n["up"] == true))
}

/// The value of the series of `name` whose labels are `node` and `role`, if it exists.
fn series(metrics: &str, name: &str, node: &str, role: &str) -> Option<f64> {
    let prefix = format!("{name}{{node=\"{node}\",role=\"{role}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_is_checked_and_a_killed_primary_degrades_health() {
    let mut cluster = Cluster::start();
    let control = cluster.client().await;
    for i in 0..300 {
        let _: () = control
            .set(format!("key:{i}"), i, None, None, false)
            .await
            .expect("SET on the cluster");
    }
    let monitored = monitor(&cluster, control).await;

    // Every node, up, with its own figures; the totals sum the primaries.
    let (json, took) = monitored
        .http
        .health_until(Duration::from_secs(10), "3 nodes up with their keys", |j| {
            all_up(j, 3) && j["data"]["health"]["redis"]["keyCount"] == 300
        })
        .await;
    println!("3 nodes up, 300 keys counted, {took:?} after start");
    let redis = &json["data"]["health"]["redis"];
    assert_eq!(json["data"]["health"]["overall"], "healthy", "{json:#}");
    assert_eq!(redis["connected"], true);
    assert_eq!(redis["cluster"]["primariesUp"], 3, "{redis:#}");
    let nodes = redis["nodes"].as_array().unwrap();
    let mut slots = 0;
    let mut memory = 0;
    let mut keys = 0;
    for n in nodes {
        assert_eq!(n["role"], "primary", "{n:#}");
        assert!(n["latency"].as_f64().unwrap() > 0.0, "{n:#}");
        assert!(n["usedMemory"].as_u64().unwrap() > 0, "{n:#}");
        assert!(n["keys"].as_u64().unwrap() > 0, "300 keys spread: {n:#}");
        slots += n["slotCount"].as_u64().unwrap();
        memory += n["usedMemory"].as_u64().unwrap();
        keys += n["keys"].as_u64().unwrap();
    }
    assert_eq!(slots, 16384);
    assert_eq!(keys, 300);
    assert_eq!(redis["usedMemory"].as_u64().unwrap(), memory);
    let worst = nodes
        .iter()
        .map(|n| n["latency"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(redis["latency"].as_f64().unwrap(), worst);

    // Per-node series, labelled by node and role.
    let metrics = monitored.http.get("/metrics").await;
    for i in 0..3 {
        let address = cluster.address(i);
        let up = series(&metrics, "cachet_upstream_node_up", &address, "primary");
        assert_eq!(up, Some(1.0), "{address}: {metrics}");
        for name in [
            "cachet_upstream_node_latency_seconds",
            "cachet_upstream_node_memory_bytes",
            "cachet_upstream_node_keys",
        ] {
            let value = series(&metrics, name, &address, "primary");
            assert!(
                value.is_some_and(|v| v > 0.0),
                "{name} {address}: {metrics}"
            );
        }
    }
    // The INFO section cachet appends.
    let info = health::info_section(&monitored.health);
    assert!(info.contains("# cachet_cluster\r\n"), "{info}");
    assert!(info.contains("cluster_nodes_up:3\r\n"), "{info}");
    assert!(
        info.contains(&format!("address={},role=primary,up=1", cluster.address(0))),
        "{info}"
    );

    // The dashboard's node table.
    let dom = dashboard(monitored.http.0).await;
    let tag = element(&dom, "nodes").unwrap_or_else(|| panic!("no #nodes in:\n{dom}"));
    assert!(!tag.contains(" hidden"), "{tag}");
    assert!(
        tag.contains(r#"data-rows="3""#) && tag.contains(r#"data-up="3""#),
        "{tag}"
    );
    assert!(dom.contains(&cluster.address(1)), "{dom}");

    // Kill a primary (not the first: the upstream's pool is on it).
    let dead = cluster.address(2);
    cluster.nodes[2].stop();
    let killed = Instant::now();
    let (json, _) = monitored
        .http
        .health_until(Duration::from_secs(10), "the killed primary down", |j| {
            node(j, &dead).is_some_and(|n| n["up"] == false)
                && j["data"]["health"]["overall"] == "degraded"
        })
        .await;
    let detected = killed.elapsed();
    println!("killed primary {dead} shown down, overall degraded, {detected:?} after the kill");
    assert!(detected < Duration::from_secs(5), "{detected:?}");
    let reasons = json["data"]["health"]["reasons"].to_string();
    println!("reasons: {reasons}");
    assert!(
        reasons.contains(&format!("Redis node {dead} (primary")) && reasons.contains("is down"),
        "{reasons}"
    );
    assert_eq!(json["data"]["health"]["redis"]["connected"], true);
    assert_eq!(json["data"]["health"]["redis"]["cluster"]["primariesUp"], 2);
    let metrics = monitored.http.get("/metrics").await;
    assert_eq!(
        series(&metrics, "cachet_upstream_node_up", &dead, "primary"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            "cachet_upstream_node_latency_seconds",
            &dead,
            "primary"
        ),
        None,
        "no stale figures for a node down: {metrics}"
    );
    let info = health::info_section(&monitored.health);
    assert!(info.contains("cluster_nodes_up:2\r\n"), "{info}");

    // The cluster forgets the dead node: it leaves /health, and its series leave /metrics.
    let id = node(&json, &dead).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..2 {
        let forgot = cluster_cli(cluster.nodes[i].port, &["CLUSTER", "FORGET", &id]);
        assert!(
            forgot.contains("OK"),
            "CLUSTER FORGET on node {i}: {forgot}"
        );
    }
    monitored
        .http
        .health_until(Duration::from_secs(10), "the forgotten node gone", |j| {
            node(j, &dead).is_none() && all_up(j, 2)
        })
        .await;
    let metrics = monitored.http.get("/metrics").await;
    assert!(!metrics.contains(&dead), "{metrics}");
}

/// cachet itself on a `redis-cluster://` url naming two of the three nodes: its control client
/// is clustered, so its own monitor checks every node; `/health` and INFO through cachet list
/// them, and a primary killed shows at once, at the default 30 s interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_cachet_health_and_info_list_every_node() {
    let mut cluster = Cluster::start();
    let url = format!(
        "redis-cluster://{},{}",
        cluster.address(0),
        cluster.address(1)
    );
    let mut config = cachet::Config::default();
    config.upstream.url = RedisUrl::parse(&url).expect("a cluster url");
    config.health.thresholds.redis_latency_ms.warning = 5_000.0;
    config.health.thresholds.redis_latency_ms.critical = 10_000.0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, http) = (
        listener.local_addr().unwrap(),
        Http(admin.local_addr().unwrap()),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cachet = tokio::spawn(cachet::run_with_admin(
        config,
        listener,
        Some(admin),
        async {
            let _ = stopped.await;
        },
    ));
    let (json, took) = http
        .health_until(Duration::from_secs(20), "3 nodes up through cachet", |j| {
            all_up(j, 3) && j["data"]["health"]["overall"] == "healthy"
        })
        .await;
    println!("through cachet: 3 nodes up, healthy, {took:?} after start");
    let discovered = cluster.address(2);
    assert!(node(&json, &discovered).is_some(), "{json:#}");

    let client = support::fred_client(&format!("redis://{addr}"), false).await;
    let info: String = client.info(None).await.expect("INFO through cachet");
    assert!(info.contains("# cachet_cluster\r\n"), "{info}");
    assert!(info.contains("cluster_primaries_up:3\r\n"), "{info}");
    assert!(
        info.contains(&format!("address={discovered},role=primary,up=1")),
        "{info}"
    );
    let metrics = http.get("/metrics").await;
    assert_eq!(
        series(&metrics, "cachet_upstream_node_up", &discovered, "primary"),
        Some(1.0),
        "{metrics}"
    );

    cluster.nodes[2].stop();
    let killed = Instant::now();
    http.health_until(Duration::from_secs(10), "the killed primary down", |j| {
        node(j, &discovered).is_some_and(|n| n["up"] == false)
            && j["data"]["health"]["overall"] == "degraded"
    })
    .await;
    let detected = killed.elapsed();
    println!(
        "through cachet: killed primary {discovered} shown down, degraded, {detected:?} after the kill"
    );
    assert!(detected < Duration::from_secs(5), "{detected:?}");
    // `INFO cachet` alone is cachet's to answer: a plain INFO goes to the connection's home
    // node, which may be the one killed.
    let info: String = client
        .custom(cmd!("INFO"), vec!["cachet"])
        .await
        .expect("INFO cachet through cachet");
    assert!(info.contains("cluster_primaries_up:2\r\n"), "{info}");
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), cachet).await;
}

/// 3 primaries and 3 replicas behind cachet: every replica is listed with its primary; a
/// primary killed is taken over by its replica, and then the report is healthy again, the new
/// primary's series carry its new role and its replica series are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_listed_and_a_failover_is_followed() {
    let mut cluster = Cluster::with_replicas(1);
    let url = format!("redis-cluster://{}", cluster.address(0));
    let mut config = cachet::Config::default();
    config.upstream.url = RedisUrl::parse(&url).expect("a cluster url");
    config.health.thresholds.redis_latency_ms.warning = 5_000.0;
    config.health.thresholds.redis_latency_ms.critical = 10_000.0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = Http(admin.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cachet = tokio::spawn(cachet::run_with_admin(
        config,
        listener,
        Some(admin),
        async {
            let _ = stopped.await;
        },
    ));
    let (json, _) = http
        .health_until(Duration::from_secs(20), "6 nodes up", |j| all_up(j, 6))
        .await;
    let redis = &json["data"]["health"]["redis"];
    assert_eq!(redis["cluster"]["primaries"], 3, "{redis:#}");
    let nodes = redis["nodes"].as_array().unwrap();
    let replicas: Vec<&Value> = nodes.iter().filter(|n| n["role"] == "replica").collect();
    assert_eq!(replicas.len(), 3, "{redis:#}");
    for replica in &replicas {
        let primary = replica["primary"]
            .as_str()
            .expect("a replica names its primary");
        assert_eq!(node(&json, primary).unwrap()["role"], "primary");
        assert_eq!(replica["slotCount"], 0);
    }

    // Kill the primary of the last third of the slots; its replica takes over.
    let dead = cluster.address(2);
    let heir = replicas
        .iter()
        .find(|r| r["primary"] == dead)
        .expect("the killed primary has a replica")["address"]
        .as_str()
        .unwrap()
        .to_owned();
    cluster.nodes[2].stop();
    let killed = Instant::now();
    let (json, _) = http
        .health_until(
            Duration::from_secs(30),
            "the replica promoted, healthy",
            |j| {
                node(j, &dead).is_some_and(|n| n["up"] == false)
                    && node(j, &heir)
                        .is_some_and(|n| n["role"] == "primary" && n["slotCount"] == 5461)
                    && j["data"]["health"]["overall"] == "healthy"
            },
        )
        .await;
    println!(
        "failover: {heir} primary, {dead} down, healthy again {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(node(&json, &dead).unwrap()["slotCount"], 0, "{json:#}");
    let metrics = http.get("/metrics").await;
    assert_eq!(
        series(&metrics, "cachet_upstream_node_up", &heir, "primary"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, "cachet_upstream_node_up", &heir, "replica"),
        None,
        "the old role's series is gone: {metrics}"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), cachet).await;
}
