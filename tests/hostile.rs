//! Hostile input on the request path (issue 13): what a client sends can neither crash
//! cachet, nor break the shared connection to Redis, nor make cachet buffer without bound,
//! nor stall the other clients. Each test has a well-behaved client beside the hostile one
//! where the harm would fall on others.
//!
//! Every test starts its own `redis-server` on a free port and its own cachet in-process.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{Conn, Proxy, RawClient, RedisServer};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A well-behaved client: SET and GET of its own keys until `stop`, checking each reply.
/// Returns (commands, wrong or error replies, the slowest reply).
async fn neighbour(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    password: Option<&str>,
) -> (usize, Vec<String>, Duration) {
    let mut c = Conn::connect(addr).await.expect("connect");
    if let Some(password) = password {
        assert_eq!(c.text(&["AUTH", password]).await, "+OK\r\n");
    }
    let (mut commands, mut wrong, mut slowest) = (0, Vec::new(), Duration::ZERO);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let (key, value) = (format!("neighbour:{i}"), format!("v{i}"));
        for (args, expected) in [
            (vec!["SET", &key, &value], "+OK\r\n".to_owned()),
            (
                vec!["GET", &key],
                format!("${}\r\n{value}\r\n", value.len()),
            ),
        ] {
            let started = Instant::now();
            c.send(&args).await.expect("send");
            match c.read_frame_timeout(Duration::from_secs(10)).await {
                Ok(reply) if text(&reply) == expected => {}
                Ok(reply) => wrong.push(text(&reply)),
                Err(e) => {
                    wrong.push(format!("no reply: {e}"));
                    return (commands, wrong, slowest);
                }
            }
            slowest = slowest.max(started.elapsed());
            commands += 1;
        }
    }
    (commands, wrong, slowest)
}

/// A running [`neighbour`] and the flag that stops it.
type Neighbour = (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<(usize, Vec<String>, Duration)>,
);

async fn start_neighbour(addr: std::net::SocketAddr, password: Option<&'static str>) -> Neighbour {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(neighbour(addr, stop.clone(), password));
    // Let it get going before the hostile client starts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    (stop, task)
}

async fn stop_neighbour((stop, task): Neighbour) -> (usize, Duration) {
    stop.store(true, Ordering::Relaxed);
    let (commands, wrong, slowest) = task.await.expect("neighbour");
    assert!(
        wrong.is_empty(),
        "the well-behaved client got {} wrong replies: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(commands > 0, "the well-behaved client ran no command");
    (commands, slowest)
}

/// Finding 1: a 1 MB SET followed, in the same stream, by a million `*1` headers aborted
/// cachet (stack overflow in a recursive decode). A request is an array of bulk strings: the
/// first nested header is a protocol error, in Redis's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_arrays_are_a_protocol_error_not_a_crash() {
    for password in [false, true] {
        let redis = match password {
            true => RedisServer::start_with(&["--requirepass", "pw"]),
            false => RedisServer::start(),
        };
        let proxy = Proxy::start_with(&redis.url(), |c| {
            if password {
                c.upstream.password = Some(cachet::config::Secret::new("pw"));
            }
        })
        .await;
        let mut attack = RawClient::encode(&["SET", "k", &"v".repeat(1_000_000)]);
        attack.extend(std::iter::repeat_n(&b"*1\r\n"[..], 1_000_000).flatten());
        let mut hostile = Conn::connect(proxy.addr).await.unwrap();
        hostile.send_raw(&attack).await.ok();
        let first = text(&hostile.read_frame().await.expect("a reply"));
        if password {
            // Not authenticated: the 1 MB bulk is refused at its header, as Redis does.
            assert_eq!(
                first,
                "-ERR Protocol error: unauthenticated bulk length\r\n"
            );
        } else {
            assert_eq!(first, "+OK\r\n");
            let second = text(&hostile.read_frame().await.expect("a reply"));
            assert_eq!(second, "-ERR Protocol error: expected '$', got '*'\r\n");
        }
        assert!(hostile.closed_within(Duration::from_secs(5)).await);
        let mut other = Conn::connect(proxy.addr).await.unwrap();
        if password {
            assert_eq!(other.text(&["AUTH", "pw"]).await, "+OK\r\n");
        }
        assert_eq!(
            other.text(&["PING"]).await,
            "+PONG\r\n",
            "cachet still serves"
        );
        proxy.shutdown().await.unwrap();
    }
}

/// Finding 3: lengths Redis refuses were forwarded raw; Redis then closed the pooled
/// connection and every client's commands in flight failed. Now they are refused by cachet
/// with Redis's wording, and nothing reaches the shared connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lengths_redis_refuses_never_reach_the_shared_connection() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let mut probe = Conn::connect(redis.addr()).await.unwrap();
    let connections_before = connections_received(&mut probe).await;
    let neighbour = start_neighbour(proxy.addr, None).await;
    let cases: [(&[u8], &str); 6] = [
        (b"*1\r\n$04\r\nPING\r\n", "invalid bulk length"),
        (b"*1\r\n$+4\r\nPING\r\n", "invalid bulk length"),
        (b"*01\r\n$4\r\nPING\r\n", "invalid multibulk length"),
        (b"*+1\r\n$4\r\nPING\r\n", "invalid multibulk length"),
        (
            b"*2\r\n$3\r\nGET\r\n*1\r\n$1\r\nk\r\n",
            "expected '$', got '*'",
        ),
        (
            b"*2\r\n$3\r\nGET\r\n$1\r\nkXY",
            "expected CRLF after a bulk string",
        ),
    ];
    for round in 0..10 {
        for (frame, error) in cases {
            let mut hostile = Conn::connect(proxy.addr).await.unwrap();
            // A good command first, so the bad frame would share a batch with it.
            let mut bytes = RawClient::encode(&["SET", &format!("h{round}"), "1"]);
            bytes.extend_from_slice(frame);
            hostile.send_raw(&bytes).await.unwrap();
            assert_eq!(text(&hostile.read_frame().await.unwrap()), "+OK\r\n");
            let reply = text(&hostile.read_frame().await.unwrap());
            assert_eq!(reply, format!("-ERR Protocol error: {error}\r\n"));
            assert!(hostile.closed_within(Duration::from_secs(5)).await);
        }
    }
    stop_neighbour(neighbour).await;
    let connections_after = connections_received(&mut probe).await;
    assert_eq!(
        connections_before, connections_after,
        "cachet opened new connections to Redis: a pooled one was broken"
    );
}

/// Redis's `total_connections_received`: it moves when cachet opens a connection.
async fn connections_received(redis: &mut Conn) -> String {
    text(&redis.command(&["INFO", "stats"]).await.unwrap())
        .lines()
        .find_map(|l| {
            l.strip_prefix("total_connections_received:")
                .map(str::to_owned)
        })
        .unwrap()
}

/// Finding 5: with `upstream.password` set, an unauthenticated client streamed 200 MB into
/// cachet's memory. Redis refuses an unauthenticated client's multibulk over 10 elements and
/// bulk over 16 KiB, at the header; so does cachet. After AUTH the limits are the usual ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_clients_get_redis_limits() {
    let redis = RedisServer::start_with(&["--requirepass", "pw"]);
    let proxy = Proxy::start_with(&redis.url(), |c| {
        c.upstream.password = Some(cachet::config::Secret::new("pw"));
    })
    .await;
    let mut hostile = Conn::connect(proxy.addr).await.unwrap();
    hostile
        .send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$200000000\r\n")
        .await
        .unwrap();
    // Refused before any of the body is sent.
    let reply = text(&hostile.read_frame().await.unwrap());
    assert_eq!(
        reply,
        "-ERR Protocol error: unauthenticated bulk length\r\n"
    );
    assert!(hostile.closed_within(Duration::from_secs(5)).await);

    let mut hostile = Conn::connect(proxy.addr).await.unwrap();
    let many: Vec<String> = (0..11).map(|i| format!("k{i}")).collect();
    hostile.send(&many).await.unwrap();
    let reply = text(&hostile.read_frame().await.unwrap());
    assert_eq!(
        reply,
        "-ERR Protocol error: unauthenticated multibulk length\r\n"
    );

    // Within the limits an unauthenticated client is answered as Redis would.
    let mut c = Conn::connect(proxy.addr).await.unwrap();
    let reply = c.text(&["SET", "k", &"v".repeat(16 * 1024)]).await;
    assert!(reply.starts_with("-NOAUTH"), "{reply}");
    assert_eq!(c.text(&["AUTH", "pw"]).await, "+OK\r\n");
    let big = "v".repeat(1 << 20);
    assert_eq!(c.text(&["SET", "big", &big]).await, "+OK\r\n");
    let keys: Vec<String> = std::iter::once("DEL".to_owned())
        .chain((0..100).map(|i| format!("k{i}")))
        .collect();
    assert_eq!(
        c.text(&keys.iter().map(String::as_str).collect::<Vec<_>>())
            .await,
        ":0\r\n"
    );
}

/// Finding 9: one 21 MB command of 3 million arguments stalled every client for over a
/// second: each read re-walked the whole unfinished request. It is now checked as it
/// arrives, once; the other clients' replies stay prompt while it streams in.
///
/// A timing on a shared 2-core machine: one attempt can meet a stall that is not cachet's
/// (page writeback after a build, another process), so the best of three attempts is judged.
/// The regression this guards against (about 200 ms each time, over a second before that)
/// fails all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_command_does_not_stall_other_clients() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    // A SET with 3 million arguments: about 21 MB, arriving over many reads. Redis refuses
    // it once it has read it all, so what the neighbour waits for is the reading.
    let mut args = vec!["SET".to_owned()];
    args.extend((0..3_000_000).map(|i| format!("{i:x}")));
    let command = RawClient::encode(&args);
    assert!(command.len() > 20_000_000, "{} bytes", command.len());
    drop(args);
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let neighbour = start_neighbour(proxy.addr, None).await;
        let mut big = Conn::connect(proxy.addr).await.unwrap();
        let started = Instant::now();
        for piece in command.chunks(256 * 1024) {
            big.send_raw(piece).await.unwrap();
        }
        let reply = text(
            &big.read_frame_timeout(Duration::from_secs(60))
                .await
                .unwrap(),
        );
        assert_eq!(reply, "-ERR syntax error\r\n");
        let took = started.elapsed();
        let (commands, slowest) = stop_neighbour(neighbour).await;
        eprintln!("neighbour: {commands} commands, slowest {slowest:?}; the big one took {took:?}");
        attempts.push(slowest);
        // Directly against Redis the neighbour waits about 45 ms (Redis reads 21 MB). Before
        // the fix it waited about 200 ms here (the command held the shared connection at
        // Redis, and was re-walked on every read), 40-70 ms since.
        if slowest < Duration::from_millis(150) {
            return;
        }
    }
    panic!("a neighbour waited {attempts:?} in three attempts: each over 150 ms");
}

/// The input of all clients together has a cap (`proxy.max_query_buffer_total`): a client
/// whose unfinished request would pass it is told so and closed; its share is given back;
/// small requests of other clients are never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_buffers_of_all_clients_are_capped() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| {
        c.proxy.max_query_buffer_total = 1 << 20;
    })
    .await;
    let mut holder = Conn::connect(proxy.addr).await.unwrap();
    // An unfinished 700 KB SET: within the cap, so it waits for the rest.
    holder
        .send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$700000\r\n")
        .await
        .unwrap();
    holder.send_raw(&vec![b'x'; 600_000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut small = Conn::connect(proxy.addr).await.unwrap();
    assert_eq!(small.text(&["SET", "s", "1"]).await, "+OK\r\n");
    // A second big one passes the cap: that client is refused and closed.
    let mut second = Conn::connect(proxy.addr).await.unwrap();
    second
        .send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$700000\r\n")
        .await
        .unwrap();
    second.send_raw(&vec![b'x'; 500_000]).await.ok();
    let reply = text(&second.read_frame().await.unwrap());
    assert!(
        reply.starts_with("-ERR cachet's buffers for requests of all clients are full"),
        "{reply}"
    );
    assert!(second.closed_within(Duration::from_secs(5)).await);
    assert_eq!(small.text(&["GET", "s"]).await, "$1\r\n1\r\n");
    // The second's share was given back: the first finishes its command, and a third can
    // buffer as much once the first is done.
    holder.send_raw(&vec![b'x'; 100_000]).await.unwrap();
    holder.send_raw(b"\r\n").await.unwrap();
    assert_eq!(text(&holder.read_frame().await.unwrap()), "+OK\r\n");
    let mut third = Conn::connect(proxy.addr).await.unwrap();
    let value = "y".repeat(800_000);
    assert_eq!(third.text(&["SET", "c", &value]).await, "+OK\r\n");
}

/// Redis's limits for clients that have not authenticated end when Redis accepts an AUTH,
/// whichever user it names; a refused AUTH leaves them in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_before_auth_end_with_any_accepted_user() {
    let redis = RedisServer::start_with(&["--requirepass", "pw"]);
    let mut admin = Conn::connect(redis.addr()).await.unwrap();
    assert_eq!(admin.text(&["AUTH", "pw"]).await, "+OK\r\n");
    let reply = admin
        .text(&["ACL", "SETUSER", "app", "on", ">apppw", "~*", "+@all"])
        .await;
    assert_eq!(reply, "+OK\r\n");
    let proxy = Proxy::start_with(&redis.url(), |c| {
        c.upstream.password = Some(cachet::config::Secret::new("pw"));
    })
    .await;
    let big = "v".repeat(100_000);
    let mut app = Conn::connect(proxy.addr).await.unwrap();
    assert_eq!(app.text(&["AUTH", "app", "apppw"]).await, "+OK\r\n");
    assert_eq!(app.text(&["SET", "k", &big]).await, "+OK\r\n");
    let mut keys = vec!["DEL"];
    keys.extend(["a"; 20]);
    assert_eq!(app.text(&keys).await, ":0\r\n");

    let mut wrong = Conn::connect(proxy.addr).await.unwrap();
    let reply = wrong.text(&["AUTH", "app", "nope"]).await;
    assert!(reply.starts_with("-WRONGPASS"), "{reply}");
    let reply = wrong.text(&["SET", "k", &big]).await;
    assert_eq!(
        reply,
        "-ERR Protocol error: unauthenticated bulk length\r\n"
    );
}

/// Found by the fuzzer: `MULTI ""` (refused by Redis for its arity) was taken as the start of
/// a transaction, so the `CLIENT REPLY SKIP` after it waited for a reply Redis never sends;
/// a protocol error then closed the session for reading, and it never noticed its client
/// leave. With `max_clients = 1` it locked everyone out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_session_still_notices_its_client_leave() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| c.proxy.max_clients = 1).await;
    // The readiness probe's connection may hold the one slot for a moment.
    let mut reply = String::new();
    for _ in 0..100 {
        let mut hostile = Conn::connect(proxy.addr).await.unwrap();
        hostile
            .send_raw(b"MULTI \"\"\r\nCLIENT REPLY SKIP\r\n*\r\n")
            .await
            .unwrap();
        reply = text(&hostile.read_frame().await.unwrap());
        if !reply.contains("max number of clients") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reply.starts_with("-ERR wrong number of arguments"),
        "{reply}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Conn::connect(proxy.addr).await.unwrap();
        match c.command(&["PING"]).await {
            Ok(reply) if text(&reply) == "+PONG\r\n" => break,
            other => assert!(
                Instant::now() < deadline,
                "the hostile client's session is still there: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
