//! Layer (b): the `cachet` binary as a child process in front of a fresh redis-server, with
//! hostile connections sending fuzz input concurrently and well-behaved clients checking that
//! every reply they get is exactly theirs.
//!
//! cachet runs as a child so that its RSS is its own and a crash (a stack overflow aborts the
//! process) is an assertion with the inputs in flight named and saved. The run is split into
//! epochs, one per cachet process: when cachet dies, the epoch ends with that finding and a new
//! cachet takes over, so one run still reaches the findings past the first crash. Half the
//! run has a password at Redis and cachet (`upstream.password`), which the hostile clients
//! never give.
//!
//! Each epoch asserts: cachet alive; the well-behaved clients got exactly their replies, with no
//! error; RSS growth within [`RSS_GROWTH_LIMIT`]; the pool's connection to Redis never broken
//! (`cachet_upstream_pool_reconnects_total` stays 0 and the `cachet:pool` client ids at Redis are
//! the ones it started with); and once every client has gone, no session or Redis connection
//! is left behind.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::inputs;
use crate::support::{Conn, RedisServer, free_port};

/// Hostile connections open at once.
const HOSTILE: usize = 12;
/// Well-behaved clients (the first RESP2, the second RESP3).
const GOOD: usize = 2;
/// Growth of cachet's RSS over its size before the hostile clients came.
const RSS_GROWTH_LIMIT: u64 = 256 * 1024 * 1024;
/// Idle dedicated connections cachet may keep after the clients that used them are gone
/// (`upstream.spare_connections`' default).
const SPARE_CONNECTIONS: u64 = 8;
/// How long a well-behaved client waits for a reply before counting it as an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The password of the phase that requires one, at Redis and (`upstream.password`) at cachet.
const PASSWORD: &str = "fuzz-secret";

/// A fresh redis-server, and the password its clients (cachet's included) must give, if any.
pub struct Upstream {
    pub redis: RedisServer,
    pub password: Option<&'static str>,
}

impl Upstream {
    pub fn open() -> Self {
        Upstream {
            redis: RedisServer::start(),
            password: None,
        }
    }

    /// Redis with `requirepass`, cachet with `upstream.password`: the hostile clients, which
    /// never give the password, stay unauthenticated.
    pub fn with_password() -> Self {
        Upstream {
            redis: RedisServer::start_with(&["--requirepass", PASSWORD]),
            password: Some(PASSWORD),
        }
    }

    /// A connection that has authenticated, if a password is needed: to Redis directly, or
    /// through cachet at `addr`. RESP3 when `resp3`.
    async fn connect(&self, addr: std::net::SocketAddr, resp3: bool) -> Result<Conn, String> {
        let mut conn = Conn::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let hello: Vec<&str> = match (resp3, self.password) {
            (true, Some(pw)) => vec!["HELLO", "3", "AUTH", "default", pw],
            (true, None) => vec!["HELLO", "3"],
            (false, Some(pw)) => vec!["AUTH", pw],
            (false, None) => return Ok(conn),
        };
        match tokio::time::timeout(REPLY_TIMEOUT, conn.command(&hello)).await {
            Ok(Ok(reply)) if reply.starts_with(b"%") || &reply[..] == b"+OK\r\n" => Ok(conn),
            other => Err(format!("{}: {other:?}", hello[0])),
        }
    }

    /// A command sent to Redis directly (not through cachet).
    async fn command(&self, args: &[&str]) -> String {
        let mut conn = self
            .connect(self.redis.addr(), false)
            .await
            .expect("connect to redis");
        let reply = conn.command(args).await.expect("redis replies");
        String::from_utf8_lossy(&reply).into_owned()
    }
}

/// The `cachet` binary, its admin listener on, its stderr in a file.
struct Cachet {
    child: Child,
    port: u16,
    admin_port: u16,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cachet {
    async fn start(upstream: &Upstream) -> Cachet {
        let dir = tempfile::tempdir().expect("temp dir");
        let stderr = dir.path().join("cachet.stderr");
        let (port, admin_port) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_cachet"))
            .args([
                "--upstream",
                &upstream.redis.url(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("CACHET_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .env("REDIS_PASSWORD", upstream.password.unwrap_or(""))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start cachet");
        let mut cachet = Cachet {
            child,
            port,
            admin_port,
            stderr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = cachet.exited() {
                panic!(
                    "cachet exited while starting ({status}):\n{}",
                    cachet.stderr_tail()
                );
            }
            if let Ok(mut c) = upstream.connect(cachet.addr(), false).await
                && let Ok(Ok(reply)) =
                    tokio::time::timeout(Duration::from_secs(2), c.command(&["PING"])).await
                && &reply[..] == b"+PONG\r\n"
                && cachet
                    .metric("cachet_upstream_pool_reconnects_total")
                    .await
                    .is_some()
            {
                return cachet;
            }
            assert!(
                Instant::now() < deadline,
                "cachet did not become ready:\n{}",
                cachet.stderr_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// What cachet said about its end: panics and aborts, else its last lines.
    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let fatal: Vec<&str> = text
            .lines()
            .filter(|l| {
                ["panicked", "overflowed", "fatal", "ERROR"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .collect();
        let lines: Vec<&str> = match fatal.is_empty() {
            true => text.lines().collect(),
            false => fatal,
        };
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// One metric's value from `/metrics`, or `None` if it cannot be read.
    async fn metric(&self, name: &str) -> Option<f64> {
        let body = tokio::time::timeout(Duration::from_secs(5), async {
            let mut s = TcpStream::connect(("127.0.0.1", self.admin_port))
                .await
                .ok()?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .await
                .ok()?;
            let mut body = Vec::new();
            s.read_to_end(&mut body).await.ok()?;
            Some(String::from_utf8_lossy(&body).into_owned())
        })
        .await
        .ok()??;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

impl Drop for Cachet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ids of the connections cachet's pool holds at Redis.
async fn pool_ids(upstream: &Upstream) -> Vec<String> {
    let list = upstream.command(&["CLIENT", "LIST"]).await;
    let mut ids: Vec<String> = list
        .lines()
        .filter(|l| l.contains(" name=cachet:pool "))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids
}

/// What the connections at Redis last ran (`cmd=` of `CLIENT LIST`), counted, leaving out
/// the ids in `known`: which clients' state a leak left behind.
async fn last_commands(upstream: &Upstream, known: &[String]) -> String {
    let list = upstream.command(&["CLIENT", "LIST"]).await;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for line in list.lines() {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or("?")
        };
        if !line.starts_with("id=") || known.iter().any(|id| id == field("id=")) {
            continue;
        }
        let what = format!(
            "cmd={} sub={} psub={} multi={}",
            field("cmd="),
            field("sub="),
            field("psub="),
            field("multi=")
        );
        *counts.entry(what).or_insert(0) += 1;
    }
    counts
        .iter()
        .map(|(what, n)| format!("\n    {n} x {what}"))
        .collect()
}

async fn client_ids(upstream: &Upstream) -> Vec<String> {
    let list = upstream.command(&["CLIENT", "LIST"]).await;
    list.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect()
}

async fn redis_clients(upstream: &Upstream) -> u64 {
    let info = upstream.command(&["INFO", "clients"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:")?.trim().parse().ok())
        .expect("connected_clients in INFO")
}

// ---- well-behaved clients ----

#[derive(Default)]
struct GoodStats {
    ops: AtomicU64,
    errors: AtomicU64,
    /// Each distinct error (client number left out) and how often it came.
    distinct: Mutex<BTreeMap<String, u64>>,
}

impl GoodStats {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut distinct = self.distinct.lock().unwrap();
        let what = if distinct.len() < 100 {
            what
        } else {
            "(others)".to_owned()
        };
        *distinct.entry(what).or_insert(0) += 1;
    }

    fn summary(&self) -> String {
        let distinct = self.distinct.lock().unwrap();
        let mut lines: Vec<(&u64, &String)> = distinct.iter().map(|(k, v)| (v, k)).collect();
        lines.sort_by(|a, b| b.0.cmp(a.0));
        lines
            .iter()
            .take(8)
            .map(|(n, what)| format!("\n    {n} x {what}"))
            .collect()
    }
}

/// SETs then GETs keys of its own in pipelined batches; every reply must be exactly the one
/// its command gets from Redis. After a wrong reply the connection is replaced, since its
/// stream can no longer be trusted.
async fn good_client(
    upstream: Arc<Upstream>,
    addr: std::net::SocketAddr,
    id: usize,
    stop: Arc<AtomicBool>,
    stats: Arc<GoodStats>,
) {
    let resp3 = id % 2 == 1;
    let mut rng = fastrand::Rng::with_seed(id as u64);
    let mut n = 0u64;
    'connect: while !stop.load(Ordering::Relaxed) {
        let mut conn = match upstream.connect(addr, resp3).await {
            Ok(conn) => conn,
            Err(e) => {
                stats.error(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            let mut batch = Vec::new();
            let mut expect: Vec<Vec<u8>> = Vec::new();
            for _ in 0..rng.usize(1..=16) {
                n += 1;
                let key = format!("good:{id}:{}", n % 1000);
                let mut value = format!("{id}-{n}-").into_bytes();
                value.extend((0..rng.usize(0..200)).map(|_| rng.u8(..)));
                batch.extend(inputs::encode_multibulk(&[
                    b"SET".to_vec(),
                    key.clone().into_bytes(),
                    value.clone(),
                ]));
                batch.extend(inputs::encode_multibulk(&[
                    b"GET".to_vec(),
                    key.into_bytes(),
                ]));
                expect.push(b"+OK\r\n".to_vec());
                let mut bulk = format!("${}\r\n", value.len()).into_bytes();
                bulk.extend(value);
                bulk.extend_from_slice(b"\r\n");
                expect.push(bulk);
            }
            // A breath between batches leaves the cores to the hostile clients and cachet.
            tokio::time::sleep(Duration::from_millis(1)).await;
            if let Err(e) = conn.send_raw(&batch).await {
                stats.error(format!("write: {e}"));
                continue 'connect;
            }
            for want in &expect {
                match conn.read_frame_timeout(REPLY_TIMEOUT).await {
                    Ok(got) if got[..] == want[..] => {
                        stats.ops.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(got) => {
                        stats.error(format!(
                            "wanted {} got {}",
                            if want.starts_with(b"+") {
                                "+OK"
                            } else {
                                "its value"
                            },
                            inputs::escape(&got[..got.len().min(80)])
                        ));
                        continue 'connect;
                    }
                    Err(e) => {
                        stats.error(format!("{e}"));
                        continue 'connect;
                    }
                }
            }
        }
    }
}

// ---- hostile clients ----

#[derive(Default)]
struct HostileStats {
    inputs: AtomicU64,
    bytes: AtomicU64,
    connections: AtomicU64,
    connect_failures: AtomicU64,
    /// The inputs sent on each connection, by its local port: what a session cachet still
    /// holds after its client left was sent.
    by_port: Mutex<HashMap<u16, Vec<u64>>>,
}

/// Client ports of the connections cachet (listening on `port`) still has open, from
/// `/proc/net/tcp`: established, or closed by the client and not yet by cachet (CLOSE_WAIT).
fn open_client_ports(port: u16) -> Vec<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let hex_port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            (hex_port(local)? == port && matches!(*state, "01" | "08")).then(|| hex_port(remote))?
        })
        .collect()
}

/// Sends fuzz inputs, each split into its writes, on fresh connections (sometimes several on
/// one), draining whatever comes back, then hangs up early or late.
async fn hostile_client(
    addr: std::net::SocketAddr,
    seed: u64,
    next: Arc<AtomicU64>,
    only: Option<u64>,
    slot: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    stats: Arc<HostileStats>,
) {
    let mut rng = fastrand::Rng::with_seed(seed ^ slot.load(Ordering::Relaxed));
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = TcpStream::connect(addr).await else {
            stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let port = stream.local_addr().map_or(0, |a| a.port());
        // Ports are reused: only this connection's inputs count for this port now.
        stats.by_port.lock().unwrap().insert(port, Vec::new());
        let (mut reader, mut writer) = stream.into_split();
        let drain = tokio::spawn(async move {
            let mut scratch = vec![0u8; 64 * 1024];
            while let Ok(n) = reader.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        });
        let inputs = if only.is_none() && rng.usize(..4) == 0 {
            rng.usize(2..6)
        } else {
            1
        };
        'inputs: for _ in 0..inputs {
            let index = match only {
                Some(index) => index,
                None => next.fetch_add(1, Ordering::Relaxed),
            };
            slot.store(index, Ordering::Relaxed);
            stats
                .by_port
                .lock()
                .unwrap()
                .entry(port)
                .or_default()
                .push(index);
            let input = inputs::input(seed, index);
            stats.inputs.fetch_add(1, Ordering::Relaxed);
            let send = async {
                for chunk in input.chunks() {
                    writer.write_all(chunk).await?;
                    match rng.usize(..8) {
                        0 => tokio::time::sleep(Duration::from_millis(1)).await,
                        1 => tokio::task::yield_now().await,
                        _ => {}
                    }
                }
                std::io::Result::Ok(())
            };
            // cachet closing on bad input, or not reading a client that sends too much, both
            // end the input early; neither is a finding of this client's.
            match tokio::time::timeout(Duration::from_secs(3), send).await {
                Ok(Ok(())) => stats
                    .bytes
                    .fetch_add(input.bytes.len() as u64, Ordering::Relaxed),
                _ => break 'inputs,
            };
            if only.is_some() {
                stop.store(true, Ordering::Relaxed);
            }
        }
        let linger = Duration::from_millis(*rng.choice(&[0, 5, 50, 200]).unwrap());
        let _ = tokio::time::timeout(linger, drain).await;
    }
}

// ---- one epoch ----

pub struct EpochResult {
    pub findings: Vec<String>,
    pub inputs: u64,
    /// Bytes of the inputs sent in full.
    pub bytes: u64,
    pub connections: u64,
    /// Hostile connections that could not connect.
    pub refused: u64,
    pub good_ops: u64,
    pub rss_base: u64,
    pub rss_max: u64,
    pub secs: f64,
    /// cachet died: what killed it (the stderr line that says, without thread ids) and the
    /// full report. The rest of the run needs a new cachet.
    pub death: Option<(String, String)>,
}

/// RSS growth within 100 ms that gets the inputs in flight named in an RSS finding.
const RSS_CLIMB: u64 = 32 * 1024 * 1024;

fn rss_finding(seed: u64, base: u64, max: u64, climbs: &[(u64, u64, Vec<u64>)]) -> String {
    let mut text = format!(
        "cachet RSS grew from {} MB to {} MB (limit: {} MB growth)",
        base >> 20,
        max >> 20,
        RSS_GROWTH_LIMIT >> 20
    );
    for (from, to, in_flight) in climbs {
        let _ = write!(
            text,
            "\n  {} MB -> {} MB in 100 ms, inputs in flight:",
            from >> 20,
            to >> 20
        );
        for &index in in_flight {
            let input = inputs::input(seed, index);
            let _ = write!(
                text,
                "\n    #{index} {:?}: {}",
                input.kind,
                input.preview(60)
            );
        }
    }
    text
}

/// What a dead cachet's stderr says killed it, the same for every death of the same kind.
fn death_signature(stderr: &str, status: ExitStatus) -> String {
    if stderr.contains("has overflowed its stack") {
        return "stack overflow".to_owned();
    }
    match stderr.lines().find_map(|l| l.split_once(" panicked at ")) {
        Some((_, place)) => format!("panic at {place}"),
        None => status.to_string(),
    }
}

/// Runs hostile and well-behaved clients against a fresh cachet until `deadline` or until
/// cachet dies; then checks what the module doc lists.
pub async fn epoch(
    upstream: &Arc<Upstream>,
    seed: u64,
    next: Arc<AtomicU64>,
    only: Option<u64>,
    deadline: Instant,
) -> EpochResult {
    let mut cachet = Cachet::start(upstream).await;
    let addr = cachet.addr();
    let mut findings = Vec::new();
    let started = Instant::now();

    let stop_good = Arc::new(AtomicBool::new(false));
    let good_stats = Arc::new(GoodStats::default());
    let good: Vec<_> = (0..GOOD)
        .map(|id| {
            tokio::spawn(good_client(
                upstream.clone(),
                addr,
                id,
                stop_good.clone(),
                good_stats.clone(),
            ))
        })
        .collect();
    // Both pool connections (RESP2, RESP3) in use before the baselines are taken.
    let ready = Instant::now();
    while good_stats.ops.load(Ordering::Relaxed) < 100 && ready.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_base = cachet.rss().unwrap_or(0);
    let pool_before = pool_ids(upstream).await;
    let redis_clients_before = redis_clients(upstream).await;
    let ids_before = client_ids(upstream).await;

    let stop_hostile = Arc::new(AtomicBool::new(false));
    let hostile_stats = Arc::new(HostileStats::default());
    // A replay sends its one input once.
    let hostile_count = if only.is_some() { 1 } else { HOSTILE };
    let slots: Vec<Arc<AtomicU64>> = (0..hostile_count)
        .map(|i| Arc::new(AtomicU64::new(u64::MAX - i as u64)))
        .collect();
    let hostile: Vec<_> = slots
        .iter()
        .map(|slot| {
            tokio::spawn(hostile_client(
                addr,
                seed,
                next.clone(),
                only,
                slot.clone(),
                stop_hostile.clone(),
                hostile_stats.clone(),
            ))
        })
        .collect();

    let mut rss_max = rss_base;
    let mut rss_last = rss_base;
    // The steepest RSS climbs, with the inputs in flight then: where growth comes from.
    let mut climbs: Vec<(u64, u64, Vec<u64>)> = Vec::new();
    let mut death = None;
    while Instant::now() < deadline && !stop_hostile.load(Ordering::Relaxed) {
        if let Some(status) = cachet.exited() {
            death = Some(status);
            break;
        }
        let rss = cachet.rss().unwrap_or(0);
        if rss > rss_last + RSS_CLIMB {
            let in_flight = slots
                .iter()
                .map(|s| s.load(Ordering::Relaxed))
                .filter(|&i| i < u64::MAX - 100);
            climbs.push((rss_last, rss, in_flight.collect()));
            climbs.sort_by_key(|(from, to, _)| from.saturating_sub(*to));
            climbs.truncate(3);
        }
        rss_last = rss;
        rss_max = rss_max.max(rss);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What was in flight when cachet died is what most likely killed it.
    let in_flight: Vec<u64> = slots
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .filter(|&i| i < u64::MAX - 100)
        .collect();
    stop_hostile.store(true, Ordering::Relaxed);
    for task in hostile {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let (inputs, connections) = (
        hostile_stats.inputs.load(Ordering::Relaxed),
        hostile_stats.connections.load(Ordering::Relaxed),
    );
    let (bytes, refused) = (
        hostile_stats.bytes.load(Ordering::Relaxed),
        hostile_stats.connect_failures.load(Ordering::Relaxed),
    );

    if let Some(status) = death.or_else(|| cachet.exited()) {
        stop_good.store(true, Ordering::Relaxed);
        let mut text = format!(
            "cachet died ({status}) after {secs:.1} s; stderr:\n{}\ninputs in flight:",
            cachet.stderr_tail()
        );
        for &index in &in_flight {
            let input = inputs::input(seed, index);
            let saved = crate::save_input(seed, index, &input.bytes);
            let _ = write!(
                text,
                "\n  #{index} {:?} {}: {}\n    replay: {}",
                input.kind,
                saved.display(),
                input.preview(80),
                crate::replay("live", seed, Some(index))
            );
        }
        if rss_max.saturating_sub(rss_base) > RSS_GROWTH_LIMIT {
            findings.push(rss_finding(seed, rss_base, rss_max, &climbs));
        }
        let signature = death_signature(
            &std::fs::read_to_string(&cachet.stderr).unwrap_or_default(),
            status,
        );
        return EpochResult {
            findings,
            inputs,
            bytes,
            connections,
            refused,
            good_ops: good_stats.ops.load(Ordering::Relaxed),
            rss_base,
            rss_max,
            secs,
            death: Some((signature, text)),
        };
    }

    // The well-behaved clients run on a moment after the hostile ones stop, to see that
    // cachet still answers them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_good.store(true, Ordering::Relaxed);
    for task in good {
        let _ = tokio::time::timeout(REPLY_TIMEOUT * 2, task).await;
    }
    let good_ops = good_stats.ops.load(Ordering::Relaxed);
    let errors = good_stats.errors.load(Ordering::Relaxed);
    if errors > 0 || good_ops == 0 {
        findings.push(format!(
            "well-behaved clients: {errors} errors in {good_ops} replies:{}",
            good_stats.summary()
        ));
    }
    rss_max = rss_max.max(cachet.rss().unwrap_or(0));
    if rss_max.saturating_sub(rss_base) > RSS_GROWTH_LIMIT {
        findings.push(rss_finding(seed, rss_base, rss_max, &climbs));
    }
    match cachet.metric("cachet_upstream_pool_reconnects_total").await {
        Some(0.0) => {}
        other => findings.push(format!(
            "pool connection broken: cachet_upstream_pool_reconnects_total = {other:?}"
        )),
    }
    let pool_after = pool_ids(upstream).await;
    if !pool_before.iter().all(|id| pool_after.contains(id)) {
        findings.push(format!(
            "pool connection replaced at Redis: ids {pool_before:?} before, {pool_after:?} after"
        ));
    }

    // Every client has gone: their sessions and Redis connections must go too.
    let gone = Instant::now();
    let (mut sessions, mut at_redis) = (None, 0);
    while gone.elapsed() < Duration::from_secs(10) {
        sessions = cachet.metric("cachet_clients_connected").await;
        at_redis = redis_clients(upstream).await;
        if sessions == Some(0.0) && at_redis <= redis_clients_before + SPARE_CONNECTIONS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if sessions != Some(0.0) {
        let mut text = format!(
            "sessions left behind: cachet_clients_connected = {sessions:?} 10 s after every client left; what their clients sent:"
        );
        let by_port = hostile_stats.by_port.lock().unwrap();
        for port in open_client_ports(cachet.port).into_iter().take(5) {
            for &index in by_port.get(&port).into_iter().flatten() {
                let input = inputs::input(seed, index);
                let saved = crate::save_input(seed, index, &input.bytes);
                let _ = write!(
                    text,
                    "\n  port {port}: #{index} {:?} {}: {}\n    replay: {}",
                    input.kind,
                    saved.display(),
                    input.preview(80),
                    crate::replay("live", seed, Some(index))
                );
            }
        }
        findings.push(text);
    }
    if at_redis > redis_clients_before + SPARE_CONNECTIONS {
        findings.push(format!(
            "Redis connections left behind: {at_redis} connected 10 s after every client left, {redis_clients_before} before the hostile clients came (+{SPARE_CONNECTIONS} spare allowed); the new ones last ran:{}",
            last_commands(upstream, &ids_before).await
        ));
    }
    match upstream.connect(addr, false).await {
        Ok(mut c) => match tokio::time::timeout(REPLY_TIMEOUT, c.command(&["PING"])).await {
            Ok(Ok(reply)) if &reply[..] == b"+PONG\r\n" => {}
            other => findings.push(format!("a new client's PING got {other:?}")),
        },
        Err(e) => findings.push(format!("a new client cannot connect: {e}")),
    }
    if let Some(status) = cachet.exited() {
        findings.push(format!(
            "cachet died ({status}) at the end; stderr:\n{}",
            cachet.stderr_tail()
        ));
    }
    EpochResult {
        findings,
        inputs,
        bytes,
        connections,
        refused,
        good_ops,
        rss_base,
        rss_max,
        secs,
        death: None,
    }
}
