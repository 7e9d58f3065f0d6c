#!/usr/bin/env bash
# Benchmark (d): resident memory of a dht-node with a populated routing table and 100k
# stored peers (2,000 infohashes × 50 peers), plus the worst case the default store limits
# allow (2,000 × 500 = 1M peers).
#
# A 1,000-node testnet runs with background traffic; a release dht-node joins it, runs for
# WARM seconds, then `dht-loadgen fill` announces the peers through the protocol (get_peers →
# token → announce_peer from 1,000 or more source IPs 127.96.x.y, 16 at a time). VmRSS/VmHWM come from /proc/PID/status,
# table and store sizes from the node's own status line. Finally 100 new infohashes are
# announced to the full store, to see whether they are kept. Usage: tools/bench-memory.sh
# Environment: RUNS (3), NODES (1000), WARM seconds (60), TRAFFIC lookups/s (20).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/bench-common.sh
RUNS=${RUNS:-3}
NODES=${NODES:-1000}
WARM=${WARM:-60}
TRAFFIC=${TRAFFIC:-20}
build --bin dht-testnet --bin dht-node --bin dht-loadgen
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

rss() {
    awk '/^(VmRSS|VmHWM|RssAnon|RssFile):/ {printf "%s %.1f MB  ", $1, $2/1024}' "/proc/$1/status"
}

# measure LABEL IP INFOHASHES PEERS MAX_PEERS
measure() {
    local label=$1 ip=$2 ih=$3 peers=$4 max_peers=$5
    rm -rf "$work/node"
    RUST_LOG=info "$BIN/dht-node" --bind "$ip:6881" --bootstrap 127.95.0.1:6881 \
        --allow-net 127.0.0.0/8 --no-subnet-limit --rate-limit 0 --reply-quota 0 \
        --data-dir "$work/node" --stats-interval 1 --max-infohashes "$ih" --max-peers "$max_peers" >"$work/node.out" 2>"$work/node.err" &
    NODE_PID=$!
    sleep "$WARM"
    echo "[$label] before fill: $(tail -1 "$work/node.out")"
    echo "[$label] before fill: $(rss "$NODE_PID")"
    "$BIN/dht-loadgen" fill --target "$ip:6881" --infohashes "$ih" --peers "$peers" \
        --sources $(( ih * peers / 50 > 1000 ? ih * peers / 50 : 1000 )) \
        --source-base 127.96.0.1 --port-base 1024 \
        | sed "s/^/[$label] /" || echo "[$label] the fill reported missing acks (see above)"
    sleep 3
    echo "[$label] after fill: $(tail -1 "$work/node.out")"
    echo "[$label] after fill: $(rss "$NODE_PID")"
    if [ "${6:-}" = full-store-check ]; then
        # The store is at --max-infohashes now: do new infohashes still get stored?
        "$BIN/dht-loadgen" fill --target "$ip:6881" --infohashes 100 --peers 50 --seed 9 \
            --source-base 127.96.0.1 --port-base 1024 --sources 1000 --verify 20 | sed "s/^/[$label, store full] /" || true
        sleep 2
        echo "[$label, store full] $(tail -1 "$work/node.out")"
    fi
    stop_pid "$NODE_PID"
    NODE_PID=
}

for r in $(seq 1 "$RUNS"); do
    measure "100k run $r" "127.97.0.$r" 2000 50 50
done
measure "1M default limits" 127.97.0.100 2000 500 500 full-store-check
