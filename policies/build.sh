#!/usr/bin/env bash
# Builds cachet's policies into components under policies/out/, each importing only cachet's
# own interfaces (no WASI):
#
#   policies/build.sh             every policy
#   policies/build.sh NAME ...    the named ones (folder names: sessions, sessions-js, ...)
#
# A folder with a Cargo.toml is a Rust policy (wit-bindgen, wasm32-unknown-unknown, wrapped by
# tools/componentize), one with a package.json a JavaScript policy (jco componentize, QuickJS
# backend, its "main" file), one with an app.py a Python policy (componentize-py --stub-wasi).
# Every policy reads the contract from ../wit. A policy whose output is newer than its sources
# and wit/ is skipped. Missing tools are installed (rustup target, npm ci, a venv in
# policies/.venv); a failure stops the script with a message naming the policy.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
wit="$root/wit"
out="$here/out"
mkdir -p "$out"

# The guests build in their own target dir, for their own target: settings meant for cachet's
# build must not leak in.
export CARGO_TARGET_DIR="$here/target"
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_TARGET

die() {
  echo "policies/build.sh: $*" >&2
  exit 1
}

# Two builds at once would write the same files. (tests/support/policies.rs holds its own lock,
# out/.build.lock, around this script; this one is a different file.)
exec 9>"$out/.build-sh.lock"
flock 9

# True when OUTPUT is missing or older than any file under the given folders (build outputs and
# installed dependencies aside).
stale() {
  local output=$1
  shift
  [ -e "$output" ] || return 0
  [ -n "$(find "$@" \( -name target -o -name node_modules -o -name .venv -o -name out \
    -o -name __pycache__ \) -prune -o -type f -newer "$output" -print -quit)" ]
}

need_wasm_target() {
  command -v cargo >/dev/null || die "Rust policies need cargo (rustup.rs)"
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    echo "installing the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown || die "rustup target add wasm32-unknown-unknown failed"
  fi
}

build_rust() {
  local name=$1 dir="$here/$1" output="$out/$1.wasm"
  if ! stale "$output" "$dir" "$wit" "$here/tools/componentize"; then
    echo "$name: up to date"
    return
  fi
  need_wasm_target
  echo "$name: building (Rust)"
  (cd "$here/tools/componentize" && cargo build --release --locked --quiet) ||
    die "$name: building tools/componentize failed"
  (cd "$dir" && cargo build --release --locked --quiet --target wasm32-unknown-unknown) ||
    die "$name: cargo build failed"
  local crate
  # The package's name, the first `name =` of Cargo.toml (the guests set no [lib] name).
  crate="$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$dir/Cargo.toml" | head -n 1)"
  [ -n "$crate" ] || die "$name: cannot read the package's name from Cargo.toml"
  local core="$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/${crate//-/_}.wasm"
  "$CARGO_TARGET_DIR/release/componentize" "$core" "$out/.$name.tmp.wasm" ||
    die "$name: wrapping $core into a component failed"
  mv "$out/.$name.tmp.wasm" "$output"
  echo "$name: $(wc -c <"$output") bytes in policies/out/$name.wasm"
}

build_js() {
  local name=$1 dir="$here/$1" output="$out/$1.wasm"
  if ! stale "$output" "$dir" "$wit"; then
    echo "$name: up to date"
    return
  fi
  command -v npm >/dev/null || die "$name: JavaScript policies need Node.js 20+ and npm"
  if [ ! -x "$dir/node_modules/.bin/jco" ] ||
    [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "$name: npm ci"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || die "$name: npm ci failed"
  fi
  local main
  main="$(cd "$dir" && node -p 'require("./package.json").main')"
  [ -f "$dir/$main" ] || die "$name: package.json's \"main\" ($main) is not a file"
  echo "$name: building (JavaScript, QuickJS)"
  # Sync runtime: the policy has no async exports, and the component then loads on hosts
  # without component-model async. Stubbed WASI: QuickJS's own WASI imports become traps, so
  # the component imports only cachet:policy.
  (cd "$dir" && node_modules/.bin/jco componentize "$main" --backend qjs \
    --backend-qjs-disable-async --backend-qjs-stub-wasi \
    --wit "$wit" --world-name policy --out "$out/.$name.tmp.wasm" >/dev/null) ||
    die "$name: jco componentize failed"
  mv "$out/.$name.tmp.wasm" "$output"
  echo "$name: $(wc -c <"$output") bytes in policies/out/$name.wasm"
}

build_py() {
  local name=$1 dir="$here/$1" output="$out/$1.wasm" venv="$here/.venv"
  if ! stale "$output" "$dir" "$wit"; then
    echo "$name: up to date"
    return
  fi
  [ -f "$dir/requirements.txt" ] || die "$name: needs a requirements.txt naming componentize-py"
  if ! cmp -s "$dir/requirements.txt" "$venv/.installed-$name.txt"; then
    echo "$name: installing $(tr '\n' ' ' <"$dir/requirements.txt")into policies/.venv"
    command -v python3 >/dev/null || die "$name: Python policies need python3 (3.10+)"
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" || die "$name: python3 -m venv failed"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$dir/requirements.txt" ||
      die "$name: pip install failed"
    cp "$dir/requirements.txt" "$venv/.installed-$name.txt"
  fi
  echo "$name: building (Python)"
  (cd "$dir" && "$venv/bin/componentize-py" -d "$wit" -w policy componentize --stub-wasi app \
    -o "$out/.$name.tmp.wasm" >/dev/null) || die "$name: componentize-py failed"
  mv "$out/.$name.tmp.wasm" "$output"
  echo "$name: $(wc -c <"$output") bytes in policies/out/$name.wasm"
}

build() {
  local name=$1 dir="$here/$1"
  if [ -f "$dir/Cargo.toml" ]; then
    build_rust "$name"
  elif [ -f "$dir/package.json" ]; then
    build_js "$name"
  elif [ -f "$dir/app.py" ]; then
    build_py "$name"
  else
    die "no policy named '$name' (a folder of policies/ with a Cargo.toml, package.json or app.py)"
  fi
}

if [ $# -eq 0 ]; then
  for dir in "$here"/*/; do
    name="$(basename "$dir")"
    if [ -f "$dir/Cargo.toml" ] || [ -f "$dir/package.json" ] || [ -f "$dir/app.py" ]; then
      set -- "$@" "$name"
    fi
  done
fi
for name in "$@"; do
  build "$name"
done
