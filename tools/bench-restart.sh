#!/usr/bin/env bash
# Benchmark (e): time for a restarted node to get its routing table back, against a fresh
# bootstrap from the same router, in a 1,000-node loopback testnet with background traffic.
#
# dht-restart-bench starts each node exactly as dht-node does (Dht::spawn with a data dir),
# samples its table every 5 ms, stops it (persisting id and contacts) and restarts it on the
# same data dir and router; a third start without any router shows what the persisted
# contacts alone give. A second series repeats this with the node under test receiving every
# datagram DELAY ms late (see dht-restart-bench --delay-ms), since loopback round trips of
# microseconds hide how many sequential rounds a join costs. Then the real dht-node binary
# is run fresh, stopped with SIGTERM and restarted, to check from its log that it keeps its
# node id (its status line only has 1-second resolution). Usage: tools/bench-restart.sh
# Environment: RUNS (7), NODES (1000), OBSERVE seconds per phase (20), TRAFFIC lookups/s (20),
# DELAY ms of emulated receive delay for the second series (50).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/bench-common.sh
RUNS=${RUNS:-7}
NODES=${NODES:-1000}
OBSERVE=${OBSERVE:-20}
TRAFFIC=${TRAFFIC:-20}
DELAY=${DELAY:-50}
build --bin dht-testnet --bin dht-node --bin dht-restart-bench
machine
work=$(mktemp -d)
NODE_PID=
TESTNET_PID=
cleanup() {
    [ -n "$NODE_PID" ] && stop_pid "$NODE_PID"
    [ -n "$TESTNET_PID" ] && stop_pid "$TESTNET_PID" INT
    rm -rf "$work"
}
trap cleanup EXIT
start_testnet "$NODES" "$work/testnet.log" --traffic "$TRAFFIC" --stats-interval 0
sleep 10

echo "--- loopback round trips, real Dht::spawn path with the sled store"
RUST_LOG=error "$BIN/dht-restart-bench" --bootstrap 127.95.0.1:6881 --subnet 98 \
    --data-dir "$work/bench" --runs "$RUNS" --observe "$OBSERVE" --no-router-phase
echo "--- node under test receives every datagram ${DELAY} ms late (emulated wide-area round trip)"
RUST_LOG=error "$BIN/dht-restart-bench" --bootstrap 127.95.0.1:6881 --subnet 98 \
    --data-dir "$work/bench" --runs "$RUNS" --observe "$OBSERVE" --no-router-phase \
    --delay-ms "$DELAY"

echo "--- dht-node binary: fresh start, SIGTERM, restart (status every 1 s)"
start_node() {
    RUST_LOG=info "$BIN/dht-node" --bind 127.98.1.1:6881 --bootstrap 127.95.0.1:6881 \
        --allow-net 127.0.0.0/8 --no-subnet-limit --data-dir "$work/node" --stats-interval 1 \
        >"$work/node-$1.out" 2>"$work/node-$1.err" &
    NODE_PID=$!
    sleep 5
    stop_pid "$NODE_PID"
    NODE_PID=
    echo "[$1] $(grep -o 'node [0-9a-f]\{40\}' "$work/node-$1.err")"
    head -3 "$work/node-$1.out" | sed "s/^/[$1] /"
}
start_node fresh
start_node restart
id1=$(grep -o 'node [0-9a-f]\{40\}' "$work/node-fresh.err")
id2=$(grep -o 'node [0-9a-f]\{40\}' "$work/node-restart.err")
if [ "$id1" = "$id2" ]; then echo "dht-node kept its id across SIGTERM + restart"; else echo "dht-node id CHANGED: $id1 -> $id2"; exit 1; fi
