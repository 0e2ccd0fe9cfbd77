#!/usr/bin/env bash
# bench/tags-floor.sh — what Redis alone spends on the commands a tagged SET becomes, with no
# proxy in front: the floor under bench/tags.sh's cost ratios.
#
# Each shape gets its own redis-server (free loopback port, no persistence), first filled
# with KEYSPACE keys as that shape leaves them (with or without a TTL; for `shared`, also the
# ZSET `all-items` holding all of them, as bench/tags.sh's prefill leaves its tag set), so
# the rounds measure overwrites in the steady state. Then, in alternating rounds,
# `redis-cli --pipe` sends N SETs of random keys in groups of 16 (the transaction cachet
# sends for 16 pipelined SETs) in each shape:
#
#   plain       SET key xxx
#   plain-ex    SET key xxx EX 3600                        what a rule's TTL alone costs
#   shared      MULTI, 16 x SET key xxx EX 3600, ZADD all-items <score> k1 ... k16, EXEC
#               (the `shared` variant's transaction: one indexed tag, members already there
#               at the same score, as in the overwrite rounds of bench/tags.sh)
#
# and the redis-server's CPU time (utime+stime, /proc/PID/stat) is read around each. Reported:
# Redis µs per SET, the median over ROUNDS, and each shape's ratio to plain.
#
# Environment: ROUNDS=3 N=500000 KEYSPACE=100000. Needs redis-server, redis-cli, python3.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROUNDS=${ROUNDS:-3}
N=${N:-500000}
KEYSPACE=${KEYSPACE:-100000}
(( N % 16 == 0 )) || { echo "N must be a multiple of 16" >&2; exit 1; }

log() { printf '[tags-floor %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
run_dir=$(mktemp -d)
used_ports=" 6379 "
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
for tool in redis-server redis-cli python3; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

declare -A port pid
trap 'for p in "${pid[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$run_dir"' EXIT
for shape in plain plain-ex shared; do
    port[$shape]=$(free_port)
    redis-server --port "${port[$shape]}" --bind 127.0.0.1 --save "" --appendonly no \
        >"$run_dir/redis-$shape.log" 2>&1 &
    pid[$shape]=$!
    wait_ping "redis-$shape" "${port[$shape]}" "${pid[$shape]}"
    check_pid "redis-$shape" "${port[$shape]}" "${pid[$shape]}" redis-server
done

# The command streams, in RESP, written once.
log "writing the command files ($N SETs per shape)"
python3 - "$run_dir" "$N" "$KEYSPACE" <<'EOF'
import random, sys
out, n, keyspace = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def cmd(*args):
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)
score = b"1798700000000"
random.seed(1)
shapes = ("plain", "plain-ex", "shared")
files = {s: open(f"{out}/{s}.resp", "wb") for s in shapes}
prefill = {s: open(f"{out}/prefill-{s}.resp", "wb") for s in shapes}
for i in range(keyspace):
    key = b"key:%012d" % i
    prefill["plain"].write(cmd(b"SET", key, b"xxx"))
    prefill["plain-ex"].write(cmd(b"SET", key, b"xxx", b"EX", b"3600"))
    prefill["shared"].write(
        cmd(b"SET", key, b"xxx", b"EX", b"3600") + cmd(b"ZADD", b"all-items", score, key)
    )
for _ in range(n // 16):
    keys = [b"key:%012d" % random.randrange(keyspace) for _ in range(16)]
    files["plain"].write(b"".join(cmd(b"SET", k, b"xxx") for k in keys))
    files["plain-ex"].write(b"".join(cmd(b"SET", k, b"xxx", b"EX", b"3600") for k in keys))
    zadd = [b"ZADD", b"all-items"]
    for k in keys:
        zadd += [score, k]
    files["shared"].write(
        cmd(b"MULTI")
        + b"".join(cmd(b"SET", k, b"xxx", b"EX", b"3600") for k in keys)
        + cmd(*zadd)
        + cmd(b"EXEC")
    )
for f in [*files.values(), *prefill.values()]:
    f.close()
EOF
for shape in plain plain-ex shared; do
    redis-cli -p "${port[$shape]}" --pipe <"$run_dir/prefill-$shape.resp" >/dev/null
    want=$KEYSPACE
    [[ $shape == shared ]] && want=$((KEYSPACE + 1))
    [[ $(redis-cli -p "${port[$shape]}" DBSIZE) == "$want" ]] \
        || die "the prefill of $shape left $(redis-cli -p "${port[$shape]}" DBSIZE) keys"
done
[[ $(redis-cli -p "${port[shared]}" ZCARD all-items) == "$KEYSPACE" ]] || die "prefill did not fill all-items"

hz=$(getconf CLK_TCK)
results=$run_dir/results.csv
for ((round = 1; round <= ROUNDS; round++)); do
    for shape in plain plain-ex shared; do
        t0=$(cpu_ticks "${pid[$shape]}")
        redis-cli -p "${port[$shape]}" --pipe <"$run_dir/$shape.resp" >"$run_dir/$shape.out" 2>&1
        t1=$(cpu_ticks "${pid[$shape]}")
        grep -q "errors: 0," "$run_dir/$shape.out" || die "$shape: $(tail -1 "$run_dir/$shape.out")"
        awk -v s="$shape" -v r="$round" -v t=$((t1 - t0)) -v hz="$hz" -v n="$N" \
            'BEGIN { printf "%s,%d,%.4f\n", s, r, t * 1e6 / hz / n }' >>"$results"
        log "round $round $shape: $(tail -1 "$results" | cut -d, -f3) µs/SET"
    done
done

echo "Redis CPU per SET with no proxy ($N SETs per shape and round, groups of 16, $ROUNDS rounds," \
     "median; one tick = $(awk -v hz="$hz" -v n="$N" 'BEGIN { printf "%.3f", 1e6 / hz / n }') µs):"
echo
echo "| shape | Redis µs per SET | min–max | / plain |"
echo "|---|---:|---:|---:|"
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
plain=$(awk -F, '$1 == "plain" { print $3 }' "$results" | median)
for shape in plain plain-ex shared; do
    values=$(awk -F, -v s="$shape" '$1 == s { print $3 }' "$results")
    m=$(median <<<"$values")
    lo=$(sort -g <<<"$values" | head -1)
    hi=$(sort -g <<<"$values" | tail -1)
    awk -v s="$shape" -v m="$m" -v lo="$lo" -v hi="$hi" -v p="$plain" \
        'BEGIN { printf "| %s | %.2f | %.2f–%.2f | %.2fx |\n", s, m, lo, hi, m / p }'
done
