//! Built policy components for tests. `policy_wasm("misbehave")` returns
//! `policies/out/misbehave.wasm`, running `policies/build.sh misbehave` first when the output
//! is missing or older than the policy's sources or `wit/`, so a fresh clone's `cargo test`
//! works. Test binaries run in parallel: builds are serialised by a file lock.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The newest modification time of the files under `dir` (build outputs and installed
/// dependencies excluded).
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if matches!(
            name.to_str(),
            Some("target" | "node_modules" | ".venv" | "out" | "__pycache__")
        ) {
            continue;
        }
        let time = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        latest = latest.max(time);
    }
    latest
}

fn fresh(output: &Path, sources: &[PathBuf]) -> bool {
    let Ok(built) = std::fs::metadata(output).and_then(|m| m.modified()) else {
        return false;
    };
    sources.iter().all(|s| newest(s).is_none_or(|t| t <= built))
}

/// Runs `build` under the policies' build lock unless `output` is fresh.
fn build_locked(output: &Path, sources: &[PathBuf], build: impl FnOnce()) {
    if fresh(output, sources) {
        return;
    }
    let out = root().join("policies/out");
    std::fs::create_dir_all(&out).expect("create policies/out");
    let lock = File::create(out.join(".build.lock")).expect("lock file");
    lock.lock().expect("take the build lock");
    if !fresh(output, sources) {
        build();
    }
}

/// The component `policies/out/NAME.wasm`, built if it is missing or stale.
pub fn policy_wasm(name: &str) -> PathBuf {
    let output = root().join("policies/out").join(format!("{name}.wasm"));
    let sources = [root().join("policies").join(name), root().join("wit")];
    let script = root().join("policies/build.sh");
    if !script.exists() && output.exists() {
        return output;
    }
    build_locked(&output, &sources, || {
        let run = Command::new("bash")
            .arg(&script)
            .arg(name)
            .current_dir(root())
            .output()
            .expect("run policies/build.sh");
        assert!(
            run.status.success(),
            "policies/build.sh {name} failed:\n{}\n{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    });
    assert!(
        output.exists(),
        "policies/build.sh did not write {output:?}"
    );
    output
}

/// A Rust guest built for `wasm32-wasip2`: a component that imports WASI, which cachet must
/// refuse.
pub fn wasip2_component(name: &str) -> PathBuf {
    let krate = root().join("policies").join(name);
    let output = krate.join(format!("target/wasm32-wasip2/release/{name}.wasm"));
    build_locked(&output, &[krate.join("src"), root().join("wit")], || {
        let run = Command::new("cargo")
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .current_dir(&krate)
            // The output path above is the crate's own target dir, whatever cachet's build uses.
            .env("CARGO_TARGET_DIR", krate.join("target"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .expect("run cargo");
        assert!(
            run.status.success(),
            "cargo build --target wasm32-wasip2 failed:\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
    });
    output
}
