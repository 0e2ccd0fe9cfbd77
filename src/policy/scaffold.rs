//! `cachet policy new` and `cachet policy build`: from nothing to a component cachet loads.
//!
//! [`create`] writes a policy folder in Rust, JavaScript or Python that builds as it is: the
//! contract (`wit/`, compiled into this binary, so an installed cachet needs no checkout), a
//! policy that answers the sample event of `cachet policy check`, a README with the build,
//! check and deploy steps. [`build`] turns such a folder into `DIR/<folder name>.wasm`:
//!
//! * Rust: `cargo build --release --target wasm32-unknown-unknown` of the `cdylib`, then the
//!   core module is made a component here, with `wit-component` (no wasm-tools needed).
//! * JavaScript: `jco componentize` with the QuickJS backend and stubbed WASI.
//! * Python: `componentize-py --stub-wasi`.
//!
//! As in `policies/build.sh`, the language is told by the folder's files (`Cargo.toml`,
//! `package.json`, `app.py`), and a missing tool is installed where that is safe (the wasm
//! target with rustup, jco with `npm install` into the folder, componentize-py into a venv in
//! the folder); otherwise the error says what to install. The component is written next to
//! the sources and moved into place whole, so a cachet watching the file never reads half of
//! one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The contract, as every guest builds against it: the files of `wit/`.
pub const WIT: &[(&str, &str)] = &[("policy.wit", include_str!("../../wit/policy.wit"))];

/// The Rust guest's dependencies, pinned as the example policies pin them: wit-bindgen 0.63
/// embeds its component type in a form the `wit-component` here reads.
const RUST_LOCK: &str = include_str!("../../policies/sessions/Cargo.lock");
/// The root package of [`RUST_LOCK`], renamed for each new policy.
const RUST_LOCK_ROOT: &str = "[[package]]\nname = \"sessions\"\nversion = \"0.1.0\"\n";

/// componentize-py as the Python template's requirements.txt pins it.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

const CORE_TARGET: &str = "wasm32-unknown-unknown";

/// The language of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Js,
    Python,
}

impl std::str::FromStr for Lang {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "rust" | "rs" => Ok(Lang::Rust),
            "js" | "javascript" => Ok(Lang::Js),
            "python" | "py" => Ok(Lang::Python),
            _ => Err(format!(
                "unknown language {text:?}: choose rust, js or python"
            )),
        }
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::Python => "Python",
        })
    }
}

/// Writes a new policy called `name` in `lang` into the folder `dir` (created; it must not
/// exist, or be empty). Returns `dir`. The policy builds with [`build`] as it is.
///
/// `name` is the package's name and the `[[policies]]` name the README suggests: 1 to 64 of
/// `a-z A-Z 0-9 - _`, starting with a letter (valid for a crate, an npm package and a
/// cachet policy alike).
pub fn create(dir: &Path, name: &str, lang: Lang) -> Result<PathBuf> {
    check_name(name)?;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("{} exists and is not a folder", dir.display()))?
            .next()
            .is_none();
        if !empty {
            bail!(
                "{} exists and is not empty: name a new folder with --dir",
                dir.display()
            );
        }
    }
    let file = folder_name(dir)?;
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{file}}", &file)
            .replace("{{dir}}", &dir.display().to_string())
    };
    let mut files: Vec<(PathBuf, String)> = WIT
        .iter()
        .map(|(file, text)| (Path::new("wit").join(file), (*text).to_owned()))
        .collect();
    let (source, toolchain) = match lang {
        Lang::Rust => {
            let lock = RUST_LOCK.replacen(
                RUST_LOCK_ROOT,
                &format!("[[package]]\nname = \"{name}\"\nversion = \"0.1.0\"\n"),
                1,
            );
            files.extend([
                (
                    "Cargo.toml".into(),
                    fill(include_str!("scaffold/rust/Cargo.toml")),
                ),
                ("Cargo.lock".into(), lock),
                (
                    "src/lib.rs".into(),
                    fill(include_str!("scaffold/rust/lib.rs")),
                ),
                (
                    ".gitignore".into(),
                    fill(include_str!("scaffold/rust/gitignore")),
                ),
            ]);
            (
                "src/lib.rs",
                "It needs cargo (https://rustup.rs) and the `wasm32-unknown-unknown` target, \
                 which it adds with rustup when missing; the first build takes a minute.",
            )
        }
        Lang::Js => {
            files.extend([
                (
                    "package.json".into(),
                    fill(include_str!("scaffold/js/package.json")),
                ),
                (
                    "policy.js".into(),
                    fill(include_str!("scaffold/js/policy.js")),
                ),
                (
                    ".gitignore".into(),
                    fill(include_str!("scaffold/js/gitignore")),
                ),
            ]);
            (
                "policy.js",
                "It needs Node.js 20+ with npm (https://nodejs.org); the first build runs \
                 `npm install` here for jco.",
            )
        }
        Lang::Python => {
            files.extend([
                (
                    "app.py".into(),
                    fill(include_str!("scaffold/python/app.py")),
                ),
                (
                    "requirements.txt".into(),
                    fill(include_str!("scaffold/python/requirements.txt")),
                ),
                (
                    ".gitignore".into(),
                    fill(include_str!("scaffold/python/gitignore")),
                ),
            ]);
            (
                "app.py",
                "It needs python3 (3.10+) with venv; the first build installs componentize-py \
                 into `.venv` here.",
            )
        }
    };
    let readme = fill(include_str!("scaffold/README.md"))
        .replace("{{language}}", &lang.to_string())
        .replace("{{source}}", source)
        .replace("{{toolchain}}", toolchain);
    files.push(("README.md".into(), readme));
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir.to_owned())
}

fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !ok {
        bail!("policy name {name:?}: use 1 to 64 of a-z A-Z 0-9 - _, starting with a letter");
    }
    Ok(())
}

/// The last component of `dir` (of its real path for `.` or `..`), which names the component.
fn folder_name(dir: &Path) -> Result<String> {
    let absolute = match dir.canonicalize() {
        Ok(real) => real,
        Err(_) => std::path::absolute(dir)
            .with_context(|| format!("resolving {}", dir.display()))?
            .components()
            .collect(),
    };
    absolute
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no folder name", dir.display()))
}

/// Where [`build`] finds its tools. The defaults look where `cachet policy new` puts them
/// (the policy's own `node_modules` and `.venv`), then on `PATH`.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Cargo's target folder for Rust policies (default: `DIR/target`, or
    /// `CARGO_TARGET_DIR`). Policies sharing one build incrementally.
    pub target_dir: Option<PathBuf>,
    /// The `jco` to run for JavaScript policies.
    pub jco: Option<PathBuf>,
    /// The `componentize-py` to run for Python policies.
    pub componentize_py: Option<PathBuf>,
    /// Let the tools write their progress to stderr; otherwise their output is kept and only
    /// shown (its end) in the error when they fail.
    pub show_output: bool,
}

/// Builds the policy in `dir` (made by [`create`], or any folder laid out alike) into the
/// component `dir/<folder name>.wasm`, and returns its path.
pub fn build(dir: &Path, options: &BuildOptions) -> Result<PathBuf> {
    let lang = if dir.join("Cargo.toml").is_file() {
        Lang::Rust
    } else if dir.join("package.json").is_file() {
        Lang::Js
    } else if dir.join("app.py").is_file() {
        Lang::Python
    } else {
        bail!(
            "{} holds no policy: a Rust one has a Cargo.toml, a JavaScript one a package.json, \
             a Python one an app.py (`cachet policy new NAME --lang rust|js|python` makes one)",
            dir.display()
        );
    };
    let output = dir.join(format!("{}.wasm", folder_name(dir)?));
    let staging = dir.join(format!(".{}.building.wasm", folder_name(dir)?));
    tracing::info!(dir = %dir.display(), language = %lang, "building a policy");
    let built = match lang {
        Lang::Rust => build_rust(dir, options, &staging),
        Lang::Js => build_js(dir, options, &staging),
        Lang::Python => build_python(dir, options, &staging),
    };
    if built.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    built?;
    std::fs::rename(&staging, &output)
        .with_context(|| format!("moving the component to {}", output.display()))?;
    Ok(output)
}

fn build_rust(dir: &Path, options: &BuildOptions, output: &Path) -> Result<()> {
    let manifest_path = dir.join("Cargo.toml");
    let manifest: toml::Table = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?
        .parse()
        .with_context(|| format!("parsing {}", manifest_path.display()))?;
    let lib = manifest.get("lib");
    let cdylib = lib
        .and_then(|lib| lib.get("crate-type"))
        .and_then(|types| types.as_array())
        .is_some_and(|types| types.iter().any(|t| t.as_str() == Some("cdylib")));
    if !cdylib {
        bail!(
            "{}: a policy is a cdylib; add\n\n[lib]\ncrate-type = [\"cdylib\"]\n",
            manifest_path.display()
        );
    }
    let crate_name = lib
        .and_then(|lib| lib.get("name"))
        .or_else(|| manifest.get("package").and_then(|p| p.get("name")))
        .and_then(|name| name.as_str())
        .with_context(|| format!("{}: no package name", manifest_path.display()))?
        .replace('-', "_");
    ensure_core_target()?;
    let target_dir = match &options.target_dir {
        Some(dir) => dir.clone(),
        None => match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => std::path::absolute(dir)?,
            None => std::path::absolute(dir.join("target"))?,
        },
    };
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .args([
            "build",
            "--release",
            "--target",
            CORE_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(dir)
        // Settings meant for another build must not reach the guest's.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    run(
        &mut cargo,
        "cargo build",
        "Rust policies need cargo: install it from https://rustup.rs",
        options,
    )?;
    let core = target_dir
        .join(CORE_TARGET)
        .join("release")
        .join(format!("{crate_name}.wasm"));
    let module = std::fs::read(&core).with_context(|| format!("reading {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .with_context(|| {
            format!(
                "{}: no component type in it; is `wit_bindgen::generate!` in the crate?",
                core.display()
            )
        })?
        .validate(true)
        .encode()
        .with_context(|| format!("making {} a component", core.display()))?;
    std::fs::write(output, component).with_context(|| format!("writing {}", output.display()))
}

/// Adds the wasm target with rustup when it is missing. Without rustup (a distribution's
/// Rust), cargo's own error says what is missing.
fn ensure_core_target() -> Result<()> {
    let Ok(listed) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(());
    };
    if String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|line| line.trim() == CORE_TARGET)
    {
        return Ok(());
    }
    tracing::info!("adding the {CORE_TARGET} target: rustup target add {CORE_TARGET}");
    let added = Command::new("rustup")
        .args(["target", "add", CORE_TARGET])
        .status()
        .context("running rustup")?;
    if !added.success() {
        bail!("`rustup target add {CORE_TARGET}` failed; Rust policies need that target");
    }
    Ok(())
}

fn build_js(dir: &Path, options: &BuildOptions, output: &Path) -> Result<()> {
    let package: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("package.json")).context("reading package.json")?,
    )
    .context("parsing package.json")?;
    let main = package["main"].as_str().unwrap_or("policy.js").to_owned();
    if !dir.join(&main).is_file() {
        bail!(
            "{}: package.json's \"main\" ({main}) is not a file",
            dir.display()
        );
    }
    let local = dir.join("node_modules/.bin/jco");
    let jco = match options
        .jco
        .clone()
        .or_else(|| local.is_file().then(|| local.clone()))
    {
        Some(jco) => jco,
        None => match on_path("jco") {
            Some(jco) => jco,
            None => {
                tracing::info!(dir = %dir.display(), "installing jco: npm install");
                let mut npm = Command::new("npm");
                npm.args(["install", "--no-audit", "--no-fund"])
                    .current_dir(dir);
                run(
                    &mut npm,
                    "npm install",
                    "JavaScript policies need Node.js 20+ and npm (https://nodejs.org), \
                     or jco on PATH (npm install -g @bytecodealliance/jco@1.35.0)",
                    options,
                )?;
                local
            }
        },
    };
    let mut componentize = Command::new(&jco);
    componentize
        .arg("componentize")
        .arg(&main)
        // Sync runtime: cachet calls on-event synchronously. Stubbed WASI: QuickJS's own WASI
        // imports become traps, so the component imports only cachet:policy.
        .args([
            "--backend",
            "qjs",
            "--backend-qjs-disable-async",
            "--backend-qjs-stub-wasi",
            "--wit",
            "wit",
            "--world-name",
            "policy",
            "--out",
        ])
        .arg(std::path::absolute(output)?)
        .current_dir(dir);
    run(
        &mut componentize,
        "jco componentize",
        "jco did not run: `npm install` in the policy's folder installs it",
        options,
    )
}

fn build_python(dir: &Path, options: &BuildOptions, output: &Path) -> Result<()> {
    let venv = dir.join(".venv");
    let local = venv.join("bin/componentize-py");
    let tool = match options
        .componentize_py
        .clone()
        .or_else(|| local.is_file().then(|| local.clone()))
    {
        Some(tool) => tool,
        None => match on_path("componentize-py") {
            Some(tool) => tool,
            None => {
                tracing::info!(dir = %dir.display(), "installing {COMPONENTIZE_PY} into .venv");
                let hint = "Python policies need python3 (3.10+) with venv \
                            (Debian: apt install python3-venv), or componentize-py on PATH \
                            (pip install componentize-py==0.25.1)";
                let mut create = Command::new("python3");
                create.args(["-m", "venv"]).arg(&venv);
                run(&mut create, "python3 -m venv", hint, options)?;
                let requirements = match dir.join("requirements.txt").is_file() {
                    true => vec!["-r".to_owned(), "requirements.txt".to_owned()],
                    false => vec![COMPONENTIZE_PY.to_owned()],
                };
                let mut pip = Command::new(venv.join("bin/pip"));
                pip.args(["install", "--quiet", "--disable-pip-version-check"])
                    .args(requirements)
                    .current_dir(dir);
                run(&mut pip, "pip install", hint, options)?;
                local
            }
        },
    };
    let mut componentize = Command::new(&tool);
    componentize
        .args([
            "-d",
            "wit",
            "-w",
            "policy",
            "componentize",
            "--stub-wasi",
            "app",
            "-o",
        ])
        .arg(std::path::absolute(output)?)
        .current_dir(dir);
    run(
        &mut componentize,
        "componentize-py",
        "componentize-py did not run: delete the policy's .venv and build again",
        options,
    )
}

/// `program` on `PATH`, if it is there.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// Runs a tool; a tool that cannot start fails with `missing`, one that fails with the end of
/// its output.
fn run(command: &mut Command, what: &str, missing: &str, options: &BuildOptions) -> Result<()> {
    if options.show_output {
        command.stdout(Stdio::inherit()).stderr(Stdio::inherit());
    } else {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let done = match command.output() {
        Ok(done) => done,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "{what}: {} not found. {missing}",
                command.get_program().display()
            )
        }
        Err(error) => return Err(error).with_context(|| format!("running {what}")),
    };
    if done.status.success() {
        return Ok(());
    }
    // The end of the output says why; the whole of npm's or cargo's can be thousands of lines.
    const TAIL_LINES: usize = 40;
    let text = String::from_utf8_lossy(&done.stdout) + String::from_utf8_lossy(&done.stderr);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    bail!(
        "{what} failed ({}){}{tail}",
        done.status,
        if tail.is_empty() { "" } else { ":\n" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wit_file_is_compiled_in() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("wit");
        let mut on_disk: Vec<String> = std::fs::read_dir(&folder)
            .expect("wit/")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = WIT.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(
            on_disk, embedded,
            "list every file of wit/ in scaffold::WIT"
        );
    }

    #[test]
    fn the_rust_lock_is_renamed() {
        assert!(
            RUST_LOCK.contains(RUST_LOCK_ROOT),
            "policies/sessions/Cargo.lock changed"
        );
    }

    #[test]
    fn names_and_languages_are_checked() {
        for good in ["a", "my-policy", "Sessions_2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "2fast", "a.b", "a b", "-x", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!("JS".parse::<Lang>(), Ok(Lang::Js));
        assert!(
            "go".parse::<Lang>()
                .unwrap_err()
                .contains("rust, js or python")
        );
    }

    #[test]
    fn create_fills_every_placeholder() {
        let parent = tempfile::tempdir().expect("tempdir");
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            let dir = parent.path().join(lang.to_string());
            create(&dir, "p", lang).expect("create");
            let mut folders = vec![dir.clone()];
            while let Some(folder) = folders.pop() {
                for entry in std::fs::read_dir(&folder).expect("read_dir") {
                    let path = entry.expect("entry").path();
                    if path.is_dir() {
                        folders.push(path);
                        continue;
                    }
                    let text = std::fs::read_to_string(&path).expect("text");
                    assert!(!text.contains("{{"), "{}: {text}", path.display());
                }
            }
            let readme = std::fs::read_to_string(dir.join("README.md")).expect("README");
            let module = format!("module = \"{}/{lang}.wasm\"", dir.display());
            assert!(readme.contains(&module), "{readme}");
        }
    }

    #[test]
    fn create_refuses_a_folder_that_holds_something() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("keep.txt"), "mine").expect("write");
        let error = create(dir.path(), "p", Lang::Rust).unwrap_err().to_string();
        assert!(error.contains("not empty"), "{error}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn build_names_what_a_folder_lacks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = build(dir.path(), &BuildOptions::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("holds no policy"), "{error}");
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[package]\nname = \"p\"\nversion = \"0.1.0\"\n",
        )
        .expect("write");
        let error = build(dir.path(), &BuildOptions::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("crate-type = [\"cdylib\"]"), "{error}");
    }
}
