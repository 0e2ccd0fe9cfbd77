//! Hostile clients against one session (issue 13): what a client does to its own session must
//! never leak a session or a Redis connection, balloon cachet's memory, let it act with
//! cachet's credentials, or crash the session. Each test failed on the code before its fix.
//!
//! Every test starts its own `redis-server` on a free port and its own cachet in-process.

mod support;

use std::time::{Duration, Instant};

use support::{Conn, Proxy, RawClient, RedisServer};

/// A field of `INFO clients` at `redis`, straight from Redis.
async fn redis_clients_field(redis: &RedisServer, field: &str) -> u64 {
    let mut direct = Conn::connect(redis.addr()).await.expect("connect to redis");
    let info = direct.text(&["INFO", "clients"]).await;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {info}"))
}

/// Waits until `redis` counts `expected` connected clients (this check's own included).
async fn wait_connected(redis: &RedisServer, expected: u64, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let now = redis_clients_field(redis, "connected_clients").await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: Redis still has {now} connections, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether cachet accepts one more client now: with `max_clients` reached it answers
/// `-ERR max number of clients reached` at once.
async fn accepts_a_client(proxy: &Proxy) -> bool {
    let mut c = RawClient::connect(proxy.addr).await.expect("connect");
    match c.read_frame_timeout(Duration::from_millis(200)).await {
        Ok(frame) => !frame.starts_with(b"-ERR max number of clients reached"),
        // Nothing said: a session took it.
        Err(_) => true,
    }
}

/// A connection cachet took (with `max_clients = 1`, once the previous client's session
/// has ended).
async fn connect_accepted(proxy: &Proxy) -> Conn {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Conn::connect(proxy.addr).await.expect("connect");
        match c.read_frame_timeout(Duration::from_millis(200)).await {
            Ok(frame) if frame.starts_with(b"-ERR max number of clients reached") => {}
            Ok(frame) => panic!("unasked reply {frame:?}"),
            Err(_) => return c,
        }
        assert!(
            Instant::now() < deadline,
            "cachet kept refusing the first client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_accepts(proxy: &Proxy, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while !accepts_a_client(proxy).await {
        assert!(
            Instant::now() < deadline,
            "{what}: cachet still refuses clients: a session outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- finding 2: a session whose client has gone always ends -----------------------------

/// `SUBSCRIBE c` then `RESET x` (wrong arity): Redis refuses the RESET and the connection
/// stays subscribed, so PING answers as a subscriber's PING. The session used to wait for a
/// `+RESET` that never came: PING got nothing, the session never noticed its client leave,
/// and its Redis connection stayed open; 50 such clients locked out everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_refused_on_a_subscribed_connection_leaves_nothing_behind() {
    const CLIENTS: usize = 50;
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), |c| c.proxy.max_clients = CLIENTS).await;
    // What Redis itself answers.
    let mut direct = Conn::connect(redis.addr()).await.unwrap();
    direct.text(&["SUBSCRIBE", "c"]).await;
    let arity = direct.text(&["RESET", "x"]).await;
    assert_eq!(
        arity,
        "-ERR wrong number of arguments for 'reset' command\r\n"
    );
    let pong = direct.text(&["PING"]).await;
    assert_eq!(pong, "*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    drop(direct);
    // The pool, the control client and this check.
    let baseline = redis_clients_field(&redis, "connected_clients").await;

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = Conn::connect(proxy.addr).await.unwrap();
        assert_eq!(
            c.text(&["SUBSCRIBE", "c"]).await,
            "*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"
        );
        assert_eq!(c.text(&["RESET", "x"]).await, arity, "client {i}");
        c.send(&["PING"]).await.unwrap();
        let reply = c
            .read_frame_timeout(Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("client {i}: PING after a refused RESET: {e}"));
        assert_eq!(String::from_utf8_lossy(&reply), pong, "client {i}");
        clients.push(c);
    }
    assert_eq!(
        redis_clients_field(&redis, "connected_clients").await,
        baseline + CLIENTS as u64,
        "one dedicated connection per subscriber"
    );
    // A RESET that Redis takes still ends the subscription and frees the connection.
    let mut last = clients.pop().unwrap();
    assert_eq!(last.text(&["RESET"]).await, "+RESET\r\n");
    assert_eq!(last.text(&["PING"]).await, "+PONG\r\n");
    drop(last);
    drop(clients);
    wait_connected(
        &redis,
        baseline,
        Duration::from_secs(5),
        "after the subscribers left",
    )
    .await;
    wait_accepts(&proxy, Duration::from_secs(5), "after the subscribers left").await;
    let mut c = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(c.text(&["PING"]).await, "+PONG\r\n");
}

/// A client that leaves while its session waits (for RESET's reply, for a dedicated
/// connection being opened, for earlier replies before a blocking command) ends its session
/// at once and leaves no connection at Redis, and no BLPOP that pops for nobody. Redis is
/// paused (`CLIENT PAUSE`) so the waits last; the session used to stop reading its client
/// while it waited, and never saw it leave until the wait ended (or never, for the BLPOP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_during_a_wait_leaves_nothing_behind() {
    for wait in ["reset", "acquire", "drain"] {
        let redis = RedisServer::start();
        let proxy = Proxy::start_with(&redis.url(), |c| {
            c.proxy.max_clients = 1;
            c.upstream.connect_timeout_ms = 10_000;
            c.upstream.command_timeout_ms = 10_000;
        })
        .await;
        let mut direct = Conn::connect(redis.addr()).await.unwrap();
        let baseline = redis_clients_field(&redis, "connected_clients").await;
        let mut c = connect_accepted(&proxy).await;
        if wait == "reset" {
            assert_eq!(c.text(&["SELECT", "1"]).await, "+OK\r\n");
        }
        // An element a BLPOP sent for nobody would pop.
        assert_eq!(direct.text(&["LPUSH", "l", "x"]).await, ":1\r\n");
        assert_eq!(
            direct.text(&["CLIENT", "PAUSE", "3000", "ALL"]).await,
            "+OK\r\n"
        );
        let paused = Instant::now();
        match wait {
            "reset" => c.send(&["RESET"]).await.unwrap(),
            "acquire" => c.send(&["SUBSCRIBE", "c"]).await.unwrap(),
            _ => {
                let mut both = RawClient::encode(&["GET", "a"]);
                both.extend(RawClient::encode(&["BLPOP", "l", "0"]));
                c.send_raw(&both).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(c);
        if wait == "drain" {
            // Only the GET's reply is owed: the session ends once it comes, after the pause,
            // instead of sending the BLPOP for nobody.
            wait_accepts(&proxy, Duration::from_secs(5), wait).await;
        } else {
            // What it waited for depends on its dedicated connection: it ends at once.
            wait_accepts(&proxy, Duration::from_millis(1500), wait).await;
            assert!(
                paused.elapsed() < Duration::from_millis(2500),
                "{wait}: checked only after the pause ended"
            );
        }
        // After the pause: no connection left at Redis, nothing blocked, nothing popped.
        tokio::time::sleep(Duration::from_millis(3000).saturating_sub(paused.elapsed())).await;
        wait_connected(&redis, baseline, Duration::from_secs(5), wait).await;
        assert_eq!(
            redis_clients_field(&redis, "blocked_clients").await,
            0,
            "{wait}"
        );
        assert_eq!(direct.text(&["LLEN", "l"]).await, ":1\r\n", "{wait}");
    }
}

// ---- finding 10a: a dedicated connection with output backed up and nothing to write ------

/// `SELECT 1` pins a dedicated connection; two 9 MiB replies fill the session's output past
/// the point where it stops reading that connection, with nothing to write to it: the
/// session's `select!` had every branch disabled and panicked, dropping the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_replies_on_a_dedicated_connection_read_slowly_arrive_whole() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    let value = vec![b'v'; 9 << 20];
    let mut direct = Conn::connect(redis.addr()).await.unwrap();
    assert_eq!(direct.text(&["SELECT", "1"]).await, "+OK\r\n");
    assert_eq!(
        direct
            .command(&[&b"SET"[..], b"big", &value])
            .await
            .unwrap()[..],
        b"+OK\r\n"[..]
    );
    let mut c = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(c.text(&["SELECT", "1"]).await, "+OK\r\n");
    let mut both = RawClient::encode(&["GET", "big"]);
    both.extend(RawClient::encode(&["GET", "big"]));
    c.send_raw(&both).await.unwrap();
    // Let the replies pile up, then read them in small steps.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expected = [format!("${}\r\n", value.len()).as_bytes(), &value, b"\r\n"].concat();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 2 * expected.len() {
        use tokio::io::AsyncReadExt;
        let n = tokio::time::timeout_at(deadline.into(), c.stream.read(&mut chunk))
            .await
            .expect("both replies within 30 s")
            .unwrap();
        assert!(
            n > 0,
            "cachet closed the connection after {} bytes",
            got.len()
        );
        got.extend_from_slice(&chunk[..n]);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(got.len(), 2 * expected.len());
    assert!(got[..expected.len()] == expected[..] && got[expected.len()..] == expected[..]);
    assert_eq!(c.text(&["PING"]).await, "+PONG\r\n");
}

// ---- finding 6: cachet's own commands go through one gate --------------------------------

/// Every command of cachet's own, for every reason a client may not run it (not
/// authenticated, after a failed AUTH, as another ACL user, inside MULTI, in another
/// database): the one refusal for that reason, and nothing done. WARM used to answer QUEUED
/// after a failed AUTH or as another user, and cachet then acted with its own credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cachet_commands_are_refused_for_every_reason_and_do_nothing() {
    let redis = RedisServer::start_with(&["--requirepass", "pw"]);
    let mut direct = Conn::connect(redis.addr()).await.unwrap();
    assert_eq!(direct.text(&["AUTH", "pw"]).await, "+OK\r\n");
    assert_eq!(
        direct
            .text(&["ACL", "SETUSER", "app", "on", ">apppw", "~app:*", "+@all"])
            .await,
        "+OK\r\n"
    );
    let toml = "[warmers.w]\nstream = \"cachet:warm\"\ndelay_ms = 0\n";
    let parsed = cachet::Config::from_toml(toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let url = format!("redis://:pw@127.0.0.1:{}", redis.port);
    let proxy = Proxy::start_with(&url, move |config| {
        let upstream = config.upstream.clone();
        *config = parsed;
        config.upstream = upstream;
        // Another user on a connection of its own, as past the cap; on its user's pool its
        // rights are Redis's to judge (tests/identity.rs, tests/acl_property.rs).
        config.upstream.max_user_pools = 0;
    })
    .await;
    let commands: &[&[&str]] = &[
        &["WARM", "w", "id", "1"],
        &["EMIT", "ev", "f", "v"],
        &["POLICY", "LIST"],
        &["TAGINVALIDATE", "t"],
        &["TAGSET", "app:k", "v", "TAGS", "t"],
        &["TAG", "app:k", "t"],
        &["TAGS", "app:k"],
        &["TAGKEYS", "t"],
    ];
    let noauth = |_: &str| "-NOAUTH Authentication required.\r\n".to_owned();
    // Another user is not the user cachet acts as. A failed AUTH leaves the client as it was,
    // as in Redis: not authenticated, so NOAUTH (it used to read as another user's NOPERM,
    // when the AUTH stayed on a connection of the client's own).
    let other_user = |name: &str| {
        format!("-NOPERM only the user cachet connects as may run cachet's '{name}' command\r\n")
    };
    // (reason, the commands that set it up, the refusal for a command name)
    type Reason<'a> = (&'a str, &'a [&'a [&'a str]], &'a dyn Fn(&str) -> String);
    let reasons: &[Reason] = &[
        ("not authenticated", &[], &noauth),
        ("failed AUTH", &[&["AUTH", "wrong"]], &noauth),
        (
            "another ACL user past max_user_pools",
            &[&["AUTH", "app", "apppw"]],
            &other_user,
        ),
        ("MULTI", &[&["AUTH", "pw"], &["MULTI"]], &|name: &str| {
            format!("-ERR cachet's '{name}' command cannot run inside MULTI\r\n")
        }),
        (
            "SELECT 1",
            &[&["AUTH", "pw"], &["SELECT", "1"]],
            &|name: &str| format!("-ERR cachet's '{name}' command works in database 0 only\r\n"),
        ),
    ];
    let mut wrong = Vec::new();
    for (reason, setup, refusal) in reasons {
        for command in commands {
            let mut c = Conn::connect(proxy.addr).await.unwrap();
            for step in *setup {
                c.text(step).await;
            }
            let name = command[0].to_lowercase();
            let got = c.text(command).await;
            let expected = refusal(&name);
            if got != expected {
                wrong.push(format!(
                    "{reason}, {command:?}: {got:?}, expected {expected:?}"
                ));
            }
            if *reason == "MULTI" {
                let exec = c.text(&["EXEC"]).await;
                if !exec.starts_with("-EXECABORT") {
                    wrong.push(format!("{reason}, {command:?}: EXEC answered {exec:?}"));
                }
            }
            // The connection is still in step.
            let ping = c.text(&["ECHO", "in step"]).await;
            if !ping.ends_with("in step\r\n") && !ping.starts_with("-NOAUTH") {
                wrong.push(format!("{reason}, {command:?}: then ECHO got {ping:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Nothing was done: no warm request, no index entry, no key, in either database.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for db in ["0", "1"] {
        assert_eq!(direct.text(&["SELECT", db]).await, "+OK\r\n");
        assert_eq!(direct.text(&["DBSIZE"]).await, ":0\r\n", "database {db}");
    }
    // The gate lets the pool's own user through.
    let mut c = Conn::connect(proxy.addr).await.unwrap();
    assert_eq!(c.text(&["AUTH", "pw"]).await, "+OK\r\n");
    assert_eq!(c.text(&["WARM", "w", "id", "1"]).await, "+QUEUED\r\n");
    assert_eq!(direct.text(&["SELECT", "0"]).await, "+OK\r\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while direct.text(&["XLEN", "cachet:warm"]).await != ":1\r\n" {
        assert!(Instant::now() < deadline, "the allowed WARM never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- finding 4: a client that never reads its replies -------------------------------------

/// cachet with its admin listener, for `/metrics`.
struct Admined {
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn start_with_admin(redis: &RedisServer, tweak: impl FnOnce(&mut cachet::Config)) -> Admined {
    let mut config = cachet::Config::default();
    config.upstream.url = cachet::config::RedisUrl::parse(&redis.url()).unwrap();
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = RawClient::connect(addr).await
            && let Ok(reply) = c.command(&["PING"]).await
            && reply[..] == b"+PONG\r\n"[..]
        {
            break;
        }
        assert!(Instant::now() < deadline, "cachet did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Admined {
        addr,
        admin: admin_addr,
        _shutdown: tx,
    }
}

/// `cachet_client_reply_bytes` from `/metrics` (`None` when cachet does not export it).
async fn reply_bytes(cachet: &Admined) -> Option<f64> {
    let body = reqwest::get(format!("http://{}/metrics", cachet.admin))
        .await
        .expect("admin answers")
        .text()
        .await
        .unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("cachet_client_reply_bytes "))
        .map(|v| v.trim().parse().unwrap())
}

/// This process's resident memory (cachet runs in it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A client keeps SET/GET-ing its own keys; returns the slowest round trip.
async fn well_behaved(addr: std::net::SocketAddr, rounds: usize) -> Duration {
    let mut c = Conn::connect(addr).await.unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..rounds {
        let started = Instant::now();
        let key = format!("good:{i}");
        assert_eq!(c.text(&["SET", &key, &i.to_string()]).await, "+OK\r\n");
        let value = i.to_string();
        assert_eq!(
            c.text(&["GET", &key]).await,
            format!("${}\r\n{value}\r\n", value.len())
        );
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// Writes `count` pipelined `GET key` without reading a byte (until the socket is full).
fn pipeline_gets(
    stream: tokio::net::TcpStream,
    key: &str,
    count: usize,
) -> tokio::task::JoinHandle<tokio::net::TcpStream> {
    let mut gets = Vec::new();
    for _ in 0..count {
        gets.extend(RawClient::encode(&["GET", key]));
    }
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut stream = stream;
        let _ = stream.write_all(&gets).await;
        stream
    })
}

const BIG: usize = 100 * 1024;

/// The tests that move hundreds of MB run one at a time: they share this process's RSS,
/// which some of them measure, and two cores.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A client pipelining GETs of a 100 KB value without reading used to make cachet buffer
/// every reply (1.9 GB for 16 384 of them) and clog the pooled connection for everyone. Now
/// it is sent no more commands while it owes more than its 1 MiB budget (plus a first
/// estimate of 64 replies in flight): cachet's buffered replies stay small, a well-behaved
/// client is served as usual, and once the hostile client reads it gets every reply, in
/// order. Defaults throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_held_to_its_reply_budget() {
    let _heavy = HEAVY.lock().await;
    const GETS: usize = 2_000;
    let redis = RedisServer::start();
    let cachet = start_with_admin(&redis, |_| {}).await;
    let mut direct = Conn::connect(redis.addr()).await.unwrap();
    let value = vec![b'b'; BIG];
    direct
        .command(&[&b"SET"[..], b"big", &value])
        .await
        .unwrap();
    well_behaved(cachet.addr, 50).await;
    let before = rss();

    let stream = tokio::net::TcpStream::connect(cachet.addr).await.unwrap();
    let writer = pipeline_gets(stream, "big", GETS);
    let mut most = Some(0.0f64);
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        slowest = slowest.max(well_behaved(cachet.addr, 25).await);
        let now = reply_bytes(&cachet).await;
        most = most.zip(now).map(|(a, b)| a.max(b));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = rss().saturating_sub(before);
    eprintln!(
        "held to its budget: RSS +{} MB, most replies held {most:?} bytes, slowest well-behaved round trip {slowest:?}",
        grown >> 20
    );
    assert!(grown < 96 << 20, "cachet grew by {} MB", grown >> 20);
    let most = most.expect("cachet_client_reply_bytes exported");
    assert!(
        most <= (16 << 20) as f64,
        "cachet held {most} bytes of replies for a client that does not read"
    );
    assert!(
        slowest < Duration::from_millis(500),
        "a well-behaved round trip took {slowest:?}"
    );

    // Back-pressured, not lost: reading now, it gets all its replies, in order.
    let mut stream = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("all the GETs were written")
        .unwrap();
    let frame = [format!("${BIG}\r\n").as_bytes(), &value, b"\r\n"].concat();
    let total = GETS * frame.len();
    let mut read = 0;
    let mut chunk = vec![0u8; 1 << 20];
    let reading = Instant::now();
    let deadline = reading + Duration::from_secs(120);
    while read < total {
        use tokio::io::AsyncReadExt;
        let n = tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk))
            .await
            .expect("every reply within 120 s")
            .unwrap();
        assert!(n > 0, "closed after {read} of {total} bytes");
        let mut at = 0;
        while at < n {
            let offset = (read + at) % frame.len();
            let len = (frame.len() - offset).min(n - at);
            assert!(
                chunk[at..at + len] == frame[offset..offset + len],
                "reply bytes differ at {}",
                read + at
            );
            at += len;
        }
        read += n;
    }
    eprintln!(
        "read {} MB of replies in {:?}",
        total >> 20,
        reading.elapsed()
    );
    let mut c = Conn::connect(cachet.addr).await.unwrap();
    assert_eq!(c.text(&["PING"]).await, "+PONG\r\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while reply_bytes(&cachet).await != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "the reply count did not return to 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `rounds` small pipelines of GETs of a short value and reads them: the session then
/// expects small replies from this client.
async fn lower_the_estimate(c: &mut Conn, rounds: usize) {
    for _ in 0..rounds {
        let mut gets = Vec::new();
        for _ in 0..20 {
            gets.extend(RawClient::encode(&["GET", "small"]));
        }
        c.send_raw(&gets).await.unwrap();
        for _ in 0..20 {
            assert_eq!(&c.read_frame().await.unwrap()[..], b"$1\r\ns\r\n");
        }
    }
}

/// A client that first asks for small replies, so that cachet expects small ones, then
/// pipelines 1 500 GETs of a 100 KB value without reading, has 150 MB of replies coming. Past
/// `client_reply_limit` (8 MiB here) it is disconnected, and the pool drops the rest of its
/// replies as they arrive instead of buffering them; everyone else keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_reply_limit_is_disconnected_and_its_replies_dropped() {
    let _heavy = HEAVY.lock().await;
    const LIMIT: u64 = 8 << 20;
    let redis = RedisServer::start();
    let cachet = start_with_admin(&redis, |c| c.proxy.client_reply_limit = LIMIT).await;
    let mut direct = Conn::connect(redis.addr()).await.unwrap();
    direct
        .command(&[&b"SET"[..], b"big", &vec![b'b'; BIG]])
        .await
        .unwrap();
    direct.text(&["SET", "small", "s"]).await;
    well_behaved(cachet.addr, 50).await;
    let before = rss();

    let mut hostile = Conn::connect(cachet.addr).await.unwrap();
    lower_the_estimate(&mut hostile, 20).await;
    let mut gets = Vec::new();
    for _ in 0..1_500 {
        gets.extend(RawClient::encode(&["GET", "big"]));
    }
    hostile.send_raw(&gets).await.unwrap();
    let mut slowest = Duration::ZERO;
    let mut most = 0.0f64;
    for _ in 0..20 {
        slowest = slowest.max(well_behaved(cachet.addr, 10).await);
        most = most.max(reply_bytes(&cachet).await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = rss().saturating_sub(before);
    eprintln!(
        "past its limit: RSS +{} MB, most replies held {most} bytes, slowest well-behaved round trip {slowest:?}",
        grown >> 20
    );
    assert!(
        hostile.closed_within(Duration::from_secs(10)).await,
        "the client past its reply limit is still connected"
    );
    assert!(grown < 64 << 20, "cachet grew by {} MB", grown >> 20);
    assert!(
        most <= (LIMIT + 2 * BIG as u64) as f64,
        "cachet held {most} bytes of replies"
    );
    // A debug build on a shared machine: the pooled connection carries the 150 MB the
    // dropped client asked for before the others' replies.
    assert!(
        slowest < Duration::from_secs(3),
        "a well-behaved round trip took {slowest:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while reply_bytes(&cachet).await != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "the reply count did not return to 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(well_behaved(cachet.addr, 5).await < Duration::from_secs(1));
}

/// Many clients that do not read, each within its own limit: past `reply_buffer_limit` for
/// all of them together, those owing more than their budget are disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_past_their_budget_are_disconnected_when_all_together_owe_too_much() {
    let _heavy = HEAVY.lock().await;
    const TOTAL: u64 = 4 << 20;
    let redis = RedisServer::start();
    let cachet = start_with_admin(&redis, |c| c.proxy.reply_buffer_limit = TOTAL).await;
    let mut direct = Conn::connect(redis.addr()).await.unwrap();
    direct
        .command(&[&b"SET"[..], b"big", &vec![b'b'; 2 * BIG]])
        .await
        .unwrap();
    let mut writers = Vec::new();
    for _ in 0..5 {
        let stream = tokio::net::TcpStream::connect(cachet.addr).await.unwrap();
        writers.push(pipeline_gets(stream, "big", 200));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = reply_bytes(&cachet).await.unwrap();
    let mut closed = 0;
    for writer in writers {
        let mut stream = writer.await.unwrap();
        if support::closed_within(&mut stream, Duration::from_millis(500)).await {
            closed += 1;
        }
    }
    eprintln!("all together: {closed} of 5 disconnected, {held} bytes held");
    assert!(closed >= 3, "only {closed} of 5 clients were disconnected");
    assert!(
        held <= (TOTAL + 16 * 2 * BIG as u64 * 2) as f64,
        "{held} bytes held"
    );
    assert!(well_behaved(cachet.addr, 5).await < Duration::from_secs(1));
}

/// A RESP2 subscriber that never reads still meets the 32 MiB stream limit (Redis's pub/sub
/// `client-output-buffer-limit`) and is disconnected; its replies leave the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_disconnected_at_the_stream_limit() {
    let _heavy = HEAVY.lock().await;
    let redis = RedisServer::start();
    let cachet = start_with_admin(&redis, |_| {}).await;
    let mut subscriber = Conn::connect(cachet.addr).await.unwrap();
    subscriber.text(&["SUBSCRIBE", "news"]).await;
    let mut publisher = Conn::connect(redis.addr()).await.unwrap();
    let message = vec![b'm'; BIG];
    for _ in 0..600 {
        publisher
            .command(&[&b"PUBLISH"[..], b"news", &message])
            .await
            .unwrap();
    }
    assert!(
        subscriber.closed_within(Duration::from_secs(10)).await,
        "a subscriber 60 MB behind is still connected"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while reply_bytes(&cachet).await != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "the reply count did not return to 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
