//! The dependency order of cachet's modules (docs/ARCHITECTURE.md, "Layers"): each module
//! may use only modules of lower layers. This walks every file under `src/` and fails on any
//! `crate::` path that points sideways or up, so no import cycle can come back unnoticed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first. A module may use the modules of the layers before its own, never its own
/// layer's others, never a later one.
const LAYERS: &[&[&str]] = &[
    &["resp", "config", "net"],
    &["metrics"],
    &["tags", "upstream", "policy", "warm"],
    &["health", "events", "uninstall"],
    &["session"],
    &["server", "admin"],
    &["app"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top module a file under `src/` belongs to: `src/session/tagging.rs` is `session`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next().expect("a path");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments (line comments, doc comments, block comments), so a doc link
/// like [`crate::admin`] is not a dependency. String literals are kept: none names a path.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let c = bytes[i];
        let rest = &bytes[i..];
        if in_string {
            out.push(c);
            if c == b'\\' && i + 1 < bytes.len() {
                out.push(bytes[i + 1]);
                i += 2;
                continue;
            }
            in_string = c != b'"';
            i += 1;
        } else if c == b'"' {
            in_string = true;
            out.push(c);
            i += 1;
        } else if rest.starts_with(b"//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            i += rest
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(rest.len(), |end| end + 2);
        } else if c == b'\'' && rest.len() > 2 && rest[2] == b'\'' {
            // A char literal such as '"': not the start of a string.
            out.extend_from_slice(&rest[..3]);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every top module named by a `crate::` path: `crate::tags::index::X` and
/// `crate::{tags, upstream::Upstream}` alike.
fn crate_uses(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain([',']) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let name: String = item
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if !name.is_empty() {
                            found.insert(name);
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn modules_depend_only_on_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            // The crate root declares the modules; the binary uses the library by name.
            continue;
        }
        let Some(own) = layer_of(&module) else {
            wrong.push(format!(
                "{}: module `{module}` is in no layer (add it to LAYERS and to ARCHITECTURE.md)",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("readable");
        for used in crate_uses(&code_only(&text)) {
            checked += 1;
            if used == module || used == "Config" {
                // Its own module, or the crate root's re-export of `config::Config`.
                continue;
            }
            match layer_of(&used) {
                Some(layer) if layer < own => {}
                Some(_) => wrong.push(format!(
                    "{}: `{module}` (layer {own}) uses `crate::{used}` (layer {})",
                    file.strip_prefix(&src).unwrap().display(),
                    layer_of(&used).unwrap()
                )),
                None => wrong.push(format!(
                    "{}: uses `crate::{used}`, which is in no layer",
                    file.strip_prefix(&src).unwrap().display()
                )),
            }
        }
    }
    assert!(
        files.len() > 20 && checked > 50,
        "walked too little: {} files, {checked} uses",
        files.len()
    );
    assert!(
        wrong.is_empty(),
        "imports against the layer order:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scanner_sees_every_form_of_path() {
    let code = code_only(
        "use crate::tags::index::TagIndex;\n\
         use crate::{health::{self, Health}, metrics};\n\
         // use crate::admin;\n\
         /// [`crate::server`]\n\
         let s = \"crate:: in a string is text\";\n\
         let t = crate::warm::Heat::new(); pub(crate) fn f() {}\n\
         /* crate::app */ let c = '\"'; crate::upstream::x();\n",
    );
    let found: Vec<String> = crate_uses(&code).into_iter().collect();
    assert_eq!(
        found,
        ["health", "metrics", "tags", "upstream", "warm"],
        "{code}"
    );
}
