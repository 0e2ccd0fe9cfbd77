#!/bin/bash
# A/B of one build: clients signed in as an ACL user on a user pool (max_user_pools=64)
# vs a connection each (max_user_pools=0, the behaviour before), and cachet's own user.
# Usage: bench/identity.sh   (CACHET_BIN=target/debug/cachet to use a debug build)
set -e
DIR=$(mktemp -d)
cd "$(dirname "$0")/.."
BIN=${CACHET_BIN:-target/release/cachet}
RP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
redis-server --port $RP --save "" --appendonly no --daemonize yes --logfile $DIR/redis.log --pidfile $DIR/redis.pid
sleep 0.5
redis-cli -p $RP ACL SETUSER alice on '>apw' '~*' +@all >/dev/null
for POOLS in 64 0; do
  CP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  cat > $DIR/c$POOLS.toml <<T
[proxy]
listen = "127.0.0.1:$CP"
[upstream]
url = "redis://127.0.0.1:$RP"
max_user_pools = $POOLS
[admin]
listen = ""
[[rules]]
pattern = "key:*"
tags = ["bench"]
T
  $BIN -c $DIR/c$POOLS.toml > $DIR/cachet$POOLS.log 2>&1 &
  PID=$!
  sleep 1.5
  for WHO in alice default; do
    AUTH=""; [ $WHO = alice ] && AUTH="--user alice -a apw"
    echo "max_user_pools=$POOLS as $WHO:"
    redis-benchmark -p $CP $AUTH -c 50 -n 50000 -r 10000 -t get,set -P 1 -q 2>/dev/null | tr '\r' '\n' | grep -v "^$" | grep "requests per second"
  done
  kill $PID; wait $PID 2>/dev/null || true
done
kill $(cat $DIR/redis.pid)
