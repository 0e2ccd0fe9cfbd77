//! The sessions policy is written three times, in Rust (policies/sessions), JavaScript
//! (policies/sessions-js) and Python (policies/sessions-py), to show that the contract in wit/
//! is language-neutral. For the same events the three components must return the same actions
//! in the same order: checked through `cachet policy check --json` against the expected
//! actions, and end to end through EMIT on a proxy in front of a real redis-server, where the
//! keys the rules tagged must be gone afterwards (binary-safe ones included).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use fred::clients::Client;
use fred::cmd;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::Value as Reply;
use serde_json::{Value, json};
use support::policies::policy_wasm;
use support::{Proxy, RawClient, RedisServer, fred_client};

const LANGUAGES: [&str; 3] = ["sessions", "sessions-js", "sessions-py"];

/// Every language's component, built if stale (the builds share one lock, so in turn).
fn modules() -> Vec<(&'static str, PathBuf)> {
    LANGUAGES.iter().map(|&l| (l, policy_wasm(l))).collect()
}

/// `cachet policy check MODULE --event EVENT... --json`: whether it passed, and its report.
fn check(module: &Path, event: &[&str]) -> (bool, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["policy", "check"])
        .arg(module)
        .arg("--event")
        .args(event)
        .arg("--json")
        // What is compared is the actions; a loaded machine may stretch one call past the
        // default 10 ms deadline (tests/policy.rs tests the deadlines).
        .args(["--timeout-ms", "2000"])
        .output()
        .expect("run cachet policy check");
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{} {event:?}: not one JSON document ({e}):\n{}\n{}",
            module.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), report)
}

fn tag(name: &str) -> Value {
    json!({ "invalidate-tag": name })
}

fn warm(warmer: &str, params: &[(&str, &str)], key: &str) -> Value {
    json!({ "warm": { "warmer": warmer, "params": params, "key": key } })
}

fn warm_teacher_sessions(teacher: &str) -> Value {
    let key = format!("sessions:teacher:{teacher}");
    warm("teacher-sessions", &[("teacherId", teacher)], &key)
}

fn warm_school_sessions(school: &str) -> Value {
    let key = format!("sessions:school:{school}");
    warm("school-sessions", &[("schoolId", school)], &key)
}

fn warm_roster(school: &str, session: &str) -> Value {
    let key = format!("roster:{school}:{session}");
    warm(
        "roster",
        &[("schoolId", school), ("sessionId", session)],
        &key,
    )
}

/// The events the original CacheEventBus sent, and the actions they must become, in order.
fn cases() -> Vec<(Vec<&'static str>, Vec<Value>)> {
    let session = ["sessionId", "42", "teacherId", "123", "schoolId", "7"];
    let with = |event: &'static str| [&[event][..], &session[..]].concat();
    let changed = vec![
        tag("session:42"),
        tag("teacher:123"),
        tag("school-sessions:7"),
        warm("session-detail", &[("sessionId", "42")], "session:42"),
        warm_teacher_sessions("123"),
        warm_school_sessions("7"),
        warm_roster("7", "42"),
    ];
    vec![
        (
            with("session.created"),
            vec![
                tag("teacher:123"),
                tag("school-sessions:7"),
                warm_teacher_sessions("123"),
                warm_school_sessions("7"),
            ],
        ),
        (with("session.updated"), changed.clone()),
        (with("session.ended"), changed),
        (
            vec!["user.updated", "userId", "9"],
            vec![
                tag("user:9"),
                warm("user-profile", &[("userId", "9")], "user:9:profile"),
            ],
        ),
        // A student's rename names the sessions whose rosters list them.
        (
            vec![
                "user.updated",
                "userId",
                "9",
                "rosterSession",
                "42",
                "schoolId",
                "7",
                "rosterSession",
                "43",
            ],
            vec![
                tag("user:9"),
                tag("roster:7:42"),
                tag("roster:7:43"),
                warm("user-profile", &[("userId", "9")], "user:9:profile"),
                warm_roster("7", "42"),
                warm_roster("7", "43"),
            ],
        ),
        (
            vec!["roster.changed", "schoolId", "7", "sessionId", "42"],
            vec![tag("roster:7:42"), warm_roster("7", "42")],
        ),
        (
            vec!["school.updated", "schoolId", "7"],
            vec![
                tag("school:7"),
                tag("school-sessions:7"),
                warm("school", &[("schoolId", "7")], "school:7"),
                warm_school_sessions("7"),
            ],
        ),
        // schoolId is optional for session events: its tag and warms are skipped.
        (
            vec!["session.created", "teacherId", "5", "sessionId", "1"],
            vec![tag("teacher:5"), warm_teacher_sessions("5")],
        ),
        (
            vec!["session.ended", "teacherId", "5", "sessionId", "1"],
            vec![
                tag("session:1"),
                tag("teacher:5"),
                warm("session-detail", &[("sessionId", "1")], "session:1"),
                warm_teacher_sessions("5"),
            ],
        ),
        // A field sent twice counts by its first occurrence.
        (
            vec!["user.updated", "userId", "ü1", "userId", "2"],
            vec![
                tag("user:ü1"),
                warm("user-profile", &[("userId", "ü1")], "user:ü1:profile"),
            ],
        ),
        (vec!["nobody.listens", "userId", "9"], vec![]),
    ]
}

#[test]
fn every_language_returns_the_same_actions_for_every_event() {
    let modules = modules();
    // One thread per language: loading a component is most of a check's time.
    let reports: Vec<Vec<(bool, Value)>> = std::thread::scope(|scope| {
        let runs: Vec<_> = modules
            .iter()
            .map(|(_, module)| {
                scope.spawn(move || {
                    cases()
                        .iter()
                        .map(|(event, _)| check(module, event))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("checks"))
            .collect()
    });
    for ((language, module), reports) in modules.iter().zip(&reports) {
        for ((event, expected), (passed, report)) in cases().iter().zip(reports) {
            assert!(passed, "{language} {event:?}: check failed: {report:#}");
            assert_eq!(
                report["actions"],
                Value::Array(expected.clone()),
                "{language} ({}) {event:?}",
                module.display()
            );
        }
        let first = &reports[0].1;
        assert_eq!(first["loadable"], json!(true), "{language}: {first:#}");
        let imports = first["imports"].as_array().expect("imports");
        assert!(
            imports.iter().all(|i| i
                .as_str()
                .is_some_and(|i| i.starts_with("cachet:policy/") && i.ends_with("@0.1.0"))),
            "{language} imports only cachet:policy@0.1.0: {imports:?}"
        );
        let exports = first["exports"].as_array().expect("exports");
        assert!(
            exports.contains(&json!("on-event")),
            "{language} exports on-event: {exports:?}"
        );
    }
}

#[test]
fn a_missing_field_is_the_same_error_in_every_language() {
    for (language, module) in modules() {
        for (event, message) in [
            (
                &["session.created", "sessionId", "42", "schoolId", "7"][..],
                "session.created needs field teacherId",
            ),
            (
                &["roster.changed", "sessionId", "42"][..],
                "roster.changed needs field schoolId",
            ),
            (
                &["user.updated", "userId", "9", "rosterSession", "42"][..],
                "user.updated needs field schoolId",
            ),
        ] {
            let (passed, report) = check(&module, event);
            assert!(!passed, "{language} {event:?} passed: {report:#}");
            assert_eq!(
                report["error"],
                json!({ "kind": "error", "message": message }),
                "{language} {event:?}: {report:#}"
            );
        }
    }
}

/// A proxy with examples/cachet.toml's rules (which tag the keys written through it) and the
/// sessions policy of one language.
async fn proxy(redis: &RedisServer, module: &Path) -> Proxy {
    let policy: cachet::config::PolicyConfig = toml::from_str(&format!(
        "name = \"sessions\"\nmodule = {:?}\n\
         events = [\"session.*\", \"user.updated\", \"roster.changed\", \"school.updated\"]\n",
        module.display().to_string()
    ))
    .expect("policy config");
    Proxy::start_with(&redis.url(), move |config| {
        let mut example =
            cachet::Config::from_file(Path::new("examples/cachet.toml")).expect("example config");
        example.upstream = config.upstream.clone();
        example.policies = vec![policy];
        *config = example;
    })
    .await
}

async fn emit(client: &Client, args: &[&str]) -> Result<Reply, fred::error::Error> {
    let args: Vec<Reply> = args.iter().map(|a| Reply::from(*a)).collect();
    client.custom(cmd!("EMIT"), args).await
}

async fn exists(client: &Client, key: &str) -> bool {
    let n: u64 = client.exists(key).await.expect("EXISTS");
    n == 1
}

#[tokio::test]
async fn emit_through_each_language_drops_the_teachers_session_list() {
    let modules = modules();
    let redis = RedisServer::start();
    let direct = fred_client(&redis.url(), false).await;
    for (language, module) in &modules {
        let proxy = proxy(&redis, module).await;
        let client = fred_client(&proxy.url(), true).await;
        for key in [
            "sessions:teacher:123",
            "sessions:teacher:999",
            "sessions:school:7",
            "session:42",
        ] {
            let _: () = client
                .set(key, "cached", None, None, false)
                .await
                .expect("SET through cachet");
        }
        let reply = emit(
            &client,
            &[
                "session.created",
                "sessionId",
                "42",
                "teacherId",
                "123",
                "schoolId",
                "7",
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("{language}: EMIT failed: {e}\n{}", redis.log()));
        let text = format!("{reply:?}");
        assert!(
            text.contains("teacher:123") && text.contains("school-sessions:7"),
            "{language}: {text}"
        );
        assert!(
            !exists(&direct, "sessions:teacher:123").await,
            "{language}: the teacher's session list is gone"
        );
        assert!(
            !exists(&direct, "sessions:school:7").await,
            "{language}: the school's session list is gone"
        );
        assert!(
            exists(&direct, "sessions:teacher:999").await,
            "{language}: another teacher's list stays"
        );
        assert!(
            exists(&direct, "session:42").await,
            "{language}: a new session leaves the session's own keys"
        );

        // session.updated also drops the session itself.
        emit(
            &client,
            &["session.updated", "sessionId", "42", "teacherId", "123"],
        )
        .await
        .expect("EMIT session.updated");
        assert!(!exists(&direct, "session:42").await, "{language}");

        let error = emit(&client, &["session.created", "sessionId", "42"])
            .await
            .expect_err("a missing field fails the EMIT");
        assert!(
            error
                .details()
                .contains("policy sessions: session.created needs field teacherId"),
            "{language}: {error}"
        );

        let _: () = direct.flushall(false).await.expect("FLUSHALL");
        proxy.shutdown().await.expect("shutdown");
    }
}

#[tokio::test]
async fn a_teacher_id_that_is_not_utf8_names_its_key_by_bytes() {
    let modules = modules();
    let redis = RedisServer::start();
    for (language, module) in &modules {
        let proxy = proxy(&redis, module).await;
        let mut client = RawClient::connect(proxy.addr).await.expect("connect");
        let mut direct = RawClient::connect(redis.addr()).await.expect("connect");
        let key: &[u8] = b"sessions:teacher:\xff\xfe1";
        let lossy: &[u8] = "sessions:teacher:\u{fffd}\u{fffd}1".as_bytes();
        for k in [key, lossy] {
            let reply = client.command(&[&b"SET"[..], k, b"cached"]).await.unwrap();
            assert_eq!(&reply[..], b"+OK\r\n", "{language}");
        }
        let reply = client
            .command(&[
                &b"EMIT"[..],
                b"session.created",
                b"sessionId",
                b"42",
                b"teacherId",
                b"\xff\xfe1",
            ])
            .await
            .unwrap();
        assert!(
            !reply.starts_with(b"-"),
            "{language}: {}",
            String::from_utf8_lossy(&reply)
        );
        let left = direct.command(&[&b"EXISTS"[..], key]).await.unwrap();
        assert_eq!(&left[..], b":0\r\n", "{language}: the binary key is gone");
        let left = direct.command(&[&b"EXISTS"[..], lossy]).await.unwrap();
        assert_eq!(
            &left[..],
            b":1\r\n",
            "{language}: the key the lossy text would name stays"
        );
        direct.command(&["FLUSHALL"]).await.unwrap();
        proxy.shutdown().await.expect("shutdown");
    }
}
