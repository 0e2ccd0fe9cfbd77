#!/usr/bin/env bash
# bench/compat.sh — run Redis clients' own test suites against Redis directly and through
# cachet, and compare. See docs/COMPATIBILITY.md.
#
# Suites (pinned):
#   redis-py        redis-py's sync tests (REDIS_PY_TESTS), from its PyPI sdist
#   redis-py-async  redis-py's asyncio tests (REDIS_PY_ASYNC_TESTS)
#   ioredis         ioredis's functional tests, from a git snapshot (IOREDIS_COMMIT)
# Each (suite, protocol, mode) runs against a fresh redis-server (own port, own temp dir,
# killed afterwards); mode "cachet" puts a fresh cachet in front of it. ioredis hard-codes
# 127.0.0.1:6379, so it runs in a network namespace of its own (`unshare -n`: needs root),
# where 6379 is that redis-server or cachet. The Redis on the host's 6379 is never touched.
#
# Prints a Markdown table (passed/failed/errors/skipped per suite, protocol and mode, and the
# ratio of passes cachet/direct), every test failing through cachet and passing directly, and
# every test that timed out through cachet only. Logs, JUnit XML and the summary
# (summary.md) go to $COMPAT_RESULTS/<timestamp>/.
#
# Environment (defaults in brackets):
#   CACHET=...            the cachet binary [target/release/cachet; built if missing]
#   CACHET_CONFIG=FILE    config for cachet [a minimal one, no rules]; listen and upstream
#                         are always given as flags, so e.g. examples/cachet.toml works
#   SUITES="redis-py redis-py-async ioredis"
#   PROTOCOLS="2 3"       RESP versions (redis-py: --protocol=N; ioredis runs once and each
#                         of its tests is counted under the protocol it uses)
#   MODES="direct cachet"
#   COMPAT_CACHE=DIR      venv, sdist, ioredis checkout and node_modules, kept between runs
#                         [${XDG_CACHE_HOME:-~/.cache}/cachet-compat]
#   COMPAT_RESULTS=DIR    [target/compat-results]
#   REDIS_PY_VERSION=8.2.0
#   IOREDIS_COMMIT=dfd542824dfb7168420f19fdfabe9fe1156efe10
#   IOREDIS_GIT_DIR=DIR   a git directory holding IOREDIS_COMMIT (else it is cloned from
#                         IOREDIS_URL=https://github.com/redis/ioredis.git)
#   PYTEST_TIMEOUT=60     seconds per redis-py test (pytest-timeout): a hang is a failure
#   PYTEST_ARGS=...       extra pytest arguments, shell-quoted (e.g. "-k 'pubsub or lock'")
#   SUITE_TIMEOUT=3600    seconds before a whole suite run is killed
#   IOREDIS_TIMEOUT=2400  the same for one ioredis run
#
# Examples:
#   bench/compat.sh
#   CACHET=/work/bin/cachet-base SUITES=redis-py PROTOCOLS=3 bench/compat.sh
#   CACHET_CONFIG=examples/cachet.toml SUITES=ioredis bench/compat.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
used_ports=" 6379 6380 "
log() { echo "[compat $(date +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=bench/lib.sh
source "$here/lib.sh" # free_port, wait_ping; unsets the admin listener

: "${SUITES:=redis-py redis-py-async ioredis}"
: "${PROTOCOLS:=2 3}"
: "${MODES:=direct cachet}"
: "${COMPAT_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/cachet-compat}"
: "${COMPAT_RESULTS:=$repo/target/compat-results}"
: "${REDIS_PY_VERSION:=8.2.0}"
: "${IOREDIS_COMMIT:=dfd542824dfb7168420f19fdfabe9fe1156efe10}"
: "${IOREDIS_URL:=https://github.com/redis/ioredis.git}"
: "${PYTEST_TIMEOUT:=60}"
: "${PYTEST_ARGS:=}"
: "${SUITE_TIMEOUT:=3600}"
: "${IOREDIS_TIMEOUT:=2400}"
export IOREDIS_TIMEOUT

# redis-py: the test files that talk to one plain Redis (no modules, cluster, sentinel, TLS,
# replica); the markers drop the tests inside them that need those.
: "${REDIS_PY_TESTS:=test_commands.py test_pipeline.py test_pubsub.py test_lock.py
    test_scripting.py test_function.py test_connection.py test_connection_pool.py
    test_encoding.py test_monitor.py test_multiprocessing.py test_hash.py
    test_keyspace_notifications.py test_retry.py test_cache.py test_hello_fallback.py
    test_command_parser.py}"
: "${REDIS_PY_ASYNC_TESTS:=test_commands.py test_pipeline.py test_pubsub.py test_lock.py
    test_scripting.py test_function.py test_connection.py test_connection_pool.py
    test_encoding.py test_monitor.py test_hash.py test_keyspace_notifications.py
    test_retry.py test_hello_fallback.py test_cwe_404.py test_command_parser.py}"
# The test runner, pinned (coverage: only so the project's pytest filterwarnings entry loads).
PYTEST_PINS="pytest==9.2.0 pytest-asyncio==1.5.0 pytest-timeout==2.4.0 coverage==7.11.0"
PYTEST_PINS_RE=$(sed 's/ /|/g; s/\./\\./g' <<<"$PYTEST_PINS")
REDIS_PY_MARKERS="not onlycluster and not redismod and not ssl and not replica"
# What the redis-servers run with: DEBUG is allowed, as in redis-py's and ioredis's CI.
REDIS_SERVER_ARGS=${REDIS_SERVER_ARGS:---enable-debug-command yes}
export REDIS_SERVER_ARGS

stamp=$(date +%Y%m%d-%H%M%S)
out=$COMPAT_RESULTS/$stamp
run_dir=$out/logs
mkdir -p "$run_dir" "$COMPAT_CACHE"
log "results in $out"

# ---------------------------------------------------------------- the cachet binary
if [[ " $MODES " == *" cachet "* ]]; then
    if [[ -z ${CACHET:-} ]]; then
        CACHET=$repo/target/release/cachet
        if [[ ! -x $CACHET ]]; then
            log "building cachet (cargo build --release)"
            (cd "$repo" && cargo build --release) >"$run_dir/build.log" 2>&1 \
                || die "cargo build failed; see $run_dir/build.log"
        fi
    fi
    [[ -x $CACHET ]] || die "CACHET=$CACHET is not an executable"
    CACHET=$(realpath "$CACHET")
    if [[ -z ${CACHET_CONFIG:-} ]]; then
        CACHET_CONFIG=$out/cachet.toml
        cat >"$CACHET_CONFIG" <<'EOF'
# bench/compat.sh: no rules, no policies, no admin listener; --listen and --upstream are
# given on the command line.
[admin]
listen = ""
EOF
    fi
    CACHET_CONFIG=$(realpath "$CACHET_CONFIG")
    "$CACHET" check-config "$CACHET_CONFIG" >"$run_dir/check-config.log" 2>&1 \
        || die "cachet check-config $CACHET_CONFIG failed; see $run_dir/check-config.log"
fi

# ---------------------------------------------------------------- fresh servers
pids=()
stop_all() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap stop_all EXIT

# start_target NAME MODE: a fresh redis-server (and cachet in front of it for MODE=cachet);
# sets target_port to where the client must connect.
start_target() {
    local name=$1 mode=$2 rport rdir cport
    rport=$(free_port)
    rdir=$(mktemp -d "$run_dir/redis-$name.XXXX")
    # shellcheck disable=SC2086
    redis-server --port "$rport" --bind 127.0.0.1 --dir "$rdir" --save "" --appendonly no \
        $REDIS_SERVER_ARGS >"$run_dir/$name-redis.log" 2>&1 &
    pids+=($!)
    wait_ping "$name-redis" "$rport" "${pids[-1]}"
    target_port=$rport
    if [[ $mode == cachet ]]; then
        cport=$(free_port)
        RUST_LOG=${RUST_LOG:-warn} "$CACHET" --config "$CACHET_CONFIG" \
            --listen "127.0.0.1:$cport" --upstream "redis://127.0.0.1:$rport" \
            >"$run_dir/$name-cachet.log" 2>&1 &
        pids+=($!)
        wait_ping "$name-cachet" "$cport" "${pids[-1]}"
        target_port=$cport
    fi
    log "$name: client port $target_port (redis-server on $rport)"
}

# ---------------------------------------------------------------- redis-py
setup_redis_py() {
    local src=$COMPAT_CACHE/redis-$REDIS_PY_VERSION venv=$COMPAT_CACHE/venv
    if [[ ! -f $src/tests/conftest.py ]]; then
        log "downloading redis-py $REDIS_PY_VERSION sdist from PyPI"
        (cd "$COMPAT_CACHE" && python3 -m pip download -q --no-binary :all: --no-deps \
            "redis==$REDIS_PY_VERSION" && tar xzf "redis-$REDIS_PY_VERSION.tar.gz") \
            || die "cannot get the redis-py sdist"
    fi
    if [[ ! -x $venv/bin/python ]] \
        || [[ $("$venv/bin/python" -m pip freeze 2>/dev/null | grep -ciE "^($PYTEST_PINS_RE)$") != 4 ]]; then
        log "creating the venv in $venv"
        python3 -m venv "$venv"
        # shellcheck disable=SC2086
        "$venv/bin/pip" install -q $PYTEST_PINS packaging >"$run_dir/pip.log" 2>&1 \
            || die "pip install failed; see $run_dir/pip.log"
    fi
    redis_py_src=$src
    redis_py_python=$venv/bin/python
}

run_redis_py() { # suite protocol mode
    local suite=$1 proto=$2 mode=$3 name files=() f
    name=$suite-p$proto-$mode
    if [[ $suite == redis-py ]]; then
        for f in $REDIS_PY_TESTS; do files+=("tests/$f"); done
    else
        for f in $REDIS_PY_ASYNC_TESTS; do files+=("tests/test_asyncio/$f"); done
    fi
    # PYTEST_ARGS is split as the shell would: -k 'a or b' stays one argument.
    eval "local pytest_extra=($PYTEST_ARGS)"
    start_target "$name" "$mode"
    log "$name: pytest ${#files[@]} files"
    # -o addopts="": drop the project's -s so output is captured per test.
    (cd "$redis_py_src" && timeout --kill-after=30 "$SUITE_TIMEOUT" \
        "$redis_py_python" -m pytest -p no:cacheprovider -o addopts="" -q -rfE -W ignore \
        --timeout="$PYTEST_TIMEOUT" -m "$REDIS_PY_MARKERS" \
        --redis-url="redis://127.0.0.1:$target_port/0" --protocol="$proto" \
        --junitxml="$out/$name.xml" "${pytest_extra[@]}" "${files[@]}") \
        >"$run_dir/$name.log" 2>&1 || true
    tail -n 1 "$run_dir/$name.log" | sed "s/^/[$name] /" >&2
    stop_all
}

# ---------------------------------------------------------------- ioredis
setup_ioredis() {
    local src=$COMPAT_CACHE/ioredis-${IOREDIS_COMMIT:0:12} tmp
    if [[ ! -f $src/package.json ]]; then
        tmp=$(mktemp -d "$COMPAT_CACHE/ioredis.XXXX")
        if [[ -n ${IOREDIS_GIT_DIR:-} ]]; then
            log "ioredis $IOREDIS_COMMIT from $IOREDIS_GIT_DIR"
        else
            log "cloning $IOREDIS_URL"
            git clone -q --bare --filter=blob:none "$IOREDIS_URL" "$tmp/git" \
                || die "cannot clone $IOREDIS_URL (set IOREDIS_GIT_DIR)"
            IOREDIS_GIT_DIR=$tmp/git
        fi
        mkdir -p "$tmp/tree"
        # Only what the tests need (the docs are large and not always in a snapshot; git may
        # still print "invalid object ... docs/..." for such a snapshot: harmless).
        git --git-dir="$IOREDIS_GIT_DIR" archive "$IOREDIS_COMMIT" -- lib test bin \
            package.json package-lock.json tsconfig.json | tar x -C "$tmp/tree" \
            || die "cannot extract ioredis $IOREDIS_COMMIT"
        mv "$tmp/tree" "$src"
        rm -rf "$tmp"
    fi
    if [[ ! -x $src/node_modules/.bin/mocha ]]; then
        log "npm ci in $src"
        (cd "$src" && npm ci --ignore-scripts --no-audit --no-fund) >"$run_dir/npm.log" 2>&1 \
            || die "npm ci failed; see $run_dir/npm.log"
    fi
    ioredis_src=$src
}

run_ioredis() { # mode
    local mode=$1 name=ioredis-pall-$1
    log "$name: mocha in a network namespace"
    timeout --kill-after=60 "$((IOREDIS_TIMEOUT + 120))" \
        unshare -n "$here/compat/ioredis-netns.sh" "$mode" "$ioredis_src" "$out/$name.xml" \
        "$run_dir" "${CACHET:-}" "${CACHET_CONFIG:-}" || log "$name: exit status $?"
    grep -o 'tests="[0-9]*" failures="[0-9]*" errors="[0-9]*" skipped="[0-9]*"' \
        "$out/$name.xml" 2>/dev/null | sed "s/^/[$name] /" >&2 || log "$name: no xml"
}

# ---------------------------------------------------------------- run
{
    echo "date: $(date -u +%FT%TZ)"
    echo "redis-server: $(redis-server --version)"
    [[ -n ${CACHET:-} ]] && echo "cachet: $CACHET ($("$CACHET" --version 2>/dev/null || true)," \
        "sha256 $(sha256sum "$CACHET" | cut -c1-16))" && echo "cachet config: $CACHET_CONFIG"
    echo "redis-py: $REDIS_PY_VERSION; ioredis: $IOREDIS_COMMIT"
    echo "SUITES=$SUITES PROTOCOLS=$PROTOCOLS MODES=$MODES"
} >"$out/env.txt"

for suite in $SUITES; do
    case $suite in
    redis-py | redis-py-async)
        setup_redis_py
        for proto in $PROTOCOLS; do
            for mode in $MODES; do run_redis_py "$suite" "$proto" "$mode"; done
        done
        ;;
    ioredis)
        setup_ioredis
        for mode in $MODES; do run_ioredis "$mode"; done
        ;;
    *) die "unknown suite $suite" ;;
    esac
done

export SUITES PROTOCOLS
{
    echo "Run \`$stamp\`:"
    echo
    sed 's/^/    /' "$out/env.txt"
    echo
    IOREDIS_ROOT=${ioredis_src:-} python3 "$here/compat/summarize.py" "$out"
} | tee "$out/summary.md"
log "summary: $out/summary.md"
