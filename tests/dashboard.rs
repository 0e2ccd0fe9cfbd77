//! The dashboard in a real browser. cachet runs with `examples/cachet.toml`'s ClassWaves rules
//! and warmers, the sessions policy, and a token, in front of its own `redis-server`, under
//! load: cache-aside reads of every rule's keys (hits and misses), policy events (some of them
//! failing, into the dead-letter stream), tag invalidations, and warm requests to a local
//! endpoint that refuses one in eight. Headless Chromium then loads `/#token=...` from the
//! admin listener, and the test reads back from the DOM what each chart drew (the page writes
//! it into `data-` attributes of its canvases and current values).
//!
//! A screenshot goes to a temp dir, or, with `CACHET_UPDATE_SCREENSHOT=1`, to
//! `docs/dashboard.png` after `SCREENSHOT_LOAD` of load, so the charts hold minutes of it.
//!
//! Needs Debian's `chromium` package (`.ci/run` installs it).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use support::policies::policy_wasm;
use support::{RedisServer, fred_client};

const TOKEN: &str = "s3cret";
/// Load before the page opens: the page must show it, from the server's history.
const LOAD_BEFORE_PAGE: Duration = Duration::from_secs(5);
/// Load before the screenshot for docs/dashboard.png.
const SCREENSHOT_LOAD: Duration = Duration::from_secs(180);
/// Every card the page shows, by the id of its canvas.
const CARDS: [&str; 12] = [
    "errors",
    "hitrate",
    "rules",
    "ops",
    "latency",
    "ping",
    "memory",
    "keys",
    "invalidations",
    "warm",
    "policy",
    "clients",
];
/// A key of each `[[rules]]` entry of examples/cachet.toml (`{}` is an id), and how many ids
/// the load reads: more ids, fewer hits.
const KEYS: [(&str, u64); 10] = [
    ("sessions:teacher:{}", 20),
    ("sessions:school:{}", 5),
    ("session:{}:analytics", 400),
    ("session:{}", 60),
    ("session:{}:participants", 60),
    ("user:{}:profile", 150),
    ("user:{}:permissions", 100),
    ("roster:7:{}", 60),
    ("school:{}", 5),
    ("school:{}:settings", 5),
];

fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .map(PathBuf::from)
        .find(|bin| Command::new(bin).arg("--version").output().is_ok())
        .expect("headless Chromium is needed: apt-get install chromium (see .ci/run)")
}

/// Runs headless Chromium on `url` with `args`; its stdout.
fn browse(url: &str, args: &[&str], profile: &Path) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--virtual-time-budget=20000")
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The opening tag of the element with `id` in serialised HTML, and where its content starts.
fn element<'a>(dom: &'a str, id: &str) -> Option<(&'a str, usize)> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some((&dom[start..end], end + 1))
}

/// The value of attribute `name` on the element with `id`.
fn attribute(dom: &str, id: &str, name: &str) -> Option<String> {
    let (tag, _) = element(dom, id)?;
    let key = format!(" {name}=\"");
    let value_at = tag.find(&key)? + key.len();
    Some(tag[value_at..].split('"').next()?.to_owned())
}

/// The text of the element with `id`, up to its first child element.
fn text(dom: &str, id: &str) -> String {
    let (_, content) = element(dom, id).unwrap_or_else(|| panic!("no #{id} in:\n{dom}"));
    dom[content..].split('<').next().unwrap_or("").to_owned()
}

fn number(dom: &str, id: &str, name: &str) -> f64 {
    attribute(dom, id, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} on #{id} in:\n{dom}"))
}

/// `HH:MM` or `HH:MM:SS`.
fn is_clock_time(label: &str) -> bool {
    let parts: Vec<&str> = label.split(':').collect();
    (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A label in human units: no exponent, no run of five digits (12345 is 12.3k).
fn is_human(label: &str) -> bool {
    let longest_digits = label
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    !label.contains("e+") && !label.contains("e-") && longest_digits < 5
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64
}

/// The warmers' endpoint: answers 204, and 404 (a failed warm) to one request in eight.
async fn warm_endpoint() -> SocketAddr {
    let served = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().fallback(move || {
        let n = served.fetch_add(1, Ordering::Relaxed);
        async move {
            match n % 8 {
                7 => axum::http::StatusCode::NOT_FOUND,
                _ => axum::http::StatusCode::NO_CONTENT,
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// examples/cachet.toml with its warmers sent to `warm`, the sessions policy, `redis`
/// upstream, a token, and a health check every second.
fn config(redis: &RedisServer, warm: SocketAddr) -> cachet::Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cachet.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("127.0.0.1:3000", &warm.to_string());
    let mut config = cachet::Config::from_toml(&text, "examples/cachet.toml").unwrap();
    config.upstream.url = cachet::config::RedisUrl::parse(&redis.url()).unwrap();
    config.admin.token = Some(cachet::config::Secret::new(TOKEN));
    config.health.interval_ms = 1000;
    let module = policy_wasm("sessions");
    config.policies = vec![
        toml::from_str(&format!(
            "name = \"sessions\"\nmodule = {:?}\n\
             events = [\"session.*\", \"user.updated\", \"roster.changed\", \"school.updated\"]\n\
             timeout_ms = 500\n",
            module.display().to_string()
        ))
        .unwrap(),
    ];
    config
}

/// One worker's load until `running` is false: cache-aside reads (a miss is followed by a
/// SET, which the rules tag), some keys no rule matches, and now and then an event, a failing
/// event (no teacherId) or a tag invalidation.
async fn load(client: Client, seed: u64, running: Arc<AtomicBool>, started: Instant) {
    let mut x = seed;
    let mut random = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut round = 0u64;
    while running.load(Ordering::Relaxed) {
        round += 1;
        for _ in 0..8 {
            let (template, ids) = KEYS[random(KEYS.len() as u64) as usize];
            let key = template.replace("{}", &random(ids).to_string());
            let value: Option<String> = client.get(&key).await.unwrap();
            if value.is_none() {
                let _: () = client.set(&key, "{...}", None, None, false).await.unwrap();
            }
        }
        let _: Option<String> = client.get(format!("lock:{}", random(1000))).await.unwrap();
        let (teacher, session, school) = (random(20), random(60), random(5));
        let emit =
            |args: Vec<String>| client.custom::<fred::types::Value, _>(fred::cmd!("EMIT"), args);
        if round.is_multiple_of(40) {
            let _ = emit(
                [
                    "session.updated",
                    "sessionId",
                    &session.to_string(),
                    "teacherId",
                    &teacher.to_string(),
                    "schoolId",
                    &school.to_string(),
                ]
                .map(String::from)
                .to_vec(),
            )
            .await
            .unwrap();
        }
        if round.is_multiple_of(150) {
            // No teacherId: the policy refuses it, and the event goes to the dead letters.
            let broken = ["session.created", "sessionId", &session.to_string()];
            assert!(emit(broken.map(String::from).to_vec()).await.is_err());
        }
        // A minute in, a storm of invalidations for a while: hit rates drop, then recover.
        let storm = (60..90).contains(&started.elapsed().as_secs());
        if round.is_multiple_of(if storm { 5 } else { 100 }) {
            let _: i64 = client
                .custom(
                    fred::cmd!("TAGINVALIDATE"),
                    vec![format!("school:{school}")],
                )
                .await
                .unwrap();
            let _: i64 = client
                .custom(fred::cmd!("TAGINVALIDATE"), vec!["sessions"])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_opens_full_and_charts_every_card() {
    let update_screenshot = std::env::var_os("CACHET_UPDATE_SCREENSHOT").is_some();
    let redis = RedisServer::start();
    let config = config(&redis, warm_endpoint().await);
    let rules = config.rules.len();
    assert_eq!(
        rules,
        KEYS.len(),
        "a key for every rule of examples/cachet.toml"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cachet = tokio::spawn(cachet::run_with_admin(
        config,
        listener,
        Some(admin),
        async {
            let _ = stop_rx.await;
        },
    ));

    let client = fred_client(&format!("redis://{addr}"), false).await;
    let running = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let workers: Vec<_> = [0x9e37_79b9_7f4a_7c15u64, 0xd1b5_4a32_d192_ed03]
        .into_iter()
        .map(|seed| tokio::spawn(load(client.clone(), seed, running.clone(), started)))
        .collect();
    let warm_up = match update_screenshot {
        true => SCREENSHOT_LOAD,
        false => LOAD_BEFORE_PAGE,
    };
    tokio::time::sleep(warm_up).await;

    let url = format!("http://{admin_addr}/#token={TOKEN}");
    let profile = tempfile::tempdir().unwrap();
    let opened_ms = now_ms();
    let dom = tokio::task::spawn_blocking({
        let (url, profile) = (url.clone(), profile.path().to_owned());
        move || browse(&url, &["--window-size=1400,1000", "--dump-dom"], &profile)
    })
    .await
    .unwrap();

    let overall = attribute(&dom, "overall", "data-value").unwrap();
    assert!(
        ["healthy", "degraded", "unhealthy"].contains(&overall.as_str()),
        "overall: {overall}\n{dom}"
    );
    let (_, reasons) = element(&dom, "reasons").unwrap();
    assert!(dom[reasons..].starts_with("<li>"), "no reasons line: {dom}");
    // Every current value on the page (the script's own template aside) is a card's.
    let values = dom.match_indices("class=\"now\" id=\"now-");
    let values = values.filter(|(at, m)| !dom[at + m.len()..].starts_with('$'));
    assert_eq!(
        values.count(),
        CARDS.len(),
        "a current value per card: {dom}"
    );
    for chart in CARDS.iter().chain(&["overall-chart"]) {
        // Opened full: points from before the page loaded, at one a second.
        let points = number(&dom, chart, "data-points");
        let seconds = LOAD_BEFORE_PAGE.as_secs_f64();
        assert!(points >= seconds - 2.0, "#{chart} drew {points} points");
        let first = number(&dom, chart, "data-first-t");
        assert!(
            first < opened_ms - 2_000.0,
            "#{chart} starts at {first}, the page opened at {opened_ms}"
        );
        // The x axis spans the default range, 15 minutes, in clock times.
        let span = number(&dom, chart, "data-xmax") - number(&dom, chart, "data-xmin");
        assert_eq!(span, 900_000.0, "#{chart}");
        let ticks = attribute(&dom, chart, "data-xticks").unwrap();
        let ticks: Vec<&str> = ticks.split('|').collect();
        assert!(ticks.len() >= 3, "#{chart} x ticks: {ticks:?}");
        assert!(
            ticks.iter().all(|t| is_clock_time(t)),
            "#{chart} x ticks: {ticks:?}"
        );
    }
    for card in CARDS {
        let ticks = attribute(&dom, card, "data-yticks").unwrap();
        assert!(
            ticks.split('|').count() >= 2 && ticks.split('|').all(is_human),
            "#{card} y ticks: {ticks}"
        );
        // The current value is the newest point the chart drew.
        let now = text(&dom, &format!("now-{card}"));
        assert!(
            !now.is_empty() && !now.contains('–') && !now.contains("no data"),
            "#{card}: {now:?}"
        );
        let value = attribute(&dom, &format!("now-{card}"), "data-value");
        let drawn = attribute(&dom, card, "data-last");
        assert!(
            value.is_some() && value == drawn,
            "#{card} shows {value:?} ({now}), its chart ends at {drawn:?}"
        );
    }
    for card in ["hitrate", "rules"] {
        assert_eq!(number(&dom, card, "data-ymax"), 100.0, "#{card}");
        let max = number(&dom, card, "data-max");
        assert!(max > 0.0 && max <= 100.0, "#{card} max {max}");
    }
    assert_eq!(
        number(&dom, "rules", "data-lines"),
        rules as f64,
        "a line per rule"
    );
    assert_eq!(number(&dom, "latency", "data-lines"), 2.0, "p50 and p99");
    let units = |card: &str, any: &[&str]| {
        let ticks = attribute(&dom, card, "data-yticks").unwrap();
        assert!(
            ticks
                .split('|')
                .skip(1)
                .all(|t| any.iter().any(|u| t.ends_with(u))),
            "#{card} y ticks: {ticks}"
        );
    };
    units("latency", &[" µs", " ms", " s"]);
    units("ping", &[" µs", " ms", " s"]);
    units("memory", &[" B", " KiB", " MiB", " GiB"]);
    units("hitrate", &[" %"]);
    units("errors", &[" %"]);
    for (card, what) in [
        ("ops", "operations"),
        ("invalidations", "invalidations"),
        ("warm", "warm requests"),
        ("policy", "policy calls"),
        ("memory", "Redis memory"),
        ("keys", "Redis keys"),
        ("clients", "clients"),
    ] {
        assert!(number(&dom, card, "data-max") > 0.0, "no {what} drawn");
    }
    let latency = number(&dom, "latency", "data-max");
    assert!(latency < 1000.0, "latency ms drawn: {latency}");

    let shot_dir = tempfile::tempdir().unwrap();
    let shot = shot_dir.path().join("dashboard.png");
    tokio::task::spawn_blocking({
        let (shot, profile) = (shot.clone(), profile.path().to_owned());
        // Five minutes: the screenshot's few minutes of load fill most of the width.
        let url = format!("{url}&range=5m");
        move || {
            browse(
                &url,
                &[
                    "--window-size=1600,1240",
                    &format!("--screenshot={}", shot.display()),
                ],
                &profile,
            )
        }
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if update_screenshot {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
        std::fs::write(docs, png).unwrap();
    }

    running.store(false, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    client.quit().await.unwrap();
    let _ = stop_tx.send(());
    cachet.await.unwrap().unwrap();
}
