#!/usr/bin/env bash
# bench/tls.sh — what TLS costs, through cachet and in Redis itself.
#
# Starts one private redis-server with a plain and a TLS port, and two cachets: one with a
# plain and a TLS listener in front of Redis's plain port, one with a TLS listener in front of
# Redis's TLS port (rediss://). Certificates (an EC P-256 CA and server certificate) are made
# with openssl in the run directory. Then, in alternating rounds, one redis-benchmark
# invocation per target, test and pipeline depth:
#
#     redis-benchmark [--tls --cacert ca.crt] --csv -t {set,get} -c $CLIENTS -P {1,16} \
#         -r $KEYSPACE -d $DATASIZE -n N
#
# against these targets:
#     redis          Redis's plain port
#     redis-tls      Redis's TLS port
#     cachet         cachet plain   -> Redis plain
#     cachet-tls     cachet TLS     -> Redis plain
#     cachet-tls2    cachet TLS     -> Redis TLS      (TARGETS may leave it out)
#
# Around every invocation it reads utime+stime (fields 14 and 15 of /proc/PID/stat) of
# redis-server and of the cachet in the path, and reports per target/test/depth the median
# over rounds of ops/s and of CPU microseconds per request for each process. Then the TLS
# cost per request: cachet's (cachet-tls − cachet, cachet's process) next to Redis's own
# (redis-tls − redis, redis-server's process). The 50 handshakes of each invocation are in
# the figures (amortised over N requests).
#
# Results: $RESULTS_DIR/tls-latest.md; raw CSV and logs in $RESULTS_DIR/runs/tls-<timestamp>/.
# Never touches a Redis it did not start.
#
# Environment (defaults in brackets):
#   ROUNDS=3   N_P1=100000   N_P16=1000000   PIPELINES="1 16"   CLIENTS=50
#   KEYSPACE=100000   DATASIZE=3   TESTS=set,get
#   TARGETS="redis redis-tls cachet cachet-tls cachet-tls2"   per-round order
#   SKIP_BUILD=1   don't run `cargo build --release`
#   CACHET_BIN=... [target/release/cachet]   CACHET_ARGS=... extra flags for both cachets
#   RUN_TIMEOUT=300   RESULTS_DIR=bench/results
#
# Example (quick): ROUNDS=1 N_P1=20000 N_P16=200000 bench/tls.sh
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
TARGETS=${TARGETS:-"redis redis-tls cachet cachet-tls cachet-tls2"}
SKIP_BUILD=${SKIP_BUILD:-0}
CACHET_BIN=${CACHET_BIN:-"${CARGO_TARGET_DIR:-$repo/target}/release/cachet"}
CACHET_ARGS=${CACHET_ARGS:-}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
RESULTS_DIR=${RESULTS_DIR:-"$here/results"}
read -r -a targets <<<"$TARGETS"
read -r -a pipelines <<<"$PIPELINES"
read -r -a tests <<<"${TESTS//,/ }"

log() { printf '[tls %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in redis-server redis-cli redis-benchmark openssl timeout ss awk sort getconf; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
CLK_TCK=$(getconf CLK_TCK)

stamp=$(date -u +%Y%m%dT%H%M%SZ)
run_dir="$RESULTS_DIR/runs/tls-$stamp"
mkdir -p "$run_dir"

pids=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
used_ports=" "

if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release"
    (cd "$repo" && cargo build --release) >"$run_dir/build.log" 2>&1 \
        || { tail -20 "$run_dir/build.log" >&2; die "cargo build --release failed"; }
fi
[[ -x $CACHET_BIN ]] || die "cachet binary not found at $CACHET_BIN"

# ------------------------------------------------------------------ certificates --
certs="$run_dir/certs"
mkdir -p "$certs"
(
    cd "$certs"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=bench CA" -out ca.crt
    openssl ecparam -name prime256v1 -genkey -noout -out server.key.ec
    # PKCS#8, which both Redis and cachet read.
    openssl pkcs8 -topk8 -nocrypt -in server.key.ec -out server.key
    openssl req -new -key server.key -subj "/CN=127.0.0.1" -out server.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -sha256 -extfile ext.cnf -out server.crt
) >"$run_dir/certs.log" 2>&1 || die "making certificates failed; see $run_dir/certs.log"

# ------------------------------------------------------------------ processes --
declare -A port pid_of tls_of
redis_port=$(free_port)
redis_tls_port=$(free_port)
log "starting redis-server on :$redis_port, TLS on :$redis_tls_port"
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --tls-port "$redis_tls_port" --tls-cert-file "$certs/server.crt" \
    --tls-key-file "$certs/server.key" --tls-ca-cert-file "$certs/ca.crt" \
    --tls-auth-clients no --daemonize no --dir "$run_dir" --logfile "" \
    >"$run_dir/redis.log" 2>&1 &
pids+=($!)
redis_pid=$!
wait_ping redis "$redis_port" "$redis_pid"
check_pid redis "$redis_port" "$redis_pid" redis-server
port[redis]=$redis_port
port[redis-tls]=$redis_tls_port
tls_of[redis-tls]=1

start_cachet() { # name plain-port tls-port upstream-url
    local name=$1 plain=$2 tls=$3 url=$4
    cat >"$run_dir/$name.toml" <<EOF
[proxy]
listen = "127.0.0.1:$plain"
[proxy.tls]
listen = "127.0.0.1:$tls"
cert = "$certs/server.crt"
key = "$certs/server.key"
[upstream]
url = "$url"
[upstream.tls]
ca = "$certs/ca.crt"
EOF
    # A plain url takes no [upstream.tls].
    [[ $url == rediss://* ]] || sed -i '/^\[upstream.tls\]/,$d' "$run_dir/$name.toml"
    # shellcheck disable=SC2086 # CACHET_ARGS is deliberately word-split
    NO_COLOR=1 "$CACHET_BIN" --config "$run_dir/$name.toml" $CACHET_ARGS >"$run_dir/$name.log" 2>&1 &
    pids+=($!)
    pid_of[$name]=$!
    wait_ping "$name" "$plain" "$!"
    check_pid "$name" "$plain" "$!" "$(basename "$CACHET_BIN")"
}
has_target() { [[ " ${targets[*]} " == *" $1 "* ]]; }
p1=$(free_port); t1=$(free_port)
start_cachet cachet "$p1" "$t1" "redis://127.0.0.1:$redis_port"
port[cachet]=$p1; port[cachet-tls]=$t1; tls_of[cachet-tls]=1
pid_of[cachet-tls]=${pid_of[cachet]}
if has_target cachet-tls2; then
    p2=$(free_port); t2=$(free_port)
    start_cachet cachet2 "$p2" "$t2" "rediss://127.0.0.1:$redis_tls_port"
    port[cachet-tls2]=$t2; tls_of[cachet-tls2]=1
    pid_of[cachet-tls2]=${pid_of[cachet2]}
fi

cli() { # target args...
    local t=$1; shift
    local tls=()
    [[ -n ${tls_of[$t]:-} ]] && tls=(--tls --cacert "$certs/ca.crt")
    redis-cli -h 127.0.0.1 -p "${port[$t]}" "${tls[@]}" "$@"
}
for t in "${targets[@]}"; do
    [[ -n ${port[$t]:-} ]] || die "unknown target '$t'"
    cli "$t" SET "bench:smoke:$t" ok >/dev/null
    [[ $(cli "$t" GET "bench:smoke:$t") == ok ]] || die "smoke: SET/GET through $t failed"
done
log "all targets passed a SET/GET smoke check"
log "pre-populating $KEYSPACE keys"
awk -v n="$KEYSPACE" -v size="$DATASIZE" 'BEGIN {
        v = sprintf("%*s", size, ""); gsub(/ /, "x", v)
        for (i = 0; i < n; i++)
            printf "*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$%d\r\n%s\r\n", i, size, v
    }' | redis-cli -h 127.0.0.1 -p "$redis_port" --pipe >"$run_dir/prepopulate.log" 2>&1

# ------------------------------------------------------------------------ bench --
# cpu.csv: round,target,pipeline,test,requests,rps,redis us/op,cachet us/op
cpu="$run_dir/cpu.csv"
: >"$cpu"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${targets[@]}"; do
        for d in "${pipelines[@]}"; do
            nvar="N_P$d"; n=${!nvar}
            for tt in "${tests[@]}"; do
                TT=${tt^^}
                base="$run_dir/r${round}_${t}_P${d}_${TT}"
                tls=()
                [[ -n ${tls_of[$t]:-} ]] && tls=(--tls --cacert "$certs/ca.crt")
                cpid=${pid_of[$t]:-}
                log "round $round/$ROUNDS  $t  -P $d  -t $tt  -n $n"
                r0=$(cpu_ticks "$redis_pid"); c0=$([[ -n $cpid ]] && cpu_ticks "$cpid" || echo 0)
                rc=0
                timeout "$RUN_TIMEOUT" redis-benchmark -h 127.0.0.1 -p "${port[$t]}" "${tls[@]}" --csv \
                    -t "$tt" -c "$CLIENTS" -P "$d" -r "$KEYSPACE" -d "$DATASIZE" -n "$n" \
                    >"$base.csv" 2>"$base.err" || rc=$?
                r1=$(cpu_ticks "$redis_pid"); c1=$([[ -n $cpid ]] && cpu_ticks "$cpid" || echo 0)
                [[ $rc == 0 ]] || die "$t -P $d $TT: redis-benchmark exited $rc; see $base.err"
                rps=$(awk -F, -v T="$TT" '{ gsub(/"/, "") } $1 == T { print $2 }' "$base.csv")
                [[ -n $rps ]] || die "$t -P $d $TT: no result; see $base.csv"
                awk -v r="$round" -v t="$t" -v d="$d" -v T="$TT" -v n="$n" -v rps="$rps" \
                    -v rt=$((r1 - r0)) -v ct=$((c1 - c0)) -v hz="$CLK_TCK" -v proxy="$cpid" 'BEGIN {
                        us = 1e6 / hz / n
                        printf "%s,%s,%s,%s,%d,%s,%.4f,%s\n", r, t, d, T, n, rps, rt * us,
                            (proxy == "" ? "" : sprintf("%.4f", ct * us))
                    }' >>"$cpu"
            done
        done
    done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ----------------------------------------------------------------------- report --
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
med() { # target pipeline test column
    awk -F, -v t="$1" -v d="$2" -v T="$3" -v c="$4" '$2 == t && $3 == d && $4 == T && $c != "" { print $c }' "$cpu" | median
}
out="$RESULTS_DIR/tls-latest.md"
{
    echo "## TLS run $stamp"
    echo
    echo "- nproc $(nproc), $(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
        "load at start $load_start, at end $load_end"
    echo "- $(redis-server --version | sed 's/^Redis server //'); cachet $(cd "$repo" && git rev-parse --short HEAD)," \
        "release; extra args: ${CACHET_ARGS:-none}"
    echo "- rounds=$ROUNDS clients=$CLIENTS keyspace=$KEYSPACE size=$DATASIZE" \
        "$(for d in "${pipelines[@]}"; do v="N_P$d"; printf ' -P %s: -n %s;' "$d" "${!v}"; done)"
    echo
    echo "Medians over rounds. CPU in µs per request (utime+stime / requests)."
    echo
    echo "| target | test | -P | ops/s | Redis CPU µs/req | cachet CPU µs/req |"
    echo "|---|---|---:|---:|---:|---:|"
    for t in "${targets[@]}"; do
        for tt in "${tests[@]}"; do
            TT=${tt^^}
            for d in "${pipelines[@]}"; do
                printf '| %s | %s | %s | %.0f | %.2f | %s |\n' "$t" "$TT" "$d" \
                    "$(med "$t" "$d" "$TT" 6)" "$(med "$t" "$d" "$TT" 7)" \
                    "$(c=$(med "$t" "$d" "$TT" 8); [[ $c == nan ]] && echo - || printf '%.2f' "$c")"
            done
        done
    done
    if has_target redis && has_target redis-tls && has_target cachet && has_target cachet-tls; then
        echo
        echo "TLS cost per request (µs of CPU): cachet's = cachet-tls − cachet (cachet's process);"
        echo "Redis's = redis-tls − redis (redis-server's process). Target: cachet's ≤ Redis's."
        echo
        echo "| test | -P | Redis's TLS cost | cachet's TLS cost | cachet / Redis |"
        echo "|---|---:|---:|---:|---:|"
        for tt in "${tests[@]}"; do
            TT=${tt^^}
            for d in "${pipelines[@]}"; do
                rcost=$(awk -v a="$(med redis-tls "$d" "$TT" 7)" -v b="$(med redis "$d" "$TT" 7)" 'BEGIN { printf "%.2f", a - b }')
                ccost=$(awk -v a="$(med cachet-tls "$d" "$TT" 8)" -v b="$(med cachet "$d" "$TT" 8)" 'BEGIN { printf "%.2f", a - b }')
                ratio=$(awk -v c="$ccost" -v r="$rcost" 'BEGIN { if (r > 0) printf "%.2f", c / r; else print "-" }')
                echo "| $TT | $d | $rcost | $ccost | $ratio |"
            done
        done
    fi
} | tee "$out"
log "raw figures: $cpu"
