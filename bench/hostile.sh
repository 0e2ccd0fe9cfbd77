#!/usr/bin/env bash
# bench/hostile.sh — can one client hurt the others? (issue 13, "a hostile-neighbour benchmark")
#
# For every scenario it starts a fresh redis-server (`--requirepass`) and a fresh cachet
# (release build, default config except `upstream.password`, an admin listener on a free port
# and one stream warmer so that WARM is accepted by config), all on 127.0.0.1 and free ports,
# then runs the driver (bench/hostile_driver.rs, a `harness = false` bench target): a well-behaved
# client that AUTHs and does SET/GET of its own keys, one request per millisecond, checking
# every reply byte for byte, while the scenario's hostile clients run against the same cachet.
#
#  0-baseline            nothing hostile: the measurement's own floor on this machine
#  1-nested              1 MB SET then 1,000,000 x `*1\r\n` in one stream, without AUTH
#  2-subscribe-reset     200 clients: AUTH, SUBSCRIBE c, RESET x, PING, disconnect; Redis's
#                        connected_clients before and 2 s after
#  3-bad-lengths         50 frames with lengths Redis rejects ($04, $+4, *01, *+1), after AUTH,
#                        one per fresh connection, 60 ms apart
#  4-unread-pipeline     after AUTH, 20,000 pipelined GETs of a 100 KB value, never read, 5 s
#  5-big-unauth-bulk     a SET with a 200 MB bulk, without AUTH
#  6-warm-flood          a failed AUTH, then 10,000 WARMs on the same connection
#  7-garbage             10,000 good commands, then 1,150 garbage packets from unauthenticated
#                        clients (50 at once); /health before and after
#  8-huge-command        one EXISTS of 3,000,000 one-byte keys (21 MB), after AUTH (EXISTS, not
#                        DEL: it changes nothing); Redis's own time for it is measured first
#  9-idle                5,000 idle connections held 3 s (ulimit -n is raised here)
#  10-slowloris          1,000 connections each sending `GET foo` a byte a second for 6 s
#  11-unread-subscriber  a subscriber (through cachet) that never reads, while 16 KB PUBLISHes
#                        go straight to Redis, 8 every 2 ms (64 MB/s), for 4 s
#
# Per scenario: cachet alive (running, and a new client gets PONG afterwards), the well-behaved
# client's requests, errors (error replies, no reply within 2 s, dropped or refused
# connections) and wrong replies (target 0 each), its p50/p99/max latency (target p99 <= 10 ms,
# <= 50 ms in scenario 8), cachet's RSS growth over the scenario from /proc/PID/status (peak
# minus start, target <= 256 MB), a check of the scenario's own where it has one (2: Redis
# connections left over <= 8, the default spare_connections; 5: cachet refuses before the
# whole bulk arrives; 6: nothing queued without AUTH and an authenticated WARM still queued;
# 7: /health not 503 afterwards; 9 and 10: a new client gets PONG while they hold on), and
# PASS when everything meets its target.
#
# Latency is measured from when each request was due on the client's fixed 1 ms schedule, not
# from when it was sent, so a stall of cachet counts against every request it held up (a
# closed-loop client would see it once); the time from sending is in the CSV as
# service_p99_ms. The window runs from 0.5 s before the hostile part to 1 s after it, at
# least WINDOW_SECS, and at least 10 s in scenario 8: Redis itself blocks everyone for
# 100-250 ms while it parses and runs a command of 3 million arguments, which over 5 s alone
# would put the p99 above 50 ms. Its "direct" row shows what Redis alone costs over the same
# window; on a busy machine that can exceed 50 ms too, and cachet's share is the difference.
#
# On a shared machine the baseline rows are the floor: a p99 above target there means the
# machine, not cachet, and the run should be repeated when the machine is quiet.
#
# The table goes to stdout and $RESULTS_DIR/hostile-latest.md; the driver's CSV, every
# config and process log go to $RESULTS_DIR/runs/hostile-<timestamp>/. It never touches an
# already running Redis: everything is started here and stopped on exit.
#
# Environment (defaults in brackets):
#   SCENARIOS="0-baseline 1-nested ..."   which scenarios, in order [all twelve]
#   WINDOW_SECS=5         shortest measurement window per scenario (10 s at least in 8)
#   DIRECT_SCENARIOS="0-baseline 8-huge-command"   scenarios run a second time with the
#                         well-behaved and the hostile clients straight on Redis, no cachet:
#                         what the machine and Redis alone cost ("direct" rows, for reference;
#                         their RSS column is Redis's)
#   SKIP_BUILD=1          don't build (both binaries must exist)
#   CACHET_BIN=...        cachet binary [target/release/cachet]
#   HOSTILE_BIN=...       the driver [the newest target/release/deps/hostile_driver-*]
#   RESULTS_DIR=bench/results
#
# Example: bench/hostile.sh;  SCENARIOS="0-baseline 9-idle" bench/hostile.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
repo=$(cd "$here/.." && pwd)

all_scenarios="0-baseline 1-nested 2-subscribe-reset 3-bad-lengths 4-unread-pipeline 5-big-unauth-bulk 6-warm-flood 7-garbage 8-huge-command 9-idle 10-slowloris 11-unread-subscriber"
SCENARIOS=${SCENARIOS:-$all_scenarios}
WINDOW_SECS=${WINDOW_SECS:-5}
DIRECT_SCENARIOS=${DIRECT_SCENARIOS:-"0-baseline 8-huge-command"}
SKIP_BUILD=${SKIP_BUILD:-0}
CACHET_BIN=${CACHET_BIN:-"${CARGO_TARGET_DIR:-$repo/target}/release/cachet"}
HOSTILE_BIN=${HOSTILE_BIN:-}
RESULTS_DIR=${RESULTS_DIR:-"$here/results"}
PASSWORD="hostile-bench-$$"

log() { printf '[hostile %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in redis-server redis-cli ss timeout; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
read -r -a scenarios <<<"$SCENARIOS"
for s in "${scenarios[@]}"; do
    [[ " $all_scenarios " == *" $s "* ]] || die "unknown scenario '$s' (known: $all_scenarios)"
done

# 5,000 idle connections need as many descriptors in the driver and in cachet.
hard=$(ulimit -Hn)
want=20000
if [[ $hard != unlimited ]] && ((hard < want)); then want=$hard; fi
ulimit -n "$want" 2>/dev/null || true
(($(ulimit -n) >= 12000)) || die "ulimit -n is $(ulimit -n) (hard $hard); scenario 9 needs 12000"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
run_dir="$RESULTS_DIR/runs/hostile-$stamp"
mkdir -p "$run_dir"

# ---------------------------------------------------------------- processes --
pids=()
stop_pid() { # pid: TERM, then KILL after 2 s
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${pids[@]}"; do
        stop_pid "$pid"
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

used_ports=" "

# lib.sh's wait_ping cannot AUTH: both servers here want a password.
wait_auth_ping() { # name port pid
    local name=$1 port=$2 pid=$3
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || die "$name (pid $pid) exited during startup; see $run_dir"
        if [[ $(redis-cli --no-auth-warning -a "$PASSWORD" -h 127.0.0.1 -p "$port" PING 2>/dev/null) == PONG ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "$name on 127.0.0.1:$port did not answer PING within 10s; see $run_dir"
}

# -------------------------------------------------------------------- build --
target_dir=${CARGO_TARGET_DIR:-$repo/target}
if [[ $SKIP_BUILD != 1 ]]; then
    # One release build for both: the driver as a bench target built with --release shares
    # every artifact with the cachet binary (`cargo bench` would build a profile of its own).
    log "cargo build --release --bin cachet --bench hostile_driver"
    (cd "$repo" && cargo build --release --bin cachet --bench hostile_driver) >"$run_dir/build.log" 2>&1 \
        || { tail -20 "$run_dir/build.log" >&2; die "cargo build --release failed"; }
fi
if [[ -z $HOSTILE_BIN ]]; then
    HOSTILE_BIN=$(find "$target_dir/release/deps" -maxdepth 1 -type f -name 'hostile_driver-*' -perm -u+x \
        -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -1 | cut -d' ' -f2-)
fi
[[ -x $CACHET_BIN ]] || die "cachet binary not found at $CACHET_BIN"
[[ -x $HOSTILE_BIN ]] || die "driver not found at '$HOSTILE_BIN'"

cachet_rev=$(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo "no commit")
if [[ -n $(cd "$repo" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    cachet_rev+=" (dirty)"
fi
machine_info() {
    echo "- date (UTC): $(date -u '+%Y-%m-%d %H:%M:%S')"
    echo "- nproc: $(nproc); CPU: $(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "- kernel: $(uname -sr); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- redis-server: $(redis-server --version | sed 's/^Redis server //')"
    echo "- cachet: $cachet_rev, $(rustc --version 2>/dev/null || echo 'rustc ?'), binary ${CACHET_BIN#"$repo"/}; default config + upstream.password, one stream warmer"
    echo "- ulimit -n: $(ulimit -n); shortest window: ${WINDOW_SECS}s"
}
machine=$(machine_info)
printf '%s\n' "$machine" >&2

# ---------------------------------------------------------------- scenarios --
csv="$run_dir/hostile.csv"
echo "scenario,title,alive,requests,errors,wrong,p50_ms,p99_ms,max_ms,service_p99_ms,p99_target_ms,rss_base_mb,rss_peak_mb,rss_growth_mb,check,pass,first_problem,notes" >"$csv"
declare -A exit_note
began=$SECONDS
for s in "${scenarios[@]}"; do
    redis_port=$(free_port)
    cachet_port=$(free_port)
    admin_port=$(free_port)
    mkdir -p "$run_dir/$s"
    redis-server --bind 127.0.0.1 --port "$redis_port" --requirepass "$PASSWORD" --save "" \
        --appendonly no --daemonize no --dir "$run_dir/$s" --logfile "" \
        >"$run_dir/$s/redis.log" 2>&1 &
    redis_pid=$!
    pids+=("$redis_pid")
    wait_auth_ping redis "$redis_port" "$redis_pid"

    cat >"$run_dir/$s/cachet.toml" <<EOF
[proxy]
listen = "127.0.0.1:$cachet_port"

[upstream]
url = "redis://127.0.0.1:$redis_port"
password = "$PASSWORD"

[warmers.hostile]
stream = "hostile:warm"
EOF
    # The environment must not override the config (lib.sh empties CACHET_ADMIN_LISTEN).
    env -u REDIS_HOST -u REDIS_PORT -u REDIS_PASSWORD -u CACHET_LISTEN \
        CACHET_ADMIN_LISTEN="127.0.0.1:$admin_port" NO_COLOR=1 \
        "$CACHET_BIN" --config "$run_dir/$s/cachet.toml" >"$run_dir/$s/cachet.log" 2>&1 &
    cachet_pid=$!
    pids+=("$cachet_pid")
    wait_auth_ping cachet "$cachet_port" "$cachet_pid"
    check_pid cachet "$cachet_port" "$cachet_pid" "$(basename "$CACHET_BIN")" 2>>"$run_dir/$s/driver.log"

    log "$s: $( [[ $s == 0-baseline ]] && echo "measuring" || echo "running") (cachet pid $cachet_pid :$cachet_port, redis :$redis_port)"
    rc=0
    timeout 120 "$HOSTILE_BIN" --scenario "$s" --cachet "127.0.0.1:$cachet_port" \
        --redis "127.0.0.1:$redis_port" --admin "127.0.0.1:$admin_port" --password "$PASSWORD" \
        --pid "$cachet_pid" --window-secs "$WINDOW_SECS" >"$run_dir/$s/row.csv" 2>>"$run_dir/$s/driver.log" || rc=$?
    if [[ $rc != 0 || ! -s $run_dir/$s/row.csv ]]; then
        log "$s: the driver failed (exit $rc); see $run_dir/$s/driver.log"
        echo "$s,driver failed (exit $rc),?,0,0,0,nan,nan,nan,nan,nan,nan,nan,nan,-,FAIL,-,see $s/driver.log" >"$run_dir/$s/row.csv"
    fi
    cat "$run_dir/$s/row.csv" >>"$csv"

    if ! kill -0 "$cachet_pid" 2>/dev/null; then
        crc=0
        wait "$cachet_pid" 2>/dev/null || crc=$?
        why=$(grep -m1 -E "overflowed|panicked|fatal runtime| ERROR " "$run_dir/$s/cachet.log" | cut -c1-160 | tr ',|' ';/' || true)
        exit_note[$s]="cachet exited with status $crc${why:+: $why}"
    fi
    stop_pid "$cachet_pid"
    if [[ " $DIRECT_SCENARIOS " == *" $s "* ]]; then
        log "$s: again straight to Redis, for reference"
        rc=0
        timeout 120 "$HOSTILE_BIN" --scenario "$s" --cachet "127.0.0.1:$redis_port" \
            --redis "127.0.0.1:$redis_port" --admin "127.0.0.1:$admin_port" --password "$PASSWORD" \
            --pid "$redis_pid" --window-secs "$WINDOW_SECS" --direct \
            >"$run_dir/$s/row-direct.csv" 2>>"$run_dir/$s/driver.log" || rc=$?
        if [[ $rc == 0 && -s $run_dir/$s/row-direct.csv ]]; then
            cat "$run_dir/$s/row-direct.csv" >>"$csv"
        else
            log "$s direct: the driver failed (exit $rc); see $run_dir/$s/driver.log"
        fi
    fi
    stop_pid "$redis_pid"
    pids=()
    log "$s: $(cut -d, -f16 "$run_dir/$s/row.csv")"
done
elapsed=$((SECONDS - began))

# ------------------------------------------------------------------- report --
report() {
    echo "# cachet hostile-neighbour run $stamp"
    echo
    printf '%s\n' "$machine"
    echo "- scenarios took ${elapsed}s; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "Well-behaved client: AUTH, then SET of a fresh key and GET of it, one request per ms," \
         "every reply checked byte for byte; latency from when each request was due (a stall" \
         "counts for every request it held up). Targets: cachet alive, 0 errors, 0 wrong replies," \
         "p99 <= 10 ms (<= 50 ms in scenario 8, over a window of at least 10 s), cachet RSS growth" \
         "<= 256 MB, the scenario's own check. Rows marked \"direct\" ran the same clients straight" \
         "on Redis, without cachet: the floor set by the machine and by Redis (RSS there is Redis's)."
    echo
    echo "| scenario | hostile client | cachet alive | requests | errors | wrong | p50 ms | p99 ms (target) | max ms | RSS growth MB | scenario check | result |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
    tail -n +2 "$csv" | while IFS=, read -r s title alive req err wrong p50 p99 max _svc target _base _peak growth check pass _rest; do
        echo "| $s | $title | $alive | $req | $err | $wrong | $p50 | $p99 ($target) | $max | $growth | $check | **$pass** |"
    done
    echo
    echo "Notes (what the hostile clients saw):"
    echo
    tail -n +2 "$csv" | while IFS=, read -r s _title _alive _req _err _wrong _p50 _p99 _max _svc _target _base _peak _growth _check _pass first notes; do
        notes=${notes:+$notes; }${exit_note[$s]:+${exit_note[$s]}; }
        echo "- **$s**: ${notes}first problem of the well-behaved client: $first"
    done
    echo
    echo "Raw CSV, configs and logs: ${run_dir#"$repo"/}"
}
report | tee "$run_dir/report.md"
cp "$run_dir/report.md" "$RESULTS_DIR/hostile-latest.md"
log "written $RESULTS_DIR/hostile-latest.md"
