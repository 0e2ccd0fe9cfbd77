#!/usr/bin/env bash
# bench/run.sh — throughput/latency of cachet vs. direct Redis vs. twemproxy.
#
# Starts a private redis-server, a twemproxy (nutcracker) in front of it and
# cachet in front of it, all on 127.0.0.1 and free ports, then runs
# redis-benchmark against each target in alternating rounds
# (direct, twemproxy, cachet, direct, twemproxy, cachet, ...), one invocation
# per test and pipeline depth:
#
#     redis-benchmark --csv -t {set,get} -c $CLIENTS -P {1,16} -r $KEYSPACE -n N
#
# and reports, per target/test/pipeline depth, the median over rounds of ops/s,
# p50 and p99 latency, plus the ratios cachet/direct and cachet/twemproxy.
#
# CPU accounting: around every redis-benchmark invocation it reads utime+stime
# (fields 14 and 15 of /proc/PID/stat, all threads, in clock ticks) of the
# redis-server process and of the proxy in the path (nutcracker or cachet;
# none for direct), and reports the median over rounds of CPU microseconds per
# request for the proxy, for Redis and for both together, plus the ratios
# total cachet/direct, total cachet/twemproxy and proxy cachet/twemproxy. On a
# shared machine these are much steadier than ops/s.
#
# The tables go to stdout and to $RESULTS_DIR/latest.md; raw CSVs (all.csv,
# cpu.csv, per-invocation outputs) and process logs go to
# $RESULTS_DIR/runs/<timestamp>/.
#
# It never touches an already running Redis (e.g. the one on :6379): all
# servers are started here, and are stopped on exit.
#
# Environment (defaults in brackets):
#   ROUNDS=3              alternating rounds; the median over rounds is reported
#   N_P1=200000           requests per test at -P 1
#   N_P16=1500000         requests per test at -P 16
#   PIPELINES="1 16"      pipeline depths to run (N_P<d> must be set for others)
#   CLIENTS=50            redis-benchmark -c
#   KEYSPACE=100000       redis-benchmark -r (random keys key:000000xxxxxx)
#   DATASIZE=3            redis-benchmark -d (value size in bytes)
#   TESTS=set,get         redis-benchmark tests; each one is a separate
#                         redis-benchmark -t <test> invocation
#   TARGETS="direct twemproxy cachet"   which targets, in per-round order
#   SKIP_CACHET=1         same as dropping cachet from TARGETS (no build either)
#   SKIP_BUILD=1          don't run `cargo build --release` (binary must exist)
#   CACHET_BIN=...        cachet binary [target/release/cachet]
#   CACHET_ARGS=...       extra arguments for cachet
#   NC_SERVER_CONNECTIONS=1  twemproxy server_connections
#   RUN_TIMEOUT=300       seconds before one redis-benchmark invocation is killed
#   RESULTS_DIR=bench/results
#   PREPOPULATE=1         SET all KEYSPACE keys in Redis before round 1 so every
#                         GET is a hit (0: GETs of never-set keys return nil)
#
# Examples:
#   bench/run.sh                                  # full run, builds cachet
#   SKIP_CACHET=1 bench/run.sh                    # direct + twemproxy only
#   ROUNDS=1 N_P1=20000 N_P16=200000 bench/run.sh # quick smoke run
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
repo=$(cd "$here/.." && pwd)

ROUNDS=${ROUNDS:-3}
N_P1=${N_P1:-200000}
N_P16=${N_P16:-1500000}
PIPELINES=${PIPELINES:-"1 16"}
CLIENTS=${CLIENTS:-50}
KEYSPACE=${KEYSPACE:-100000}
DATASIZE=${DATASIZE:-3}
TESTS=${TESTS:-set,get}
TARGETS=${TARGETS:-"direct twemproxy cachet"}
SKIP_CACHET=${SKIP_CACHET:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
CACHET_BIN=${CACHET_BIN:-"${CARGO_TARGET_DIR:-$repo/target}/release/cachet"}
CACHET_ARGS=${CACHET_ARGS:-}
NC_SERVER_CONNECTIONS=${NC_SERVER_CONNECTIONS:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
RESULTS_DIR=${RESULTS_DIR:-"$here/results"}
PREPOPULATE=${PREPOPULATE:-1}

if [[ $SKIP_CACHET == 1 ]]; then
    TARGETS=$(tr ' ' '\n' <<<"$TARGETS" | grep -vx cachet | tr '\n' ' ')
fi
read -r -a targets <<<"$TARGETS"
read -r -a pipelines <<<"$PIPELINES"
read -r -a tests <<<"${TESTS//,/ }"
has_target() { [[ " ${targets[*]} " == *" $1 "* ]]; }

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in redis-server redis-cli redis-benchmark timeout ss awk sort getconf; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
if has_target twemproxy; then
    command -v nutcracker >/dev/null || die "nutcracker not found (apt-get install -y nutcracker)"
fi
for d in "${pipelines[@]}"; do
    var="N_P$d"
    [[ -n ${!var:-} ]] || die "PIPELINES contains $d but $var is not set"
done

CLK_TCK=$(getconf CLK_TCK)
[[ $CLK_TCK =~ ^[1-9][0-9]*$ ]] || die "getconf CLK_TCK returned '$CLK_TCK'"
[[ -r /proc/self/stat ]] || die "/proc/PID/stat is not readable (needed for CPU accounting)"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
run_dir="$RESULTS_DIR/runs/$stamp"
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
        # give each a moment, then insist
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




smoke() { # name port: SET through the target, GET it back directly and via the target
    local name=$1 port=$2 key="bench:smoke:$1:$$" v
    redis-cli -h 127.0.0.1 -p "$port" SET "$key" "ok-$name" >/dev/null
    v=$(redis-cli -h 127.0.0.1 -p "$redis_port" GET "$key")
    [[ $v == "ok-$name" ]] || die "smoke: SET via $name not visible in Redis (got '$v')"
    v=$(redis-cli -h 127.0.0.1 -p "$port" GET "$key")
    [[ $v == "ok-$name" ]] || die "smoke: GET via $name returned '$v'"
    redis-cli -h 127.0.0.1 -p "$redis_port" DEL "$key" >/dev/null
}

# -------------------------------------------------------------------- build --
if has_target cachet; then
    if [[ $SKIP_BUILD != 1 ]]; then
        log "cargo build --release"
        (cd "$repo" && cargo build --release) >"$run_dir/build.log" 2>&1 \
            || { tail -20 "$run_dir/build.log" >&2; die "cargo build --release failed (SKIP_CACHET=1 to run without cachet)"; }
    fi
    [[ -x $CACHET_BIN ]] || die "cachet binary not found at $CACHET_BIN (SKIP_CACHET=1 to run without it)"
fi

# ------------------------------------------------------------------ machine --
cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
cachet_rev=$(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo "no commit")
if [[ -n $(cd "$repo" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    cachet_rev+=" (dirty)"
fi
machine_info() {
    echo "- date (UTC): $(date -u '+%Y-%m-%d %H:%M:%S')"
    echo "- nproc: $(nproc)"
    echo "- CPU: ${cpu_model:-unknown}"
    echo "- kernel: $(uname -sr)"
    echo "- OS: $( (. /etc/os-release && echo "$PRETTY_NAME") 2>/dev/null || echo unknown)"
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- redis-server: $(redis-server --version | sed 's/^Redis server //')"
    echo "- redis-benchmark: $(redis-benchmark --version 2>/dev/null || echo '?')"
    if has_target twemproxy; then
        echo "- twemproxy: $(nutcracker --version 2>&1 | head -1 | sed 's/^This is //') (server_connections: $NC_SERVER_CONNECTIONS)"
    fi
    if has_target cachet; then
        echo "- cachet: $cachet_rev, $(rustc --version 2>/dev/null || echo 'rustc ?'), release profile, extra args: ${CACHET_ARGS:-none (defaults)}"
    fi
    echo "- parameters: rounds=$ROUNDS clients=$CLIENTS tests=$TESTS keyspace(-r)=$KEYSPACE value size(-d)=$DATASIZE" \
         "$(for d in "${pipelines[@]}"; do v="N_P$d"; printf ' -P %s: -n %s;' "$d" "${!v}"; done)"
    echo "- target order per round: ${targets[*]}"
    echo "- keyspace pre-populated before round 1: $([[ $PREPOPULATE == 1 ]] && echo "yes, all $KEYSPACE keys (GETs are hits)" || echo no)"
}
machine=$(machine_info)
printf '%s\n' "$machine" >&2

# -------------------------------------------------------------------- start --
declare -A port
redis_port=$(free_port)
log "starting redis-server on 127.0.0.1:$redis_port"
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --daemonize no --protected-mode yes --dir "$run_dir" --logfile "" \
    >"$run_dir/redis.log" 2>&1 &
pids+=($!)
redis_pid=$!
wait_ping redis "$redis_port" "$redis_pid"
check_pid redis "$redis_port" "$redis_pid" redis-server
port[direct]=$redis_port
# proxy_pid[target]: the process in the path besides Redis (none for direct)
declare -A proxy_pid

if has_target twemproxy; then
    port[twemproxy]=$(free_port)
    nc_stats_port=$(free_port)
    sed -e "s/@LISTEN@/127.0.0.1:${port[twemproxy]}/" \
        -e "s/@SERVER@/127.0.0.1:$redis_port/" \
        -e "s/@SERVER_CONNECTIONS@/$NC_SERVER_CONNECTIONS/" \
        "$here/nutcracker.yml.in" >"$run_dir/nutcracker.yml"
    nutcracker -t -c "$run_dir/nutcracker.yml" >/dev/null 2>&1 \
        || die "generated $run_dir/nutcracker.yml is invalid"
    log "starting nutcracker on 127.0.0.1:${port[twemproxy]} -> :$redis_port"
    # no -d: nutcracker stays in the foreground, so $! is nutcracker itself
    nutcracker -c "$run_dir/nutcracker.yml" -o "$run_dir/twemproxy.log" \
        -s "$nc_stats_port" -a 127.0.0.1 >>"$run_dir/twemproxy.log" 2>&1 &
    pids+=($!)
    proxy_pid[twemproxy]=$!
    wait_ping twemproxy "${port[twemproxy]}" "${proxy_pid[twemproxy]}"
    check_pid twemproxy "${port[twemproxy]}" "${proxy_pid[twemproxy]}" nutcracker
fi

if has_target cachet; then
    port[cachet]=$(free_port)
    log "starting cachet on 127.0.0.1:${port[cachet]} -> :$redis_port"
    # shellcheck disable=SC2086 # CACHET_ARGS is deliberately word-split
    # NO_COLOR: plain log lines in cachet.log (tracing's ANSI colours otherwise)
    NO_COLOR=1 "$CACHET_BIN" --listen "127.0.0.1:${port[cachet]}" \
        --upstream "redis://127.0.0.1:$redis_port" $CACHET_ARGS \
        >"$run_dir/cachet.log" 2>&1 &
    pids+=($!)
    cachet_pid=$!
    proxy_pid[cachet]=$cachet_pid
    wait_ping cachet "${port[cachet]}" "$cachet_pid"
    check_pid cachet "${port[cachet]}" "$cachet_pid" "$(basename "$CACHET_BIN")"
fi

for t in "${targets[@]}"; do
    [[ -n ${port[$t]:-} ]] || die "unknown target '$t' (expected direct, twemproxy, cachet)"
    smoke "$t" "${port[$t]}"
done
log "all targets up and passed a SET/GET smoke check"

# Pre-populate every key redis-benchmark -r can pick (key:%012d), directly in
# Redis, so GETs are hits from the first round on, for every target alike.
if [[ $PREPOPULATE == 1 ]]; then
    log "pre-populating $KEYSPACE keys of $DATASIZE bytes in Redis"
    awk -v n="$KEYSPACE" -v size="$DATASIZE" 'BEGIN {
            v = sprintf("%*s", size, ""); gsub(/ /, "x", v)
            for (i = 0; i < n; i++)
                printf "*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$%d\r\n%s\r\n", i, size, v
        }' | redis-cli -h 127.0.0.1 -p "$redis_port" --pipe >"$run_dir/prepopulate.log" 2>&1 \
        || die "pre-populating Redis failed; see $run_dir/prepopulate.log"
    [[ $(redis-cli -h 127.0.0.1 -p "$redis_port" DBSIZE) == "$KEYSPACE" ]] \
        || die "pre-populating Redis: DBSIZE is not $KEYSPACE"
fi

# -------------------------------------------------------------------- bench --
# all.csv: round,target,pipeline,test,rps,avg,min,p50,p95,p99,max
# cpu.csv: round,target,pipeline,test,requests,wall s,redis ticks,proxy ticks,
#          redis us/op,proxy us/op,total us/op  (proxy fields empty for direct)
all="$run_dir/all.csv"
cpu="$run_dir/cpu.csv"
: >"$all"
: >"$cpu"
problems=()
for ((round = 1; round <= ROUNDS; round++)); do
    for t in "${targets[@]}"; do
        for d in "${pipelines[@]}"; do
            nvar="N_P$d"
            n=${!nvar}
            for tt in "${tests[@]}"; do
                TT=${tt^^}
                what="round $round $t -P $d $TT"
                base="$run_dir/r${round}_${t}_P${d}_${TT}"
                ppid=${proxy_pid[$t]:-}
                log "round $round/$ROUNDS  $t  -P $d  -t $tt  -n $n"
                rc=0
                r0=$(cpu_ticks "$redis_pid")
                p0=$([[ -n $ppid ]] && cpu_ticks "$ppid" || echo "")
                w0=$EPOCHREALTIME
                timeout "$RUN_TIMEOUT" redis-benchmark -h 127.0.0.1 -p "${port[$t]}" --csv \
                    -t "$tt" -c "$CLIENTS" -P "$d" -r "$KEYSPACE" -d "$DATASIZE" -n "$n" \
                    >"$base.csv" 2>"$base.err" || rc=$?
                w1=$EPOCHREALTIME
                r1=$(cpu_ticks "$redis_pid")
                p1=$([[ -n $ppid ]] && cpu_ticks "$ppid" || echo "")
                # the CONFIG warning is expected through proxies that refuse CONFIG
                errs=$(grep -v -e '^WARNING: Could not fetch server CONFIG' -e '^[[:space:]]*$' "$base.err" | head -3 || true)
                [[ $rc == 0 ]] || problems+=("$what: redis-benchmark exited $rc${errs:+: $errs}")
                [[ $rc != 0 || -z $errs ]] || problems+=("$what: stderr: $errs")
                ok=1
                grep -q "^\"$TT\"," "$base.csv" || { problems+=("$what: no $TT result"); ok=0; }
                awk -F, -v r="$round" -v t="$t" -v d="$d" 'NR > 1 {
                        gsub(/"/, ""); print r "," t "," d "," $1 "," $2 "," $3 "," $4 "," $5 "," $6 "," $7 "," $8
                    }' "$base.csv" >>"$all"
                # requests served: -n for every result row (some -t names, e.g.
                # ping, run more than one test per invocation)
                rows=$(awk 'NR > 1 && NF' "$base.csv" | wc -l)
                if [[ $r0 == nan || $r1 == nan || $p0 == nan || $p1 == nan ]]; then
                    problems+=("$what: a server process vanished; CPU not counted")
                elif [[ $rc != 0 || $ok != 1 ]]; then
                    problems+=("$what: run incomplete; CPU not counted")
                else
                    awk -v r="$round" -v t="$t" -v d="$d" -v T="$TT" -v req=$((n * rows)) \
                        -v w0="$w0" -v w1="$w1" -v r0="$r0" -v r1="$r1" -v p0="$p0" -v p1="$p1" \
                        -v hz="$CLK_TCK" 'BEGIN {
                            us = 1e6 / hz / req
                            rt = r1 - r0; ru = rt * us
                            if (p0 == "") { pt = ""; pu = ""; tot = ru }
                            else { pt = p1 - p0; pu = pt * us; tot = ru + pu }
                            printf "%s,%s,%s,%s,%d,%.3f,%d,%s,%.4f,%s,%.4f\n", r, t, d, T, req, w1 - w0,
                                   rt, pt, ru, (pu == "" ? "" : sprintf("%.4f", pu)), tot
                        }' >>"$cpu"
                fi
                for tgt in "${!proxy_pid[@]}"; do
                    if ! kill -0 "${proxy_pid[$tgt]}" 2>/dev/null; then
                        problems+=("round $round: $tgt exited; see $run_dir/$tgt.log")
                        die "$tgt exited during round $round; see $run_dir/$tgt.log"
                    fi
                done
                kill -0 "$redis_pid" 2>/dev/null || die "redis-server exited during round $round; see $run_dir/redis.log"
            done
        done
    done
done
dbsize=$(redis-cli -h 127.0.0.1 -p "$redis_port" DBSIZE)
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------- report --
# stats.csv: target,test,pipeline,n,median rps,min rps,max rps,median p50,median p99
median_of() { sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { cut -d, -f"$1" <<<"$sel" | awk 'NF'; }
stats="$run_dir/stats.csv"
: >"$stats"
for t in "${targets[@]}"; do
    for tt in ${TESTS//,/ }; do
        TT=${tt^^}
        for d in "${pipelines[@]}"; do
            sel=$(awk -F, -v t="$t" -v T="$TT" -v d="$d" '$2 == t && $4 == T && $3 == d' "$all")
            n=$(grep -c . <<<"$sel" || true)
            rps=$(col 5 | median_of)
            lo=$(col 5 | sort -g | head -1)
            hi=$(col 5 | sort -g | tail -1)
            p50=$(col 8 | median_of)
            p99=$(col 10 | median_of)
            echo "$t,$TT,$d,$n,$rps,${lo:-nan},${hi:-nan},$p50,$p99" >>"$stats"
        done
    done
done

# cpu_stats.csv: target,test,pipeline,n,median proxy us/op,median redis us/op,
#                median total us/op,min total,max total (medians are each taken
#                over rounds; total is per round proxy+redis, then the median)
cpu_stats="$run_dir/cpu_stats.csv"
: >"$cpu_stats"
for t in "${targets[@]}"; do
    for tt in "${tests[@]}"; do
        TT=${tt^^}
        for d in "${pipelines[@]}"; do
            sel=$(awk -F, -v t="$t" -v T="$TT" -v d="$d" '$2 == t && $4 == T && $3 == d' "$cpu")
            n=$(grep -c . <<<"$sel" || true)
            pu=$(col 10 | median_of)
            ru=$(col 9 | median_of)
            tu=$(col 11 | median_of)
            lo=$(col 11 | sort -g | head -1)
            hi=$(col 11 | sort -g | tail -1)
            echo "$t,$TT,$d,$n,$pu,$ru,$tu,${lo:-nan},${hi:-nan}" >>"$cpu_stats"
        done
    done
done

report() {
    echo "# cachet benchmark run $stamp"
    echo
    echo "## Machine and parameters"
    echo
    printf '%s\n' "$machine"
    echo "- load average at end: $load_end"
    echo "- keys in Redis after the run (DBSIZE): $dbsize"
    echo
    echo "## Results (median of $ROUNDS rounds)"
    echo
    echo "| target | test | pipeline | ops/s | p50 ms | p99 ms | ops/s min–max over rounds | rounds |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    awk -F, '
        function f(x, fmt) { return x ~ /^[0-9]+(\.[0-9]*)?$/ ? sprintf(fmt, x) : "n/a" }
        { printf "| %s | %s | %s | %s | %s | %s | %s–%s | %s |\n", $1, $2, $3,
                 f($5, "%.0f"), f($8, "%.3f"), f($9, "%.3f"), f($6, "%.0f"), f($7, "%.0f"), $4 }' "$stats"
    if has_target cachet && (has_target direct || has_target twemproxy); then
        echo
        echo "## Ratios (cachet / baseline, medians)"
        echo
        echo "ops/s ratio > 1 means cachet is faster; latency ratio > 1 means cachet is slower."
        echo
        local hdr="| test | pipeline |" sep="|---|---:|"
        for b in direct twemproxy; do
            has_target "$b" || continue
            hdr+=" ops/s cachet/$b | p50 cachet/$b | p99 cachet/$b |"
            sep+="---:|---:|---:|"
        done
        echo "$hdr"
        echo "$sep"
        for tt in ${TESTS//,/ }; do
            TT=${tt^^}
            for d in "${pipelines[@]}"; do
                awk -F, -v T="$TT" -v d="$d" -v bs="$(has_target direct && echo direct) $(has_target twemproxy && echo twemproxy)" '
                    function num(x) { return x ~ /^[0-9]+(\.[0-9]*)?$/ }
                    function ratio(a, b) { return (num(a) && num(b) && b > 0) ? sprintf("%.2f", a / b) : "n/a" }
                    $2 == T && $3 == d { rps[$1] = $5; p50[$1] = $8; p99[$1] = $9 }
                    END {
                        line = "| " T " | " d " |"
                        n = split(bs, b, " ")
                        for (i = 1; i <= n; i++)
                            line = line " " ratio(rps["cachet"], rps[b[i]]) " | " ratio(p50["cachet"], p50[b[i]]) " | " ratio(p99["cachet"], p99[b[i]]) " |"
                        print line
                    }' "$stats"
            done
        done
    fi
    echo
    echo "## CPU time per request (median of $ROUNDS rounds)"
    echo
    echo "utime+stime of the redis-server process and of the proxy process (all threads;" \
         "from /proc/PID/stat) over each redis-benchmark invocation, divided by the" \
         "requests it made. The benchmark client's own CPU is not included." \
         "Resolution: one clock tick (1/$CLK_TCK s) =$(for d in "${pipelines[@]}"; do v="N_P$d"
            awk -v hz="$CLK_TCK" -v n="${!v}" -v d="$d" 'BEGIN { printf " %.3f µs/op at -P %s;", 1e6 / hz / n, d }'
         done)" \
         "per process and run."
    echo
    echo "| target | test | pipeline | proxy µs/op | redis µs/op | total µs/op | total min–max over rounds | rounds |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    awk -F, '
        function f(x) { return x ~ /^[0-9]+(\.[0-9]*)?$/ ? sprintf("%.2f", x) : "n/a" }
        { printf "| %s | %s | %s | %s | %s | %s | %s–%s | %s |\n", $1, $2, $3,
                 ($1 == "direct" ? "–" : f($5)), f($6), f($7), f($8), f($9), $4 }' "$cpu_stats"
    if has_target cachet && (has_target direct || has_target twemproxy); then
        echo
        echo "CPU ratios (cachet / baseline, medians); above 1 means cachet costs more CPU per request."
        echo
        local chdr="| test | pipeline |" csep="|---|---:|"
        if has_target direct; then
            chdr+=" total CPU per op cachet/direct |"; csep+="---:|"
        fi
        if has_target twemproxy; then
            chdr+=" total CPU per op cachet/twemproxy | proxy CPU per op cachet/twemproxy |"; csep+="---:|---:|"
        fi
        echo "$chdr"
        echo "$csep"
        for tt in "${tests[@]}"; do
            TT=${tt^^}
            for d in "${pipelines[@]}"; do
                awk -F, -v T="$TT" -v d="$d" -v hd="$(has_target direct && echo 1)" -v ht="$(has_target twemproxy && echo 1)" '
                    function num(x) { return x ~ /^[0-9]+(\.[0-9]*)?$/ }
                    function ratio(a, b) { return (num(a) && num(b) && b > 0) ? sprintf("%.2f", a / b) : "n/a" }
                    $2 == T && $3 == d { pu[$1] = $5; tu[$1] = $7 }
                    END {
                        line = "| " T " | " d " |"
                        if (hd) line = line " " ratio(tu["cachet"], tu["direct"]) " |"
                        if (ht) line = line " " ratio(tu["cachet"], tu["twemproxy"]) " | " ratio(pu["cachet"], pu["twemproxy"]) " |"
                        print line
                    }' "$cpu_stats"
            done
        done
    fi
    echo
    echo "## Problems"
    echo
    if ((${#problems[@]} == 0)); then
        echo "none (every redis-benchmark run exited 0 and produced all results)"
    else
        printf -- '- %s\n' "${problems[@]}"
    fi
    echo
    echo "Raw CSVs and logs: ${run_dir#"$repo"/}"
}
report | tee "$run_dir/report.md"
cp "$run_dir/report.md" "$RESULTS_DIR/latest.md"
log "written $RESULTS_DIR/latest.md"
