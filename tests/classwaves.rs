//! The example application (examples/classwaves: Express, ioredis, SQLite) builds and works
//! against cachet: its cache-aside reads go through cachet and pick up the rules' tags and
//! TTLs, hits cost no database query, its writes send one EMIT each, its warm endpoints
//! recompute what an invalidation removed, and bad input gets a clear error.
//!
//! Needs Node.js 20 and npm (CI has both). The first run installs the app's dependencies with
//! `npm ci`, which compiles better-sqlite3 (a few minutes); later runs only run `tsc`. Without
//! npm it fails saying so.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fred::cmd;
use fred::prelude::*;
use serde_json::Value as Json;
use support::{Proxy, RedisServer, fred_client, free_port};

fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/classwaves")
}

fn npm_available() -> bool {
    let ok = |program: &str| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    ok("npm") && ok("node")
}

fn run(dir: &Path, args: &[&str]) {
    let output = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run npm");
    assert!(
        output.status.success(),
        "npm {} failed in {}:\n{}\n{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `npm ci` when the dependencies are missing (or an install stopped before better-sqlite3's
/// native module was built), then the TypeScript build.
/// Installs (first time) and compiles the app, once per test process: the tests run in
/// parallel, and two `npm ci` in one directory delete each other's node_modules.
fn build_app() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = app_dir();
            if !dir
                .join("node_modules/better-sqlite3/build/Release/better_sqlite3.node")
                .exists()
            {
                run(&dir, &["ci", "--no-audit", "--no-fund"]);
            }
            run(&dir, &["run", "build"]);
            dir
        })
        .clone()
}

/// The app as a child process, killed on drop; its log goes into failure messages.
struct App {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl App {
    fn start(app: &Path, cache_port: u16) -> App {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = dir.path().join("app.log");
        let child = Command::new("node")
            .arg(app.join("dist/server.js"))
            .env("CACHE_MODE", "cachet")
            .env("REDIS_HOST", "127.0.0.1")
            .env("REDIS_PORT", cache_port.to_string())
            .env("PORT", port.to_string())
            .env("DB_PATH", dir.path().join("classwaves.db"))
            .env("SEED_SCHOOLS", "2")
            .env("SEED_TEACHERS_PER_SCHOOL", "3")
            .env("SEED_STUDENTS_PER_SCHOOL", "20")
            .env("SEED_SESSIONS_PER_TEACHER", "2")
            .env("SEED_STUDENTS_PER_ROSTER", "5")
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(std::fs::File::create(dir.path().join("app.err")).expect("log file"))
            .spawn()
            .expect("start node");
        App {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err = std::fs::read_to_string(self.log.with_file_name("app.err")).unwrap_or_default();
        format!("--- app stdout\n{out}--- app stderr\n{err}")
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the app exited ({status}) during startup\n{}", self.log());
            }
            if let Ok(r) = http
                .get(format!("{}/internal/stats", self.base))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the app did not answer within 20s\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a request; returns the status and the JSON body (Null for an empty one).
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Json>,
) -> (u16, Json) {
    let mut request = http.request(method, &url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = if text.is_empty() {
        Json::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"))
    };
    (status, json)
}

async fn tags_of(cache: &fred::clients::Client, key: &str) -> Vec<String> {
    let mut tags: Vec<String> = cache
        .custom(cmd!("TAGS"), vec![key])
        .await
        .expect("TAGS through cachet");
    tags.sort();
    tags
}

/// Where each classwaves case starts: a fresh Redis, cachet with the example's rules in
/// front of it, the app (built once, started and seeded afresh) in front of cachet, and
/// clients of cachet and of Redis. Each case takes it apart into those names, and ends by
/// closing the clients, stopping the app and shutting cachet down cleanly.
/// Ends a case: the clients quit, the app stops, then cachet shuts down cleanly.
async fn close(
    proxy: Proxy,
    app: App,
    via_cachet: fred::clients::Client,
    direct: fred::clients::Client,
) {
    via_cachet.quit().await.unwrap();
    direct.quit().await.unwrap();
    drop(app);
    proxy.shutdown().await.expect("clean shutdown");
}

struct Stack {
    redis: RedisServer,
    proxy: Proxy,
    app: App,
    http: reqwest::Client,
    via_cachet: fred::clients::Client,
    direct: fred::clients::Client,
}

impl Stack {
    async fn start() -> Stack {
        assert!(
            npm_available(),
            "npm and node not found: install Node.js 20 and npm (.ci/run does) to run the example app"
        );
        let app_dir = build_app();
        let redis = RedisServer::start();
        let proxy = Proxy::start_with(&redis.url(), |config| {
            let example = cachet::Config::from_file(Path::new("examples/cachet.toml"))
                .expect("example config");
            config.ttl = example.ttl;
            config.rules = example.rules;
        })
        .await;
        let mut app = App::start(&app_dir, proxy.addr.port());
        let http = reqwest::Client::new();
        app.wait_ready(&http).await;
        let via_cachet = fred_client(&proxy.url(), false).await;
        let direct = fred_client(&redis.url(), false).await;
        Stack {
            redis,
            proxy,
            app,
            http,
            via_cachet,
            direct,
        }
    }
}

/// The reads of `classwaves_app_reads_through_cachet_with_the_rules_tags_and_ttls` (teacher
/// 1's sessions, one session, its roster, a profile, a school, its sessions): what the later
/// cases find cached. Returns that session's id.
async fn read_through<F, R>(get: &F) -> u64
where
    F: Fn(&str) -> R,
    R: std::future::Future<Output = (u16, Json)>,
{
    let (status, list) = get("/api/v1/teachers/1/sessions").await;
    assert_eq!(status, 200, "{list}");
    let session = list["data"]["sessions"][0]["id"].as_u64().expect("id");
    for path in [
        format!("/api/v1/sessions/{session}"),
        format!("/api/v1/schools/1/sessions/{session}/roster"),
        "/api/v1/users/1/profile".to_owned(),
        "/api/v1/schools/1".to_owned(),
        "/api/v1/schools/1/sessions".to_owned(),
    ] {
        let (status, body) = get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    session
}

/// The app's cache-aside reads go through cachet: a miss, then a hit that costs no query;
/// the keys the app wrote with plain SETs carry the rules' tags and TTL classes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classwaves_app_reads_through_cachet_with_the_rules_tags_and_ttls() {
    let Stack {
        redis,
        proxy,
        app,
        http,
        via_cachet,
        direct,
    } = Stack::start().await;
    let base = app.base.clone();
    let log = || format!("{}\n--- redis\n{}", app.log(), redis.log());
    let get = |path: &str| call(&http, reqwest::Method::GET, format!("{base}{path}"), None);
    let stats = || async { get("/internal/stats").await.1 };

    // Teacher 1 (school 1) and one of their sessions, from the seed.
    let (status, list) = get("/api/v1/teachers/1/sessions").await;
    assert_eq!(status, 200, "{list}\n{}", log());
    assert_eq!(list["cache"], "miss", "{list}");
    let sessions = list["data"]["sessions"]
        .as_array()
        .expect("sessions")
        .clone();
    assert_eq!(sessions.len(), 2, "{list}");
    let session = sessions[0]["id"].as_u64().expect("id");

    // The second read is a hit with the same data, and costs no database query.
    let queries = stats().await["dbQueries"].as_u64().unwrap();
    let (_, again) = get("/api/v1/teachers/1/sessions").await;
    assert_eq!(again["cache"], "hit", "{again}");
    assert_eq!(again["data"], list["data"]);
    assert_eq!(
        stats().await["dbQueries"].as_u64().unwrap(),
        queries,
        "a hit ran a query"
    );

    // The app wrote a plain SET; cachet's rule gave the key its tags and TTL class.
    assert_eq!(
        tags_of(&via_cachet, "sessions:teacher:1").await,
        ["sessions", "teacher:1"]
    );
    let ttl: i64 = direct.ttl("sessions:teacher:1").await.unwrap();
    assert!((290..=300).contains(&ttl), "session-list TTL, got {ttl}");

    let (status, detail) = get(&format!("/api/v1/sessions/{session}")).await;
    assert_eq!(
        (status, detail["cache"].as_str()),
        (200, Some("miss")),
        "{detail}"
    );
    assert_eq!(detail["data"]["version"], 1);
    let ttl: i64 = direct.ttl(format!("session:{session}")).await.unwrap();
    assert!((890..=900).contains(&ttl), "session-detail TTL, got {ttl}");
    let (_, roster) = get(&format!("/api/v1/schools/1/sessions/{session}/roster")).await;
    assert_eq!(
        tags_of(&via_cachet, &format!("roster:1:{session}")).await,
        [
            "roster".to_owned(),
            format!("roster:1:{session}"),
            format!("session:{session}")
        ],
        "{roster}"
    );
    for path in [
        "/api/v1/users/1/profile",
        "/api/v1/schools/1",
        "/api/v1/schools/1/sessions",
    ] {
        let (status, body) = get(path).await;
        assert_eq!(
            (status, body["cache"].as_str()),
            (200, Some("miss")),
            "{path}: {body}"
        );
        let data = &body["data"];
        assert!(
            data["version"].is_u64() || data["count"].is_u64(),
            "{path}: {body}"
        );
    }
    // A fresh cachet under this walkthrough is healthy: its misses are a cold cache's, too
    // few to judge a hit rate by (they once made it report itself unhealthy).
    let info: String = via_cachet
        .custom(fred::cmd!("INFO"), vec!["cachet"])
        .await
        .unwrap();
    assert!(info.contains("\r\noverall:healthy\r\n"), "{info}");
    assert!(info.contains("\r\nmisses:"), "{info}");
    close(proxy, app, via_cachet, direct).await;
}

/// A write commits, answers with the new version, and sends exactly one EMIT (whose
/// outcome depends on the policies this cachet has; the app counts either). Then, on that
/// state, the invalidation the sessions policy would do, and the warm requests that
/// recompute what it removed: one case, each step reads what the one before left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classwaves_write_emits_once_and_a_warm_recomputes_the_invalidated_list() {
    let Stack {
        redis,
        proxy,
        app,
        http,
        via_cachet,
        direct,
    } = Stack::start().await;
    let base = app.base.clone();
    let log = || format!("{}\n--- redis\n{}", app.log(), redis.log());
    let get = |path: &str| call(&http, reqwest::Method::GET, format!("{base}{path}"), None);
    let stats = || async { get("/internal/stats").await.1 };

    let session = read_through(&get).await;
    let (status, updated) = call(
        &http,
        reqwest::Method::PATCH,
        format!("{base}/api/v1/sessions/{session}"),
        Some(serde_json::json!({"title": "Renamed", "status": "active"})),
    )
    .await;
    assert_eq!(status, 200, "{updated}\n{}", log());
    assert_eq!(updated["data"]["version"], 2);
    assert_eq!(updated["data"]["status"], "active");
    let s = stats().await;
    assert_eq!(
        s["cache"]["emits"].as_u64().unwrap() + s["cache"]["emitErrors"].as_u64().unwrap(),
        1,
        "{s}"
    );

    // What the sessions policy does for session.updated, done by hand: after the
    // invalidation the app reads the new version from the database.
    let _: i64 = via_cachet
        .custom(
            cmd!("TAGINVALIDATE"),
            vec![format!("session:{session}"), "teacher:1".into()],
        )
        .await
        .unwrap();
    let (_, detail) = get(&format!("/api/v1/sessions/{session}")).await;
    assert_eq!(
        (detail["cache"].as_str(), &detail["data"]["version"]),
        (Some("miss"), &Json::from(2)),
        "{detail}"
    );

    // A warm request recomputes the invalidated list and writes it through cachet (tags
    // and all); a second one finds the key present and leaves it.
    for (method, warmed, skipped) in [(reqwest::Method::POST, 1, 0), (reqwest::Method::GET, 1, 1)] {
        let (status, _) = call(
            &http,
            method,
            format!("{base}/internal/warm/teacher/1"),
            None,
        )
        .await;
        assert_eq!(status, 204, "{}", log());
        let s = stats().await;
        assert_eq!(
            (
                s["cache"]["warmed"].as_u64(),
                s["cache"]["warmSkipped"].as_u64()
            ),
            (Some(warmed), Some(skipped)),
            "{s}"
        );
    }
    let cached: String = direct.get("sessions:teacher:1").await.unwrap();
    let cached: Json = serde_json::from_str(&cached).unwrap();
    let entry = cached["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == session)
        .cloned();
    assert_eq!(
        entry.map(|s| s["version"].clone()),
        Some(Json::from(2)),
        "{cached}"
    );
    assert_eq!(
        tags_of(&via_cachet, "sessions:teacher:1").await,
        ["sessions", "teacher:1"]
    );
    let (_, list) = get("/api/v1/teachers/1/sessions").await;
    assert_eq!(list["cache"], "hit", "the warmed list is served: {list}");
    close(proxy, app, via_cachet, direct).await;
}

/// Every other kind of entry the sessions policy invalidates has its warm endpoint, which
/// recomputes the key through cachet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_classwaves_warm_endpoint_recomputes_its_key_through_cachet() {
    let Stack {
        redis,
        proxy,
        app,
        http,
        via_cachet,
        direct,
    } = Stack::start().await;
    let base = app.base.clone();
    let log = || format!("{}\n--- redis\n{}", app.log(), redis.log());
    let get = |path: &str| call(&http, reqwest::Method::GET, format!("{base}{path}"), None);
    let stats = || async { get("/internal/stats").await.1 };

    let session = read_through(&get).await;
    let warms = [
        (
            "/internal/warm/school/1/sessions".to_string(),
            "sessions:school:1".to_string(),
            "sessions:school",
        ),
        (
            format!("/internal/warm/session/{session}"),
            format!("session:{session}"),
            "session",
        ),
        (
            format!("/internal/warm/school/1/sessions/{session}/roster"),
            format!("roster:1:{session}"),
            "roster",
        ),
        (
            "/internal/warm/user/1".to_string(),
            "user:1:profile".to_string(),
            "user",
        ),
        (
            "/internal/warm/school/1".to_string(),
            "school:1".to_string(),
            "school",
        ),
    ];
    for (path, key, kind) in warms {
        let _: i64 = via_cachet.del(&key).await.unwrap();
        let (status, _) = call(&http, reqwest::Method::POST, format!("{base}{path}"), None).await;
        assert_eq!(status, 204, "{path}: {}", log());
        let present: i64 = direct.exists(&key).await.unwrap();
        assert_eq!(present, 1, "{path} recomputes {key}: {}", log());
        let s = stats().await;
        assert_eq!(s["cache"]["byKind"][kind]["warmed"], 1, "{path}: {s}");
    }
    close(proxy, app, via_cachet, direct).await;
}

/// Bad input: a clear 4xx, and the app keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classwaves_answers_bad_input_with_a_clear_4xx_and_keeps_serving() {
    let Stack {
        redis,
        proxy,
        app,
        http,
        via_cachet,
        direct,
    } = Stack::start().await;
    let base = app.base.clone();
    let log = || format!("{}\n--- redis\n{}", app.log(), redis.log());
    let get = |path: &str| call(&http, reqwest::Method::GET, format!("{base}{path}"), None);

    let (status, body) = get("/api/v1/sessions/abc").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("sessionId must be a positive integer, got 'abc'"))
    );
    let (status, _) = get("/api/v1/sessions/999999").await;
    assert_eq!(status, 404);
    let response = http
        .post(format!("{base}/api/v1/sessions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let (status, _) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/v1/sessions"),
        Some(serde_json::json!({"teacherId": 999999})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = get("/api/v1/teachers/1/sessions").await;
    assert_eq!(status, 200, "{}", log());
    close(proxy, app, via_cachet, direct).await;
}

/// Rosters show their students' names: renaming a student must refresh every cached roster
/// listing them (the app names those sessions in `user.updated`, the sessions policy drops
/// them), and renaming a teacher drops none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_student_refreshes_the_rosters_listing_them() {
    assert!(npm_available(), "npm and node not found");
    let app_dir = build_app();
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/out/sessions.wasm");
    assert!(
        module.exists(),
        "{} is missing: run policies/build.sh",
        module.display()
    );
    let policy: cachet::config::PolicyConfig = toml::from_str(&format!(
        "name = \"sessions\"\nmodule = {:?}\nevents = [\"user.updated\"]\n",
        module.display().to_string()
    ))
    .expect("policy config");
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), move |config| {
        let example =
            cachet::Config::from_file(Path::new("examples/cachet.toml")).expect("example config");
        config.ttl = example.ttl;
        config.rules = example.rules;
        config.policies = vec![policy];
    })
    .await;
    let mut app = App::start(&app_dir, proxy.addr.port());
    let http = reqwest::Client::new();
    app.wait_ready(&http).await;
    let base = app.base.clone();
    let get = |path: String| call(&http, reqwest::Method::GET, format!("{base}{path}"), None);
    let rename = |user: u64, name: &str| {
        let body = serde_json::json!({ "name": name });
        call(
            &http,
            reqwest::Method::PATCH,
            format!("{base}/api/v1/users/{user}"),
            Some(body),
        )
    };

    // Every roster of school 1, read twice so that the second read is a cache hit.
    let (_, catalog) = get("/internal/catalog".into()).await;
    let sessions: Vec<u64> = catalog["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter(|s| s[2] == 1)
        .map(|s| s[0].as_u64().expect("id"))
        .collect();
    let roster = |session: u64| get(format!("/api/v1/schools/1/sessions/{session}/roster"));
    let mut listing = std::collections::BTreeMap::new();
    for &session in &sessions {
        let (status, body) = roster(session).await;
        assert_eq!(status, 200, "{body}\n{}", app.log());
        for student in body["data"]["students"].as_array().expect("students") {
            listing
                .entry(student["id"].as_u64().expect("id"))
                .or_insert_with(Vec::new)
                .push(session);
        }
        let (_, again) = roster(session).await;
        assert_eq!(again["cache"], "hit", "{again}");
    }
    // A student on more than one roster, and a roster without them.
    let (&student, on) = listing
        .iter()
        .max_by_key(|(_, on)| on.len())
        .expect("a student on a roster");
    assert!(on.len() >= 2, "seeded rosters overlap: {listing:?}");
    let off = sessions
        .iter()
        .copied()
        .find(|s| !on.contains(s))
        .expect("a roster without the student");

    let (status, renamed) = rename(student, "Ada Renamed").await;
    assert_eq!(status, 200, "{renamed}\n{}", app.log());
    for &session in on {
        let (_, body) = roster(session).await;
        let shown = body["data"]["students"]
            .as_array()
            .expect("students")
            .iter()
            .find(|s| s["id"] == student)
            .map(|s| s["name"].clone());
        assert_eq!(
            (body["cache"].as_str(), shown),
            (Some("miss"), Some(Json::from("Ada Renamed"))),
            "roster of session {session} after renaming student {student}: {body}\n{}",
            app.log()
        );
    }
    let (_, body) = roster(off).await;
    assert_eq!(
        body["cache"], "hit",
        "a roster without the student stays: {body}"
    );

    // A teacher's rename names no roster.
    let teacher = catalog["teachers"][0][0].as_u64().expect("teacher id");
    let (status, _) = rename(teacher, "Teacher Renamed").await;
    assert_eq!(status, 200, "{}", app.log());
    for &session in &sessions {
        let (_, body) = roster(session).await;
        assert_eq!(body["cache"], "hit", "session {session}: {body}");
    }
    drop(app);
    proxy.shutdown().await.expect("clean shutdown");
}
