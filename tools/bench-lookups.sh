#!/usr/bin/env bash
# Benchmark (c): messages per lookup in a 2,000-node loopback testnet.
#
# Each run starts a fresh testnet, waits until every table has >= 8 entries, lets it settle
# with background traffic, then measures find_node (from probe nodes, which report their
# message counts), announce and get_peers lookups. Usage: tools/bench-lookups.sh
# Environment: RUNS (3), NODES (2000), LOOKUPS (500), SETTLE seconds (30), TRAFFIC lookups/s (20),
# KILL percent of nodes stopped just before the lookups, to measure under churn (0).
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/bench-common.sh
RUNS=${RUNS:-3}
NODES=${NODES:-2000}
LOOKUPS=${LOOKUPS:-500}
SETTLE=${SETTLE:-30}
TRAFFIC=${TRAFFIC:-20}
KILL=${KILL:-0}
build --bin dht-testnet
machine
echo "nodes $NODES, $LOOKUPS lookups of each kind per run, settle ${SETTLE}s, background ${TRAFFIC} lookups/s, ${KILL}% stopped before lookups"
for r in $(seq 1 "$RUNS"); do
    echo "--- run $r"
    RUST_LOG=error "$BIN/dht-testnet" --nodes "$NODES" --subnet 95 --lookups "$LOOKUPS" \
        --settle "$SETTLE" --traffic "$TRAFFIC" --kill "$KILL" --exit --stats-interval 0 \
        --print-addrs 0 | grep -E "^(t=|tables|stopped|probe|find_node|announce|get_peers)"
done
