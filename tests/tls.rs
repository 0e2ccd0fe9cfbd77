//! TLS on both sides: clients (fred, redis-cli, a raw client) over cachet's TLS listener beside
//! its plain one, cachet to Redis's TLS port (`rediss://`), mutual TLS both ways, refusals with
//! a clear error, certificate reloads that leave open connections alone, and hostile
//! handshakes that cannot crowd out other clients.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::tls::{
    Ca, Identity, TlsClient, TlsProxy, TlsRedis, client_config, fred_tls_client, proxy_tls,
};
use support::{RawClient, RedisServer, free_port};

fn upstream_tls(ca: &Ca, identity: Option<&Identity>) -> cachet::config::UpstreamTlsConfig {
    cachet::config::UpstreamTlsConfig {
        ca: Some(ca.cert.clone()),
        cert: identity.map(|i| i.cert.clone()),
        key: identity.map(|i| i.key.clone()),
        ..Default::default()
    }
}

fn config_for(url: &str) -> cachet::Config {
    let mut config = cachet::Config::default();
    config.upstream.url = cachet::config::RedisUrl::parse(url).expect("url");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_over_tls_through_cachet_to_tls_redis_beside_plain_clients() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    // Redis asks for a client certificate: cachet must show the one [upstream.tls] names.
    let redis = TlsRedis::start(&ca, &ca.server("redis"), true);
    let mut config = config_for(&redis.tls_url());
    config.upstream.tls = Some(upstream_tls(&ca, Some(&ca.client("cachet-upstream"))));
    config.proxy.tls = Some(proxy_tls(&ca.server("cachet"), None));
    let proxy = TlsProxy::start(config).await;
    proxy.wait_ready().await;

    for resp3 in [false, true] {
        let client = fred_tls_client(proxy.tls_addr, &ca.cert, None, resp3).await;
        let key = format!("tls:fred:{resp3}");
        let _: () = client
            .set(&key, "over tls", None, None, false)
            .await
            .unwrap();
        let value: String = client.get(&key).await.unwrap();
        assert_eq!(value, "over tls", "RESP3 {resp3}");
        let hello: String = client.ping(None).await.unwrap();
        assert_eq!(hello, "PONG");
        client.quit().await.unwrap();
    }
    // The plain listener serves beside the TLS one, and both reach the same Redis.
    let mut plain = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(
        plain.text(&["GET", "tls:fred:true"]).await,
        "$8\r\nover tls\r\n"
    );
    let mut direct = RawClient::connect(redis.server.addr()).await.unwrap();
    assert_eq!(
        direct.text(&["GET", "tls:fred:false"]).await,
        "$8\r\nover tls\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_over_tls_through_cachet() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.proxy.tls = Some(proxy_tls(&ca.server("cachet"), None));
    let proxy = TlsProxy::start(config).await;
    proxy.wait_ready().await;
    let port = proxy.tls_addr.port().to_string();
    let cacert = ca.cert.display().to_string();
    // redis-cli runs as a child: cachet shares this test's runtime, so wait for it async.
    let cli = |args: &[&str]| {
        let mut command = tokio::process::Command::new("redis-cli");
        command
            .args(["--tls", "-h", "127.0.0.1", "-p", &port])
            .args(args);
        async move { command.output().await.expect("redis-cli installed") }
    };
    let set = cli(&["--cacert", &cacert, "SET", "tls:cli", "yes"]).await;
    assert_eq!(String::from_utf8_lossy(&set.stdout), "OK\n", "{set:?}");
    let get = cli(&["--cacert", &cacert, "GET", "tls:cli"]).await;
    assert_eq!(String::from_utf8_lossy(&get.stdout), "yes\n", "{get:?}");
    // Without the CA, redis-cli does not trust cachet's certificate and says so.
    let untrusted = cli(&["PING"]).await;
    let said = String::from_utf8_lossy(&untrusted.stderr).to_string()
        + &String::from_utf8_lossy(&untrusted.stdout);
    assert!(said.contains("certificate verify failed"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_certificates_of_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let stranger = Ca::new(dir.path(), "stranger");
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.proxy.tls = Some(proxy_tls(&ca.server("cachet"), Some(&ca)));
    let proxy = TlsProxy::start(config).await;
    proxy.wait_ready().await;

    let app = ca.client("app");
    let mut admitted = TlsClient::connect(proxy.tls_addr, client_config(&ca.cert, Some(&app)))
        .await
        .unwrap();
    assert_eq!(admitted.text(&["PING"]).await, "+PONG\r\n");
    let fred = fred_tls_client(proxy.tls_addr, &ca.cert, Some(&app), true).await;
    let _: () = fred.set("tls:mtls", "1", None, None, false).await.unwrap();

    // With TLS 1.3 the client learns of the refusal at its first read: no reply either way.
    for (who, identity) in [
        ("no certificate", None),
        ("a stranger's", Some(stranger.client("intruder"))),
    ] {
        let refused =
            match TlsClient::connect(proxy.tls_addr, client_config(&ca.cert, identity.as_ref()))
                .await
            {
                Err(_) => true,
                Ok(mut client) => client.command(&["PING"]).await.is_err(),
            };
        assert!(
            refused,
            "{who}: a client without a certificate of the client CA got through"
        );
    }
    // redis-cli, with and without its certificate.
    let port = proxy.tls_addr.port().to_string();
    let base = [
        "--tls",
        "--cacert",
        ca.cert.to_str().unwrap(),
        "-h",
        "127.0.0.1",
        "-p",
        &port,
    ];
    let with = tokio::process::Command::new("redis-cli")
        .args(base)
        .args([
            "--cert",
            app.cert.to_str().unwrap(),
            "--key",
            app.key.to_str().unwrap(),
            "GET",
            "tls:mtls",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&with.stdout), "1\n", "{with:?}");
    let without = tokio::process::Command::new("redis-cli")
        .args(base)
        .args(["GET", "tls:mtls"])
        .output()
        .await
        .unwrap();
    assert_ne!(
        String::from_utf8_lossy(&without.stdout),
        "1\n",
        "{without:?}"
    );
    // The admitted client was not disturbed, and plain clients never were.
    assert_eq!(admitted.text(&["GET", "tls:mtls"]).await, "$1\r\n1\r\n");
    let mut plain = RawClient::connect(proxy.addr).await.unwrap();
    assert_eq!(plain.text(&["PING"]).await, "+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_redis_certificate_is_a_clear_error_to_clients_and_in_health() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let other = Ca::new(dir.path(), "other");
    let redis = TlsRedis::start(&other, &other.server("redis"), false);
    let mut config = config_for(&redis.tls_url());
    config.upstream.tls = Some(upstream_tls(&ca, None));
    config.proxy.tls = Some(proxy_tls(&ca.server("cachet"), None));
    config.health.interval_ms = 200;
    let proxy = TlsProxy::start(config).await;
    let expected = format!(
        "-ERR upstream unavailable: 127.0.0.1:{}: invalid peer certificate: UnknownIssuer\r\n",
        redis.tls_port
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = TlsClient::connect(proxy.tls_addr, client_config(&ca.cert, None))
        .await
        .unwrap();
    loop {
        let reply = client.text(&["GET", "k"]).await;
        if reply == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "last reply: {reply:?}, wanted {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = format!("http://{}/health", proxy.admin_addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = reqwest::get(&health).await.unwrap().text().await.unwrap();
        if body.contains("invalid peer certificate: UnknownIssuer") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/health never named the cause: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The same Redis with insecure_skip_verify, named explicitly: served.
    let mut config = config_for(&redis.tls_url());
    config.upstream.tls = Some(cachet::config::UpstreamTlsConfig {
        insecure_skip_verify: true,
        ..Default::default()
    });
    config.proxy.tls = Some(proxy_tls(&ca.server("cachet2"), None));
    let insecure = TlsProxy::start(config).await;
    insecure.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_that_cannot_work_fail_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let redis = RedisServer::start();
    // [upstream.tls] with a plain url.
    let mut plain = config_for(&redis.url());
    plain.upstream.tls = Some(upstream_tls(&ca, None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = cachet::run(plain, listener, std::future::pending())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("use rediss://"), "{error}");
    // A key that is not the certificate's.
    let mut mismatched = config_for(&redis.url());
    let (one, two) = (ca.server("one"), ca.server("two"));
    let mut tls = proxy_tls(&one, None);
    tls.key = two.key.clone();
    mismatched.proxy.tls = Some(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = cachet::run(mismatched, listener, std::future::pending())
        .await
        .unwrap_err();
    assert!(error.to_string().starts_with("[proxy.tls]: "), "{error}");
    assert!(error.to_string().contains("one.crt"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_handshakes_cannot_crowd_out_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    let mut tls = proxy_tls(&ca.server("cachet"), None);
    tls.handshake_timeout_ms = 1_000;
    config.proxy.tls = Some(tls);
    config.proxy.max_clients = 3;
    let proxy = TlsProxy::start(config).await;
    proxy.wait_ready().await;
    let good = || TlsClient::connect(proxy.tls_addr, client_config(&ca.cert, None));

    // Garbage instead of a ClientHello: closed at once.
    let mut garbage = TcpStream::connect(proxy.tls_addr).await.unwrap();
    garbage
        .write_all(&RawClient::encode(&["PING"]))
        .await
        .unwrap();
    assert!(support::closed_within(&mut garbage, Duration::from_secs(2)).await);

    // Two that connect and never say anything hold two of the three places...
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(proxy.tls_addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut client = good().await.unwrap();
    assert_eq!(client.text(&["PING"]).await, "+PONG\r\n");
    // ...so a fourth connection finds no place and is closed without a handshake...
    let mut over = TcpStream::connect(proxy.tls_addr).await.unwrap();
    assert!(support::closed_within(&mut over, Duration::from_secs(2)).await);
    // ...until the silent ones run out of time.
    let started = Instant::now();
    for stream in &mut silent {
        assert!(support::closed_within(stream, Duration::from_secs(5)).await);
    }
    // Well before the default 10 s: closed by the 1 s limit.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let mut later = good().await.unwrap();
    assert_eq!(later.text(&["PING"]).await, "+PONG\r\n");
    drop(later);

    // A stream of garbage connections does not slow a TLS client down.
    let target = proxy.tls_addr;
    let flood = tokio::spawn(async move {
        let mut junk = vec![0x16u8, 3, 1, 0xff, 0xff];
        junk.extend(std::iter::repeat_n(0xAB, 4096));
        loop {
            if let Ok(mut s) = TcpStream::connect(target).await {
                let _ = s.write_all(&junk).await;
                let mut sink = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut sink)).await;
            }
        }
    });
    for i in 0..200 {
        let started = Instant::now();
        assert_eq!(client.text(&["PING"]).await, "+PONG\r\n", "PING {i}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "PING {i} took {:?}",
            started.elapsed()
        );
    }
    flood.abort();
}

/// The cachet binary with `config` (a file in `dir`) and `args`, its log in `dir/cachet.log`.
fn start_binary(dir: &Path, config: &str, args: &[&str]) -> Child {
    let path = dir.join("cachet.toml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.join("cachet.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_cachet"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .env("CACHET_ADMIN_LISTEN", "")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start cachet")
}

async fn wait_for_port(port: u16, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "cachet did not listen on {port}; log:\n{}",
            std::fs::read_to_string(dir.join("cachet.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Copies `identity`'s files over the ones cachet serves: key first, certificate last, each
/// by rename.
fn install(identity: &Identity, live: &Identity) {
    for (from, to) in [(&identity.key, &live.key), (&identity.cert, &live.cert)] {
        let staged = to.with_extension("new");
        std::fs::copy(from, &staged).unwrap();
        std::fs::rename(&staged, to).unwrap();
    }
}

/// Waits until a new connection is served `wanted`.
async fn served(addr: std::net::SocketAddr, ca: &Ca, wanted: &Identity, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let client = TlsClient::connect(addr, client_config(&ca.cert, None))
            .await
            .unwrap();
        if client.peer_cert() == wanted.der() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served; log:\n{}",
            std::fs::read_to_string(dir.join("cachet.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn reload_keeps_open_connections(on_sighup: bool) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let first = ca.server("first");
    let live = Identity {
        cert: dir.path().join("live.crt"),
        key: dir.path().join("live.key"),
    };
    install(&first, &live);
    let redis = RedisServer::start();
    let (port, tls_port, unused) = (free_port(), free_port(), free_port());
    // Only the signal reloads in the SIGHUP run: the change of files alone must not.
    let check = if on_sighup { 0 } else { 200 };
    let mut child = start_binary(
        dir.path(),
        &format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n\
             [proxy.tls]\nlisten = \"127.0.0.1:{unused}\"\ncert = {:?}\nkey = {:?}\n\
             reload_check_ms = {check}\n\
             [upstream]\nurl = \"{}\"\n",
            live.cert,
            live.key,
            redis.url()
        ),
        // The flag wins over the file's `listen`.
        &["--tls-listen", &format!("127.0.0.1:{tls_port}")],
    );
    wait_for_port(tls_port, dir.path()).await;
    let addr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let mut open = TlsClient::connect(addr, client_config(&ca.cert, None))
        .await
        .unwrap();
    assert_eq!(open.peer_cert(), first.der());
    let deadline = Instant::now() + Duration::from_secs(10);
    while open.text(&["PING"]).await != "+PONG\r\n" {
        assert!(
            Instant::now() < deadline,
            "cachet never answered PING over TLS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let second = ca.server("second");
    install(&second, &live);
    if on_sighup {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let unchanged = TlsClient::connect(addr, client_config(&ca.cert, None))
            .await
            .unwrap();
        assert_eq!(
            unchanged.peer_cert(),
            first.der(),
            "reloaded without SIGHUP"
        );
        signal(&child, "HUP");
    }
    served(addr, &ca, &second, dir.path()).await;
    // The connection opened before the reload keeps its session and its certificate.
    assert_eq!(open.text(&["SET", "tls:reload", "kept"]).await, "+OK\r\n");
    assert_eq!(open.text(&["GET", "tls:reload"]).await, "$4\r\nkept\r\n");
    assert_eq!(open.peer_cert(), first.der());

    // A bad version (a key that is not PEM) keeps the certificate in use, logged once. (The
    // renames above may have shown a moment of new key with old certificate: logged before.)
    let logged_before = std::fs::read_to_string(dir.path().join("cachet.log"))
        .unwrap()
        .len();
    std::fs::write(&live.key, "not a key\n").unwrap();
    if on_sighup {
        signal(&child, "HUP");
        tokio::time::sleep(Duration::from_millis(300)).await;
        signal(&child, "HUP");
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    served(addr, &ca, &second, dir.path()).await;
    assert_eq!(open.text(&["PING"]).await, "+PONG\r\n");
    let log = std::fs::read_to_string(dir.path().join("cachet.log")).unwrap();
    let log = &log[logged_before..];
    assert_eq!(log.matches("TLS reload failed").count(), 1, "{log}");
    assert!(log.contains("live.key"), "the error names the file: {log}");

    // Fixed again: served again.
    let third = ca.server("third");
    install(&third, &live);
    if on_sighup {
        signal(&child, "HUP");
    }
    served(addr, &ca, &third, dir.path()).await;
    assert_eq!(open.text(&["PING"]).await, "+PONG\r\n");

    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    reload_keeps_open_connections(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_file_is_reloaded_without_dropping_connections() {
    reload_keeps_open_connections(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_out_of_band_and_subscriber_connections_use_tls_too() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    // Redis takes TLS clients with a certificate only: a plain connection would be refused.
    let redis = TlsRedis::start(&ca, &ca.server("redis"), true);
    let mut config = config_for(&redis.tls_url());
    config.upstream.tls = Some(upstream_tls(&ca, Some(&ca.client("cachet-upstream"))));
    config.proxy.tls = Some(proxy_tls(&ca.server("cachet"), None));
    let proxy = TlsProxy::start(config).await;
    proxy.wait_ready().await;
    let tls = || TlsClient::connect(proxy.tls_addr, client_config(&ca.cert, None));

    // A transaction: a dedicated connection, then a spare renamed for the next client.
    let mut one = tls().await.unwrap();
    assert_eq!(one.text(&["CLIENT", "SETNAME", "one"]).await, "+OK\r\n");
    assert_eq!(one.text(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(one.text(&["INCR", "tls:n"]).await, "+QUEUED\r\n");
    assert_eq!(one.text(&["EXEC"]).await, "*1\r\n:1\r\n");
    let mut two = tls().await.unwrap();
    assert_eq!(two.text(&["CLIENT", "SETNAME", "two"]).await, "+OK\r\n");
    assert_eq!(two.text(&["MULTI"]).await, "+OK\r\n");
    assert_eq!(two.text(&["CLIENT", "GETNAME"]).await, "+QUEUED\r\n");
    assert_eq!(two.text(&["INCR", "tls:n"]).await, "+QUEUED\r\n");
    assert_eq!(two.text(&["EXEC"]).await, "*2\r\n$3\r\ntwo\r\n:2\r\n");
    // A blocking command, on a dedicated connection too.
    assert_eq!(two.text(&["BLPOP", "tls:empty", "0.1"]).await, "*-1\r\n");
    // The out-of-band lane.
    assert_eq!(
        one.text(&["SCRIPT", "KILL"]).await,
        "-NOTBUSY No scripts in execution right now.\r\n"
    );
    // A subscriber, over TLS on both sides.
    let mut subscriber = tls().await.unwrap();
    assert_eq!(
        subscriber.text(&["SUBSCRIBE", "tls:ch"]).await,
        "*3\r\n$9\r\nsubscribe\r\n$6\r\ntls:ch\r\n:1\r\n"
    );
    assert_eq!(one.text(&["PUBLISH", "tls:ch", "hi"]).await, ":1\r\n");
    let message = subscriber.read_frame().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&message),
        "*3\r\n$7\r\nmessage\r\n$6\r\ntls:ch\r\n$2\r\nhi\r\n"
    );
    // A large value crosses many TLS records both ways.
    let big = "x".repeat(3 << 20);
    assert_eq!(one.text(&["SET", "tls:big", &big]).await, "+OK\r\n");
    let reply = one.command(&["GET", "tls:big"]).await.unwrap();
    assert_eq!(
        reply.len(),
        big.len() + format!("${}\r\n\r\n", big.len()).len()
    );
}
