//! Sentinel failover through cachet (`sentinel://` upstream): one master, one replica, three
//! Sentinels (`support::sentinel`). Clients under steady load write and read back their own
//! keys while (a) `SENTINEL FAILOVER` moves the master and (b) the new master is killed
//! outright. The figures (recovery after each promotion, errors clients saw, writes lost)
//! are printed: run with `--nocapture` to read them.
//!
//! Recovery is timed from the test's own subscription to `+switch-master` (the first
//! Sentinel to publish it) to the first write acknowledged after it that is then found on
//! the new master (checked directly, not through cachet).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::resp::Value;
use support::sentinel::{Auth, MASTER_NAME, SentinelSet};
use support::{Proxy, RawClient};

const CLIENTS: usize = 6;
const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// What the load clients saw.
#[derive(Default)]
struct Log {
    /// Every acknowledged write: (when, key, value).
    acked: Vec<(Instant, String, String)>,
    /// Every error: (when, what).
    errors: Vec<(Instant, String)>,
    /// A read that returned something else than the write just acknowledged.
    wrong: Vec<(Instant, String)>,
    /// When each write read back as written (write-and-read-back succeeded).
    confirmed: Vec<Instant>,
}

/// One client: SET a new key, GET it back, over and over, reconnecting after any loss.
async fn client(
    id: usize,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
) {
    let mut conn: Option<RawClient> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match RawClient::connect(addr).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    log.lock()
                        .unwrap()
                        .errors
                        .push((Instant::now(), format!("connect: {e}")));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        i += 1;
        let key = format!("c{id}:{i}");
        let value = format!("{i}-{}", fastrand::u64(..));
        let set = tokio::time::timeout(OP_TIMEOUT, c.command(&["SET", &key, &value])).await;
        let reply = match set {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                log.lock()
                    .unwrap()
                    .errors
                    .push((Instant::now(), format!("SET: {e}")));
                conn = None;
                continue;
            }
            Err(_) => {
                log.lock()
                    .unwrap()
                    .errors
                    .push((Instant::now(), "SET: no reply in 3 s".into()));
                conn = None;
                continue;
            }
        };
        if &reply[..] != b"+OK\r\n" {
            let text = String::from_utf8_lossy(&reply).trim().to_owned();
            log.lock()
                .unwrap()
                .errors
                .push((Instant::now(), format!("SET: {text}")));
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        log.lock()
            .unwrap()
            .acked
            .push((Instant::now(), key.clone(), value.clone()));
        let get = tokio::time::timeout(OP_TIMEOUT, c.command(&["GET", &key])).await;
        match get {
            Ok(Ok(reply)) => match Value::parse(&reply) {
                Value::Bulk(got) if got == value.as_bytes() => {
                    log.lock().unwrap().confirmed.push(Instant::now())
                }
                Value::Error(e) => log
                    .lock()
                    .unwrap()
                    .errors
                    .push((Instant::now(), format!("GET: {e}"))),
                other => log.lock().unwrap().wrong.push((
                    Instant::now(),
                    format!("GET {key}: {other:?}, wrote {value:?}"),
                )),
            },
            Ok(Err(e)) => {
                log.lock()
                    .unwrap()
                    .errors
                    .push((Instant::now(), format!("GET: {e}")));
                conn = None;
            }
            Err(_) => {
                log.lock()
                    .unwrap()
                    .errors
                    .push((Instant::now(), "GET: no reply in 3 s".into()));
                conn = None;
            }
        }
    }
}

/// Listens for `+switch-master` on every Sentinel; keeps the first time each new master
/// was announced. Also keeps when a leader announced it was sending `REPLICAOF NO ONE`
/// (`+failover-state-send-slaveof-noone`): the start of the promotion window.
async fn watch_switches(set: &SentinelSet) -> Events {
    let seen: Events = Arc::default();
    for s in &set.sentinels {
        let mut c = s.connect().await.expect("sentinel");
        c.send(&[
            "SUBSCRIBE",
            "+switch-master",
            "+failover-state-send-slaveof-noone",
        ])
        .await
        .expect("subscribe");
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(frame) = c.read_frame_timeout(Duration::from_secs(3600)).await {
                let at = Instant::now();
                let items = Value::parse(&frame);
                let items = items.items();
                if items[0].bytes() != b"message" {
                    continue;
                }
                let channel = String::from_utf8_lossy(items[1].bytes()).into_owned();
                let message = String::from_utf8_lossy(items[2].bytes()).into_owned();
                let event = match channel.as_str() {
                    // "mymaster old-ip old-port new-ip new-port"
                    "+switch-master" => {
                        format!(
                            "switch {}",
                            message.split(' ').skip(3).collect::<Vec<_>>().join(":")
                        )
                    }
                    // "slave ip:port ip port @ mymaster ip port"
                    _ => format!("promote {}", message.split(' ').nth(1).unwrap_or_default()),
                };
                // Keep the first of each.
                let mut seen = seen.lock().unwrap();
                if !seen.iter().any(|(_, m)| *m == event) {
                    seen.push((at, event));
                }
            }
        });
    }
    seen
}

type Events = Arc<Mutex<Vec<(Instant, String)>>>;

/// When the test first heard of the promotion of the replica at `port`, if it did.
fn promotion_seen(events: &Events, port: u16) -> Option<Instant> {
    let want = format!("promote 127.0.0.1:{port}");
    events
        .lock()
        .unwrap()
        .iter()
        .find(|(_, e)| *e == want)
        .map(|(at, _)| *at)
}

async fn wait_switch(seen: &Events, count: usize, set: &SentinelSet) -> (Instant, u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let switches: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.starts_with("switch "))
            .cloned()
            .collect();
        if let Some((at, to)) = switches.get(count - 1).cloned() {
            let port = to.rsplit(':').next().unwrap().parse().unwrap();
            return (at, port);
        }
        assert!(
            Instant::now() < deadline,
            "no +switch-master within 60 s; logs:\n{}",
            set.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When cachet's pooled connections appeared on each data node: polls `CLIENT LIST` every
/// 5 ms and keeps each time a node went from none to some (`(when, port)`).
fn watch_pools(ports: Vec<u16>, stop: Arc<AtomicBool>) -> Arc<Mutex<Vec<(Instant, u16)>>> {
    let seen: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        let mut had = vec![true; ports.len()];
        let mut conns: Vec<Option<RawClient>> = ports.iter().map(|_| None).collect();
        while !stop.load(Ordering::Relaxed) {
            for (i, port) in ports.iter().enumerate() {
                if conns[i].is_none() {
                    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
                    conns[i] = RawClient::connect(addr).await.ok();
                }
                let Some(c) = conns[i].as_mut() else {
                    continue;
                };
                let reply = tokio::time::timeout(
                    Duration::from_millis(500),
                    c.command(&["CLIENT", "LIST"]),
                )
                .await;
                let Ok(Ok(reply)) = reply else {
                    conns[i] = None;
                    continue;
                };
                let has = String::from_utf8_lossy(&reply).contains("name=cachet:pool");
                if has && !had[i] {
                    seen.lock().unwrap().push((Instant::now(), *port));
                }
                had[i] = has;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    out
}

/// The first time cachet's pool appeared on `port` after `since`.
fn pool_moved(seen: &Mutex<Vec<(Instant, u16)>>, port: u16, since: Instant) -> Option<Instant> {
    seen.lock()
        .unwrap()
        .iter()
        .find(|(at, p)| *p == port && *at > since)
        .map(|(at, _)| *at)
}

/// Which of `keys` hold their value on the server at `port` (read directly).
async fn present(port: u16, writes: &[(Instant, String, String)]) -> Vec<bool> {
    let mut c = RawClient::connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect to the master directly");
    let mut out = Vec::with_capacity(writes.len());
    for chunk in writes.chunks(500) {
        let mut args = vec!["MGET".to_owned()];
        args.extend(chunk.iter().map(|(_, k, _)| k.clone()));
        let reply = c.command(&args).await.expect("MGET");
        let values = Value::parse(&reply);
        for ((_, _, want), got) in chunk.iter().zip(values.items()) {
            out.push(matches!(got, Value::Bulk(b) if b == want.as_bytes()));
        }
    }
    out
}

/// The first write-and-read-back that succeeded after `since`.
fn recovered(log: &Log, since: Option<Instant>) -> Option<Instant> {
    let since = since?;
    log.confirmed.iter().copied().find(|at| *at > since)
}

/// Writes acknowledged in `from..to` that the new master does not hold.
fn missing(
    writes: &[(Instant, String, String)],
    found: &[bool],
    from: Instant,
    to: Instant,
) -> usize {
    writes
        .iter()
        .zip(found)
        .filter(|((at, _, _), f)| *at >= from && *at < to && !**f)
        .count()
}

/// `to - from` in ms, negative if `to` came first.
fn signed_ms(from: Instant, to: Instant) -> i128 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_millis() as i128,
        None => -((from - to).as_millis() as i128),
    }
}

/// Error texts with their counts, in `from..to`.
fn error_summary(log: &Log, from: Instant, to: Instant) -> (usize, BTreeMap<String, usize>) {
    let mut kinds = BTreeMap::new();
    let mut total = 0;
    for (at, e) in &log.errors {
        if *at >= from && *at < to {
            total += 1;
            // Addresses and ports vary between runs: keep the words.
            let kind: String = e.chars().filter(|c| !c.is_ascii_digit()).collect();
            *kinds.entry(kind).or_default() += 1;
        }
    }
    (total, kinds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_and_a_killed_master_under_load() {
    let mut set = SentinelSet::start().await;
    let first_master = set.master_port().await.expect("a master");
    let proxy = Proxy::start_with(&set.url(), |c| {
        c.upstream.command_timeout_ms = 2_000;
        c.upstream.connect_timeout_ms = 500;
    })
    .await;
    let switches = watch_switches(&set).await;
    let stop = Arc::new(AtomicBool::new(false));
    let pools = watch_pools(set.nodes.iter().map(|n| n.port).collect(), stop.clone());
    let log = Arc::new(Mutex::new(Log::default()));
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(id, proxy.addr, stop.clone(), log.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // (a) A failover Sentinel runs: the old master stays up and becomes a replica.
    let asked = Instant::now();
    let reply = set
        .sentinel_command(&["SENTINEL", "FAILOVER", MASTER_NAME])
        .await;
    assert_eq!(reply, "+OK\r\n", "SENTINEL FAILOVER");
    let (switch_a, master_a) = wait_switch(&switches, 1, &set).await;
    assert_ne!(master_a, first_master);
    // Until the old master is a replica in sync again (Sentinel converts it after ~8 s),
    // a second failover could not go ahead.
    set.wait_settled(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_a: Vec<_> = log.lock().unwrap().acked.clone();
    let found_a = present(master_a, &writes_a).await;
    let promoted_a = promotion_seen(&switches, master_a).unwrap_or(switch_a);
    let moved_a = pool_moved(&pools, master_a, asked);

    // (b) The new master is killed outright.
    let killed = Instant::now();
    set.node(master_a).stop();
    let (switch_b, master_b) = wait_switch(&switches, 2, &set).await;
    assert_eq!(master_b, first_master);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let ended = Instant::now();
    let log = std::mem::take(&mut *log.lock().unwrap());
    let found_b = present(master_b, &log.acked).await;
    let moved_b = pool_moved(&pools, master_b, killed);
    // Recovery: the first write-and-read-back after cachet's pool reached the new master.
    let recovered_a = recovered(&log, moved_a);
    let recovered_b = recovered(&log, moved_b);

    let ms = |at: Option<Instant>, from: Instant| {
        at.map_or("never".to_owned(), |at| {
            format!("{} ms", signed_ms(from, at))
        })
    };
    let window_end = moved_a.unwrap_or(killed);
    // Acknowledged by the old master before the promotion but not replicated in time.
    let lost_before_a = missing(&writes_a, &found_a, started, promoted_a);
    // Acknowledged by the old master between the promotion and cachet's move.
    let lost_window_a = missing(&writes_a, &found_a, promoted_a, window_end);
    let missing_after_a = missing(&writes_a, &found_a, window_end, killed);
    // Acknowledged by the master that was killed and not on its successor: Redis's
    // asynchronous replication, reported, not counted as wrong.
    let lost_b = missing(&log.acked, &found_b, window_end, killed);
    let missing_after_b = moved_b.map_or(0, |at| missing(&log.acked, &found_b, at, ended));
    // A read-back that found nothing right after a write the old master acknowledged in the
    // promotion window is that same loss, seen at once; anything else is a wrong reply.
    let in_window =
        |at: &Instant| *at >= promoted_a && *at < window_end + Duration::from_millis(50);
    let (window_reads, wrong): (Vec<_>, Vec<_>) = log
        .wrong
        .iter()
        .partition(|(at, w)| in_window(at) && w.contains(": Nil,"));
    let (errors_a, kinds_a) = error_summary(&log, asked, killed);
    let (errors_b, kinds_b) = error_summary(&log, killed, ended);
    println!(
        "--- Sentinel failover through cachet, {CLIENTS} clients (SET a new key, GET it back) ---"
    );
    println!(
        "writes acknowledged: {} in {:.1} s; wrong replies: {}",
        log.acked.len(),
        (ended - started).as_secs_f64(),
        wrong.len()
    );
    println!(
        "(a) SENTINEL FAILOVER: promotion announced {} ms and +switch-master {} ms after the \
         command; cachet's pool on the new master {} after the announcement; first \
         write-and-read-back there {} after +switch-master; {errors_a} errors",
        signed_ms(asked, promoted_a),
        signed_ms(asked, switch_a),
        ms(moved_a, promoted_a),
        ms(recovered_a, switch_a),
    );
    for (kind, n) in &kinds_a {
        println!("    {n:>5} x {kind}");
    }
    println!(
        "    acknowledged writes not on the new master: {lost_before_a} before the promotion, \
         {lost_window_a} in the promotion window (of them {} read back as nil at once), \
         {missing_after_a} after",
        window_reads.len()
    );
    println!(
        "(b) SIGKILL of the master: +switch-master {} ms after the kill; cachet's pool on the \
         new master {} after the kill; first write-and-read-back there {} after \
         +switch-master; {errors_b} errors; {lost_b} acknowledged writes lost (asynchronous \
         replication); {missing_after_b} missing after",
        signed_ms(killed, switch_b),
        ms(moved_b, killed),
        ms(recovered_b, switch_b),
    );
    for (kind, n) in &kinds_b {
        println!("    {n:>5} x {kind}");
    }
    for (_, w) in wrong.iter().take(20) {
        println!("    wrong: {w}");
    }

    let within_2s = |at: Option<Instant>, switch: Instant| {
        at.is_some_and(|at| at < switch + Duration::from_secs(2))
    };
    assert!(
        within_2s(recovered_a, switch_a),
        "(a) recovery {} is not within 2 s; logs:\n{}",
        ms(recovered_a, switch_a),
        set.logs()
    );
    assert!(
        within_2s(recovered_b, switch_b),
        "(b) recovery {} is not within 2 s; logs:\n{}",
        ms(recovered_b, switch_b),
        set.logs()
    );
    assert!(
        wrong.is_empty(),
        "wrong replies: {:?}",
        &wrong[..wrong.len().min(20)]
    );
    assert_eq!(
        missing_after_a, 0,
        "(a) writes acknowledged after recovery missing on the new master"
    );
    assert_eq!(
        missing_after_b, 0,
        "(b) writes acknowledged after recovery missing on the new master"
    );
    drop(proxy);
}

/// A master turned into a replica behind the Sentinels' back (no `+switch-master`, and a
/// periodic re-check far away): the `-READONLY` a write reads makes cachet ask the Sentinels
/// at once, and traffic moves to the master they name. A client holding a dedicated
/// connection to the old master is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_makes_cachet_ask_the_sentinels_again() {
    let set = SentinelSet::start().await;
    let old = set.nodes[0].port;
    let new = set.nodes[1].port;
    let proxy = Proxy::start_with(&set.url(), |c| {
        c.upstream.sentinel.recheck_ms = 600_000;
    })
    .await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(client.text(&["SET", "k", "1"]).await, "+OK\r\n");
    // A tagged write: cachet loads its function library, and must load it again wherever
    // the control client reconnects.
    let tagset = client.text(&["TAGSET", "tagged", "v", "TAGS", "a"]).await;
    assert!(!tagset.starts_with('-'), "{tagset}");
    // A client in a transaction holds a dedicated connection to the old master.
    let mut pinned = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(pinned.text(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(pinned.text(&["SET", "t", "1"]).await, "+QUEUED\r\n");
    // A client signed in as another ACL user, on that user's own pool. Redis does not
    // replicate ACLs: the user is made on both nodes.
    for port in [old, new] {
        let mut c = RawClient::connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        let reply = c
            .text(&["ACL", "SETUSER", "alice", "on", ">apw", "~*", "+@all"])
            .await;
        assert_eq!(reply, "+OK\r\n");
    }
    let mut alice = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(alice.text(&["AUTH", "alice", "apw"]).await, "+OK\r\n");
    assert_eq!(alice.text(&["SET", "a", "1"]).await, "+OK\r\n");
    // A spare dedicated connection (a finished transaction, after `pinned` took the first)
    // and the out-of-band lane, open.
    let mut other = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(other.text(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(other.text(&["SET", "x", "1"]).await, "+QUEUED\r\n");
    assert!(other.text(&["EXEC"]).await.starts_with("*1"));
    assert_eq!(other.text(&["CLIENT", "UNPAUSE"]).await, "+OK\r\n");

    // Swap the roles by hand, then tell the Sentinels with REMOVE/MONITOR, which publishes
    // nothing cachet listens to.
    let direct = |port: u16| RawClient::connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let mut r = direct(new).await.unwrap();
    assert_eq!(r.text(&["REPLICAOF", "NO", "ONE"]).await, "+OK\r\n");
    // The new master has lost the library: only the control client can bring it back.
    assert_eq!(r.text(&["FUNCTION", "FLUSH"]).await, "+OK\r\n");
    let mut m = direct(old).await.unwrap();
    assert_eq!(
        m.text(&["REPLICAOF", "127.0.0.1", &new.to_string()]).await,
        "+OK\r\n"
    );
    for s in &set.sentinels {
        let mut c = s.connect().await.unwrap();
        assert_eq!(
            c.text(&["SENTINEL", "REMOVE", MASTER_NAME]).await,
            "+OK\r\n"
        );
        let port = new.to_string();
        let reply = c
            .text(&["SENTINEL", "MONITOR", MASTER_NAME, "127.0.0.1", &port, "2"])
            .await;
        assert_eq!(reply, "+OK\r\n", "{}", set.logs());
    }

    let start = Instant::now();
    let mut readonly = 0;
    let mut other_errors = Vec::new();
    let moved_at = loop {
        let reply = client.text(&["SET", "k", "2"]).await;
        if reply == "+OK\r\n" {
            break Instant::now();
        }
        if reply.starts_with("-READONLY") {
            readonly += 1;
        } else {
            other_errors.push(reply);
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "writes did not move within 5 s ({readonly} READONLY, others {other_errors:?}); logs:\n{}",
            set.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!(
        "READONLY → moved in {} ms; {readonly} READONLY replies, other errors {other_errors:?}",
        (moved_at - start).as_millis()
    );
    assert!(
        readonly >= 1,
        "the old master must have answered READONLY first"
    );
    assert!(moved_at - start < Duration::from_secs(2));
    assert_eq!(
        r.text(&["GET", "k"]).await,
        "$1\r\n2\r\n",
        "the write is on the new master"
    );
    assert!(
        pinned.closed_within(Duration::from_secs(2)).await,
        "a dedicated connection to the old master must be closed"
    );
    // The control client followed, and its setup steps loaded the library on the new master.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let list = r.text(&["FUNCTION", "LIST", "LIBRARYNAME", "cachet"]).await;
        if list.contains("cachet") {
            println!(
                "library back on the new master {} ms after the move",
                moved_at.elapsed().as_millis()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the function library was not loaded on the new master within 5 s; logs:\n{}",
            set.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tagset = client.text(&["TAGSET", "tagged2", "v", "TAGS", "a"]).await;
    assert!(!tagset.starts_with('-'), "{tagset}");
    assert_eq!(other.text(&["CLIENT", "UNPAUSE"]).await, "+OK\r\n");
    // Alice's pool moved too (its command in flight at the move, if any, got an error).
    let deadline = Instant::now() + Duration::from_secs(2);
    while alice.text(&["SET", "a", "2"]).await != "+OK\r\n" {
        assert!(Instant::now() < deadline, "alice's writes did not move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(r.text(&["GET", "a"]).await, "$1\r\n2\r\n");
    assert!(r.text(&["CLIENT", "LIST"]).await.contains("user=alice"));
    // Nothing of cachet's is left on the old master: pool, lane, spare, dedicated and
    // control connections all moved. (What remains: the Sentinels' links, the link from its
    // new master, flag M, and this test.)
    let me = m.text(&["CLIENT", "ID"]).await;
    let me = format!("id={} ", me.trim().trim_start_matches(':'));
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let list = m.text(&["CLIENT", "LIST"]).await;
        let left: Vec<&str> = list
            .lines()
            .filter(|l| {
                l.contains("id=")
                    && !l.starts_with(&me)
                    && !l.contains("name=sentinel-")
                    && !l.contains(" flags=M ")
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cachet's connections left on the old master: {left:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let list = r.text(&["CLIENT", "LIST"]).await;
    assert!(
        list.contains("name=cachet:pool") && list.contains("name=cachet:aside"),
        "{list}"
    );
    drop(proxy);
}

/// How a fake Sentinel misbehaves.
#[derive(Clone, Copy)]
enum Fake {
    /// Names `port` (a replica) as the master, at a config epoch above the real one's.
    Liar(u16),
    /// Answers every command with a reply that never ends.
    Endless,
}

/// A fake Sentinel; returns its port and, per connection cachet opened, what it asked and
/// whether cachet closed it.
async fn fake_sentinel(fake: Fake) -> (u16, Arc<Mutex<Vec<(String, bool)>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let Ok(n) = stream.read(&mut buf).await else {
                    return;
                };
                let asked = String::from_utf8_lossy(&buf[..n]).to_uppercase();
                let subscribe = asked.contains("SUBSCRIBE");
                let index = {
                    let mut seen = seen.lock().unwrap();
                    seen.push((asked.clone(), false));
                    seen.len() - 1
                };
                let closed = match (fake, subscribe) {
                    (Fake::Liar(port), false) => {
                        let port = port.to_string();
                        let reply = format!(
                            "*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{port}\r\n\
                             *2\r\n$12\r\nconfig-epoch\r\n$2\r\n99\r\n",
                            port.len()
                        );
                        let _ = stream.write_all(reply.as_bytes()).await;
                        // cachet closes it after the round.
                        matches!(stream.read(&mut buf).await, Ok(0) | Err(_))
                    }
                    (Fake::Liar(_), true) => {
                        let _ = stream
                            .write_all(b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n")
                            .await;
                        std::future::pending::<()>().await;
                        false
                    }
                    (Fake::Endless, _) => {
                        let start: &[u8] = if subscribe {
                            // A valid confirmation, then a message that never ends.
                            b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n\
                              *3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$1000000000\r\n"
                        } else {
                            b"$1000000000\r\n"
                        };
                        let chunk = vec![b'x'; 64 * 1024];
                        let mut result = stream.write_all(start).await;
                        while result.is_ok() {
                            result = stream.write_all(&chunk).await;
                        }
                        true
                    }
                };
                seen.lock().unwrap()[index].1 = closed;
            });
        }
    });
    (port, out)
}

/// Sentinels that lie or never finish a reply: cachet checks a named master's `ROLE`, reads
/// at most 1 MiB of a reply to a round and 64 KiB of an unfinished event, closes such a
/// connection, and follows the honest Sentinels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_or_endless_sentinels_do_not_move_or_swamp_cachet() {
    let set = SentinelSet::start().await;
    let master = set.nodes[0].port;
    let replica = set.nodes[1].port;
    let (liar, liar_seen) = fake_sentinel(Fake::Liar(replica)).await;
    let (endless, endless_seen) = fake_sentinel(Fake::Endless).await;
    // Last in the url: cachet's own rounds ask every Sentinel, but the control client
    // (fred's Sentinel mode) settles on the first that accepts a connection, and a liar
    // there would stall it (docs/ARCHITECTURE.md, "Failure handling").
    let url = set.url().replace(
        "/mymaster",
        &format!(",127.0.0.1:{liar},127.0.0.1:{endless}/mymaster"),
    );
    let proxy = Proxy::start_with(&url, |c| {
        c.upstream.sentinel.recheck_ms = 100;
        // Only the byte bounds can end an endless reply this soon.
        c.upstream.connect_timeout_ms = 30_000;
    })
    .await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    let mut direct = RawClient::connect(std::net::SocketAddr::from(([127, 0, 0, 1], master)))
        .await
        .unwrap();
    for i in 0..20 {
        let value = i.to_string();
        assert_eq!(client.text(&["SET", "k", &value]).await, "+OK\r\n");
        assert_eq!(
            Value::parse(&direct.command(&["GET", "k"]).await.unwrap()),
            Value::Bulk(value.into_bytes()),
            "writes stay on the real master; logs:\n{}",
            set.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let endless_seen = endless_seen.lock().unwrap().clone();
    let closed = |subscribe: bool| {
        endless_seen
            .iter()
            .filter(|(asked, closed)| asked.contains("SUBSCRIBE") == subscribe && *closed)
            .count()
    };
    assert!(
        closed(true) >= 1 && closed(false) >= 5,
        "cachet must cut endless replies off: {endless_seen:?}"
    );
    let rounds = liar_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(a, _)| a.contains("GET-MASTER-ADDR-BY-NAME"))
        .count();
    assert!(rounds >= 5, "the liar was asked {rounds} times");
    drop(proxy);
}

/// Passwords everywhere: the master's in the url, the Sentinels' own in
/// `[upstream.sentinel]`. cachet finds the master and follows a failover, and so does its
/// control client (fred's Sentinel mode, signing in to the Sentinels too): a tagged write,
/// which runs through it, works on the new master. With a wrong Sentinel password cachet
/// finds no master and is not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_data_nodes_with_passwords() {
    let set = SentinelSet::start_with(Auth {
        data: Some("data-pw".into()),
        sentinel: Some("sentinel-pw".into()),
    })
    .await;
    let url = set.url().replace("sentinel://", "sentinel://:data-pw@");
    let proxy = Proxy::start_with(&url, |c| {
        c.upstream.sentinel.password = Some(cachet::config::Secret::new("sentinel-pw"));
    })
    .await;
    let mut client = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(client.text(&["AUTH", "data-pw"]).await, "+OK\r\n");
    assert_eq!(client.text(&["SET", "k", "1"]).await, "+OK\r\n");
    let tagset = client.text(&["TAGSET", "t1", "v", "TAGS", "a"]).await;
    assert!(!tagset.starts_with('-'), "{tagset}");

    let old = set.master_port().await.unwrap();
    assert_eq!(
        set.sentinel_command(&["SENTINEL", "FAILOVER", MASTER_NAME])
            .await,
        "+OK\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        match set.master_port().await {
            Some(port) if port != old => break port,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no failover; logs:\n{}",
            set.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut direct = RawClient::connect(std::net::SocketAddr::from(([127, 0, 0, 1], new)))
        .await
        .unwrap();
    assert_eq!(direct.text(&["AUTH", "data-pw"]).await, "+OK\r\n");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        // A fresh connection: one whose command was in flight at the move may be closed.
        let mut c = RawClient::connect(proxy.addr).await.unwrap();
        let signed_in = c.text(&["AUTH", "data-pw"]).await == "+OK\r\n";
        if signed_in
            && c.text(&["SET", "k", "2"]).await == "+OK\r\n"
            && direct.text(&["GET", "k"]).await == "$1\r\n2\r\n"
            && !c
                .text(&["TAGSET", "t2", "v", "TAGS", "a"])
                .await
                .starts_with('-')
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes and tagged writes did not reach the new master within 3 s; logs:\n{}",
            set.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(proxy);

    let mut config = cachet::Config::default();
    config.upstream.url = cachet::config::RedisUrl::parse(&url).unwrap();
    config.upstream.sentinel.password = Some(cachet::config::Secret::new("wrong"));
    let upstream = cachet::upstream::Upstream::new(config.upstream).unwrap();
    upstream.start(Vec::new());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let found = upstream.master.address();
    assert!(
        found.is_err(),
        "a master found with a wrong Sentinel password: {found:?}"
    );
    assert!(!upstream.is_ready());
    upstream.shutdown().await;
}

/// `cachet_upstream_master_moves_total` counts a failover followed, not the first master the
/// Sentinels name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_followed_is_counted_once() {
    let set = SentinelSet::start().await;
    let mut config = cachet::Config::default();
    config.upstream.url = cachet::config::RedisUrl::parse(&set.url()).unwrap();
    let upstream = cachet::upstream::Upstream::new(config.upstream).unwrap();
    upstream.start(Vec::new());
    let port = |upstream: &cachet::upstream::Upstream| {
        upstream
            .master
            .address()
            .ok()
            .and_then(|(a, _)| a.rsplit(':').next()?.parse::<u16>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while port(&upstream).is_none() {
        assert!(
            Instant::now() < deadline,
            "no master found; logs:\n{}",
            set.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = set.master_port().await;
    assert_eq!(port(&upstream), first);
    assert_eq!(
        upstream.master_moves.get(),
        0,
        "finding the master is no move"
    );
    assert_eq!(
        set.sentinel_command(&["SENTINEL", "FAILOVER", MASTER_NAME])
            .await,
        "+OK\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while upstream.master_moves.get() == 0 {
        assert!(
            Instant::now() < deadline,
            "no move counted; logs:\n{}",
            set.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once the Sentinels agree, cachet is where they say, and moved once.
    set.wait_settled(Duration::from_secs(60)).await;
    assert_eq!(port(&upstream), set.master_port().await);
    assert_ne!(port(&upstream), first);
    assert_eq!(upstream.master_moves.get(), 1);
    upstream.shutdown().await;
}

/// `sentinels://`: master, replica and Sentinels all TLS-only (`--port 0`). cachet finds the
/// master through the Sentinels over TLS, its pool and control client reach it over TLS (a
/// fred client's writes and a tagged write, which runs on the control client, go through),
/// and after `SENTINEL FAILOVER` the writes land on the new master, read there directly
/// over TLS. With another CA than the one that issued the servers' certificates, or a
/// `server_name` they do not hold, cachet finds no master; `[upstream.tls]` with a plain
/// `sentinel://` url is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_data_nodes_over_tls() {
    use fred::prelude::*;
    use support::sentinel_tls::TlsSentinelSet;
    use support::tls::Ca;

    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let set = TlsSentinelSet::start(&ca, &ca.server("redis")).await;
    let proxy = Proxy::start_with(&set.url(), |c| {
        c.upstream.tls = Some(cachet::config::UpstreamTlsConfig {
            ca: Some(ca.cert.clone()),
            ..Default::default()
        });
    })
    .await;
    let client = support::fred_client(&format!("redis://{}", proxy.addr), false).await;
    let _: () = client.set("k", "1", None, None, false).await.unwrap();
    let got: String = client.get("k").await.unwrap();
    assert_eq!(got, "1");
    let mut raw = RawClient::connect(proxy.addr).await.unwrap();
    let tagset = raw.text(&["TAGSET", "t1", "v", "TAGS", "a"]).await;
    assert!(!tagset.starts_with('-'), "{tagset}");

    let old = set.master_port().await.unwrap();
    let reply = set
        .sentinel_command(&["SENTINEL", "FAILOVER", MASTER_NAME])
        .await;
    assert_eq!(reply.as_deref(), Some(&b"+OK\r\n"[..]));
    let deadline = Instant::now() + Duration::from_secs(15);
    let new = loop {
        match set.master_port().await {
            Some(port) if port != old => break port,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no failover; logs:\n{}",
            set.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut direct = set
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], new)))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // fred reconnects on its own after a connection closed at the move.
        let set_ok = client.set::<(), _, _>("k", "2", None, None, false).await;
        let mut raw = RawClient::connect(proxy.addr).await.unwrap();
        let tagset = raw.text(&["TAGSET", "t2", "v", "TAGS", "a"]).await;
        let on_new = direct.text(&["GET", "k"]).await;
        if set_ok.is_ok() && on_new == "$1\r\n2\r\n" && !tagset.starts_with('-') {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not reach the new master over TLS within 5 s (SET: {set_ok:?}; \
             TAGSET: {tagset}; GET on the new master: {on_new:?}); logs:\n{}",
            set.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: String = client.get("k").await.unwrap();
    assert_eq!(got, "2");
    drop(proxy);

    // Another CA, or a server_name the certificates do not hold: the Sentinels'
    // certificates do not check, so no master is found.
    let other = Ca::new(dir.path(), "other");
    let upstream_with = |tls: cachet::config::UpstreamTlsConfig| {
        let mut config = cachet::Config::default();
        config.upstream.url = cachet::config::RedisUrl::parse(&set.url()).unwrap();
        config.upstream.tls = Some(tls);
        cachet::upstream::Upstream::new(config.upstream)
    };
    let refused = [
        upstream_with(cachet::config::UpstreamTlsConfig {
            ca: Some(other.cert.clone()),
            ..Default::default()
        })
        .unwrap(),
        upstream_with(cachet::config::UpstreamTlsConfig {
            ca: Some(ca.cert.clone()),
            server_name: Some("redis.example".into()),
            ..Default::default()
        })
        .unwrap(),
    ];
    for upstream in &refused {
        upstream.start(Vec::new());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for upstream in &refused {
        let found = upstream.master.address();
        assert!(found.is_err(), "a master found: {found:?}");
        assert!(!upstream.is_ready());
        upstream.shutdown().await;
    }

    // [upstream.tls] with a plain sentinel:// url: refused, as with redis://.
    let mut config = cachet::Config::default();
    let plain = set.url().replace("sentinels://", "sentinel://");
    config.upstream.url = cachet::config::RedisUrl::parse(&plain).unwrap();
    config.upstream.tls = Some(Default::default());
    let err = cachet::upstream::Upstream::new(config.upstream)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("is not rediss:// or sentinels://"), "{err}");
}
