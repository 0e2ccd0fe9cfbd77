//! A Sentinel deployment of our own: one master, one replica (`--replicaof`) and three
//! Sentinels (`redis-server CONF --sentinel`, each with its config file in its own temp dir),
//! all on free ports, quorum 2, `down-after-milliseconds` 1000 and a short
//! `failover-timeout`. Every process is killed on drop; [`SentinelSet::logs`] gathers all
//! their logs for failure messages. [`SentinelSet::start_with`] puts passwords on the data
//! nodes and on the Sentinels.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{RawClient, RedisServer, free_port};

pub const MASTER_NAME: &str = "mymaster";

/// One `redis-server --sentinel` process.
pub struct Sentinel {
    pub port: u16,
    /// Its `requirepass`, if any.
    pub password: Option<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master_port: u16, auth: &Auth) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temp dir");
            let conf = dir.path().join("sentinel.conf");
            let log = dir.path().join("sentinel.log");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n{extra}",
                    dir = dir.path().display(),
                    log = log.display(),
                    extra = auth.sentinel_conf(),
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed");
            let mut sentinel = Sentinel {
                port,
                password: auth.sentinel.clone(),
                child: Some(child),
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(Ok(Some(_))) = sentinel.child.as_mut().map(|c| c.try_wait()) {
                    let log = sentinel.log();
                    if log.contains("Address already in use") {
                        break;
                    }
                    panic!("a Sentinel on port {port} exited while starting; log:\n{log}");
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && sentinel.log().contains("+monitor")
                {
                    return sentinel;
                }
                assert!(
                    Instant::now() < deadline,
                    "a Sentinel on port {port} did not come up; log:\n{}",
                    sentinel.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no free port for a Sentinel in 5 tries");
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sentinel.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A connection to it, signed in if it has a password.
    pub async fn connect(&self) -> std::io::Result<RawClient> {
        let mut c = RawClient::connect(self.addr()).await?;
        if let Some(password) = &self.password {
            let reply = c.command(&["AUTH", password]).await?;
            if &reply[..] != b"+OK\r\n" {
                return Err(std::io::Error::other("the Sentinel refused AUTH"));
            }
        }
        Ok(c)
    }
}

/// Passwords for a [`SentinelSet`].
#[derive(Default, Clone)]
pub struct Auth {
    /// The data nodes' `requirepass` (and the replica's `masterauth`).
    pub data: Option<String>,
    /// The Sentinels' own `requirepass`.
    pub sentinel: Option<String>,
}

impl Auth {
    fn sentinel_conf(&self) -> String {
        let mut conf = String::new();
        if let Some(password) = &self.data {
            conf += &format!("sentinel auth-pass {MASTER_NAME} {password}\n");
        }
        if let Some(password) = &self.sentinel {
            // Sentinels sign in to each other with the same password.
            conf += &format!("requirepass {password}\nsentinel sentinel-pass {password}\n");
        }
        conf
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One master, one replica, three Sentinels.
pub struct SentinelSet {
    /// The data nodes, the first started as the master. Which one is master now:
    /// [`SentinelSet::master_port`].
    pub nodes: Vec<RedisServer>,
    pub sentinels: Vec<Sentinel>,
}

impl SentinelSet {
    /// Starts everything and waits until each Sentinel knows the replica and the other
    /// Sentinels, so that a failover can go ahead.
    pub async fn start() -> Self {
        Self::start_with(Auth::default()).await
    }

    pub async fn start_with(auth: Auth) -> Self {
        let mut data_args: Vec<&str> = Vec::new();
        if let Some(password) = &auth.data {
            data_args.extend(["--requirepass", password, "--masterauth", password]);
        }
        let master = RedisServer::start_with(&data_args);
        let port = master.port.to_string();
        let mut replica_args = data_args.clone();
        replica_args.extend(["--replicaof", "127.0.0.1", &port]);
        let replica = RedisServer::start_with(&replica_args);
        let sentinels = (0..3)
            .map(|_| Sentinel::start(master.port, &auth))
            .collect();
        let set = SentinelSet {
            nodes: vec![master, replica],
            sentinels,
        };
        set.wait_settled(Duration::from_secs(30)).await;
        set
    }

    /// `sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/mymaster`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out += &format!("--- redis-server :{} ---\n{}\n", node.port, node.log());
        }
        for s in &self.sentinels {
            out += &format!("--- sentinel :{} ---\n{}\n", s.port, s.log());
        }
        out
    }

    /// The master's port according to the first Sentinel that answers.
    pub async fn master_port(&self) -> Option<u16> {
        for s in &self.sentinels {
            let Ok(mut c) = s.connect().await else {
                continue;
            };
            let Ok(reply) = c
                .command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
                .await
            else {
                continue;
            };
            if let super::resp::Value::Array(items) = super::resp::Value::parse(&reply)
                && let Some(super::resp::Value::Bulk(port)) = items.get(1)
            {
                return String::from_utf8_lossy(port).parse().ok();
            }
        }
        None
    }

    /// The data node listening on `port`.
    pub fn node(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this set")
    }

    /// Waits until every Sentinel sees a replica and two other Sentinels, and the replica's
    /// link to the master is up.
    pub async fn wait_settled(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.settled().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinel set did not settle within {within:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn settled(&self) -> bool {
        let Some(master) = self.master_port().await else {
            return false;
        };
        for s in &self.sentinels {
            let Ok(mut c) = s.connect().await else {
                return false;
            };
            let Ok(reply) = c.command(&["SENTINEL", "MASTER", MASTER_NAME]).await else {
                return false;
            };
            let super::resp::Value::Array(_) = super::resp::Value::parse(&reply) else {
                return false;
            };
            let fields = super::resp::Value::parse(&reply).strings();
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|p| p[0] == name.as_bytes())
                    .map(|p| String::from_utf8_lossy(&p[1]).into_owned())
            };
            if field("num-slaves").as_deref() != Some("1")
                || field("num-other-sentinels").as_deref() != Some("2")
                || field("port").and_then(|p| p.parse().ok()) != Some(master)
                || field("flags").as_deref() != Some("master")
            {
                return false;
            }
            let Ok(reply) = c.command(&["SENTINEL", "REPLICAS", MASTER_NAME]).await else {
                return false;
            };
            let replicas = super::resp::Value::parse(&reply);
            let ok = replicas.items().iter().all(|r| {
                let f = r.strings();
                let get = |name: &str| {
                    f.chunks(2)
                        .find(|p| p[0] == name.as_bytes())
                        .map(|p| String::from_utf8_lossy(&p[1]).into_owned())
                };
                get("flags").as_deref() == Some("slave")
                    && get("master-link-status").as_deref() == Some("ok")
            });
            if !ok {
                return false;
            }
        }
        true
    }

    /// Sends one command to a Sentinel (any that answers).
    pub async fn sentinel_command(&self, args: &[&str]) -> String {
        for s in &self.sentinels {
            if let Ok(mut c) = s.connect().await
                && let Ok(reply) = c.command(args).await
            {
                return String::from_utf8_lossy(&reply).into_owned();
            }
        }
        panic!("no Sentinel answered {args:?}; logs:\n{}", self.logs());
    }
}
