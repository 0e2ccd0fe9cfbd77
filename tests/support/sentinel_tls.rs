//! A Sentinel deployment that speaks TLS only: one master, one replica and three Sentinels,
//! each `--port 0` with a TLS port, the certificate a [`Ca`] issued (for localhost and
//! 127.0.0.1), `tls-auth-clients no`, and `tls-replication yes` (the replica and the
//! Sentinels reach the data nodes, and the Sentinels each other, over TLS). Every process is
//! killed on drop; [`TlsSentinelSet::logs`] gathers their logs for failure messages.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::resp::Value;
use super::sentinel::MASTER_NAME;
use super::tls::{Ca, Identity, TlsClient, client_config};

/// One TLS-only `redis-server` (data node or Sentinel).
pub struct TlsProcess {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl TlsProcess {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log"))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills it now (as on drop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TlsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The TLS lines every process's config holds.
fn tls_conf(port: u16, identity: &Identity, ca: &Path) -> String {
    format!(
        "port 0\ntls-port {port}\nbind 127.0.0.1\ntls-cert-file {}\ntls-key-file {}\n\
         tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
        identity.cert.display(),
        identity.key.display(),
        ca.display()
    )
}

/// Starts `redis-server CONF [--sentinel]` with `conf` (after the TLS lines) and waits until
/// it answers PING over TLS.
async fn start(identity: &Identity, ca: &Path, conf: &str, sentinel: bool) -> TlsProcess {
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("redis.conf");
    std::fs::write(
        &path,
        format!(
            "{}dir {}\nlogfile {}\nsave \"\"\nappendonly no\n{conf}",
            tls_conf(port, identity, ca),
            dir.path().display(),
            dir.path().join("redis.log").display()
        ),
    )
    .expect("write redis.conf");
    let mut command = Command::new("redis-server");
    command.arg(&path);
    if sentinel {
        command.arg("--sentinel");
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    let mut process = TlsProcess {
        port,
        child: Some(child),
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(Ok(Some(status))) = process.child.as_mut().map(|c| c.try_wait()) {
            panic!(
                "redis-server on TLS port {port} exited ({status}); log:\n{}",
                process.log()
            );
        }
        if let Ok(mut c) = TlsClient::connect(process.addr(), client_config(ca, None)).await
            && let Ok(reply) = c.command(&["PING"]).await
            && reply == b"+PONG\r\n"
        {
            return process;
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on TLS port {port} did not come up; log:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One master, one replica, three Sentinels, all over TLS.
pub struct TlsSentinelSet {
    /// The data nodes, the first started as the master.
    pub nodes: Vec<TlsProcess>,
    pub sentinels: Vec<TlsProcess>,
    /// The CA that issued every certificate (for clients).
    pub ca: PathBuf,
}

impl TlsSentinelSet {
    /// Starts everything with `identity` (issued by the CA in `ca`) and waits until every
    /// Sentinel knows the replica and the two others.
    pub async fn start(ca: &Ca, identity: &Identity) -> Self {
        let ca_path = ca.cert.clone();
        let master = start(identity, &ca_path, "", false).await;
        let replica = start(
            identity,
            &ca_path,
            &format!("replicaof 127.0.0.1 {}\n", master.port),
            false,
        )
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let conf = format!(
                "sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                master.port
            );
            sentinels.push(start(identity, &ca_path, &conf, true).await);
        }
        let set = TlsSentinelSet {
            nodes: vec![master, replica],
            sentinels,
            ca: ca_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !set.settled().await {
            assert!(
                Instant::now() < deadline,
                "the TLS Sentinel set did not settle; logs:\n{}",
                set.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        set
    }

    /// `sentinels://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/mymaster`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("sentinels://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// A TLS client to `addr`, trusting the set's CA.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TlsClient> {
        TlsClient::connect(addr, client_config(&self.ca, None)).await
    }

    /// Sends one command to a Sentinel (any that answers), returns its reply.
    pub async fn sentinel_command(&self, args: &[&str]) -> Option<Vec<u8>> {
        for s in &self.sentinels {
            if let Ok(mut c) = self.connect(s.addr()).await
                && let Ok(reply) = c.command(args).await
            {
                return Some(reply);
            }
        }
        None
    }

    /// The master's port according to the first Sentinel that answers.
    pub async fn master_port(&self) -> Option<u16> {
        let reply = self
            .sentinel_command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
            .await?;
        match Value::parse(&reply) {
            Value::Array(items) => match items.get(1) {
                Some(Value::Bulk(port)) => String::from_utf8_lossy(port).parse().ok(),
                _ => None,
            },
            _ => None,
        }
    }

    async fn settled(&self) -> bool {
        for s in &self.sentinels {
            let Ok(mut c) = self.connect(s.addr()).await else {
                return false;
            };
            let Ok(reply) = c.command(&["SENTINEL", "MASTER", MASTER_NAME]).await else {
                return false;
            };
            let fields = Value::parse(&reply).strings();
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|p| p[0] == name.as_bytes())
                    .map(|p| String::from_utf8_lossy(&p[1]).into_owned())
            };
            if field("num-slaves").as_deref() != Some("1")
                || field("num-other-sentinels").as_deref() != Some("2")
                || field("flags").as_deref() != Some("master")
            {
                return false;
            }
            let Ok(reply) = c.command(&["SENTINEL", "REPLICAS", MASTER_NAME]).await else {
                return false;
            };
            let ok = Value::parse(&reply).items().iter().all(|r| {
                let f = r.strings();
                f.chunks(2)
                    .any(|p| p[0] == b"master-link-status" && p[1] == b"ok")
                    && f.chunks(2).any(|p| p[0] == b"flags" && p[1] == b"slave")
            });
            if !ok {
                return false;
            }
        }
        true
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out += &format!("--- redis-server TLS :{} ---\n{}\n", node.port, node.log());
        }
        for s in &self.sentinels {
            out += &format!("--- sentinel TLS :{} ---\n{}\n", s.port, s.log());
        }
        out
    }
}
