//! Failure and limits: upstream crashes, client limits, malformed and oversized input, big
//! pipelines, many clients, idle timeouts, graceful shutdown and a slow upstream.
//!
//! Every test starts its own `redis-server` on a free port and its own cachet in-process.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use support::resp::frame_len;
use support::{Conn, Proxy, RawClient, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn raw(addr: SocketAddr) -> Conn {
    Conn::connect(addr).await.expect("connect")
}

/// Sends `args` and reads the reply, failing the test if none comes within `limit`.
async fn ask(c: &mut Conn, args: &[&str], limit: Duration) -> String {
    c.send(args).await.expect("send");
    let started = Instant::now();
    match c.read_frame_timeout(limit).await {
        Ok(reply) => text(&reply),
        Err(e) => panic!("{args:?}: no reply after {:?}: {e}", started.elapsed()),
    }
}

/// `-ERR upstream ...`: how cachet reports that Redis could not answer.
fn is_upstream_error(reply: &str) -> bool {
    reply.starts_with("-ERR ") && reply.contains("upstream")
}

// ------------------------------------------------------------------------------------------
// Upstream failure
// ------------------------------------------------------------------------------------------

const BEFORE: u8 = 0;
const DOWN: u8 = 1;
const RESTARTED: u8 = 2;
const SETTLED: u8 = 3;

#[derive(Default, Debug)]
struct WorkerReport {
    ok_before: usize,
    errors_down: usize,
    ok_down_writes: usize,
    recovered_after: Option<Duration>,
    errors_settled: Vec<String>,
    commands: usize,
    slowest: Duration,
}

/// Upstream killed under load and restarted on the same port: every command is answered
/// promptly (an `-ERR upstream ...` while it is down, never a hang, never someone else's
/// reply), and the same client connections work again soon after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_load_and_restarted() {
    let mut redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let phase = Arc::new(AtomicU8::new(BEFORE));
    let restarted_at: Arc<std::sync::Mutex<Option<Instant>>> = Default::default();
    let done = Arc::new(AtomicBool::new(false));
    let recovered = Arc::new(AtomicUsize::new(0));

    let mut workers = Vec::new();
    for id in 0..8 {
        let (phase, done, restarted_at) = (phase.clone(), done.clone(), restarted_at.clone());
        let recovered = recovered.clone();
        let addr = proxy.addr;
        workers.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await.expect("connect");
            let mut report = WorkerReport::default();
            let key = format!("load:{id}");
            let mut n = 0u64;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                let value = format!("worker-{id}-value-{n}");
                let sent_in = phase.load(Ordering::SeqCst);
                let started = Instant::now();
                let set = ask(&mut c, &["SET", &key, &value], Duration::from_secs(3)).await;
                let set_latency = started.elapsed();
                let get_started = Instant::now();
                let get = ask(&mut c, &["GET", &key], Duration::from_secs(3)).await;
                let get_latency = get_started.elapsed();
                let now_in = phase.load(Ordering::SeqCst);
                report.commands += 2;
                report.slowest = report.slowest.max(set_latency).max(get_latency);
                assert!(
                    set_latency < Duration::from_secs(2) && get_latency < Duration::from_secs(2),
                    "worker {id}: SET took {set_latency:?}, GET {get_latency:?} (phase {sent_in}->{now_in})"
                );

                let set_ok = match set.as_str() {
                    "+OK\r\n" => true,
                    e if is_upstream_error(e) => false,
                    other => panic!("worker {id}: SET got {other:?}"),
                };
                let expected = format!("${}\r\n{value}\r\n", value.len());
                let get_ok = if get == expected {
                    true
                } else if is_upstream_error(&get) {
                    false
                } else if get == "$-1\r\n" && (sent_in != now_in || !set_ok) {
                    // Redis restarted empty between the SET and the GET, or since our last
                    // successful SET (this one failed).
                    false
                } else if get.starts_with('$') && !set_ok && get.contains(&format!("worker-{id}-")) {
                    // Our own earlier value: the SET failed, the GET did not.
                    false
                } else {
                    panic!(
                        "worker {id}: GET {key} got {get:?}, expected {expected:?} or an upstream \
                         error (SET said {set:?}, phase {sent_in}->{now_in})"
                    );
                };

                match (sent_in, now_in) {
                    (BEFORE, BEFORE) if set_ok && get_ok => report.ok_before += 1,
                    (DOWN, DOWN) => {
                        if set_ok {
                            report.ok_down_writes += 1;
                        } else {
                            report.errors_down += 1;
                        }
                    }
                    (RESTARTED, _) | (SETTLED, _) if set_ok && get_ok
                        && report.recovered_after.is_none() => {
                            let at = restarted_at.lock().unwrap().expect("restart time");
                            report.recovered_after = Some(at.elapsed());
                            recovered.fetch_add(1, Ordering::SeqCst);
                        }
                    _ => {}
                }
                if sent_in == SETTLED && !(set_ok && get_ok) {
                    report.errors_settled.push(format!("SET {set:?} GET {get:?}"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The very same connection is still usable.
            assert_eq!(ask(&mut c, &["PING"], Duration::from_secs(2)).await, "+PONG\r\n");
            report
        }));
    }

    tokio::time::sleep(Duration::from_millis(800)).await;
    tokio::task::block_in_place(|| redis.stop());
    phase.store(DOWN, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    *restarted_at.lock().unwrap() = Some(Instant::now());
    phase.store(RESTARTED, Ordering::SeqCst);
    tokio::task::block_in_place(|| redis.restart());

    // Wait (at most 5 s) until every worker has seen success again, then demand only success.
    let recovery_deadline = Instant::now() + Duration::from_secs(5);
    while recovered.load(Ordering::SeqCst) < 8 && Instant::now() < recovery_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    phase.store(SETTLED, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    done.store(true, Ordering::SeqCst);

    let mut reports = Vec::new();
    for w in workers {
        reports.push(
            tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("worker hung")
                .expect("worker failed"),
        );
    }
    for (id, r) in reports.iter().enumerate() {
        assert!(
            r.ok_before > 0,
            "worker {id} never succeeded before the crash: {r:?}"
        );
        assert!(
            r.errors_down > 0,
            "worker {id} saw no error while Redis was down: {r:?}"
        );
        assert_eq!(
            r.ok_down_writes, 0,
            "worker {id}: a SET succeeded with Redis down: {r:?}"
        );
        let recovered = r
            .recovered_after
            .unwrap_or_else(|| panic!("worker {id} never recovered: {r:?}"));
        assert!(
            recovered < Duration::from_secs(5),
            "worker {id} recovered after {recovered:?}"
        );
        assert!(
            r.errors_settled.is_empty(),
            "worker {id} failed after recovery: {r:?}"
        );
    }
    drop(proxy);
    drop(redis);
}

/// Waits until a PING through `c` gets PONG again (cachet reconnected to Redis).
async fn wait_pong(c: &mut Conn) {
    for _ in 0..50 {
        if ask(c, &["PING"], Duration::from_secs(3)).await == "+PONG\r\n" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cachet never served PING again");
}

/// EXEC in flight on the client's dedicated connection when Redis dies: the client gets an
/// `-ERR upstream ...` reply promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_exec_in_flight_when_upstream_dies() {
    let mut redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = Proxy::start(&redis.url()).await;
    let limit = Duration::from_secs(3);
    let mut c = raw(proxy.addr).await;
    assert_eq!(ask(&mut c, &["MULTI"], limit).await, "+OK\r\n");
    assert_eq!(
        ask(&mut c, &["SET", "tx:k", "v"], limit).await,
        "+QUEUED\r\n"
    );
    assert_eq!(
        ask(&mut c, &["DEBUG", "SLEEP", "2"], limit).await,
        "+QUEUED\r\n"
    );
    c.send(&["EXEC"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    tokio::task::block_in_place(|| redis.stop());
    let reply = c
        .read_frame_timeout(Duration::from_secs(2))
        .await
        .expect("no reply to the in-flight EXEC");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        is_upstream_error(&text(&reply)),
        "in-flight EXEC: {:?}",
        text(&reply)
    );
}

/// A client inside MULTI (dedicated connection) when Redis dies gets an error for its EXEC
/// (sent while Redis is down), promptly, and can carry on once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_client_gets_error_when_upstream_dies() {
    // The client's transaction lived on its dedicated connection; when Redis dies that state
    // is gone. cachet must not let EXEC succeed nor run the queued SET elsewhere: it closes
    // the client's connection (as Redis dying would), and a new connection works once Redis
    // is back.
    let mut redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let limit = Duration::from_secs(3);

    let mut a = raw(proxy.addr).await;
    assert_eq!(ask(&mut a, &["MULTI"], limit).await, "+OK\r\n");
    assert_eq!(
        ask(&mut a, &["SET", "tx:a", "v"], limit).await,
        "+QUEUED\r\n"
    );
    tokio::task::block_in_place(|| redis.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    a.send(&["EXEC"]).await.ok();
    match a.read_frame_timeout(limit).await {
        Ok(reply) => {
            let reply = String::from_utf8_lossy(&reply).into_owned();
            assert!(is_upstream_error(&reply), "EXEC with Redis down: {reply:?}");
        }
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "EXEC with Redis down neither errored nor closed: {e}"
        ),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "EXEC took {:?}",
        started.elapsed()
    );

    tokio::task::block_in_place(|| redis.restart());
    let mut b = raw(proxy.addr).await;
    wait_pong(&mut b).await;
    assert_eq!(ask(&mut b, &["EXISTS", "tx:a"], limit).await, ":0\r\n");
    assert_eq!(
        ask(&mut b, &["SET", "tx:after", "1"], limit).await,
        "+OK\r\n"
    );
}

/// Redis dies and comes back between MULTI and EXEC: the transaction is gone, so EXEC must
/// not succeed, and its queued commands must not be replayed on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_not_replayed_after_upstream_restart() {
    let mut redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let limit = Duration::from_secs(3);

    let mut b = raw(proxy.addr).await;
    assert_eq!(ask(&mut b, &["MULTI"], limit).await, "+OK\r\n");
    assert_eq!(
        ask(&mut b, &["SET", "tx:b", "v"], limit).await,
        "+QUEUED\r\n"
    );
    tokio::task::block_in_place(|| redis.restart());
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.send(&["EXEC"]).await.ok();
    // An error reply, or the connection closed: either way, not a success.
    match b.read_frame_timeout(limit).await {
        Ok(reply) => assert!(
            reply.starts_with(b"-"),
            "EXEC after the transaction's connection died: {:?}",
            text(&reply)
        ),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "EXEC hung"),
    }
    let mut direct = raw(redis.addr()).await;
    assert_eq!(
        direct.text(&["EXISTS", "tx:b"]).await,
        ":0\r\n",
        "a queued SET was replayed"
    );
    // cachet itself is fine.
    let mut c = raw(proxy.addr).await;
    wait_pong(&mut c).await;
}

// ------------------------------------------------------------------------------------------
// Limits
// ------------------------------------------------------------------------------------------

/// Once cachet answers its first PING, every client is served: no `-ERR upstream
/// unavailable` from a pooled connection that is still starting while Redis is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_served_right_after_startup() {
    let redis = RedisServer::start();
    for round in 0..10 {
        let proxy = Proxy::start(&redis.url()).await;
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(raw(proxy.addr).await);
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let reply = ask(
                c,
                &["SET", &format!("startup:{round}:{i}"), "v"],
                Duration::from_secs(3),
            )
            .await;
            assert_eq!(reply, "+OK\r\n", "round {round}, client {i}");
        }
        drop(clients);
        assert!(proxy.shutdown().await.is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_refuses_the_sixth() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |cfg| cfg.proxy.max_clients = 5).await;
    // Let cachet notice the readiness probe's connection is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let limit = Duration::from_secs(2);

    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = raw(proxy.addr).await;
        assert_eq!(
            ask(&mut c, &["PING"], limit).await,
            "+PONG\r\n",
            "client {i}"
        );
        clients.push(c);
    }
    let mut sixth = raw(proxy.addr).await;
    let reply = sixth
        .read_frame_timeout(limit)
        .await
        .expect("the sixth client is told why");
    assert_eq!(text(&reply), "-ERR max number of clients reached\r\n");
    assert!(
        sixth.closed_within(limit).await,
        "the sixth client is closed"
    );

    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            ask(c, &["SET", &format!("mc:{i}"), "v"], limit).await,
            "+OK\r\n",
            "client {i}"
        );
    }

    drop(clients.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut replacement = loop {
        let mut c = raw(proxy.addr).await;
        c.send(&["PING"]).await.ok();
        match c.read_frame_timeout(limit).await {
            Ok(r) if &r[..] == b"+PONG\r\n" => break c,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no slot freed after a client left: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(
        ask(&mut replacement, &["GET", "mc:0"], limit).await,
        "$1\r\nv\r\n"
    );

    // Full again.
    let mut extra = raw(proxy.addr).await;
    let reply = extra.read_frame_timeout(limit).await.expect("refusal");
    assert_eq!(text(&reply), "-ERR max number of clients reached\r\n");
    for c in clients.iter_mut() {
        assert_eq!(ask(c, &["PING"], limit).await, "+PONG\r\n");
    }
}

/// What a server says to `input` on a fresh connection: the first reply (if any within 1 s)
/// and whether it then closed the connection.
async fn probe(addr: SocketAddr, input: &[u8]) -> (Option<String>, bool) {
    let mut c = raw(addr).await;
    c.send_raw(input).await.expect("send");
    let reply = c
        .read_frame_timeout(Duration::from_secs(1))
        .await
        .ok()
        .map(|r| text(&r));
    let closed = c.closed_within(Duration::from_secs(1)).await;
    (reply, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_resp_is_refused_like_redis() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut other = raw(proxy.addr).await;
    assert_eq!(other.text(&["SET", "mal:k", "v"]).await, "+OK\r\n");

    let cases: &[&[u8]] = &[
        b"*1\r\n:5\r\n",
        b"*x\r\n",
        b"$3\r\n",
        b"SET \"a b\r\n",
        b"GET 'a\r\n",
        b"*1\r\n$x\r\n",
        b"*1\r\n$-5\r\n",
        b"*2\r\n$3\r\nGET\r\n+k\r\n",
        b"*3000000000\r\n",
        b"*1\r\n$600000000\r\n",
        b"*x\r\n*3\r\n$3\r\nSET\r\n$7\r\nmal:new\r\n$1\r\n1\r\n",
    ];
    for input in cases {
        let (direct_reply, direct_closed) = probe(redis.addr(), input).await;
        let (proxy_reply, proxy_closed) = probe(proxy.addr, input).await;
        let shown = text(input);
        assert_eq!(proxy_reply, direct_reply, "reply to {shown:?}");
        assert_eq!(
            proxy_closed, direct_closed,
            "closed after {shown:?} (reply {direct_reply:?})"
        );
        if let Some(r) = &direct_reply
            && r.starts_with("-ERR Protocol error")
        {
            assert!(direct_closed, "Redis closes after a protocol error");
        }
        // Everybody else is unaffected.
        assert_eq!(
            other.text(&["GET", "mal:k"]).await,
            "$1\r\nv\r\n",
            "after {shown:?}"
        );
    }
    // The command after a protocol error in the same write never ran.
    assert_eq!(other.text(&["EXISTS", "mal:new"]).await, ":0\r\n");
    // The cases that must be protocol errors are.
    for (input, message) in [
        (
            &b"*1\r\n:5\r\n"[..],
            "-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"*x\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"SET \"a b\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            b"*1\r\n$x\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
    ] {
        let (reply, closed) = probe(proxy.addr, input).await;
        assert_eq!(reply.as_deref(), Some(message), "{:?}", text(input));
        assert!(closed, "{:?}", text(input));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bulk_is_refused_before_its_body() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |cfg| cfg.proxy.max_bulk_len = 1024).await;
    let limit = Duration::from_secs(1);

    // Exactly the limit is fine.
    let mut ok = raw(proxy.addr).await;
    let value = "v".repeat(1024);
    assert_eq!(
        ask(&mut ok, &["SET", "big:ok", &value], limit).await,
        "+OK\r\n"
    );

    // A 2,000-byte bulk header is refused at once, before any body is sent.
    let mut c = raw(proxy.addr).await;
    c.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n")
        .await
        .unwrap();
    let reply = c
        .read_frame_timeout(limit)
        .await
        .expect("refused without waiting for the body");
    assert_eq!(text(&reply), "-ERR Protocol error: invalid bulk length\r\n");
    assert!(c.closed_within(limit).await, "closed after the refusal");

    // Also as the command name.
    let mut c = raw(proxy.addr).await;
    c.send_raw(b"*1\r\n$1025\r\n").await.unwrap();
    let reply = c.read_frame_timeout(limit).await.expect("refused");
    assert_eq!(text(&reply), "-ERR Protocol error: invalid bulk length\r\n");
    assert!(c.closed_within(limit).await);

    assert_eq!(
        ask(&mut ok, &["STRLEN", "big:ok"], limit).await,
        ":1024\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_config_accepts_a_1mb_value() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let value: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let mut c = raw(proxy.addr).await;
    let reply = c.command(&[&b"SET"[..], b"big:1mb", &value]).await.unwrap();
    assert_eq!(text(&reply), "+OK\r\n");
    let reply = c.command(&["GET", "big:1mb"]).await.unwrap();
    let mut expected = format!("${}\r\n", value.len()).into_bytes();
    expected.extend_from_slice(&value);
    expected.extend_from_slice(b"\r\n");
    assert!(
        reply[..] == expected[..],
        "1 MB value came back different ({} bytes)",
        reply.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_array_is_refused() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |cfg| cfg.proxy.max_array_len = 8).await;
    let limit = Duration::from_secs(1);

    let mut ok = raw(proxy.addr).await;
    assert_eq!(
        ask(&mut ok, &["DEL", "a", "b", "c", "d", "e", "f", "g"], limit).await,
        ":0\r\n"
    );

    let mut c = raw(proxy.addr).await;
    c.send_raw(b"*9\r\n").await.unwrap();
    let reply = c.read_frame_timeout(limit).await.expect("refused at once");
    assert_eq!(
        text(&reply),
        "-ERR Protocol error: invalid multibulk length\r\n"
    );
    assert!(c.closed_within(limit).await);

    let mut c = raw(proxy.addr).await;
    c.send(&["DEL", "a", "b", "c", "d", "e", "f", "g", "h"])
        .await
        .unwrap();
    let reply = c.read_frame_timeout(limit).await.expect("refused");
    assert_eq!(
        text(&reply),
        "-ERR Protocol error: invalid multibulk length\r\n"
    );
    assert!(c.closed_within(limit).await);

    assert_eq!(ask(&mut ok, &["PING"], limit).await, "+PONG\r\n");
}

// ------------------------------------------------------------------------------------------
// Volume
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_of_10000_in_one_write() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut input = Vec::new();
    for i in 0..10_000 {
        if i % 2 == 0 {
            input.extend(RawClient::encode(&[
                "SET".to_owned(),
                format!("pl:{i}"),
                format!("v{i}"),
            ]));
        } else {
            input.extend(RawClient::encode(&[
                "GET".to_owned(),
                format!("pl:{}", i - 1),
            ]));
        }
    }
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    // One write, from its own task so that reading replies never waits on it.
    let writer = tokio::spawn(async move {
        wr.write_all(&input).await.unwrap();
        wr
    });
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut got: Vec<Bytes> = Vec::with_capacity(10_000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 10_000 {
        while let Some(n) = frame_len(&buf).expect("valid reply") {
            got.push(buf.split_to(n).freeze());
        }
        if got.len() == 10_000 {
            break;
        }
        let n = tokio::time::timeout_at(deadline, rd.read_buf(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("only {} of 10,000 replies", got.len()))
            .unwrap();
        assert!(n > 0, "closed after {} replies", got.len());
    }
    let _wr = writer.await.unwrap();
    for (i, reply) in got.iter().enumerate() {
        let expected = if i % 2 == 0 {
            "+OK\r\n".to_owned()
        } else {
            let v = format!("v{}", i - 1);
            format!("${}\r\n{v}\r\n", v.len())
        };
        assert_eq!(text(reply), expected, "reply {i}");
    }
    assert!(buf.is_empty(), "extra bytes after the last reply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_clients() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let addr = proxy.addr;
    const N: usize = 1000;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for i in 0..N {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await.expect("connect");
            barrier.wait().await;
            let limit = Duration::from_secs(20);
            let key = format!("many:{i}");
            let value = format!("value-of-{i}");
            assert_eq!(ask(&mut c, &["SET", &key, &value], limit).await, "+OK\r\n");
            assert_eq!(
                ask(&mut c, &["GET", &key], limit).await,
                format!("${}\r\n{value}\r\n", value.len())
            );
            let n = ask(&mut c, &["INCR", "many:counter"], limit).await;
            assert!(n.starts_with(':'), "{n}");
            assert_eq!(
                ask(&mut c, &["APPEND", &key, "!"], limit).await,
                format!(":{}\r\n", value.len() + 1)
            );
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("hung")
                .expect("client failed"),
        );
    }
    let mut c = raw(addr).await;
    assert_eq!(
        c.text(&["GET", "many:counter"]).await,
        format!("${}\r\n{N}\r\n", N.to_string().len())
    );
    assert_eq!(c.text(&["DBSIZE"]).await, format!(":{}\r\n", N + 1));
    drop(clients);
}

// ------------------------------------------------------------------------------------------
// Timeouts and shutdown
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_spares_blocked_clients() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |cfg| cfg.proxy.client_idle_timeout_secs = 1).await;
    let limit = Duration::from_secs(5);

    let mut idle = raw(proxy.addr).await;
    assert_eq!(ask(&mut idle, &["PING"], limit).await, "+PONG\r\n");
    let mut blocked = raw(proxy.addr).await;
    blocked.send(&["BLPOP", "idle:q", "3"]).await.unwrap();
    let started = Instant::now();
    let mut busy = raw(proxy.addr).await;

    // The idle client is not closed early...
    assert!(
        !idle.closed_within(Duration::from_millis(700)).await,
        "closed well before 1 s"
    );
    // ...but is closed soon after 1 s, while a client that keeps talking stays.
    for _ in 0..5 {
        assert_eq!(ask(&mut busy, &["PING"], limit).await, "+PONG\r\n");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        idle.closed_within(Duration::from_millis(1500)).await,
        "idle client not closed after ~1 s"
    );
    let idle_closed_after = started.elapsed();
    assert!(
        idle_closed_after < Duration::from_secs(3),
        "idle closed after {idle_closed_after:?}"
    );

    // The blocked client gets its timeout reply after 3 s and is still connected.
    let reply = blocked
        .read_frame_timeout(Duration::from_secs(5))
        .await
        .expect("BLPOP reply (client closed while blocked?)");
    assert_eq!(text(&reply), "*-1\r\n");
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "BLPOP returned after {:?}",
        started.elapsed()
    );
    assert_eq!(ask(&mut blocked, &["PING"], limit).await, "+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_in_flight_replies() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = Proxy::start_with(&redis.url(), |cfg| cfg.proxy.shutdown_grace_ms = 5_000).await;
    let addr = proxy.addr;
    let limit = Duration::from_secs(3);

    let mut idle = raw(addr).await;
    assert_eq!(ask(&mut idle, &["PING"], limit).await, "+PONG\r\n");
    let mut blocked = raw(addr).await;
    blocked.send(&["BLPOP", "sd:none", "1"]).await.unwrap();
    // Let the BLPOP reach Redis on its dedicated connection before Redis is put to sleep.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sleeper = raw(addr).await;
    sleeper.send(&["DEBUG", "SLEEP", "0.5"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let shutdown = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(150)).await;

    // No new client is served once shutdown has begun.
    match tokio::time::timeout(Duration::from_secs(1), Conn::connect(addr)).await {
        Err(_) | Ok(Err(_)) => {}
        Ok(Ok(mut late)) => {
            let _ = late.send(&["PING"]).await;
            let reply = late.read_frame_timeout(Duration::from_millis(500)).await;
            assert!(
                reply.is_err(),
                "a client connecting during shutdown was served: {reply:?}"
            );
        }
    }

    let reply = sleeper
        .read_frame_timeout(limit)
        .await
        .expect("in-flight DEBUG SLEEP reply");
    assert_eq!(text(&reply), "+OK\r\n");
    let reply = blocked
        .read_frame_timeout(limit)
        .await
        .expect("in-flight BLPOP reply");
    assert_eq!(text(&reply), "*-1\r\n");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "BLPOP cut short after {:?}",
        started.elapsed()
    );

    let result = tokio::time::timeout(Duration::from_secs(4), shutdown)
        .await
        .expect("shutdown waited for more than the in-flight replies")
        .expect("shutdown task");
    assert!(result.is_ok(), "run returned {result:?}");
    for c in [&mut idle, &mut blocked, &mut sleeper] {
        assert!(
            c.closed_within(Duration::from_secs(1)).await,
            "client left open after shutdown"
        );
    }
    let err = tokio::net::TcpStream::connect(addr).await.err();
    assert_eq!(
        err.map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused),
        "connections after shutdown must be refused"
    );
}

/// A command that shutdown catches while it waits for its dedicated connection (no spare
/// connection, and Redis busy so the new one's handshake is slow) is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_command_waiting_for_dedicated_connection() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = Proxy::start_with(&redis.url(), |cfg| {
        cfg.proxy.shutdown_grace_ms = 5_000;
        cfg.upstream.spare_connections = 0;
    })
    .await;
    let limit = Duration::from_secs(3);
    let mut sleeper = raw(proxy.addr).await;
    sleeper.send(&["DEBUG", "SLEEP", "0.5"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut blocked = raw(proxy.addr).await;
    blocked.send(&["BLPOP", "sd:none", "0.2"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let shutdown = tokio::spawn(proxy.shutdown());
    let reply = sleeper
        .read_frame_timeout(limit)
        .await
        .expect("in-flight DEBUG SLEEP reply");
    assert_eq!(text(&reply), "+OK\r\n");
    let reply = blocked
        .read_frame_timeout(limit)
        .await
        .expect("reply to the BLPOP sent before shutdown");
    assert_eq!(text(&reply), "*-1\r\n");
    let result = tokio::time::timeout(Duration::from_secs(4), shutdown)
        .await
        .expect("shutdown hung")
        .expect("shutdown task");
    assert!(result.is_ok(), "run returned {result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_times_out_and_recovers() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = Proxy::start_with(&redis.url(), |cfg| cfg.upstream.command_timeout_ms = 300).await;
    let limit = Duration::from_secs(3);
    let mut c = raw(proxy.addr).await;
    assert_eq!(
        ask(&mut c, &["SET", "slow:k", "val"], limit).await,
        "+OK\r\n"
    );

    let started = Instant::now();
    let reply = ask(&mut c, &["DEBUG", "SLEEP", "1"], limit).await;
    let took = started.elapsed();
    assert!(
        is_upstream_error(&reply),
        "DEBUG SLEEP 1 with a 300 ms timeout: {reply:?}"
    );
    assert!(
        took < Duration::from_millis(900),
        "timeout reported after {took:?}"
    );

    // The late +OK of DEBUG SLEEP must never be taken as the reply to anything else, and
    // the proxy serves again once Redis is responsive.
    let deadline = started + Duration::from_secs(4);
    let mut recovered = None;
    while Instant::now() < deadline {
        let t = Instant::now();
        let reply = ask(&mut c, &["GET", "slow:k"], limit).await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "GET took {:?}",
            t.elapsed()
        );
        match reply.as_str() {
            "$3\r\nval\r\n" => {
                recovered.get_or_insert(started.elapsed());
            }
            r if is_upstream_error(r) => {
                assert!(recovered.is_none(), "error after recovery: {r:?}")
            }
            r => panic!("GET slow:k got {r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = recovered.expect("never served again after the timeout");
    assert!(
        recovered < Duration::from_secs(3),
        "served again only after {recovered:?}"
    );
    let mut other = raw(proxy.addr).await;
    assert_eq!(
        ask(&mut other, &["GET", "slow:k"], limit).await,
        "$3\r\nval\r\n"
    );
}
