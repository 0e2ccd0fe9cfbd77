#!/usr/bin/env bash
# bench/tags.sh — what tagging costs: tagged SET vs plain SET through cachet, and
# TAGINVALIDATE of tags with 10, 1 000 and 100 000 keys.
#
# Everything runs on 127.0.0.1 on free ports, with servers started here (never the
# Redis on :6379) and stopped on exit.
#
# Part 1, SET cost. Three variants, each its own redis-server (--save "" --appendonly no)
# with its own cachet in front, so that one variant's tag index (and the background
# sweeper that walks it) never touches another variant's Redis:
#
#   plain     cachet with no [[rules]]: SETs are forwarded untouched
#   plain-ex  the same cachet, but the client sends `SET key value EX $RULE_TTL` (what a
#             tagged SET becomes when it needs no index entry: the cost of the TTL alone)
#   per-key   rule  pattern = "key:{id}"  tags = ["item:{id}"]
#   shared    rule  pattern = "key:{id}"  tags = ["item:{id}", "all-items"]
#             (every key also carries one tag shared by all: one ZSET of KEYSPACE members)
#
# redis-benchmark's `-t set` keys are key:000000xxxxxx. `item:{id}` names its key (it holds
# the pattern's only capture), so in `per-key` every SET becomes the SET with `EX` appended
# and no index entry; in `shared` one MULTI/EXEC block (SET ... EX, ZADD all-items; with a
# single indexed tag the key needs no per-key set). Before round 1 every variant gets all KEYSPACE keys
# written through its cachet (redis-cli --pipe), so the benchmark measures the steady state
# (overwrites of indexed keys), not first inserts. Then, in alternating rounds
# (plain, per-key, shared, plain, ...), one invocation per variant and pipeline depth:
#
#     redis-benchmark --csv -t set -c $CLIENTS -P {1,16} -r $KEYSPACE -d $DATASIZE -n N
#
# with the CPU time (utime+stime, /proc/PID/stat fields 14+15) of that variant's
# redis-server and cachet read around it, exactly as bench/run.sh does. Reported: median
# ops/s, p50/p99, CPU µs per request of cachet and Redis, and the cost ratios tagged/plain.
# INFO commandstats of every variant's Redis around each invocation (CONFIG RESETSTAT before),
# summed per variant and pipeline depth, gives calls per request and Redis's own µs per call
# of each command.
# Rule TTL is RULE_TTL (default 3600 s) so that no key expires during the run.
#
# Then the `all-items` tag of the shared variant (KEYSPACE keys, two tags each) is
# invalidated once, measured like part 2.
#
# Part 2, TAGINVALIDATE. A fourth redis-server + cachet with the rule
#   pattern = "inv:{n}:{id}"  tags = ["inv:{n}"]
# For each size n in INV_SIZES, INV_ROUNDS times: SET inv:n:0 .. inv:n:(n-1) through cachet
# (redis-cli --pipe), check they are all there, then time
#
#     redis-cli -p <cachet> TAGINVALIDATE inv:n
#
# wall clock (including redis-cli's start-up; the report gives a PING through cachet for
# comparison), check the reply and that no data key, per-key tag set or drain set is left.
# Around the command: CONFIG RESETSTAT, SLOWLOG RESET and slowlog-log-slower-than
# $SLOWLOG_US (1 ms; restored to Redis's default 10 ms after). Reported: the number of
# FCALLs Redis ran in the window and their mean time (INFO commandstats), the longest
# single command (SLOWLOG GET -1, Redis's own measure of its execution; "< 1000" when none
# took over 1 ms) and how many FCALLs took over 1 ms and over 10 ms. Redis 7.0's slowlog
# also logs the commands a function runs; at threshold 0 that slows the functions down
# measurably, hence 1 ms. The window includes any call of cachet's background sweeper
# that happened to fall in it.
#
# Targets (from the issue): tagged SET at most 1.5x the cost of a plain SET; 100 000 keys
# invalidated in under one second with no single Redis call over 10 ms.
#
# The report goes to stdout and $RESULTS_DIR/tags-latest.md; raw CSVs, the slowlogs,
# generated configs and process logs to $RESULTS_DIR/runs/tags-<timestamp>/.
#
# Environment (defaults in brackets):
#   ROUNDS=3              alternating rounds of part 1; the median is reported
#   N_P1=100000           requests per invocation at -P 1
#   N_P16=500000          requests per invocation at -P 16
#   PIPELINES="1 16"      pipeline depths (N_P<d> must be set for others)
#   CLIENTS=50            redis-benchmark -c
#   KEYSPACE=100000       redis-benchmark -r, and keys written before round 1
#   DATASIZE=3            redis-benchmark -d
#   VARIANTS="plain plain-ex per-key shared"   part-1 variants, in per-round order
#   RULE_TTL=3600         TTL (s) of the rules
#   IDLE_SECS=10          after part 1, CPU of every process is read over this many idle
#                         seconds (the sweeper's background cost); 0 skips it
#   INV_ALL_ITEMS=1       invalidate `all-items` of the shared variant after part 1
#   INV_SIZES="10 1000 100000"        part-2 tag sizes
#   INV_ROUNDS=$ROUNDS    repetitions of each part-2 size (keys rebuilt each time)
#   SKIP_SET=1            skip part 1        SKIP_INV=1   skip part 2
#   SKIP_BUILD=1          don't run `cargo build --release` (binary must exist)
#   CACHET_BIN=...        cachet binary [target/release/cachet]
#   CACHET_ARGS=...       extra arguments for every cachet (e.g. "--threads 2")
#   RUN_TIMEOUT=300       seconds before one redis-benchmark / TAGINVALIDATE is killed
#   SLOWLOG_US=1000       slowlog-log-slower-than during an invalidation (see below)
#   RESULTS_DIR=bench/results
#
# Examples:
#   bench/tags.sh                                   # full run, builds cachet
#   SKIP_BUILD=1 ROUNDS=3 bench/tags.sh
#   ROUNDS=1 N_P1=20000 N_P16=100000 INV_SIZES="10 1000" bench/tags.sh   # smoke run
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$here/lib.sh"
repo=$(cd "$here/.." && pwd)

ROUNDS=${ROUNDS:-3}
N_P1=${N_P1:-100000}
N_P16=${N_P16:-500000}
PIPELINES=${PIPELINES:-"1 16"}
CLIENTS=${CLIENTS:-50}
KEYSPACE=${KEYSPACE:-100000}
DATASIZE=${DATASIZE:-3}
VARIANTS=${VARIANTS:-"plain plain-ex per-key shared"}
RULE_TTL=${RULE_TTL:-3600}
IDLE_SECS=${IDLE_SECS:-10}
INV_ALL_ITEMS=${INV_ALL_ITEMS:-1}
INV_SIZES=${INV_SIZES:-"10 1000 100000"}
INV_ROUNDS=${INV_ROUNDS:-$ROUNDS}
SKIP_SET=${SKIP_SET:-0}
SKIP_INV=${SKIP_INV:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
CACHET_BIN=${CACHET_BIN:-"${CARGO_TARGET_DIR:-$repo/target}/release/cachet"}
CACHET_ARGS=${CACHET_ARGS:-}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
SLOWLOG_US=${SLOWLOG_US:-1000}
RESULTS_DIR=${RESULTS_DIR:-"$here/results"}

read -r -a variants <<<"$VARIANTS"
read -r -a pipelines <<<"$PIPELINES"
read -r -a inv_sizes <<<"$INV_SIZES"
has_variant() { [[ " ${variants[*]} " == *" $1 "* ]]; }

log() { printf '[tags %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in redis-server redis-cli redis-benchmark timeout ss awk sort getconf jq; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
for v in "${variants[@]}"; do
    [[ $v == plain || $v == plain-ex || $v == per-key || $v == shared ]] \
        || die "unknown variant '$v' (plain, plain-ex, per-key, shared)"
done
for d in "${pipelines[@]}"; do
    var="N_P$d"
    [[ -n ${!var:-} ]] || die "PIPELINES contains $d but $var is not set"
done
if [[ $INV_ALL_ITEMS == 1 && $SKIP_SET != 1 ]] && ! has_variant shared; then
    INV_ALL_ITEMS=0
fi

CLK_TCK=$(getconf CLK_TCK)
[[ $CLK_TCK =~ ^[1-9][0-9]*$ ]] || die "getconf CLK_TCK returned '$CLK_TCK'"
[[ -r /proc/self/stat ]] || die "/proc/PID/stat is not readable (needed for CPU accounting)"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
run_dir="$RESULTS_DIR/runs/tags-$stamp"
mkdir -p "$run_dir"

# ---------------------------------------------------------------- processes --
pids=()
stop_pid() { # pid: TERM, wait up to 2 s, then KILL
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        stop_pid "$pid"
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

used_ports=" 6379 "




rcli() { # port args...: redis-cli on 127.0.0.1
    local port=$1
    shift
    redis-cli -h 127.0.0.1 -p "$port" "$@"
}

# Number of keys matching a glob, by SCAN.
count_keys() { # port pattern
    rcli "$1" --scan --pattern "$2" | wc -l
}

median_of() { sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# -------------------------------------------------------------------- build --
if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release"
    (cd "$repo" && cargo build --release) >"$run_dir/build.log" 2>&1 \
        || { tail -20 "$run_dir/build.log" >&2; die "cargo build --release failed"; }
fi
[[ -x $CACHET_BIN ]] || die "cachet binary not found at $CACHET_BIN"

# ------------------------------------------------------------------ machine --
cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
cachet_rev=$(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo "no commit")
if [[ -n $(cd "$repo" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    cachet_rev+=" (dirty)"
fi
[[ $SKIP_BUILD != 1 ]] || cachet_rev+=" (SKIP_BUILD=1: the binary may predate this revision)"
machine_info() {
    echo "- date (UTC): $(date -u '+%Y-%m-%d %H:%M:%S')"
    echo "- nproc: $(nproc)"
    echo "- CPU: ${cpu_model:-unknown}"
    echo "- kernel: $(uname -sr)"
    echo "- OS: $( (. /etc/os-release && echo "$PRETTY_NAME") 2>/dev/null || echo unknown)"
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- redis-server: $(redis-server --version | sed 's/^Redis server //')"
    echo "- redis-benchmark: $(redis-benchmark --version 2>/dev/null || echo '?')"
    echo "- cachet: $cachet_rev, $(rustc --version 2>/dev/null || echo 'rustc ?'), release profile, extra args: ${CACHET_ARGS:-none (config defaults)}"
    if [[ $SKIP_SET != 1 ]]; then
        echo "- part 1: variants (per-round order) ${variants[*]}; rounds=$ROUNDS clients=$CLIENTS keyspace(-r)=$KEYSPACE value size(-d)=$DATASIZE" \
             "$(for d in "${pipelines[@]}"; do v="N_P$d"; printf ' -P %s: -n %s;' "$d" "${!v}"; done)" \
             "rule TTL ${RULE_TTL}s; all $KEYSPACE keys written through each variant's cachet before round 1"
    fi
    if [[ $SKIP_INV != 1 ]]; then
        echo "- part 2: tag sizes ${inv_sizes[*]}, $INV_ROUNDS round(s) each, keys rebuilt before every invalidation"
    fi
    echo "- every variant has its own redis-server (--save \"\" --appendonly no) and its own cachet"
}
machine=$(machine_info)
printf '%s\n' "$machine" >&2

# ----------------------------------------------------------------- variants --
declare -A rport rpid cport cpid rules_of
rules_of[plain]=""
rules_of[plain-ex]=""
rules_of[per-key]="[[rules]]
name = \"item\"
pattern = \"key:{id}\"
tags = [\"item:{id}\"]
ttl = $RULE_TTL"
rules_of[shared]="[[rules]]
name = \"item\"
pattern = \"key:{id}\"
tags = [\"item:{id}\", \"all-items\"]
ttl = $RULE_TTL"
rules_of[inv]="[[rules]]
name = \"inv\"
pattern = \"inv:{n}:{id}\"
tags = [\"inv:{n}\"]
ttl = $RULE_TTL"

start_variant() { # name
    local v=$1
    rport[$v]=$(free_port)
    log "starting redis-server ($v) on 127.0.0.1:${rport[$v]}"
    redis-server --bind 127.0.0.1 --port "${rport[$v]}" --save "" --appendonly no \
        --daemonize no --protected-mode yes --dir "$run_dir" --logfile "" \
        >"$run_dir/redis-$v.log" 2>&1 &
    pids+=($!)
    rpid[$v]=$!
    wait_ping "redis-$v" "${rport[$v]}" "${rpid[$v]}"
    check_pid "redis-$v" "${rport[$v]}" "${rpid[$v]}" redis-server

    cport[$v]=$(free_port)
    local conf="$run_dir/cachet-$v.toml"
    {
        echo "# generated by bench/tags.sh: variant $v"
        echo "[proxy]"
        echo "listen = \"127.0.0.1:${cport[$v]}\""
        echo
        echo "[upstream]"
        echo "url = \"redis://127.0.0.1:${rport[$v]}\""
        echo
        printf '%s\n' "${rules_of[$v]}"
    } >"$conf"
    "$CACHET_BIN" check-config "$conf" >"$run_dir/check-config-$v.log" 2>&1 \
        || { cat "$run_dir/check-config-$v.log" >&2; die "generated $conf is invalid"; }
    log "starting cachet ($v) on 127.0.0.1:${cport[$v]} -> :${rport[$v]}"
    # The environment overrides the file (REDIS_HOST, ...): clear it; flags win anyway.
    # shellcheck disable=SC2086 # CACHET_ARGS is deliberately word-split
    env -u REDIS_HOST -u REDIS_PORT -u REDIS_PASSWORD -u CACHET_LISTEN -u CACHE_DEFAULT_TTL \
        NO_COLOR=1 "$CACHET_BIN" --config "$conf" --listen "127.0.0.1:${cport[$v]}" \
        --upstream "redis://127.0.0.1:${rport[$v]}" $CACHET_ARGS \
        >"$run_dir/cachet-$v.log" 2>&1 &
    pids+=($!)
    cpid[$v]=$!
    wait_ping "cachet-$v" "${cport[$v]}" "${cpid[$v]}"
    check_pid "cachet-$v" "${cport[$v]}" "${cpid[$v]}" "$(basename "$CACHET_BIN")"
}

stop_variant() { # name
    local v=$1 keep=() pid
    stop_pid "${cpid[$v]}"
    stop_pid "${rpid[$v]}"
    for pid in "${pids[@]}"; do
        [[ $pid == "${cpid[$v]}" || $pid == "${rpid[$v]}" ]] || keep+=("$pid")
    done
    pids=("${keep[@]}")
}

# SET through the cachet, visible in Redis; for tagged variants TAGS must list the rule's
# tags; DEL through cachet removes it.
smoke() { # variant
    local v=$1 key="key:smoke$$" got want
    [[ $v == inv ]] && key="inv:smoke:$$"
    [[ $(rcli "${cport[$v]}" SET "$key" ok) == OK ]] || die "smoke $v: SET via cachet failed"
    [[ $(rcli "${rport[$v]}" GET "$key") == ok ]] || die "smoke $v: SET via cachet not visible in Redis"
    got=$(rcli "${cport[$v]}" TAGS "$key" | awk 'NF' | sort | tr '\n' ' ')
    case $v in
        plain | plain-ex) want="" ;;
        per-key) want="item:smoke$$ " ;;
        shared) want="all-items item:smoke$$ " ;;
        inv) want="inv:smoke " ;;
    esac
    [[ $got == "$want" ]] || die "smoke $v: TAGS $key is '$got', expected '$want'"
    rcli "${cport[$v]}" DEL "$key" >/dev/null
    [[ $(rcli "${rport[$v]}" EXISTS "$key") == 0 ]] || die "smoke $v: DEL via cachet left the key"
    if [[ $v != plain && $v != plain-ex && $v != inv ]]; then
        [[ $(count_keys "${rport[$v]}" 'cachet:k:*') == 0 ]] || die "smoke $v: DEL left a per-key tag set"
    fi
}

# Writes keys through a cachet with redis-cli --pipe: SET <prefix><i> <value> for i in
# [0, n), keys formatted with fmt. Prints "wall_s,redis_ticks,cachet_ticks".
pipe_set() { # variant n key-format logname
    local v=$1 n=$2 fmt=$3 name=$4 r0 c0 w0 w1 r1 c1
    r0=$(cpu_ticks "${rpid[$v]}"); c0=$(cpu_ticks "${cpid[$v]}"); w0=$EPOCHREALTIME
    awk -v n="$n" -v size="$DATASIZE" -v fmt="$fmt" 'BEGIN {
            v = sprintf("%*s", size, ""); gsub(/ /, "x", v)
            for (i = 0; i < n; i++) {
                k = sprintf(fmt, i)
                printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, size, v
            }
        }' | timeout "$RUN_TIMEOUT" redis-cli -h 127.0.0.1 -p "${cport[$v]}" --pipe >"$run_dir/$name.log" 2>&1 \
        || die "writing $n keys through cachet ($v) failed; see $run_dir/$name.log"
    w1=$EPOCHREALTIME; r1=$(cpu_ticks "${rpid[$v]}"); c1=$(cpu_ticks "${cpid[$v]}")
    grep -q "errors: 0, replies: $n\$" "$run_dir/$name.log" \
        || die "writing $n keys through cachet ($v): $(tail -1 "$run_dir/$name.log")"
    awk -v w0="$w0" -v w1="$w1" 'BEGIN { printf "%.3f", w1 - w0 }'
    echo ",$((r1 - r0)),$((c1 - c0))"
}

# One TAGINVALIDATE through cachet, measured. Appends a CSV line to $inv_csv:
# label,round,expected,reply,wall ms,redis cpu ms,cachet cpu ms,FCALLs,FCALL usec,SCANs,
# slow entries,max us,max cmd,FCALLs>1ms,FCALLs>10ms,data left,per-key sets left,
# drain sets left
#
# Redis 7.0's slowlog also logs the commands a function runs (each with its own time), and
# with slowlog-log-slower-than 0 that costs enough to slow the functions down; so the
# window uses SLOWLOG_US (1 ms) and counts calls with INFO commandstats (reset first).
inv_csv="$run_dir/invalidate.csv"
: >"$inv_csv"
problems=()
invalidate() { # variant label round tag expected data-pattern
    local v=$1 label=$2 round=$3 tag=$4 expected=$5 pattern=$6
    local rp=${rport[$v]} cp=${cport[$v]} base="$run_dir/inv_${label}_r$round"
    local reply rc=0 r0 c0 w0 w1 r1 c1 stats cmdstats left_data left_k left_d
    rcli "$rp" CONFIG SET slowlog-max-len 100000 >/dev/null
    rcli "$rp" CONFIG SET latency-monitor-threshold 1 >/dev/null
    rcli "$rp" CONFIG SET slowlog-log-slower-than "$SLOWLOG_US" >/dev/null
    rcli "$rp" SLOWLOG RESET >/dev/null
    rcli "$rp" LATENCY RESET >/dev/null
    rcli "$rp" CONFIG RESETSTAT >/dev/null
    r0=$(cpu_ticks "${rpid[$v]}"); c0=$(cpu_ticks "${cpid[$v]}"); w0=$EPOCHREALTIME
    reply=$(timeout "$RUN_TIMEOUT" redis-cli -h 127.0.0.1 -p "$cp" TAGINVALIDATE "$tag" 2>&1) || rc=$?
    w1=$EPOCHREALTIME; r1=$(cpu_ticks "${rpid[$v]}"); c1=$(cpu_ticks "${cpid[$v]}")
    rcli "$rp" INFO commandstats | tr -d '\r' >"$base.commandstats.txt"
    rcli "$rp" CONFIG SET slowlog-log-slower-than 10000 >/dev/null
    rcli "$rp" --json SLOWLOG GET -1 >"$base.slowlog.json"
    rcli "$rp" --json LATENCY LATEST >"$base.latency.json"
    rcli "$rp" CONFIG SET latency-monitor-threshold 0 >/dev/null
    cmdstats=$(awk -F'[:=,]' '
        $1 == "cmdstat_fcall" { fc = $3; fu = $5 }
        $1 == "cmdstat_scan" { sc = $3 }
        END { printf "%d,%d,%d", fc, fu, sc }' "$base.commandstats.txt")
    # slow entries other than the script's own CONFIG/SLOWLOG/LATENCY/INFO; FCALLs named by
    # function. Counts over 1 / 10 ms are of FCALLs only (entries logged from inside a
    # function are part of that FCALL's time).
    stats=$(jq -r '
        [ .[] | { d: .[2],
                  n: ((.[3][0] | ascii_downcase)
                      + (if (.[3][0] | ascii_downcase) == "fcall" then " " + .[3][1] else "" end)) }
              | select(.n | test("^(config|slowlog|latency|info)") | not) ] as $e
        | ($e | max_by(.d)) as $m
        | [ ($e | length), ($m.d // 0), ($m.n // "-"),
            ($e | map(select((.n | startswith("fcall")) and .d > 1000)) | length),
            ($e | map(select((.n | startswith("fcall")) and .d > 10000)) | length) ]
        | map(tostring) | join(",")' \
        "$base.slowlog.json")
    left_data=$(count_keys "$rp" "$pattern")
    left_k=$(count_keys "$rp" 'cachet:k:*')
    left_d=$(count_keys "$rp" 'cachet:d:*')
    [[ $rc == 0 ]] || problems+=("$label round $round: TAGINVALIDATE exited $rc: $reply")
    [[ $reply =~ ^[0-9]+$ ]] || problems+=("$label round $round: TAGINVALIDATE replied '$reply'")
    if [[ $reply =~ ^[0-9]+$ && $reply != "$expected" ]]; then
        problems+=("$label round $round: TAGINVALIDATE replied $reply, expected $expected" \
                   "(the sweeper may have drained part of it; keys left: $left_data)")
    fi
    [[ $left_data == 0 ]] || problems+=("$label round $round: $left_data data keys ($pattern) left after TAGINVALIDATE")
    [[ $left_k == 0 ]] || problems+=("$label round $round: $left_k per-key tag sets (cachet:k:*) left")
    [[ $left_d == 0 ]] || problems+=("$label round $round: $left_d drain sets (cachet:d:*) left")
    awk -v l="$label" -v r="$round" -v e="$expected" -v rep="$reply" -v w0="$w0" -v w1="$w1" \
        -v rt=$((r1 - r0)) -v ct=$((c1 - c0)) -v hz="$CLK_TCK" -v cs="$cmdstats" -v s="$stats" \
        -v ld="$left_data" -v lk="$left_k" -v ldr="$left_d" 'BEGIN {
            if (rep !~ /^[0-9]+$/) rep = "error"
            printf "%s,%s,%s,%s,%.1f,%.0f,%.0f,%s,%s,%s,%s,%s\n", l, r, e, rep, (w1 - w0) * 1000,
                   rt * 1000 / hz, ct * 1000 / hz, cs, s, ld, lk, ldr
        }' >>"$inv_csv"
    local row
    row=$(tail -1 "$inv_csv")
    log "TAGINVALIDATE $tag: reply $reply, $(cut -d, -f5 <<<"$row") ms wall; $(cut -d, -f8 <<<"$row") FCALLs;" \
        "slowlog (> ${SLOWLOG_US} µs): $(cut -d, -f11 <<<"$row") entries, longest $(cut -d, -f12 <<<"$row") µs"
}

# ------------------------------------------------------------------- part 1 --
all="$run_dir/set.csv"   # round,variant,pipeline,rps,p50,p99
cpu="$run_dir/set_cpu.csv" # round,variant,pipeline,requests,wall s,redis ticks,cachet ticks,redis us/op,cachet us/op,total us/op
prep="$run_dir/prepopulate.csv" # variant,keys,wall s,redis ticks,cachet ticks
idle="$run_dir/idle.csv"  # variant,secs,redis ticks,cachet ticks
: >"$all"; : >"$cpu"; : >"$prep"; : >"$idle"
declare -A dbsize_after zcard_all
if [[ $SKIP_SET != 1 ]]; then
    for v in "${variants[@]}"; do
        start_variant "$v"
        smoke "$v"
    done
    log "all variants up and passed the smoke check"
    for v in "${variants[@]}"; do
        log "writing $KEYSPACE keys through cachet ($v)"
        out=$(pipe_set "$v" "$KEYSPACE" 'key:%012d' "prepopulate-$v")
        echo "$v,$KEYSPACE,$out" >>"$prep"
        n=$(count_keys "${rport[$v]}" 'key:*')
        [[ $n == "$KEYSPACE" ]] || die "after writing through cachet ($v): $n keys key:*, expected $KEYSPACE"
    done

    for ((round = 1; round <= ROUNDS; round++)); do
        for v in "${variants[@]}"; do
            for d in "${pipelines[@]}"; do
                nvar="N_P$d"
                n=${!nvar}
                what="round $round $v -P $d"
                base="$run_dir/r${round}_${v}_P$d"
                log "round $round/$ROUNDS  $v  -P $d  -n $n"
                rc=0
                # Redis's own account of what this invocation ran: calls and time per command.
                rcli "${rport[$v]}" CONFIG RESETSTAT >/dev/null
                r0=$(cpu_ticks "${rpid[$v]}"); c0=$(cpu_ticks "${cpid[$v]}"); w0=$EPOCHREALTIME
                test=(-t set -d "$DATASIZE")
                [[ $v == plain-ex ]] && test=(SET key:__rand_int__ "$(printf "%${DATASIZE}s" | tr ' ' x)" EX "$RULE_TTL")
                timeout "$RUN_TIMEOUT" redis-benchmark -h 127.0.0.1 -p "${cport[$v]}" --csv \
                    -c "$CLIENTS" -P "$d" -r "$KEYSPACE" -n "$n" "${test[@]}" \
                    >"$base.csv" 2>"$base.err" || rc=$?
                w1=$EPOCHREALTIME; r1=$(cpu_ticks "${rpid[$v]}"); c1=$(cpu_ticks "${cpid[$v]}")
                rcli "${rport[$v]}" INFO commandstats | tr -d '\r' >"$base.commandstats.txt"
                errs=$(grep -v -e '^WARNING: Could not fetch server CONFIG' -e '^[[:space:]]*$' "$base.err" | head -3 || true)
                [[ $rc == 0 ]] || problems+=("$what: redis-benchmark exited $rc${errs:+: $errs}")
                [[ $rc != 0 || -z $errs ]] || problems+=("$what: stderr: $errs")
                if ! grep -q '^"SET' "$base.csv"; then
                    problems+=("$what: no SET result")
                elif [[ $r1 == nan || $c1 == nan ]]; then
                    problems+=("$what: a server process vanished; not counted")
                elif [[ $rc == 0 ]]; then
                    awk -F, -v r="$round" -v t="$v" -v d="$d" '$1 ~ /^"SET/ {
                            gsub(/"/, ""); print r "," t "," d "," $2 "," $5 "," $7 }' "$base.csv" >>"$all"
                    awk -v r="$round" -v t="$v" -v d="$d" -v req="$n" -v w0="$w0" -v w1="$w1" \
                        -v rt=$((r1 - r0)) -v ct=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN {
                            us = 1e6 / hz / req
                            printf "%s,%s,%s,%d,%.3f,%d,%d,%.4f,%.4f,%.4f\n", r, t, d, req, w1 - w0,
                                   rt, ct, rt * us, ct * us, (rt + ct) * us
                        }' >>"$cpu"
                fi
                kill -0 "${cpid[$v]}" 2>/dev/null || die "cachet ($v) exited during round $round; see $run_dir/cachet-$v.log"
                kill -0 "${rpid[$v]}" 2>/dev/null || die "redis ($v) exited during round $round; see $run_dir/redis-$v.log"
            done
        done
    done

    for v in "${variants[@]}"; do
        dbsize_after[$v]=$(rcli "${rport[$v]}" DBSIZE)
        n=$(count_keys "${rport[$v]}" 'key:*')
        [[ $n == "$KEYSPACE" ]] || problems+=("$v: $n data keys after part 1, expected $KEYSPACE")
        case $v in
            # item:{id} names its key: no index entry. all-items is the shared variant's only
            # indexed tag, so its keys need no per-key set either: the data keys + all-items.
            shared) want=$((KEYSPACE + 1)) ;;
            *) want=$KEYSPACE ;;
        esac
        [[ ${dbsize_after[$v]} == "$want" ]] \
            || problems+=("$v: DBSIZE ${dbsize_after[$v]} after part 1, expected $want")
        if [[ $v == shared ]]; then
            zcard_all[$v]=$(rcli "${rport[$v]}" ZCARD 'cachet:t:{all-items}')
            [[ ${zcard_all[$v]} == "$KEYSPACE" ]] \
                || problems+=("shared: all-items has ${zcard_all[$v]} members, expected $KEYSPACE")
        fi
    done

    if ((IDLE_SECS > 0)); then
        log "idle for ${IDLE_SECS}s: background CPU (sweeper) of every process"
        declare -A ir0 ic0
        for v in "${variants[@]}"; do ir0[$v]=$(cpu_ticks "${rpid[$v]}"); ic0[$v]=$(cpu_ticks "${cpid[$v]}"); done
        sleep "$IDLE_SECS"
        for v in "${variants[@]}"; do
            echo "$v,$IDLE_SECS,$(($(cpu_ticks "${rpid[$v]}") - ir0[$v])),$(($(cpu_ticks "${cpid[$v]}") - ic0[$v]))" >>"$idle"
        done
    fi

    if [[ $INV_ALL_ITEMS == 1 ]]; then
        log "TAGINVALIDATE all-items ($KEYSPACE keys, two tags each) on the shared variant"
        invalidate shared all-items 1 all-items "$KEYSPACE" 'key:*'
        left_tagsets=$(count_keys "${rport[shared]}" 'cachet:t:*')
        [[ $left_tagsets == 0 ]] || problems+=("all-items: $left_tagsets tag sets (cachet:t:*) left; the item:{id} sets should be gone with their keys")
    fi
    for v in "${variants[@]}"; do
        stop_variant "$v"
    done
fi

# ------------------------------------------------------------------- part 2 --
if [[ $SKIP_INV != 1 ]]; then
    start_variant inv
    smoke inv
    # redis-cli's own cost, for reading the wall times: PING through cachet
    ping_ms=$(for _ in 1 2 3 4 5 6 7; do
        w0=$EPOCHREALTIME; rcli "${cport[inv]}" PING >/dev/null; w1=$EPOCHREALTIME
        awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.1f\n", (b - a) * 1000 }'
    done | median_of)
    for ((round = 1; round <= INV_ROUNDS; round++)); do
        for n in "${inv_sizes[@]}"; do
            log "round $round/$INV_ROUNDS: $n keys tagged inv:$n"
            pipe_set inv "$n" "inv:$n:%d" "build_${n}_r$round" >/dev/null
            got=$(count_keys "${rport[inv]}" "inv:$n:*")
            [[ $got == "$n" ]] || die "built $got keys inv:$n:*, expected $n"
            got=$(rcli "${rport[inv]}" ZCARD "cachet:t:{inv:$n}")
            [[ $got == "$n" ]] || die "tag set of inv:$n has $got members, expected $n"
            invalidate inv "$n" "$round" "inv:$n" "$n" "inv:$n:*"
            kill -0 "${cpid[inv]}" 2>/dev/null || die "cachet (inv) exited; see $run_dir/cachet-inv.log"
        done
    done
    inv_dbsize=$(rcli "${rport[inv]}" DBSIZE)
    # only the epochs of the invalidated tags should be left
    [[ $inv_dbsize == "${#inv_sizes[@]}" ]] \
        || problems+=("part 2: DBSIZE $inv_dbsize at the end, expected ${#inv_sizes[@]} (one epoch per tag)")
    stop_variant inv
fi
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
for v in "${variants[@]}" inv; do
    f="$run_dir/cachet-$v.log"
    [[ -f $f ]] || continue
    warn=$(grep -E -c ' (WARN|ERROR) ' "$f" || true)
    ((warn == 0)) || problems+=("cachet ($v) logged $warn WARN/ERROR lines; see ${f#"$repo"/}")
done

# ------------------------------------------------------------------- report --
# set_stats.csv: variant,pipeline,n,median rps,min rps,max rps,median p50,median p99,
#                median cachet us/op,median redis us/op,median total us/op,min total,max total
set_stats="$run_dir/set_stats.csv"
: >"$set_stats"
if [[ $SKIP_SET != 1 ]]; then
    col() { cut -d, -f"$1" <<<"$sel" | awk 'NF'; }
    for v in "${variants[@]}"; do
        for d in "${pipelines[@]}"; do
            sel=$(awk -F, -v t="$v" -v d="$d" '$2 == t && $3 == d' "$all")
            n=$(grep -c . <<<"$sel" || true)
            rps=$(col 4 | median_of); lo=$(col 4 | sort -g | head -1); hi=$(col 4 | sort -g | tail -1)
            p50=$(col 5 | median_of); p99=$(col 6 | median_of)
            sel=$(awk -F, -v t="$v" -v d="$d" '$2 == t && $3 == d' "$cpu")
            cu=$(col 9 | median_of); ru=$(col 8 | median_of); tu=$(col 10 | median_of)
            tlo=$(col 10 | sort -g | head -1); thi=$(col 10 | sort -g | tail -1)
            echo "$v,$d,$n,$rps,${lo:-nan},${hi:-nan},$p50,$p99,$cu,$ru,$tu,${tlo:-nan},${thi:-nan}" >>"$set_stats"
        done
    done
fi

tags_of() {
    case $1 in
        plain) echo "none (no rules)" ;;
        plain-ex) echo "none (no rules); the client sends \`EX $RULE_TTL\`" ;;
        per-key) echo '`item:{id}`' ;;
        shared) echo '`item:{id}`, `all-items`' ;;
    esac
}

report() {
    echo "# cachet tags benchmark run $stamp"
    echo
    echo "## Machine and parameters"
    echo
    printf '%s\n' "$machine"
    echo "- load average at end: $load_end"
    if [[ $SKIP_SET != 1 ]]; then
        echo
        echo "## Tagged SET vs plain SET through cachet (median of $ROUNDS rounds)"
        echo
        echo "\`redis-benchmark --csv -t set -c $CLIENTS -P <d> -r $KEYSPACE -d $DATASIZE -n <N>\` against each" \
             "variant's cachet; every key \`key:000000xxxxxx\` already written (and, for the tagged" \
             "variants, indexed) before round 1. CPU: utime+stime of that variant's cachet and" \
             "redis-server over the invocation, per request (resolution one tick, 1/$CLK_TCK s," \
             "=$(for d in "${pipelines[@]}"; do v="N_P$d"
                awk -v hz="$CLK_TCK" -v n="${!v}" -v d="$d" 'BEGIN { printf " %.3f µs/op at -P %s;", 1e6 / hz / n, d }'
             done) per process and run)."
        echo
        echo "| variant | tags per key | pipeline | ops/s | ops/s min–max | p50 ms | p99 ms | cachet µs/op | redis µs/op | total µs/op | total min–max | rounds |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        while IFS=, read -r v d n rps lo hi p50 p99 cu ru tu tlo thi; do
            awk -v v="$v" -v tg="$(tags_of "$v")" -v d="$d" -v n="$n" -v rps="$rps" -v lo="$lo" -v hi="$hi" \
                -v p50="$p50" -v p99="$p99" -v cu="$cu" -v ru="$ru" -v tu="$tu" -v tlo="$tlo" -v thi="$thi" '
                function f(x, fmt) { return x ~ /^[0-9]+(\.[0-9]*)?(e[-+]?[0-9]+)?$/ ? sprintf(fmt, x) : "n/a" }
                BEGIN { printf "| %s | %s | %s | %s | %s–%s | %s | %s | %s | %s | %s | %s–%s | %s |\n",
                        v, tg, d, f(rps, "%.0f"), f(lo, "%.0f"), f(hi, "%.0f"), f(p50, "%.3f"), f(p99, "%.3f"),
                        f(cu, "%.2f"), f(ru, "%.2f"), f(tu, "%.2f"), f(tlo, "%.2f"), f(thi, "%.2f"), n }'
        done <"$set_stats"
        if has_variant plain && { has_variant per-key || has_variant shared; }; then
            echo
            echo "### Cost ratios tagged / plain (from the medians)"
            echo
            echo "Above 1 means the tagged SET costs more. The issue's target: at most 1.5x the cost" \
                 "of a plain SET (taken here as total server CPU per request, cachet + Redis)."
            echo
            echo "The last column compares with \`plain-ex\` (a plain SET carrying the same TTL), when run."
            echo
            echo "| variant | pipeline | total CPU/op | redis CPU/op | cachet CPU/op | time per op (plain ops/s ÷ tagged ops/s) | total CPU ≤ 1.5x? | total CPU/op vs plain-ex |"
            echo "|---|---:|---:|---:|---:|---:|---|---:|"
            for v in per-key shared; do
                has_variant "$v" || continue
                for d in "${pipelines[@]}"; do
                    awk -F, -v v="$v" -v d="$d" '
                        function num(x) { return x ~ /^[0-9]+(\.[0-9]*)?(e[-+]?[0-9]+)?$/ }
                        function ratio(a, b) { return (num(a) && num(b) && b > 0) ? sprintf("%.2f", a / b) : "n/a" }
                        $2 == d { rps[$1] = $4; cu[$1] = $9; ru[$1] = $10; tu[$1] = $11 }
                        END {
                            t = ratio(tu[v], tu["plain"])
                            ok = (t == "n/a") ? "n/a" : (t + 0 <= 1.5 ? "yes" : "**no**")
                            printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", v, d, t, ratio(ru[v], ru["plain"]),
                                   ratio(cu[v], cu["plain"]), ratio(rps["plain"], rps[v]), ok,
                                   ratio(tu[v], tu["plain-ex"])
                        }' "$set_stats"
                done
            done
        fi
        echo
        echo "### Where Redis spends its time (INFO commandstats, by variant and pipeline depth)"
        echo
        echo "Per variant and depth, every command Redis ran during that depth's rounds (CONFIG RESETSTAT" \
             "before each invocation): calls per benchmark request and Redis's own µs per call (commandstats' usec / calls;" \
             "wall time inside Redis, so a busy host inflates it). Commands inside MULTI are counted" \
             "on their own and again inside EXEC's time; commands a function runs are counted on their" \
             "own and again inside FCALL's. Includes the background sweeper's calls in the window."
        echo
        echo "| variant | pipeline | command | calls per request | µs per call | µs per request |"
        echo "|---|---:|---|---:|---:|---:|"
        for v in "${variants[@]}"; do
            for d in "${pipelines[@]}"; do
                files=("$run_dir"/r*_"${v}"_P"$d".commandstats.txt)
                [[ -s ${files[0]} ]] || continue
                reqs=$(awk -F, -v v="$v" -v d="$d" '$2 == v && $3 == d { s += $4 } END { print s + 0 }' "$cpu")
                ((reqs > 0)) || continue
                awk -F'[:=,]' -v v="$v" -v d="$d" -v n="$reqs" '/^cmdstat_/ {
                        sub(/^cmdstat_/, "", $1)
                        calls[$1] += $3; usec[$1] += $5
                    } END {
                        for (c in calls) {
                            if (c ~ /^(config|info)$/ || calls[c] / n < 0.001) continue
                            printf "| %s | %s | %s | %.3f | %.2f | %.2f |\n", v, d, c, calls[c] / n,
                                   usec[c] / calls[c], usec[c] / n
                        }
                    }' "${files[@]}" | sort -t'|' -k4,4
            done
        done
        echo
        echo "### First write of all $KEYSPACE keys (redis-cli --pipe through cachet, before round 1)"
        echo
        echo "| variant | keys | wall s | keys/s | cachet µs/key | redis µs/key |"
        echo "|---|---:|---:|---:|---:|---:|"
        awk -F, -v hz="$CLK_TCK" '{ us = 1e6 / hz / $2
            printf "| %s | %d | %.2f | %.0f | %.2f | %.2f |\n", $1, $2, $3, ($3 > 0 ? $2 / $3 : 0), $5 * us, $4 * us }' "$prep"
        echo
        echo "Keys in each Redis after part 1 (DBSIZE):$(for v in "${variants[@]}"; do printf ' %s %s;' "$v" "${dbsize_after[$v]}"; done)" \
             "${zcard_all[shared]:+ members of all-items: ${zcard_all[shared]}.}"
        if [[ -s $idle ]]; then
            echo
            echo "Background CPU with no clients, over ${IDLE_SECS}s right after the rounds (the tag index" \
                 "sweeper walks each Redis continuously while its index is large), % of one core:" \
                 "$(awk -F, -v hz="$CLK_TCK" '{ printf " %s: redis %.1f%%, cachet %.1f%%;", $1, $3 * 100 / hz / $2, $4 * 100 / hz / $2 }' "$idle")"
        fi
    fi
    if [[ -s $inv_csv ]]; then
        echo
        echo "## TAGINVALIDATE"
        echo
        echo "\`redis-cli -p <cachet> TAGINVALIDATE <tag>\`, wall clock including redis-cli's start-up" \
             "${ping_ms:+(a \`redis-cli PING\` through cachet takes ${ping_ms} ms here)}." \
             "FCALLs: top-level function calls Redis ran while the command was in flight" \
             "(INFO commandstats, reset before): one cachet_invalidate, the cachet_drain calls, and" \
             "any call of cachet's background sweeper that fell in the window; µs per FCALL is" \
             "commandstats' usec / calls. Longest call: Redis's own execution time of one command," \
             "from SLOWLOG with \`slowlog-log-slower-than $SLOWLOG_US\` (SLOWLOG RESET before)." \
             "CPU: Redis and cachet over the command (resolution 1/$CLK_TCK s)." \
             "Targets: 100 000 keys in under 1 s, no single Redis call over 10 ms."
        echo
        echo "| tag | keys | rounds | reply (deleted) | wall ms median | wall ms min–max | FCALLs per run | µs per FCALL (mean) | longest call µs (max over rounds) | longest call is | FCALLs > 1 ms | FCALLs > 10 ms | redis CPU ms (median) | cachet CPU ms (median) | keys left |"
        echo "|---|---:|---:|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|"
        # label,round,expected,reply,wall,rcpu,ccpu,fcalls,fusec,scans,slow,max,maxcmd,over1,over10,left,leftk,leftd
        for label in $(cut -d, -f1 "$inv_csv" | awk '!seen[$0]++'); do
            sel=$(awk -F, -v l="$label" '$1 == l' "$inv_csv")
            rounds=$(grep -c . <<<"$sel")
            replies=$(cut -d, -f4 <<<"$sel" | sort -u | tr '\n' '/' | sed 's#/$##')
            wmed=$(cut -d, -f5 <<<"$sel" | median_of)
            wlo=$(cut -d, -f5 <<<"$sel" | sort -g | head -1); whi=$(cut -d, -f5 <<<"$sel" | sort -g | tail -1)
            fcalls=$(cut -d, -f8 <<<"$sel" | tr '\n' ' ' | sed 's/ $//; s/ /, /g')
            fmean=$(awk -F, '{ c += $8; u += $9 } END { printf "%.0f", c ? u / c : 0 }' <<<"$sel")
            maxrow=$(sort -t, -k12,12g <<<"$sel" | tail -1)
            longest=$(cut -d, -f12 <<<"$maxrow"); longcmd=$(cut -d, -f13 <<<"$maxrow")
            if [[ $longest == 0 ]]; then longest="< $SLOWLOG_US"; longcmd="(nothing in the slowlog)"; fi
            o1=$(awk -F, '{ s += $14 } END { print s }' <<<"$sel")
            o10=$(awk -F, '{ s += $15 } END { print s }' <<<"$sel")
            rc=$(cut -d, -f6 <<<"$sel" | median_of); cc=$(cut -d, -f7 <<<"$sel" | median_of)
            left=$(awk -F, '{ s += $16 + $17 + $18 } END { print s }' <<<"$sel")
            tagname=$([[ $label == all-items ]] && echo "all-items (shared variant, 2 tags per key)" || echo "inv:$label")
            if ((SLOWLOG_US > 1000)); then o1="n/a"; fi
            echo "| $tagname | $(cut -d, -f3 <<<"$maxrow") | $rounds | $replies | $wmed | $wlo–$whi | $fcalls | $fmean | $longest | $longcmd | $o1 | $o10 | $rc | $cc | $left |"
        done
        echo
        echo "\"keys left\": data keys of the tag, per-key tag sets and drain sets found by SCAN after" \
             "each invalidation, summed over rounds (0 expected)."
    fi
    echo
    echo "## Problems"
    echo
    if ((${#problems[@]} == 0)); then
        echo "none (every run exited 0, every invalidation replied the expected count and left no keys)"
    else
        printf -- '- %s\n' "${problems[@]}"
    fi
    echo
    echo "Raw CSVs, slowlogs, configs and logs: ${run_dir#"$repo"/}"
}
report | tee "$run_dir/report.md"
cp "$run_dir/report.md" "$RESULTS_DIR/tags-latest.md"
log "written $RESULTS_DIR/tags-latest.md"
