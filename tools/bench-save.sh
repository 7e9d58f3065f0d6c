#!/usr/bin/env bash
# Reply latency while the store is saved (issue 12, defect 11): a `dht-node --router` holding
# CONTACTS (1,000,000) contacts, saving every SAVE seconds (1) vs never during the run
# (86,400), under the same moderate closed-loop load (SOURCES 4 x CONCURRENCY 2: a latency
# probe, not a saturation test). Rounds alternate the two so background load hits both.
# Prints each run's p50/p99 and the median p99 ratio (saving / not saving); the goal is a
# ratio of at most 2.
#
# Settings (environment): ROUNDS (3), DURATION seconds (10), CONTACTS (1000000), SAVE (1),
# SOURCES (4), CONCURRENCY (2), NO_BUILD. Everything is on 127.90.0.0/16 and 127.91.0.0/16;
# the store's synthetic contacts are never sent anything (the allow-list is loopback only).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONTACTS=${CONTACTS:-1000000}
SAVE=${SAVE:-1}
SOURCES=${SOURCES:-4}
CONCURRENCY=${CONCURRENCY:-2}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
NICE=${NICE:--15}
. tools/bench-common.sh
check_nice
build --bin dht-node --bin dht-loadgen
if [ "${NO_BUILD:-0}" != 1 ]; then
    cargo build --release --bench router_store >&2
fi
machine

TMP=$(mktemp -d)
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

echo "building a store of $CONTACTS contacts" >&2
cargo bench --quiet --bench router_store -- "$CONTACTS" --out "$TMP/seed" >&2

run() {
    local interval=$1 port=$2 log=$3
    rm -rf "$TMP/data" && cp -r "$TMP/seed" "$TMP/data"
    pinned "$SERVER_CPU" "$BIN/dht-node" --router --bind "127.90.0.1:$port" \
        --bootstrap 127.90.0.2:1 --allow-net 127.0.0.0/8 --rate-limit 0 --reply-quota 0 \
        --router-capacity "$CONTACTS" --data-dir "$TMP/data" --save-interval "$interval" \
        --stats-interval 0 2> "$TMP/server.err" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        ss -Hlun "src 127.90.0.1:$port" | grep -q . && break
        sleep 0.1
    done
    pinned "$LOADGEN_CPU" "$BIN/dht-loadgen" load --target "127.90.0.1:$port" \
        --duration "$DURATION" --warmup 1 --sources "$SOURCES" --concurrency "$CONCURRENCY" \
        --mix ping,find_node,get_peers --server-pid "$SERVER_PID" > "$log" &
    wait $! || { echo "error: dht-loadgen failed" >&2; cat "$log" >&2; exit 1; }
    kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    awk -v what="$4" '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        printf "%-10s replies/s %7d  p50 %6d us  p99 %6d us\n", what, v["replies_per_s"], v["p50_us"], v["p99_us"] }' "$log"
}

p99() { awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "p99_us") print kv[2] } }' "$1"; }

ratios=()
for r in $(seq "$ROUNDS"); do
    echo "round $r"
    run 86400 $((7200 + 2 * r)) "$TMP/quiet.$r" "no saves"
    run "$SAVE" $((7201 + 2 * r)) "$TMP/save.$r" "saving"
    ratios+=("$(awk -v a="$(p99 "$TMP/save.$r")" -v b="$(p99 "$TMP/quiet.$r")" 'BEGIN { printf "%.2f", a / b }')")
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { printf "p99 ratio (saving / no saves): median %s [%s-%s] over %d rounds\n", v[int((NR + 1) / 2)], v[1], v[NR], NR }'
