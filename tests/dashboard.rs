//! The dashboard in a real browser: cachet runs in front of its own `redis-server` under load
//! (hits, misses, tag invalidations), headless Chromium loads `/` from the admin listener,
//! and the test reads back from the DOM what each chart plotted (the page writes it into
//! `data-` attributes of its canvases). A screenshot goes to a temp dir, or to
//! `docs/dashboard.png` with `CACHET_UPDATE_SCREENSHOT=1`.
//!
//! Needs Debian's `chromium` package (`.ci/run` installs it).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::interfaces::{ClientLike, KeysInterface};
use support::{RedisServer, fred_client};

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
        .args(["--window-size=1400,1000", "--virtual-time-budget=120000"])
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

/// The value of attribute `name` on the element with `id` in serialised HTML.
fn attribute(dom: &str, id: &str, name: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let key = format!(" {name}=\"");
    let value_at = tag.find(&key)? + key.len();
    Some(tag[value_at..].split('"').next()?.to_owned())
}

fn number(dom: &str, id: &str, name: &str) -> f64 {
    attribute(dom, id, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} on #{id} in:\n{dom}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_charts_live_numbers() {
    let redis = RedisServer::start();
    let mut config = cachet::Config::default();
    config.upstream.url = cachet::config::RedisUrl::parse(&redis.url()).unwrap();
    config.health.interval_ms = 200;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cachet::run_with_admin(
        config,
        listener,
        Some(admin),
        async {
            let _ = stop_rx.await;
        },
    ));

    // Load: three hits to one miss, and a tag invalidation every few rounds.
    let client = fred_client(&format!("redis://{addr}"), false).await;
    let running = Arc::new(AtomicBool::new(true));
    let load = tokio::spawn({
        let running = running.clone();
        let client = client.clone();
        async move {
            let mut i = 0u64;
            while running.load(Ordering::Relaxed) {
                let key = format!("page:{}", i % 50);
                let _: () = client.set(&key, i, None, None, false).await.unwrap();
                for _ in 0..3 {
                    let _: Option<String> = client.get(&key).await.unwrap();
                }
                let _: Option<String> = client.get(format!("absent:{i}")).await.unwrap();
                if i.is_multiple_of(20) {
                    let _: () = client
                        .custom(
                            fred::cmd!("TAGSET"),
                            vec![key.clone(), "v".into(), "TAGS".into(), "pages".into()],
                        )
                        .await
                        .unwrap();
                    let _: i64 = client
                        .custom(fred::cmd!("TAGINVALIDATE"), vec!["pages"])
                        .await
                        .unwrap();
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let url = format!("http://{admin_addr}/");
    let profile = tempfile::tempdir().unwrap();
    let dom = tokio::task::spawn_blocking({
        let (url, profile) = (url.clone(), profile.path().to_owned());
        move || browse(&url, &["--dump-dom"], &profile)
    })
    .await
    .unwrap();
    // Each chart plotted at least two windows, and real, non-zero figures.
    for chart in ["ops", "hitrate", "latency", "invalidations"] {
        assert!(number(&dom, chart, "data-points") >= 2.0, "#{chart}: {dom}");
    }
    let ops = number(&dom, "ops", "data-max");
    assert!(ops > 0.0, "ops/s plotted: {ops}");
    let hit_rate = number(&dom, "hitrate", "data-max");
    assert!(
        hit_rate > 0.0 && hit_rate <= 100.0,
        "hit rate plotted: {hit_rate}"
    );
    let latency = number(&dom, "latency", "data-max");
    assert!(
        latency > 0.0 && latency < 1000.0,
        "latency ms plotted: {latency}"
    );
    assert!(
        number(&dom, "invalidations", "data-max") > 0.0,
        "no invalidation plotted"
    );
    let overall = attribute(&dom, "overall", "data-value").unwrap();
    assert!(
        ["healthy", "degraded", "unhealthy"].contains(&overall.as_str()),
        "{overall}"
    );

    let shot_dir = tempfile::tempdir().unwrap();
    let shot = shot_dir.path().join("dashboard.png");
    tokio::task::spawn_blocking({
        let (shot, profile) = (shot.clone(), profile.path().to_owned());
        move || {
            browse(
                &url,
                &[&format!("--screenshot={}", shot.display())],
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
    if std::env::var_os("CACHET_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
        std::fs::write(docs, png).unwrap();
    }

    running.store(false, Ordering::Relaxed);
    load.await.unwrap();
    client.quit().await.unwrap();
    let _ = stop_tx.send(());
}
