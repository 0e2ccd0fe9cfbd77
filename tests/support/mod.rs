//! The test harness: real `redis-server` processes on free ports, cachet started in-process on
//! port 0, and a raw RESP client that reads replies frame by frame with the tests' own RESP
//! reader ([`resp`], independent of `cachet::resp`).
//!
//! Each fixture owns what it starts: a `RedisServer` kills and reaps its process on drop, a
//! `Proxy` shuts cachet down on drop. Failure messages carry the server's log.
#![allow(dead_code)]

pub mod acl;
pub mod cluster;
pub mod policies;
pub mod resp;
pub mod sentinel;
pub mod sentinel_tls;
pub mod tls;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A `redis-server` of our own: no persistence, log in a temp dir, killed on drop.
///
/// Ready means the server answering on `port` is this fixture's child (its `INFO` names the
/// child's pid), not some other test's Redis that took the port in between. A child that exits
/// while starting fails the test at once, with its log; one that lost the port to another
/// process is started again on another port (a few times).
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

/// How many ports `start_on` tries when another process takes the port first.
const PORT_TRIES: usize = 5;

/// Why a `redis-server` child did not come up.
enum StartFailure {
    /// It exited because the port was taken ("Address already in use" in its log).
    PortTaken,
    /// It exited for another reason, or never answered: the message says which.
    Other(String),
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments, e.g. `["--requirepass", "pw"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// Starts on `port` if it is free, else on another free port.
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        Self::try_start_on(port, extra).unwrap_or_else(|why| panic!("{why}"))
    }

    /// Starts with extra arguments, or says why the server did not come up (with its log).
    /// Tests of the fixture use it: a caught panic would cost them the time it takes to
    /// print a backtrace (seconds under load, with `RUST_BACKTRACE=1`).
    pub fn try_start_with(extra: &[&str]) -> Result<Self, String> {
        Self::try_start_on(free_port(), extra)
    }

    fn try_start_on(port: u16, extra: &[&str]) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for attempt in 1..=PORT_TRIES {
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(StartFailure::PortTaken) if attempt < PORT_TRIES => {
                    server.port = free_port();
                }
                Err(StartFailure::PortTaken) => {
                    return Err(format!(
                        "redis-server lost its port to another process {PORT_TRIES} times; log:\n{}",
                        server.log()
                    ));
                }
                Err(StartFailure::Other(why)) => return Err(why),
            }
        }
        unreachable!("every attempt returns")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Starts a child on `self.port` and waits until it is ready.
    fn spawn(&mut self) -> Result<(), StartFailure> {
        // The log is appended to across restarts and retries: only what this child writes
        // says why it stopped.
        let log_from = std::fs::metadata(self.log_path()).map_or(0, |m| m.len() as usize);
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let ready = self.wait_ready(log_from);
        if ready.is_err() {
            self.stop();
        }
        ready
    }

    /// Waits until our child answers on the port; fails as soon as it exits.
    fn wait_ready(&mut self, log_from: usize) -> Result<(), StartFailure> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = self.child.as_mut().expect("a child was spawned");
            let pid = child.id();
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                let log = self.log();
                let ours = log.get(log_from..).unwrap_or(&log);
                if ours.contains("Address already in use") {
                    return Err(StartFailure::PortTaken);
                }
                return Err(StartFailure::Other(format!(
                    "redis-server on port {} exited while starting ({status}); log:\n{log}",
                    self.port
                )));
            }
            match self.answering_pid() {
                Ok(Some(answered)) if answered == pid => return Ok(()),
                // Another process's Redis (ours lost the port race, or has not bound it yet):
                // ours exits, or binds, shortly.
                Ok(Some(_)) => {}
                // Up, but it would not say its pid (an ACL setup the fixture cannot log in
                // to): ours is the one answering if its own log says it listens and it is
                // still running.
                Ok(None) => {
                    let log = self.log();
                    let ours = log.get(log_from..).unwrap_or(&log);
                    if ours.contains("Ready to accept connections")
                        && matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
                    {
                        return Ok(());
                    }
                }
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::Other(format!(
                    "redis-server on port {} did not come up within 10 s; log:\n{}",
                    self.port,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of this fixture's `redis-server` child, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The pid of the Redis answering on the port, from `INFO server` (logging in first
    /// with `--requirepass`'s password, if any); `Ok(None)` if it answers with an error.
    pub fn answering_pid(&self) -> std::io::Result<Option<u32>> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr())?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let password = self
            .extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.extra.get(i + 1));
        let mut out = Vec::new();
        if let Some(password) = password {
            out.extend(RawClient::encode(&["AUTH", password]));
        }
        out.extend(RawClient::encode(&["INFO", "server"]));
        s.write_all(&out)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut replies = Vec::new();
        while replies.len() < 1 + usize::from(password.is_some()) {
            match resp::frame_len(&buf) {
                Ok(Some(len)) => replies.push(buf.drain(..len).collect::<Vec<u8>>()),
                Ok(None) => match s.read(&mut chunk)? {
                    0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    n => buf.extend_from_slice(&chunk[..n]),
                },
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
        }
        let info = replies.pop().expect("the INFO reply");
        let text = match resp::decode_whole(&info) {
            Ok(resp::Frame::Blob(_, Some(text))) => String::from_utf8_lossy(&text).into_owned(),
            _ => return Ok(None),
        };
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok()))
    }

    /// Kills the server and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after `stop`). The port cannot move (clients
    /// know it): if another process took it meanwhile, that is a failure.
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`RedisServer::restart`], saying why it failed instead of panicking.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.stop();
        match self.spawn() {
            Ok(()) => Ok(()),
            Err(StartFailure::PortTaken) => Err(format!(
                "redis-server could not restart: another process took port {}; log:\n{}",
                self.port,
                self.log()
            )),
            Err(StartFailure::Other(why)) => Err(why),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// cachet running in this process in front of `upstream_url`, listening on a free port.
pub struct Proxy {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// How long it may take to start: compiling policy components (an 18 MB Python one takes
    /// seconds) comes first.
    patience: Duration,
}

impl Proxy {
    pub async fn start(upstream_url: &str) -> Self {
        Self::start_with(upstream_url, |_| {}).await
    }

    /// Starts cachet with a config adjusted by `tweak`; waits until it answers PING.
    pub async fn start_with(upstream_url: &str, tweak: impl FnOnce(&mut cachet::Config)) -> Self {
        let mut config = cachet::Config::default();
        config.upstream.url = cachet::config::RedisUrl::parse(upstream_url).expect("url");
        tweak(&mut config);
        let patience = match config.policies.is_empty() {
            true => Duration::from_secs(10),
            false => Duration::from_secs(120),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(cachet::run(config, listener, async move {
            let _ = rx.await;
        }));
        let proxy = Proxy {
            addr,
            shutdown: Some(tx),
            task: Some(task),
            patience,
        };
        proxy.wait_ready().await;
        proxy
    }

    /// Waits until a PING through the proxy gets PONG (or NOAUTH): the pool is up.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + self.patience;
        loop {
            if self.task.as_ref().is_some_and(|task| task.is_finished()) {
                panic!("cachet stopped while starting (see its log above)");
            }
            if let Ok(mut c) = RawClient::connect(self.addr).await
                && let Ok(reply) = c.command(&["PING"]).await
            {
                let text = String::from_utf8_lossy(&reply).to_string();
                if text.starts_with("+PONG") || text.starts_with("-NOAUTH") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "cachet did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Signals shutdown and waits for `run` to return; returns its result.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("task");
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("cachet did not shut down within 20 s")
            .expect("cachet task panicked")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A minimal RESP client that writes raw bytes and reads whole reply frames (RESP2 and RESP3,
/// through [`resp::Reader`]), so tests can compare replies byte for byte and send malformed
/// input.
pub struct RawClient {
    pub stream: TcpStream,
    reader: resp::Reader,
}

/// The same client under the name some tests know it by.
pub type Conn = RawClient;

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            reader: resp::Reader::default(),
        })
    }

    /// Encodes `args` as a RESP multibulk command.
    pub fn encode(args: &[impl AsRef<[u8]>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            let arg = arg.as_ref();
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    pub async fn send(&mut self, args: &[impl AsRef<[u8]>]) -> std::io::Result<()> {
        self.send_raw(&Self::encode(args)).await
    }

    /// Reads one whole frame and returns its raw bytes (10 s timeout).
    pub async fn read_frame(&mut self) -> std::io::Result<Bytes> {
        self.read_frame_timeout(Duration::from_secs(10)).await
    }

    /// Reads one whole frame; on a timeout what arrived of it stays for the next call.
    pub async fn read_frame_timeout(&mut self, timeout: Duration) -> std::io::Result<Bytes> {
        self.reader.read(&mut self.stream, timeout).await
    }

    /// Sends one command and returns its reply's raw bytes.
    pub async fn command(&mut self, args: &[impl AsRef<[u8]>]) -> std::io::Result<Bytes> {
        self.send(args).await?;
        self.read_frame().await
    }

    /// Sends one command and returns its reply as text (handy in assertions); panics, naming
    /// the command, if no reply comes.
    pub async fn text(&mut self, args: &[&str]) -> String {
        let reply = self
            .command(args)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: no reply: {e}"));
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// True once the peer has closed the connection (reads EOF within `timeout`).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        closed_within(&mut self.stream, timeout).await
    }
}

/// True once the peer closes `stream` (EOF or reset within `timeout`); data is discarded.
pub async fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let mut scratch = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut scratch)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A fred client connected to `url`, RESP2 or RESP3.
pub async fn fred_client(url: &str, resp3: bool) -> fred::clients::Client {
    use fred::prelude::*;
    let mut config = Config::from_url(url).expect("url");
    if resp3 {
        config.version = fred::types::RespVersion::RESP3;
    }
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
        })
        .build()
        .expect("build fred client");
    client.init().await.expect("fred connects");
    client
}
