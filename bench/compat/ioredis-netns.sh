#!/usr/bin/env bash
# Runs ioredis's functional tests inside a network namespace of their own, where 127.0.0.1:6379
# (the address ioredis's tests hard-code) is either a fresh redis-server (MODE=direct) or cachet
# in front of a fresh redis-server on 127.0.0.1:46379 (MODE=cachet; a port no ioredis test
# uses: "connection #connect should return a promise" expects 6390 to refuse). Started by
# bench/compat.sh as
#   unshare -n bench/compat/ioredis-netns.sh MODE SRC_DIR OUT_XML LOG_DIR [CACHET CONFIG]
# The namespace has only its own loopback: nothing here can reach the host's Redis.
set -uo pipefail
mode=$1 src=$2 out=$3 logs=$4 cachet=${5:-} config=${6:-}
: "${IOREDIS_TIMEOUT:=2400}" "${REDIS_SERVER_ARGS:=}"

ip link set lo up || { echo "ioredis-netns: cannot bring lo up (need root / CAP_NET_ADMIN)" >&2; exit 2; }

pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
}
trap cleanup EXIT

wait_ping() { # port pid name
    for _ in $(seq 1 100); do
        kill -0 "$2" 2>/dev/null || { echo "ioredis-netns: $3 exited during startup" >&2; exit 2; }
        [[ $(redis-cli -p "$1" PING 2>/dev/null) == PONG ]] && return 0
        sleep 0.1
    done
    echo "ioredis-netns: $3 on :$1 did not answer PING" >&2
    exit 2
}

redis_port=6379
[[ $mode == cachet ]] && redis_port=46379
rdir=$(mktemp -d "$logs/redis-ioredis-$mode.XXXX")
# shellcheck disable=SC2086
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$rdir" --save "" --appendonly no \
    --enable-debug-command yes $REDIS_SERVER_ARGS >"$logs/ioredis-$mode-redis.log" 2>&1 &
pids+=($!)
wait_ping "$redis_port" "${pids[-1]}" redis-server

if [[ $mode == cachet ]]; then
    CACHET_ADMIN_LISTEN="" RUST_LOG=${RUST_LOG:-warn} "$cachet" --config "$config" \
        --listen 127.0.0.1:6379 --upstream "redis://127.0.0.1:$redis_port" \
        >"$logs/ioredis-$mode-cachet.log" 2>&1 &
    pids+=($!)
    wait_ping 6379 "${pids[-1]}" cachet
fi

cd "$src" || exit 2
# The same files as `npm run test:js` minus the unit tests (they never reach Redis):
# test/helpers (the global afterEach that flushes Redis) and test/functional/**.
TS_NODE_TRANSPILE_ONLY=true NODE_ENV=test timeout --kill-after=30 "$IOREDIS_TIMEOUT" \
    node_modules/.bin/mocha --no-experimental-strip-types \
    "test/helpers/*.ts" "test/functional/**/*.ts" \
    --reporter xunit --reporter-option "output=$out" \
    >"$logs/ioredis-$mode-mocha.log" 2>&1
rc=$?
echo "mocha exit status $rc" >>"$logs/ioredis-$mode-mocha.log"
rm -rf "$rdir"
exit 0
