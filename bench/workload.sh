#!/usr/bin/env bash
# bench/workload.sh — the ClassWaves workload against four set-ups, in one run:
#
#   none            the app reads SQLite every time (CACHE_MODE=none)
#   ttl             cache-aside on a plain redis-server with the TTL table, no invalidation
#   cachet-events   cache-aside through cachet: rules, tags, the sessions policy (EMIT), no warmers
#   cachet-warming  the same plus warmers calling the app's warm endpoints
#
# Each set-up gets a fresh redis-server on a free port, a fresh copy of one seeded SQLite
# database, the app (examples/classwaves) and, for the cachet set-ups, `cachet` built with
# `cargo build --release` and the sessions policy built by `policies/build.sh sessions`
# (configs: bench/workload/cachet-*.toml). Then bench/workload/workload.mjs drives the app,
# and the results come out as a markdown table (stdout and bench/results/workload-latest.md;
# raw JSON and process logs under bench/results/runs/workload-<timestamp>/).
#
# Environment (defaults in brackets):
#   SETUPS="none ttl cachet-events cachet-warming"
#   PREFILL=1                read every entity once before the warm-up (0: start cold)
#   DURATION=180 WARMUP=60   seconds measured, seconds of warm-up before (not measured)
#   RATE=500 CONCURRENCY=32  requests a second sent by CONCURRENCY virtual users
#   WRITE_RATIO=0.02 ZIPF=1.0
#   REPORT_EVERY=0           seconds between progress lines (each interval's hit rate) on stderr
#   SEED_SCHOOLS=20 SEED_TEACHERS_PER_SCHOOL=20 SEED_STUDENTS_PER_SCHOOL=400
#   SEED_SESSIONS_PER_TEACHER=5 SEED_STUDENTS_PER_ROSTER=25
#
# It never touches an already running Redis (e.g. the one on :6379); everything it starts is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

SETUPS=${SETUPS:-"none ttl cachet-events cachet-warming"}
PREFILL=${PREFILL:-1}
DURATION=${DURATION:-180}
WARMUP=${WARMUP:-60}
RATE=${RATE:-500}
CONCURRENCY=${CONCURRENCY:-32}
WRITE_RATIO=${WRITE_RATIO:-0.02}
ZIPF=${ZIPF:-1.0}
REPORT_EVERY=${REPORT_EVERY:-0}
export SEED_SCHOOLS=${SEED_SCHOOLS:-20} SEED_TEACHERS_PER_SCHOOL=${SEED_TEACHERS_PER_SCHOOL:-20}
export SEED_STUDENTS_PER_SCHOOL=${SEED_STUDENTS_PER_SCHOOL:-400}
export SEED_SESSIONS_PER_TEACHER=${SEED_SESSIONS_PER_TEACHER:-5}
export SEED_STUDENTS_PER_ROSTER=${SEED_STUDENTS_PER_ROSTER:-25}

run_dir=$root/bench/results/runs/workload-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$run_dir"
used_ports=" 6379 6380 3000 "
die() { echo "workload.sh: $*" >&2; exit 1; }
log() { echo "[workload] $*" >&2; }
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

pids=()
stop_all() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
trap stop_all EXIT

for tool in node npm redis-server redis-cli curl; do
    command -v "$tool" >/dev/null || die "needs $tool"
done

# ---- build -----------------------------------------------------------------------------------
app=$root/examples/classwaves
if [[ ! -d $app/node_modules ]]; then
    log "npm ci in examples/classwaves"
    (cd "$app" && npm ci --no-audit --no-fund >"$run_dir/npm-ci.log" 2>&1) || die "npm ci failed; see $run_dir/npm-ci.log"
fi
(cd "$app" && npm run --silent build) || die "the app does not build"
if [[ $SETUPS == *cachet* ]]; then
    log "cargo build --release"
    cargo build --release --quiet || die "cachet does not build"
    [[ -x $root/policies/build.sh ]] || die "policies/build.sh is missing: the cachet set-ups need the sessions policy"
    log "policies/build.sh sessions"
    "$root/policies/build.sh" sessions >"$run_dir/policies-build.log" 2>&1 \
        || die "policies/build.sh sessions failed; see $run_dir/policies-build.log"
    [[ -f $root/policies/out/sessions.wasm ]] || die "policies/build.sh did not produce policies/out/sessions.wasm"
fi

log "seeding one database for every set-up"
rm -f "$run_dir/seed.db"
DB_PATH=$run_dir/seed.db node "$app/dist/seed.js" >"$run_dir/seed.log" || die "seeding failed"

# ---- processes -------------------------------------------------------------------------------
start_redis() { # -> $redis_port
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$run_dir" --logfile "$run_dir/$1-redis.log" &
    pids+=($!)
    wait_ping "$1-redis" "$redis_port" "$!"
}

start_cachet() { # setup -> $cachet_port
    local config=$run_dir/$1.toml
    cachet_port=$(free_port)
    sed "s#127.0.0.1:3000#127.0.0.1:$app_port#g" "$root/bench/workload/$1.toml" >"$config"
    "${CARGO_TARGET_DIR:-$root/target}/release/cachet" --config "$config" --listen "127.0.0.1:$cachet_port" \
        --upstream "redis://127.0.0.1:$redis_port" >"$run_dir/$1-cachet.log" 2>&1 &
    pids+=($!)
    wait_ping "$1-cachet" "$cachet_port" "$!"
}

start_app() { # setup mode redis-port
    cp "$run_dir/seed.db" "$run_dir/$1.db"
    CACHE_MODE=$2 REDIS_PORT=${3:-0} PORT=$app_port DB_PATH=$run_dir/$1.db \
        node "$app/dist/server.js" >"$run_dir/$1-app.log" 2>&1 &
    pids+=($!)
    local pid=$!
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || die "the app exited during startup; see $run_dir/$1-app.log"
        curl -sf "http://127.0.0.1:$app_port/internal/stats" >/dev/null && return 0
        sleep 0.1
    done
    die "the app did not answer within 10s; see $run_dir/$1-app.log"
}

# ---- the runs --------------------------------------------------------------------------------
for setup in $SETUPS; do
    app_port=$(free_port)
    case $setup in
        none) start_app none none ;;
        ttl) start_redis ttl; start_app ttl ttl "$redis_port" ;;
        cachet-events | cachet-warming)
            start_redis "$setup"; start_cachet "$setup"; start_app "$setup" cachet "$cachet_port" ;;
        *) die "unknown set-up '$setup' (none, ttl, cachet-events, cachet-warming)" ;;
    esac
    prefill=()
    [[ $PREFILL == 1 ]] && prefill=(--prefill)
    log "$setup: prefill $PREFILL, ${WARMUP}s warm-up, ${DURATION}s measured at $RATE req/s"
    node "$root/bench/workload/workload.mjs" --url "http://127.0.0.1:$app_port" --label "$setup" "${prefill[@]}" \
        --duration "$DURATION" --warmup "$WARMUP" --rate "$RATE" --concurrency "$CONCURRENCY" \
        --write-ratio "$WRITE_RATIO" --zipf "$ZIPF" --report-every "$REPORT_EVERY" >"$run_dir/$setup.json" \
        || die "the workload failed against $setup; see $run_dir/$setup-app.log"
    curl -sf "http://127.0.0.1:$app_port/internal/stats" >"$run_dir/$setup-stats.json" || true
    stop_all
done

# ---- the table -------------------------------------------------------------------------------
node - "$run_dir" $SETUPS >"$run_dir/table.md" <<'JS'
const fs = require('fs');
const [dir, ...setups] = process.argv.slice(2);
const rows = setups.map((s) => JSON.parse(fs.readFileSync(`${dir}/${s}.json`, 'utf8')));
const ttl = rows.find((r) => r.label === 'ttl');
const f = (x, d = 1) => (x === null || x === undefined ? '–' : x.toFixed(d));
const s = rows[0].settings;
const filled = s.prefill ? `every entity read once first (${rows.map((r) => `${r.label} ${f(r.settings.prefillSeconds)}s`).join(', ')}), then ` : '';
console.log(`Workload: ${s.rate} req/s by ${s.concurrency} users, ${s.writeRatio * 100}% writes, Zipf ${s.zipf}, ${filled}${s.warmup}s warm-up + ${s.duration}s measured.\n`);
console.log('| set-up | req/s | hit rate | DB queries/s | DB queries per request | vs TTL only (per request) | read p50 / p99 ms | write p50 / p99 ms | stale reads | errors | warm recomputes |');
console.log('|---|---|---|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  const vs = ttl && ttl.dbQueriesPerRequest > 0 ? `${f(r.dbQueriesPerRequest / ttl.dbQueriesPerRequest, 2)}x` : '–';
  const hit = r.hitRate === null ? '–' : `${f(r.hitRate * 100)}%`;
  console.log(`| ${r.label} | ${f(r.requestsPerSec)} | ${hit} | ${f(r.dbQueriesPerSec)} | ${f(r.dbQueriesPerRequest, 3)} | ${vs} | ${f(r.readP50ms, 2)} / ${f(r.readP99ms, 2)} | ${f(r.writeP50ms, 2)} / ${f(r.writeP99ms, 2)} | ${r.staleReads} of ${r.reads} | ${r.errors} | ${r.warmed} |`);
}
// Where the misses come from: per kind of entry, misses a second (and the kind's hit rate),
// then warm recomputes a second. Reading a miss of each kind costs the database a fixed
// number of statements (examples/classwaves/src/db.ts): lists 3, roster 2, the others 1.
const kinds = ['sessions:teacher', 'session', 'roster', 'user', 'sessions:school', 'school'];
const cached = rows.filter((r) => r.byKind && Object.keys(r.byKind).length > 0);
if (cached.length > 0) {
  console.log('\nMisses a second by kind of entry (hit rate), then warm recomputes a second:\n');
  console.log(`| set-up | ${kinds.join(' | ')} | warmed |`);
  console.log(`|---|${kinds.map(() => '---|').join('')}---|`);
  for (const r of cached) {
    const cells = kinds.map((k) => {
      const c = r.byKind[k] ?? { hits: 0, misses: 0 };
      const n = c.hits + c.misses;
      return `${f(c.misses / r.seconds, 2)} (${n === 0 ? '–' : `${f((100 * c.hits) / n)}%`})`;
    });
    const warmed = kinds.map((k) => `${k} ${f((r.byKind[k]?.warmed ?? 0) / r.seconds, 2)}`).filter((x) => !x.endsWith(' 0.00'));
    console.log(`| ${r.label} | ${cells.join(' | ')} | ${warmed.join(', ') || '–'} |`);
  }
}
JS
mkdir -p "$root/bench/results"
cp "$run_dir/table.md" "$root/bench/results/workload-latest.md"
cat "$run_dir/table.md"
log "raw results and logs: $run_dir"
