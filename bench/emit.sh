#!/usr/bin/env bash
# bench/emit.sh — EMIT through a policy, end to end: the sessions policy in Rust, JavaScript
# and Python (whichever of policies/out/sessions{,-js,-py}.wasm exist; `policies/build.sh`
# builds them), each behind its own cachet and redis-server on free ports (never :6379).
#
# For each policy:
#   1. Round trip. ITER times: tag 10 keys `sessions:teacher:123:<i>` with `teacher:123`
#      (TAGSET, pipelined, not timed), then time
#        EMIT session.created sessionId 42 teacherId 123 schoolId 7
#      from one client (a raw-socket client in Python; its own overhead is in the figures).
#      The reply must report 10 keys deleted. Reported: p50, p99, mean.
#   2. Policy time alone: POLICY LIST's mean_ns / p99_ns of the policy's calls (the call on
#      its thread: instance reuse, the wasm, lifting the result), over the same events.
#   3. Sustained: redis-benchmark -c CLIENTS -n N of the same EMIT (the tag is empty after
#      the first, so this is routing + policy + an invalidation of an empty tag): events/s.
#
# Targets (issue 4): p50 under 1 ms end to end and under 20 µs of policy time for Rust.
# The report goes to stdout and bench/results/emit-latest.md.
#
# Environment: ITER=2000, N=20000, CLIENTS=8, CACHET=target/release/cachet (built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

ITER=${ITER:-2000}
N=${N:-20000}
CLIENTS=${CLIENTS:-8}
CACHET=${CACHET:-target/release/cachet}
run_dir=$(mktemp -d /tmp/cachet-emit-bench.XXXXXX)
used_ports=" 6379 "
pids=()

log() { echo "[emit.sh] $*" >&2; }
die() { log "error: $*"; exit 1; }
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
# shellcheck source=bench/lib.sh
source bench/lib.sh

[[ -x $CACHET ]] || cargo build --release --bin cachet >&2

roundtrip() { # port iterations
    python3 - "$1" "$2" <<'PY'
import socket, sys, time, statistics
port, iters = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = b""
def enc(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out
def frame(at):
    # Returns the end of the RESP2 frame starting at `at`, or None if incomplete.
    global buf
    nl = buf.find(b"\r\n", at)
    if nl < 0: return None
    kind, head = buf[at:at+1], buf[at+1:nl]
    if kind in (b"+", b"-", b":"): return nl + 2
    if kind == b"$":
        n = int(head)
        if n < 0: return nl + 2
        end = nl + 2 + n + 2
        return end if len(buf) >= end else None
    if kind == b"*":
        n, pos = int(head), nl + 2
        for _ in range(max(n, 0)):
            pos = frame(pos)
            if pos is None: return None
        return pos
    raise ValueError(buf[at:at+40])
def read(count):
    global buf
    out = []
    while len(out) < count:
        end = frame(0)
        if end is None:
            buf += s.recv(1 << 16)
            continue
        out.append(buf[:end]); buf = buf[end:]
    return out
fill = b"".join(enc("TAGSET", "sessions:teacher:123:%d" % i, "v", "TAGS", "teacher:123") for i in range(10))
emit = enc("EMIT", "session.created", "sessionId", "42", "teacherId", "123", "schoolId", "7")
times = []
for _ in range(iters):
    s.sendall(fill); read(10)
    t = time.perf_counter_ns()
    s.sendall(emit)
    reply = read(1)[0]
    times.append(time.perf_counter_ns() - t)
    if b"deleted\r\n:10\r\n" not in reply:
        sys.exit("unexpected EMIT reply: %r" % reply[:300])
times.sort()
pct = lambda p: times[min(len(times) - 1, int(len(times) * p / 100))] / 1000
print("%.1f %.1f %.1f" % (pct(50), pct(99), statistics.mean(times) / 1000))
PY
}

list_field() { # port field
    redis-cli -p "$1" POLICY LIST | awk -v f="$2" 'prev == f { print; exit } { prev = $0 }'
}

report="| policy | component | EMIT p50 (µs) | EMIT p99 (µs) | EMIT mean (µs) | policy mean (µs) | policy p99 (µs) | events/s (-c $CLIENTS) |
|---|---|---|---|---|---|---|---|"
found=0
for name in sessions sessions-js sessions-py; do
    module=policies/out/$name.wasm
    [[ -f $module ]] || { log "$module missing, skipped (policies/build.sh $name)"; continue; }
    found=1
    redis_port=$(free_port); cachet_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --logfile "$run_dir/redis-$name.log" &
    pids+=($!); wait_ping "redis-$name" "$redis_port" "$!"
    cat >"$run_dir/$name.toml" <<EOF
[proxy]
listen = "127.0.0.1:$cachet_port"
[upstream]
url = "redis://127.0.0.1:$redis_port"
[[policies]]
name = "$name"
module = "$module"
events = ["session.*", "user.updated", "roster.changed", "school.updated"]
EOF
    RUST_LOG=warn "$CACHET" --config "$run_dir/$name.toml" >"$run_dir/cachet-$name.log" 2>&1 &
    pids+=($!); wait_ping "cachet-$name" "$cachet_port" "$!"
    log "$name: $ITER round trips"
    read -r p50 p99 mean < <(roundtrip "$cachet_port" "$ITER")
    mean_ns=$(list_field "$cachet_port" mean_ns)
    p99_ns=$(list_field "$cachet_port" p99_ns)
    log "$name: redis-benchmark -c $CLIENTS -n $N"
    rps=$(redis-benchmark -p "$cachet_port" -c "$CLIENTS" -n "$N" --csv \
        EMIT session.created sessionId 42 teacherId 123 schoolId 7 | tail -1 | cut -d, -f2 | tr -d '"')
    size=$(stat -c %s "$module")
    report+="
| $name | $((size / 1024)) KB | $p50 | $p99 | $mean | $(awk "BEGIN{printf \"%.1f\", $mean_ns/1000}") | $(awk "BEGIN{printf \"%.1f\", $p99_ns/1000}") | $rps |"
done
[[ $found == 1 ]] || die "no sessions policy in policies/out: run policies/build.sh first"
mkdir -p bench/results
{
    echo "EMIT benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, ITER=$ITER N=$N"
    echo
    echo "$report"
} | tee bench/results/emit-latest.md
