//! From nothing to a loaded policy: `policy::scaffold::create` writes a new policy in Rust,
//! JavaScript and Python, `scaffold::build` makes it a component, and cachet's checker loads
//! it and runs the sample event of `cachet policy check`; the Rust one also serves EMITs in a
//! running cachet. The JavaScript and Python builds use the tools `policies/build.sh`
//! installs (`policies/sessions-js/node_modules`, `policies/.venv`) and are skipped, saying
//! why, when they are not there.

mod support;

use std::path::{Path, PathBuf};

use cachet::policy::check;
use cachet::policy::scaffold::{self, BuildOptions, Lang};
use serde_json::json;
use support::policies::policy_wasm;
use support::{RawClient, RedisServer};

/// A loaded machine compiles the component and runs it well inside this; the default 10 ms
/// is for policies already warm in a quiet process.
const RELAXED_MS: u64 = 2_000;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target folder for the scaffolded Rust policies, kept across runs so that a rerun
/// rebuilds only the policy itself, not wit-bindgen.
fn shared_target() -> PathBuf {
    root().join("target/policy-authoring")
}

/// Scaffolds a policy called `name` in `lang` into a fresh folder of `parent`, builds it,
/// and returns the component.
fn new_and_build(parent: &Path, name: &str, lang: Lang, options: &BuildOptions) -> PathBuf {
    let dir = scaffold::create(&parent.join(name), name, lang).expect("create");
    for file in ["README.md", "wit/policy.wit"] {
        assert!(dir.join(file).is_file(), "{lang}: no {file}");
    }
    let wasm = scaffold::build(&dir, options).unwrap_or_else(|e| panic!("{lang}: {e:#}"));
    assert_eq!(wasm, dir.join(format!("{name}.wasm")));
    wasm
}

/// cachet would load the component, and it answers the sample event, a missing field and an
/// event it does not know as the template says.
fn assert_loads_and_answers(wasm: &Path, lang: Lang) {
    let checker = check::Checker::load(wasm, Some(RELAXED_MS)).expect("read");
    let sample: Vec<(String, String)> = check::SAMPLE_FIELDS
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let report = checker.run(check::SAMPLE_EVENT, &sample);
    let doc = report.json();
    assert!(report.passed(), "{lang}: {doc}");
    let imports = doc["imports"].as_array().expect("imports");
    assert!(
        imports.iter().all(
            |i| ["cachet:policy/types@0.1.0", "cachet:policy/host@0.1.0"]
                .contains(&i.as_str().unwrap_or_default())
        ),
        "{lang}: a policy imports only cachet's interfaces: {doc}"
    );
    assert_eq!(
        doc["actions"],
        json!([{ "invalidate-tag": "teacher:123" }]),
        "{lang}"
    );
    let missing = checker.run("session.created", &[]).json();
    assert_eq!(
        missing["error"]["message"], "session.created needs field teacherId",
        "{lang}"
    );
    let other = checker.run("school.updated", &[]).json();
    assert_eq!(other["actions"], json!([]), "{lang}");
}

#[tokio::test]
async fn a_new_rust_policy_builds_loads_and_serves() {
    let parent = tempfile::tempdir().expect("tempdir");
    let options = BuildOptions {
        target_dir: Some(shared_target()),
        ..BuildOptions::default()
    };
    let wasm = new_and_build(parent.path(), "teacher-lists", Lang::Rust, &options);
    assert_loads_and_answers(&wasm, Lang::Rust);

    // Deployed as its README says, it serves EMITs.
    let redis = RedisServer::start();
    let module = wasm.clone();
    let proxy = support::Proxy::start_with(&redis.url(), move |config| {
        config.policies = vec![
            toml::from_str(&format!(
                "name = \"teacher-lists\"\nmodule = {:?}\nevents = [\"session.*\"]\n\
                 timeout_ms = {RELAXED_MS}\n",
                module.display().to_string()
            ))
            .expect("policy config"),
        ];
    })
    .await;
    let mut client = RawClient::connect(proxy.addr).await.expect("connect");
    client.text(&["HELLO", "3"]).await;
    assert_eq!(
        client
            .text(&[
                "TAGSET",
                "sessions:teacher:123",
                "[]",
                "TAGS",
                "teacher:123"
            ])
            .await,
        "+OK\r\n"
    );
    let reply = client
        .text(&[
            "EMIT",
            "session.created",
            "sessionId",
            "42",
            "teacherId",
            "123",
        ])
        .await;
    assert!(
        reply.contains("$4\r\ntags\r\n*1\r\n$11\r\nteacher:123\r\n")
            && reply.contains("deleted\r\n:1\r\n"),
        "{reply}"
    );

    // A folder that is not a cdylib is refused with the fix, before cargo runs.
    let manifest = wasm.with_file_name("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("Cargo.toml");
    std::fs::write(&manifest, text.replace("crate-type = [\"cdylib\"]", "")).expect("write");
    let error = scaffold::build(wasm.parent().expect("folder"), &options)
        .expect_err("not a cdylib")
        .to_string();
    assert!(error.contains("crate-type = [\"cdylib\"]"), "{error}");
}

/// `npm` and `python3` are what `policies/build.sh` needs to install jco and componentize-py.
fn have(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
fn a_new_javascript_policy_builds_and_loads() {
    let jco = root().join("policies/sessions-js/node_modules/.bin/jco");
    if !jco.is_file() && have("npm") {
        // Installs jco where policies/build.sh keeps it.
        policy_wasm("sessions-js");
    }
    if !jco.is_file() {
        println!(
            "skipped: no jco at {} (policies/build.sh sessions-js installs it; it needs npm)",
            jco.display()
        );
        return;
    }
    let parent = tempfile::tempdir().expect("tempdir");
    let options = BuildOptions {
        jco: Some(jco),
        ..BuildOptions::default()
    };
    let wasm = new_and_build(parent.path(), "teacher-lists", Lang::Js, &options);
    assert_loads_and_answers(&wasm, Lang::Js);
}

#[test]
fn a_new_python_policy_builds_and_loads() {
    let tool = root().join("policies/.venv/bin/componentize-py");
    if !tool.is_file() && have("python3") {
        // Installs componentize-py where policies/build.sh keeps it.
        policy_wasm("sessions-py");
    }
    if !tool.is_file() {
        println!(
            "skipped: no componentize-py at {} (policies/build.sh sessions-py installs it; \
             it needs python3 with venv)",
            tool.display()
        );
        return;
    }
    let parent = tempfile::tempdir().expect("tempdir");
    let options = BuildOptions {
        componentize_py: Some(tool),
        ..BuildOptions::default()
    };
    let wasm = new_and_build(parent.path(), "teacher_lists", Lang::Python, &options);
    assert_loads_and_answers(&wasm, Lang::Python);
}

/// The same through the binary: `cachet policy new` then `cachet policy build`, which also
/// checks what it built.
#[test]
fn the_cli_scaffolds_builds_and_checks_a_rust_policy() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("cli-policy");
    let cachet = env!("CARGO_BIN_EXE_cachet");
    let new = std::process::Command::new(cachet)
        .args(["policy", "new", "cli-policy", "--lang", "rust", "--dir"])
        .arg(&dir)
        .output()
        .expect("run cachet policy new");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(new.status.success(), "{}", text(&new.stderr));
    assert!(
        text(&new.stdout).contains("cachet policy build"),
        "{}",
        text(&new.stdout)
    );
    let build = std::process::Command::new(cachet)
        .args(["policy", "build"])
        .arg(&dir)
        .env("CARGO_TARGET_DIR", shared_target())
        .output()
        .expect("run cachet policy build");
    let stdout = text(&build.stdout);
    assert!(build.status.success(), "{stdout}\n{}", text(&build.stderr));
    assert!(dir.join("cli-policy.wasm").is_file(), "{stdout}");
    assert!(
        stdout.contains("teacher:123"),
        "the sample event's action: {stdout}"
    );
    // A language cachet does not scaffold is refused by the parser, with the choices.
    let bad = std::process::Command::new(cachet)
        .args(["policy", "new", "x", "--lang", "cobol"])
        .output()
        .expect("run cachet policy new");
    assert!(!bad.status.success());
}
