//! A Redis Cluster of our own: `primaries` primaries with `replicas` replicas each, every node
//! a `redis-server --cluster-enabled yes` on a free port (its cluster bus on another free
//! port, `--cluster-port`), joined by `redis-cli --cluster create`. [`Cluster::start`] returns
//! once every node says `cluster_state:ok` and every node's `CLUSTER SHARDS` lists every shard
//! with all its nodes online. Every process is killed on drop, and the temp dir (node configs,
//! logs) goes with it; [`Cluster::logs`] gathers the logs for failure messages.
//!
//! The helpers the cluster tests need: who owns a slot, keys that land on a given node, a
//! SIGKILL of a primary ([`Cluster::kill`]), waiting for its replica's promotion,
//! `redis-cli --cluster reshard` in the background ([`Cluster::reshard`]), and cachet's config
//! for the cluster ([`Cluster::proxy_config`], [`Cluster::start_proxy`]).
//!
//! Commands to the nodes go over a blocking socket ([`node_command`]), so the fixture works
//! the same from sync and async tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::resp::{self, Value};
use super::{Proxy, RawClient, free_port};

/// Node timeout: how long a primary may be unreachable before its replica takes over.
pub const NODE_TIMEOUT_MS: u64 = 1000;
/// How long the cluster may take to form.
const FORM_WITHIN: Duration = Duration::from_secs(60);
/// How many port pairs a node tries when another process takes its port first.
const PORT_TRIES: usize = 5;

/// One `redis-server --cluster-enabled yes` process.
pub struct ClusterNode {
    pub port: u16,
    /// The cluster bus port (`--cluster-port`).
    pub bus_port: u16,
    /// Its node id (`CLUSTER MYID`).
    pub id: String,
    child: Option<Child>,
    conf: PathBuf,
    log: PathBuf,
}

impl ClusterNode {
    fn start(dir: &std::path::Path) -> Self {
        for _ in 0..PORT_TRIES {
            let port = free_port();
            let bus_port = free_port();
            if bus_port == port {
                continue;
            }
            let conf = dir.join(format!("nodes-{port}.conf"));
            let log = dir.join(format!("redis-{port}.log"));
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string()])
                .args(["--cluster-port", &bus_port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(&conf)
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .args(["--appendonly", "no", "--save", ""])
                .arg("--dir")
                .arg(dir)
                .arg("--logfile")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (apt-get install redis-server)");
            let mut node = ClusterNode {
                port,
                bus_port,
                id: String::new(),
                child: Some(child),
                conf,
                log,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(Ok(Some(status))) = node.child.as_mut().map(|c| c.try_wait()) {
                    node.child = None;
                    let log = node.log();
                    if log.contains("Address already in use") {
                        break;
                    }
                    panic!(
                        "cluster node on port {port} exited while starting ({status}); log:\n{log}"
                    );
                }
                let pid = node.pid().expect("running");
                if let Ok(Value::Bulk(info)) = node_command(node.addr(), &["INFO", "server"]) {
                    let ours = String::from_utf8_lossy(&info)
                        .lines()
                        .find_map(|l| l.strip_prefix("process_id:"))
                        .and_then(|p| p.trim().parse::<u32>().ok())
                        == Some(pid);
                    if ours {
                        match node_command(node.addr(), &["CLUSTER", "MYID"]) {
                            Ok(Value::Bulk(id)) => {
                                node.id = String::from_utf8_lossy(&id).into_owned();
                                return node;
                            }
                            other => panic!("CLUSTER MYID on port {port}: {other:?}"),
                        }
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster node on port {port} did not come up within 10 s; log:\n{}",
                    node.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no free port pair for a cluster node in {PORT_TRIES} tries");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether its process still runs.
    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// One command, over a fresh blocking connection.
    pub fn command(&self, args: &[&str]) -> Result<Value, String> {
        node_command(self.addr(), args)
    }

    /// SIGKILL (no shutdown, no save), then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.conf);
    }
}

/// One command to `addr` over a fresh blocking connection (2 s timeouts): the decoded reply,
/// or why there is none. A Redis error reply is `Ok(Value::Error(..))`.
pub fn node_command(addr: SocketAddr, args: &[&str]) -> Result<Value, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(2))))
        .map_err(|e| e.to_string())?;
    s.write_all(&RawClient::encode(args))
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match resp::frame_len(&buf) {
            Ok(Some(len)) => return Ok(Value::parse(&buf[..len])),
            Ok(None) => match s.read(&mut chunk) {
                Ok(0) => return Err(format!("{addr} closed the connection")),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read from {addr}: {e}")),
            },
            Err(e) => return Err(format!("bad reply from {addr}: {e}")),
        }
    }
}

/// A map reply as (name, value) pairs (RESP2 flat arrays, as `CLUSTER SHARDS` gives them).
fn pairs(value: &Value) -> Vec<(String, Value)> {
    value
        .items()
        .chunks(2)
        .map(|p| {
            (
                String::from_utf8_lossy(p[0].bytes()).into_owned(),
                p[1].clone(),
            )
        })
        .collect()
}

fn field<'v>(pairs: &'v [(String, Value)], name: &str) -> Option<&'v Value> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn text(value: &Value) -> String {
    match value {
        Value::Int(n) => n.to_string(),
        other => String::from_utf8_lossy(other.bytes()).into_owned(),
    }
}

/// One shard as a node sees it: slot ranges and nodes (`role`, `health`).
#[derive(Debug, Clone)]
pub struct Shard {
    pub slots: Vec<(u16, u16)>,
    /// (port, id, role, health) of every node of the shard.
    pub nodes: Vec<(u16, String, String, String)>,
}

impl Shard {
    /// The port of the shard's primary, if it has one: an online one first (a killed
    /// primary stays listed, as `fail`, beside the replica that took over).
    pub fn primary(&self) -> Option<u16> {
        let masters = || self.nodes.iter().filter(|(_, _, role, _)| role == "master");
        masters()
            .find(|(.., health)| health == "online")
            .or_else(|| masters().next())
            .map(|(port, ..)| *port)
    }

    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// `CLUSTER SHARDS` as the node at `addr` answers it.
pub fn shards(addr: SocketAddr) -> Result<Vec<Shard>, String> {
    let reply = node_command(addr, &["CLUSTER", "SHARDS"])?;
    if let Value::Error(e) = reply {
        return Err(e);
    }
    let mut out = Vec::new();
    for shard in reply.items() {
        let shard = pairs(shard);
        let slots = field(&shard, "slots")
            .map(|s| {
                s.items()
                    .chunks(2)
                    .map(|r| (r[0].int() as u16, r[1].int() as u16))
                    .collect()
            })
            .unwrap_or_default();
        let nodes = field(&shard, "nodes")
            .map(|ns| {
                ns.items()
                    .iter()
                    .map(|n| {
                        let n = pairs(n);
                        let get = |k: &str| field(&n, k).map(text).unwrap_or_default();
                        (
                            get("port").parse().unwrap_or(0),
                            get("id"),
                            get("role"),
                            get("health"),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Shard { slots, nodes });
    }
    Ok(out)
}

/// A cluster of our own. See the module docs.
pub struct Cluster {
    /// Every node, in start order; which are primaries now: [`Cluster::primaries`].
    pub nodes: Vec<ClusterNode>,
    primaries: usize,
    replicas: usize,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Where the node configs and logs are (removed on drop).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts `primaries * (1 + replicas)` nodes, creates the cluster and waits until it is
    /// whole (see the module docs); panics with every log if it is not within 60 s.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        assert!(
            primaries >= 3,
            "redis-cli --cluster create needs 3 primaries"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes: Vec<ClusterNode> = (0..primaries * (1 + replicas))
            .map(|_| ClusterNode::start(dir.path()))
            .collect();
        let cluster = Cluster {
            nodes,
            primaries,
            replicas,
            dir,
        };
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.nodes.iter().map(ClusterNode::host_port))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed ({}):\n{}\n{}\nlogs:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        cluster.wait_whole(FORM_WITHIN);
        cluster
    }

    /// Waits until every live node says `cluster_state:ok` and lists every shard with one
    /// primary, `replicas` replicas, all online, and all 16384 slots covered.
    pub fn wait_whole(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let Err(why) = self.whole() else {
                return;
            };
            assert!(
                Instant::now() < deadline,
                "the cluster was not whole within {within:?}: {why}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn whole(&self) -> Result<(), String> {
        for node in self.nodes.iter().filter(|n| n.alive()) {
            let info = node.command(&["CLUSTER", "INFO"])?;
            let info = String::from_utf8_lossy(info.bytes()).into_owned();
            if !info.contains("cluster_state:ok") {
                return Err(format!("{} is not ok yet", node.port));
            }
            let shards = shards(node.addr())?;
            let full: Vec<_> = shards.iter().filter(|s| !s.slots.is_empty()).collect();
            if full.len() != self.primaries {
                return Err(format!(
                    "{} sees {} shards with slots",
                    node.port,
                    full.len()
                ));
            }
            let covered: u32 = full
                .iter()
                .flat_map(|s| &s.slots)
                .map(|(a, b)| u32::from(b - a) + 1)
                .sum();
            if covered != 16384 {
                return Err(format!("{} sees {covered} slots covered", node.port));
            }
            for s in &full {
                let online = s.nodes.iter().filter(|n| n.3 == "online").count();
                if s.primary().is_none() || online != 1 + self.replicas {
                    return Err(format!("{} sees shard {:?}", node.port, s.nodes));
                }
            }
        }
        Ok(())
    }

    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2` (the first two nodes as seeds).
    pub fn url(&self) -> String {
        self.url_with(2)
    }

    /// The url with the first `seeds` nodes as seeds.
    pub fn url_with(&self, seeds: usize) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .take(seeds)
            .map(ClusterNode::host_port)
            .collect();
        format!("redis-cluster://{}", hosts.join(","))
    }

    /// `127.0.0.1:PORT` of every node.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(ClusterNode::host_port).collect()
    }

    /// The node listening on `port`.
    pub fn node(&self, port: u16) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster on port {port}"))
    }

    /// The map as the first live node sees it.
    pub fn shards(&self) -> Vec<Shard> {
        let mut last = String::new();
        for node in self.nodes.iter().filter(|n| n.alive()) {
            match shards(node.addr()) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("no live node answered CLUSTER SHARDS: {last}");
    }

    /// The ports of the primaries that own slots, ordered by their first slot.
    pub fn primaries(&self) -> Vec<u16> {
        let mut shards: Vec<Shard> = self
            .shards()
            .into_iter()
            .filter(|s| !s.slots.is_empty())
            .collect();
        shards.sort_by_key(|s| s.slots.iter().map(|r| r.0).min());
        shards.iter().filter_map(Shard::primary).collect()
    }

    /// The port of the primary owning `slot`.
    pub fn primary_for_slot(&self, slot: u16) -> u16 {
        self.shards()
            .iter()
            .find(|s| s.owns(slot))
            .and_then(Shard::primary)
            .unwrap_or_else(|| panic!("nobody owns slot {slot}"))
    }

    /// Waits until the first live node says the primary at `port` owns `slot` (gossip takes
    /// a moment to reach every node after a failover or a reshard).
    pub async fn wait_owner(&self, slot: u16, port: u16, within: Duration) {
        let deadline = Instant::now() + within;
        while self.primary_for_slot(slot) != port {
            assert!(
                Instant::now() < deadline,
                "slot {slot} is not owned by {port} within {within:?}: {:?}",
                self.shards()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The port of the primary owning `key`'s slot.
    pub fn primary_for_key(&self, key: &str) -> u16 {
        self.primary_for_slot(slot(key))
    }

    /// The ports of the replicas of the primary at `port`.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        self.shards()
            .iter()
            .find(|s| s.primary() == Some(port))
            .map(|s| {
                s.nodes
                    .iter()
                    .filter(|n| n.2 != "master")
                    .map(|n| n.0)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node id of the node at `port`.
    pub fn id(&self, port: u16) -> String {
        self.node(port).id.clone()
    }

    /// The slot ranges the node at `port` owns.
    pub fn slots_of(&self, port: u16) -> Vec<(u16, u16)> {
        self.shards()
            .into_iter()
            .find(|s| s.primary() == Some(port))
            .map(|s| s.slots)
            .unwrap_or_default()
    }

    /// `count` keys `{prefix}{n}` whose slots the primary at `port` owns now.
    pub fn keys_on(&self, port: u16, prefix: &str, count: usize) -> Vec<String> {
        let ranges = self.slots_of(port);
        (0..)
            .map(|n| format!("{prefix}{n}"))
            .filter(|k| {
                let s = slot(k);
                ranges.iter().any(|(a, b)| (*a..=*b).contains(&s))
            })
            .take(count)
            .collect()
    }

    /// SIGKILLs the node at `port`; returns when it was killed (just before the signal).
    pub fn kill(&mut self, port: u16) -> Instant {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster on port {port}"));
        let at = Instant::now();
        node.kill();
        at
    }

    /// SIGKILLs the `i`th primary (of [`Cluster::primaries`]); returns its port and the time.
    pub fn kill_primary(&mut self, i: usize) -> (u16, Instant) {
        let port = self.primaries()[i];
        (port, self.kill(port))
    }

    /// Polls `ROLE` on the node at `port` every 10 ms until it says `master`; returns when it
    /// first did, or panics after `within`.
    pub async fn wait_master(&self, port: u16, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Value::Array(role)) = node_command(self.node(port).addr(), &["ROLE"])
                && role.first().map(Value::bytes) == Some(b"master")
            {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "the node on port {port} was not promoted within {within:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts `redis-cli --cluster reshard` moving `slots` slots from the primary at `from`
    /// to the primary at `to`, in the background.
    pub fn reshard(&self, from: u16, to: u16, slots: usize) -> Reshard {
        let log = self.dir.path().join(format!("reshard-{from}-{to}.log"));
        let out = std::fs::File::create(&log).expect("reshard log");
        let err = out.try_clone().expect("reshard log");
        let child = Command::new("redis-cli")
            .arg("--cluster")
            .arg("reshard")
            .arg(self.node(from).host_port())
            .args(["--cluster-from", &self.id(from)])
            .args(["--cluster-to", &self.id(to)])
            .args(["--cluster-slots", &slots.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("redis-cli must be installed");
        Reshard {
            child: Some(child),
            log,
            started: Instant::now(),
        }
    }

    /// A cachet config (TOML) for this cluster: `[upstream]` with the cluster url and
    /// `[upstream.cluster]` with a 1 s refresh, then `extra` (sections of its own: `[ttl]`,
    /// `[[rules]]`, ...; `[upstream]` keys belong in `upstream_keys` of
    /// [`Cluster::proxy_config_with`]).
    pub fn proxy_config(&self, extra: &str) -> String {
        self.proxy_config_with("", "", extra)
    }

    /// [`Cluster::proxy_config`] with extra `[upstream]` keys (`command_timeout_ms = 2000`)
    /// and extra `[upstream.cluster]` keys (`read_from = "replica"`).
    pub fn proxy_config_with(
        &self,
        upstream_keys: &str,
        cluster_keys: &str,
        extra: &str,
    ) -> String {
        format!(
            "[upstream]\nurl = \"{}\"\n{upstream_keys}\n\n[upstream.cluster]\nrefresh_ms = 1000\n{cluster_keys}\n\n{extra}\n",
            self.url()
        )
    }

    /// cachet in this process on `toml` (a config from [`Cluster::proxy_config`]).
    pub async fn start_proxy_toml(toml: &str) -> Proxy {
        let config = cachet::Config::from_toml(toml, "tests/support/cluster.rs")
            .unwrap_or_else(|e| panic!("the cluster config is refused: {e}\n{toml}"));
        // The url given here is replaced with the whole config.
        Proxy::start_with("redis://127.0.0.1:1", move |c| *c = config).await
    }

    /// cachet in this process in front of this cluster, with `extra` config sections.
    pub async fn start_proxy(&self, extra: &str) -> Proxy {
        Self::start_proxy_toml(&self.proxy_config(extra)).await
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let log = node.log();
            let lines: Vec<&str> = log.lines().collect();
            out += &format!(
                "--- cluster node :{} ({}) ---\n{}\n",
                node.port,
                if node.alive() { "running" } else { "killed" },
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        out
    }

    /// The slowlog of every live primary: (port, entries as (duration µs, command)).
    pub fn slowlogs(&self) -> Vec<(u16, Vec<(i64, String)>)> {
        self.primaries()
            .into_iter()
            .map(|port| {
                let reply = node_command(self.node(port).addr(), &["SLOWLOG", "GET", "1000"])
                    .unwrap_or_else(|e| panic!("SLOWLOG GET on {port}: {e}"));
                let entries = reply
                    .items()
                    .iter()
                    .map(|e| {
                        let e = e.items();
                        let args: Vec<String> = e[3]
                            .items()
                            .iter()
                            .map(|a| String::from_utf8_lossy(a.bytes()).into_owned())
                            .collect();
                        (e[2].int(), args.join(" "))
                    })
                    .collect();
                (port, entries)
            })
            .collect()
    }

    /// Runs `args` on every live primary (e.g. `CONFIG SET slowlog-log-slower-than 10000`),
    /// panicking on an error.
    pub fn on_primaries(&self, args: &[&str]) {
        for port in self.primaries() {
            match node_command(self.node(port).addr(), args) {
                Ok(Value::Error(e)) | Err(e) => panic!("{args:?} on {port}: {e}"),
                Ok(_) => {}
            }
        }
    }

    /// Keys in the whole cluster (the sum of the primaries' `DBSIZE`).
    pub fn dbsize(&self) -> i64 {
        self.primaries()
            .into_iter()
            .map(|port| {
                node_command(self.node(port).addr(), &["DBSIZE"])
                    .unwrap_or_else(|e| panic!("DBSIZE on {port}: {e}"))
                    .int()
            })
            .sum()
    }
}

/// The hash slot of `key` (hash tags honoured).
pub fn slot(key: &str) -> u16 {
    redis_protocol::redis_keyslot(key.as_bytes())
}

/// A `redis-cli --cluster reshard` running in the background; killed on drop if still running.
pub struct Reshard {
    child: Option<Child>,
    log: PathBuf,
    pub started: Instant,
}

impl Reshard {
    /// Whether it has exited (successfully or not).
    pub fn finished(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Waits until it exits; panics with its output if it failed or took longer than
    /// `within`. Returns how long it ran.
    pub async fn wait(&mut self, within: Duration) -> Duration {
        let deadline = self.started + within;
        let mut child = self.child.take().expect("waited once");
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    assert!(
                        status.success(),
                        "redis-cli --cluster reshard failed ({status}):\n{}",
                        self.output()
                    );
                    return self.started.elapsed();
                }
                Ok(None) => {}
                Err(e) => panic!("waiting for redis-cli --cluster reshard: {e}"),
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-cli --cluster reshard still ran after {within:?}:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no output: {e})"))
    }
}

impl Drop for Reshard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
