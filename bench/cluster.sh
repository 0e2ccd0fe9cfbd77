#!/usr/bin/env bash
# bench/cluster.sh — cachet in front of Redis Cluster against redis-benchmark --cluster
# direct, with cachet's standalone ratio measured in the same run as the yardstick (issue 18).
#
# Starts, on 127.0.0.1 and free ports: a Redis Cluster of PRIMARIES primaries with REPLICAS
# replicas each (redis-server --cluster-enabled yes, joined by redis-cli --cluster create),
# one standalone redis-server, and two release cachets: one on the cluster
# (redis-cluster:// url, a config file in the run directory), one on the standalone Redis.
# Then, in alternating rounds, one redis-benchmark invocation per target, test and pipeline
# depth:
#
#     cluster-direct      redis-benchmark --cluster -h 127.0.0.1 -p <a primary>
#     cluster-cachet      redis-benchmark -p <cachet on the cluster>   (a non-cluster client)
#     standalone-direct   redis-benchmark -p <the standalone redis>
#     standalone-cachet   redis-benchmark -p <cachet on the standalone redis>
#
# each with --csv -t {set,get} -c $CLIENTS -P {1,16} -r $KEYSPACE -d $DATASIZE -n N, and
# reports the median over rounds of ops/s and p50, the ratios cachet-cluster/direct-cluster
# and cachet-standalone/direct-standalone, and CPU µs per request: utime+stime (fields 14 and
# 15 of /proc/PID/stat, all threads) of cachet and of the Redis processes in the path (every
# cluster node, replicas included, as they do the replication work; or the standalone
# redis-server) over the invocation, divided by its requests. GETs follow the SETs of the
# same keyspace in each round, so they are mostly hits.
#
# The table goes to stdout and to $RESULTS_DIR/cluster-latest.md; raw CSVs and logs to
# $RESULTS_DIR/runs/cluster-<timestamp>/. Every process it starts is stopped on exit; it never
# touches a Redis it did not start.
#
# Environment (defaults in brackets):
#   ROUNDS=3  N_P1=100000  N_P16=1000000  PIPELINES="1 16"  CLIENTS=50  KEYSPACE=100000
#   DATASIZE=3  TESTS=set,get  PRIMARIES=3  REPLICAS=1
#   TARGETS="cluster-direct cluster-cachet standalone-direct standalone-cachet"
#   SKIP_BUILD=1       don't run `cargo build --release` (the binary must exist)
#   CACHET_BIN=...     [target/release/cachet]
#   RUN_TIMEOUT=300    seconds before one redis-benchmark invocation is killed
#   RESULTS_DIR=bench/results
#
# Example: ROUNDS=1 N_P1=20000 N_P16=200000 SKIP_BUILD=1 bench/cluster.sh   # quick smoke run
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
repo=$(cd "$here/.." && pwd)

ROUNDS=${ROUNDS:-3}
N_P1=${N_P1:-100000}
N_P16=${N_P16:-1000000}
PIPELINES=${PIPELINES:-"1 16"}
CLIENTS=${CLIENTS:-50}
KEYSPACE=${KEYSPACE:-100000}
DATASIZE=${DATASIZE:-3}
TESTS=${TESTS:-set,get}
PRIMARIES=${PRIMARIES:-3}
REPLICAS=${REPLICAS:-1}
TARGETS=${TARGETS:-"cluster-direct cluster-cachet standalone-direct standalone-cachet"}
SKIP_BUILD=${SKIP_BUILD:-0}
CACHET_BIN=${CACHET_BIN:-"${CARGO_TARGET_DIR:-$repo/target}/release/cachet"}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
RESULTS_DIR=${RESULTS_DIR:-"$here/results"}

read -r -a targets <<<"$TARGETS"
read -r -a pipelines <<<"$PIPELINES"
read -r -a tests <<<"${TESTS//,/ }"

log() { printf '[cluster-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in redis-server redis-cli redis-benchmark timeout ss awk sort getconf; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
((PRIMARIES >= 3)) || die "redis-cli --cluster create needs PRIMARIES >= 3"
for d in "${pipelines[@]}"; do
    var="N_P$d"
    [[ -n ${!var:-} ]] || die "PIPELINES contains $d but $var is not set"
done
CLK_TCK=$(getconf CLK_TCK)

stamp=$(date -u +%Y%m%dT%H%M%SZ)
run_dir="$RESULTS_DIR/runs/cluster-$stamp"
mkdir -p "$run_dir"

# ---------------------------------------------------------------- processes --
pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

used_ports=" "

# -------------------------------------------------------------------- build --
if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release"
    (cd "$repo" && cargo build --release) >"$run_dir/build.log" 2>&1 \
        || { tail -20 "$run_dir/build.log" >&2; die "cargo build --release failed"; }
fi
[[ -x $CACHET_BIN ]] || die "cachet binary not found at $CACHET_BIN (cargo build --release)"

# -------------------------------------------------------------------- start --
declare -A port
declare -A proxy_pid
# redis_pids[target]: the Redis processes whose CPU counts for the target
declare -A redis_pids

cluster_ports=()
cluster_pids=()
nodes=$((PRIMARIES * (1 + REPLICAS)))
log "starting $nodes cluster nodes"
for ((i = 0; i < nodes; i++)); do
    p=$(free_port)
    bus=$(free_port)
    mkdir -p "$run_dir/node-$p"
    redis-server --bind 127.0.0.1 --port "$p" --cluster-port "$bus" --cluster-enabled yes \
        --cluster-config-file "$run_dir/node-$p/nodes.conf" --cluster-node-timeout 5000 \
        --save "" --appendonly no --daemonize no --dir "$run_dir/node-$p" --logfile "" \
        >"$run_dir/node-$p.log" 2>&1 &
    pids+=($!)
    cluster_pids+=($!)
    cluster_ports+=("$p")
    wait_ping "node-$p" "$p" "$!"
    check_pid "node-$p" "$p" "$!" redis-server
done
hosts=()
for p in "${cluster_ports[@]}"; do hosts+=("127.0.0.1:$p"); done
redis-cli --cluster create "${hosts[@]}" --cluster-replicas "$REPLICAS" --cluster-yes \
    >"$run_dir/cluster-create.log" 2>&1 || die "redis-cli --cluster create failed; see $run_dir/cluster-create.log"
for _ in $(seq 1 300); do
    ok=1
    for p in "${cluster_ports[@]}"; do
        redis-cli -p "$p" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok' || { ok=0; break; }
        # every replica known as one (until then it shows as a master with no slots)
        [[ $(redis-cli -p "$p" CLUSTER NODES 2>/dev/null | grep -c master) == "$PRIMARIES" ]] || { ok=0; break; }
    done
    [[ $ok == 1 ]] && break
    sleep 0.1
done
[[ $ok == 1 ]] || die "the cluster was not whole (cluster_state:ok, $PRIMARIES masters) within 30 s"
port[cluster-direct]=${cluster_ports[0]}
redis_pids[cluster-direct]="${cluster_pids[*]}"
redis_pids[cluster-cachet]="${cluster_pids[*]}"

standalone_port=$(free_port)
log "starting the standalone redis-server on 127.0.0.1:$standalone_port"
redis-server --bind 127.0.0.1 --port "$standalone_port" --save "" --appendonly no \
    --daemonize no --dir "$run_dir" --logfile "" >"$run_dir/standalone.log" 2>&1 &
pids+=($!)
standalone_pid=$!
wait_ping standalone "$standalone_port" "$standalone_pid"
check_pid standalone "$standalone_port" "$standalone_pid" redis-server
port[standalone-direct]=$standalone_port
redis_pids[standalone-direct]=$standalone_pid
redis_pids[standalone-cachet]=$standalone_pid

cat >"$run_dir/cachet-cluster.toml" <<EOF
[upstream]
url = "redis-cluster://127.0.0.1:${cluster_ports[0]},127.0.0.1:${cluster_ports[1]}"

[upstream.cluster]
refresh_ms = 1000
EOF
port[cluster-cachet]=$(free_port)
log "starting cachet on 127.0.0.1:${port[cluster-cachet]} -> the cluster"
NO_COLOR=1 "$CACHET_BIN" --config "$run_dir/cachet-cluster.toml" \
    --listen "127.0.0.1:${port[cluster-cachet]}" >"$run_dir/cachet-cluster.log" 2>&1 &
pids+=($!)
proxy_pid[cluster-cachet]=$!
wait_ping cachet-cluster "${port[cluster-cachet]}" "$!"
check_pid cachet-cluster "${port[cluster-cachet]}" "$!" "$(basename "$CACHET_BIN")"

port[standalone-cachet]=$(free_port)
log "starting cachet on 127.0.0.1:${port[standalone-cachet]} -> :$standalone_port"
NO_COLOR=1 "$CACHET_BIN" --listen "127.0.0.1:${port[standalone-cachet]}" \
    --upstream "redis://127.0.0.1:$standalone_port" >"$run_dir/cachet-standalone.log" 2>&1 &
pids+=($!)
proxy_pid[standalone-cachet]=$!
wait_ping cachet-standalone "${port[standalone-cachet]}" "$!"
check_pid cachet-standalone "${port[standalone-cachet]}" "$!" "$(basename "$CACHET_BIN")"

# Smoke: keys on every primary through each cachet, read back.
for t in cluster-cachet standalone-cachet; do
    for k in a b c d e f g h; do
        redis-cli -p "${port[$t]}" SET "smoke:$k" "$t" >/dev/null
        [[ $(redis-cli -p "${port[$t]}" GET "smoke:$k") == "$t" ]] || die "smoke: GET smoke:$k via $t"
    done
    [[ $(redis-cli -p "${port[$t]}" DEL smoke:a smoke:b smoke:c smoke:d smoke:e smoke:f smoke:g smoke:h) == 8 ]] \
        || die "smoke: DEL across slots via $t"
done
log "all targets up and passed a smoke check"

machine_info() {
    echo "- date (UTC): $(date -u '+%Y-%m-%d %H:%M:%S')"
    echo "- nproc: $(nproc); CPU: $(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- redis-server: $(redis-server --version | sed 's/^Redis server //')"
    echo "- cachet: $(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo '?'), release profile"
    echo "- cluster: $PRIMARIES primaries, $REPLICAS replica(s) each"
    echo "- parameters: rounds=$ROUNDS clients=$CLIENTS tests=$TESTS keyspace(-r)=$KEYSPACE value size(-d)=$DATASIZE" \
         "$(for d in "${pipelines[@]}"; do v="N_P$d"; printf ' -P %s: -n %s;' "$d" "${!v}"; done)"
    echo "- target order per round: ${targets[*]}"
}
machine=$(machine_info)

# -------------------------------------------------------------------- bench --
# all.csv: round,target,pipeline,test,rps,p50,requests,redis ticks,proxy ticks
all="$run_dir/all.csv"
: >"$all"
problems=()
sum_ticks() { # pids...
    local total=0 t
    for pid in "$@"; do
        t=$(cpu_ticks "$pid")
        [[ $t == nan ]] && { echo nan; return; }
        total=$((total + t))
    done
    echo "$total"
}
for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${targets[@]}"; do
        [[ -n ${port[$t]:-} ]] || die "unknown target '$t'"
        mode=()
        [[ $t == cluster-direct ]] && mode=(--cluster)
        read -r -a rp <<<"${redis_pids[$t]}"
        for d in "${pipelines[@]}"; do
            nvar="N_P$d"
            n=${!nvar}
            for tt in "${tests[@]}"; do
                TT=${tt^^}
                base="$run_dir/r${round}_${t}_P${d}_${TT}"
                ppid=${proxy_pid[$t]:-}
                log "round $round/$ROUNDS  $t  -P $d  -t $tt  -n $n"
                r0=$(sum_ticks "${rp[@]}")
                p0=$([[ -n $ppid ]] && cpu_ticks "$ppid" || echo 0)
                rc=0
                timeout "$RUN_TIMEOUT" redis-benchmark "${mode[@]}" -h 127.0.0.1 -p "${port[$t]}" --csv \
                    -t "$tt" -c "$CLIENTS" -P "$d" -r "$KEYSPACE" -d "$DATASIZE" -n "$n" \
                    >"$base.csv" 2>"$base.err" || rc=$?
                r1=$(sum_ticks "${rp[@]}")
                p1=$([[ -n $ppid ]] && cpu_ticks "$ppid" || echo 0)
                errs=$(grep -v -e '^WARNING: Could not fetch server CONFIG' -e '^[[:space:]]*$' "$base.err" | head -3 || true)
                [[ $rc == 0 ]] || problems+=("round $round $t -P $d $TT: redis-benchmark exited $rc${errs:+: $errs}")
                [[ $rc != 0 || -z $errs ]] || problems+=("round $round $t -P $d $TT: stderr: $errs")
                row=$(grep "^\"$TT\"," "$base.csv" | tr -d '"' || true)
                if [[ -z $row || $r0 == nan || $r1 == nan || $p0 == nan || $p1 == nan ]]; then
                    problems+=("round $round $t -P $d $TT: no result, or a process vanished")
                    continue
                fi
                IFS=, read -r _ rps _ _ p50 _ <<<"$row"
                echo "$round,$t,$d,$TT,$rps,$p50,$n,$((r1 - r0)),$((p1 - p0))" >>"$all"
                for pid in "${pids[@]}"; do
                    kill -0 "$pid" 2>/dev/null || die "pid $pid exited during round $round; see $run_dir"
                done
            done
        done
    done
done

# ------------------------------------------------------------------- report --
median_of() { sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# stats.csv: target,test,pipeline,rps,p50,proxy us/op,redis us/op,total us/op (medians)
stats="$run_dir/stats.csv"
: >"$stats"
for t in "${targets[@]}"; do
    for tt in "${tests[@]}"; do
        TT=${tt^^}
        for d in "${pipelines[@]}"; do
            sel=$(awk -F, -v t="$t" -v T="$TT" -v d="$d" '$2 == t && $4 == T && $3 == d' "$all")
            [[ -n $sel ]] || continue
            per() { awk -F, -v hz="$CLK_TCK" -v c="$1" '{ us = 1e6 / hz / $7
                if (c == "p") print $9 * us; else if (c == "r") print $8 * us; else print ($8 + $9) * us }' <<<"$sel" | median_of; }
            echo "$t,$TT,$d,$(cut -d, -f5 <<<"$sel" | median_of),$(cut -d, -f6 <<<"$sel" | median_of),$(per p),$(per r),$(per t)" >>"$stats"
        done
    done
done

report() {
    echo "# cachet on Redis Cluster, run $stamp"
    echo
    printf '%s\n' "$machine"
    echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "## Throughput and CPU per request (medians of $ROUNDS rounds)"
    echo
    echo "CPU: utime+stime from /proc/PID/stat over each run, per request; redis = every cluster node" \
         "(or the standalone redis-server), proxy = cachet; redis-benchmark's own CPU is not counted."
    echo
    echo "| target | test | -P | ops/s | p50 ms | cachet µs/op | redis µs/op | total µs/op |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    awk -F, '{ printf "| %s | %s | %s | %.0f | %.3f | %s | %.2f | %.2f |\n", $1, $2, $3, $4, $5,
               ($1 ~ /direct/ ? "–" : sprintf("%.2f", $6)), $7, $8 }' "$stats"
    echo
    echo "## Ratios (cachet / direct, same run)"
    echo
    echo "| test | -P | ops/s cluster | ops/s standalone | CPU/op cluster | CPU/op standalone |"
    echo "|---|---:|---:|---:|---:|---:|"
    for tt in "${tests[@]}"; do
        TT=${tt^^}
        for d in "${pipelines[@]}"; do
            awk -F, -v T="$TT" -v d="$d" '
                function r(a, b) { return (a != "" && b != "" && b > 0) ? sprintf("%.2f", a / b) : "n/a" }
                $2 == T && $3 == d { rps[$1] = $4; cpu[$1] = $8 }
                END { printf "| %s | %s | %s | %s | %s | %s |\n", T, d,
                      r(rps["cluster-cachet"], rps["cluster-direct"]), r(rps["standalone-cachet"], rps["standalone-direct"]),
                      r(cpu["cluster-cachet"], cpu["cluster-direct"]), r(cpu["standalone-cachet"], cpu["standalone-direct"]) }' "$stats"
        done
    done
    echo
    echo "## Problems"
    echo
    if ((${#problems[@]} == 0)); then
        echo "none (every redis-benchmark run exited 0 and produced its result)"
    else
        printf -- '- %s\n' "${problems[@]}"
    fi
    echo
    echo "Raw CSVs and logs: ${run_dir#"$repo"/}"
}
report | tee "$run_dir/report.md"
cp "$run_dir/report.md" "$RESULTS_DIR/cluster-latest.md"
log "written $RESULTS_DIR/cluster-latest.md"
