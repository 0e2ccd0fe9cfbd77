//! Every example config parses; every config under examples/invalid/ is refused with the
//! message its `# expect:` line names. Both walks assert they found files, so a moved
//! folder cannot make this test pass vacuously.

use std::path::Path;
use std::process::Command;

fn toml_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn example_configs_are_valid() {
    let files = toml_files(Path::new("examples"));
    assert!(
        files.len() >= 2,
        "expected example configs, found {files:?}"
    );
    for file in files {
        cachet::app::load_file(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

#[test]
fn invalid_configs_are_refused_with_their_reason() {
    let files = toml_files(Path::new("examples/invalid"));
    assert!(
        files.len() >= 4,
        "expected invalid configs, found {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no '# expect:' line", file.display()));
        let err = cachet::app::load_file(&file)
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", file.display()))
            .to_string();
        assert!(
            err.contains(expect),
            "{}: {err:?} lacks {expect:?}",
            file.display()
        );
        assert!(
            err.contains("line "),
            "{}: no line number in {err:?}",
            file.display()
        );
    }
}

#[test]
fn check_config_command_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_cachet");
    let ok = Command::new(bin)
        .args(["check-config", "examples/cachet.toml"])
        .output()
        .expect("run cachet");
    assert!(ok.status.success(), "{ok:?}");
    let bad = Command::new(bin)
        .args(["check-config", "examples/invalid/unknown-key.toml"])
        .output()
        .expect("run cachet");
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("listne"),
        "{stderr}"
    );
}
