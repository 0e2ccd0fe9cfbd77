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

/// A config that is valid TOML with a wrong value in several independent places: every one
/// is reported, each with its line, labelled as a config error (not a TOML one).
#[test]
fn every_wrong_value_is_reported_at_once() {
    let text = "\
[proxy]
listen = \"nowhere\"
[upstream]
pool_size = 0
[[rules]]
pattern = \"a:{x}\"
ttl = 1.5
[[rules]]
pattern = \"b:{x}\"
[[rules]]
pattern = \"c:{x}\"
patern = \"typo\"
[warmers.host]
http = \"http://{host}:3000/warm\"
[warmers.both]
http = \"http://127.0.0.1:3000/warm\"
stream = \"warm\"
[warmers.fine]
stream = \"warm\"
";
    let shown = cachet::app::load_toml(text, "x.toml")
        .unwrap_err()
        .to_string();
    let lines: Vec<&str> = shown
        .lines()
        .filter_map(|l| l.strip_prefix("x.toml: error at line "))
        .collect();
    let at: Vec<&str> = lines.iter().map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(at, ["2", "4", "7", "12", "14", "15"], "{shown}");
    assert!(!shown.contains("TOML"), "{shown}");
    for why in [
        "invalid socket address syntax",
        "expected a nonzero usize",
        "ttl",
        "unknown field `patern`",
        "not the host or port",
        "not both",
    ] {
        assert!(shown.contains(why), "{why}: {shown}");
    }
}

/// The warmer-url check is cachet's, on valid TOML: not labelled a TOML parse error.
#[test]
fn a_warmer_url_error_is_labelled_as_a_config_error() {
    let shown = cachet::app::load_file(Path::new("examples/invalid/warmer-host-placeholder.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        shown.starts_with(
            "examples/invalid/warmer-host-placeholder.toml: error at line 4, column 8"
        ),
        "{shown}"
    );
    assert!(!shown.contains("TOML"), "{shown}");
}

/// Broken TOML is a syntax error, and says so; every syntax error the parser finds is
/// reported.
#[test]
fn syntax_errors_are_labelled_and_all_reported() {
    let shown = cachet::app::load_toml("[proxy]\nlisten = \n[upstream\nurl = 'x'\n", "x.toml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        shown.matches("x.toml: TOML syntax error at line ").count(),
        2,
        "{shown}"
    );
    assert!(
        shown.contains("at line 2") && shown.contains("at line 3"),
        "{shown}"
    );
}

/// Rule errors and policy errors, found by two checks after parsing, come out together.
#[test]
fn rule_and_policy_errors_are_reported_together() {
    let text = "\
[[rules]]
pattern = \"s:{id}\"
tags = [\"s\"]
ttl = \"no-such-class\"
[events]
threads = 0
[[policies]]
name = \"p\"
module = \"p.wasm\"
events = [\"session.*\"]
";
    let shown = cachet::app::load_toml(text, "x.toml")
        .unwrap_err()
        .to_string();
    assert!(shown.contains("x.toml: error at line 4"), "{shown}");
    assert!(shown.contains("unknown TTL class"), "{shown}");
    assert!(
        shown.contains("[events] threads must be at least 1"),
        "{shown}"
    );
}
