#!/usr/bin/env bash
# Queries served per second by one dht-node on one core, side by side with a plain UDP echo
# server under the same loopback load (benchmark (b) of BENCHMARKS.md).
#
# Each round starts the echo server pinned to core 0, loads it from core 1, stops it, then
# does the same with a fresh dht-node; rounds alternate so background load hits both alike.
# Prints every round, then the median and spread of each column and the node/echo ratios:
#   replies/s          what the generator measured (closed loop: rate = throughput);
#   cpu                share of core 0 the server used while measured (< ~95 % means the
#                      server was not the bottleneck: the generator or other processes were);
#   per cpu-s          replies/s divided by that share: the server's cost per query, which
#                      stays comparable when the machine is busy.
#
# Settings (environment): ROUNDS (3), DURATION seconds (10), WARMUP seconds (1),
# SOURCES (8), CONCURRENCY (16, per source), MIX (ping,find_node,get_peers), PORT (7000),
# SERVER_CPU (0), LOADGEN_CPU (1), NO_BUILD (set to skip cargo build).
# Everything binds to 127.90.0.0/16 and 127.91.0.0/16 (sources); nothing leaves loopback.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
SOURCES=${SOURCES:-8}
CONCURRENCY=${CONCURRENCY:-16}
MIX=${MIX:-ping,find_node,get_peers}
PORT=${PORT:-7000}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
SERVER_IP=127.90.0.1

cd "$(dirname "$0")/.."
if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release --bin dht-node --bin dht-loadgen >&2
fi
BIN=target/release
for b in dht-node dht-loadgen; do
    [[ -x $BIN/$b ]] || { echo "error: $BIN/$b is missing (build it first)" >&2; exit 1; }
done

TMP=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

# Waits until something listens on UDP $1 (up to 10 s).
wait_bound() {
    for _ in $(seq 100); do
        if ss -Hlun "src $1" | grep -q .; then return 0; fi
        sleep 0.1
    done
    echo "error: nothing is listening on udp $1" >&2
    exit 1
}

stop_server() {
    kill "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# Runs the load against $1; prints "replies_per_s server_cpu" and keeps the full output.
run_load() {
    local addr=$1 log=$2
    taskset -c "$LOADGEN_CPU" $BIN/dht-loadgen load --target "$addr" --duration "$DURATION" \
        --warmup "$WARMUP" --sources "$SOURCES" --concurrency "$CONCURRENCY" --mix "$MIX" \
        --answer-pings --server-pid "$SERVER_PID" > "$log"
    awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                     print v["replies_per_s"], v["server_cpu"], v["timeouts"], v["loadgen_cpu"] }' "$log"
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "# load: $SOURCES sources x $CONCURRENCY outstanding, mix $MIX, ${DURATION}s after ${WARMUP}s warm-up; server on core $SERVER_CPU, generator on core $LOADGEN_CPU"
printf '%-5s | %10s %6s %11s %8s | %10s %6s %11s %8s | %7s %9s\n' round \
    echo/s cpu per-cpu-s timeouts node/s cpu per-cpu-s timeouts ratio ratio-cpu
RESULTS=$TMP/results
: > "$RESULTS"
for round in $(seq "$ROUNDS"); do
    port=$((PORT + 2 * round))
    taskset -c "$SERVER_CPU" $BIN/dht-loadgen echo --bind "$SERVER_IP:$port" 2> "$TMP/echo.err" &
    SERVER_PID=$!
    wait_bound "$SERVER_IP:$port"
    read -r e_rate e_cpu e_to e_gen < <(run_load "$SERVER_IP:$port" "$TMP/echo-$round.log")
    stop_server

    port=$((port + 1))
    mkdir -p "$TMP/node-$round"
    taskset -c "$SERVER_CPU" $BIN/dht-node --bind "$SERVER_IP:$port" --bootstrap 127.90.0.2:1 \
        --allow-net 127.0.0.0/8 --no-subnet-limit --data-dir "$TMP/node-$round" \
        --stats-interval 0 2> "$TMP/node.err" &
    SERVER_PID=$!
    wait_bound "$SERVER_IP:$port"
    read -r n_rate n_cpu n_to n_gen < <(run_load "$SERVER_IP:$port" "$TMP/node-$round.log")
    stop_server

    awk -v r="$round" -v er="$e_rate" -v ec="$e_cpu" -v et="$e_to" -v nr="$n_rate" \
        -v nc="$n_cpu" -v nt="$n_to" 'BEGIN {
        epc = er / ec; npc = nr / nc
        printf "%-5s | %10.0f %5.1f%% %11.0f %8d | %10.0f %5.1f%% %11.0f %8d | %6.1f%% %8.1f%%\n",
            r, er, 100 * ec, epc, et, nr, 100 * nc, npc, nt, 100 * nr / er, 100 * npc / epc
        print er, 100 * ec, epc, nr, 100 * nc, npc, 100 * nr / er, 100 * npc / epc >> "'"$RESULTS"'"
    }'
done

# Median and min-max of every column.
awk '{ for (i = 1; i <= NF; i++) col[i, NR] = $i; n = NR; nf = NF }
END {
    split("echo/s echo-cpu% echo-per-cpu-s node/s node-cpu% node-per-cpu-s ratio% ratio-per-cpu%", name, " ")
    printf "median [min-max] over %d rounds:\n", n
    for (i = 1; i <= nf; i++) {
        for (j = 1; j <= n; j++) v[j] = col[i, j]
        # insertion sort: n is small
        for (a = 2; a <= n; a++) { x = v[a]; b = a - 1; while (b >= 1 && v[b] > x) { v[b + 1] = v[b]; b-- } v[b + 1] = x }
        med = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        printf "  %-16s %10.1f [%.1f-%.1f]\n", name[i], med, v[1], v[n]
    }
}' "$RESULTS"
echo "full loadgen output of the last round:"
sed 's/^/  echo: /' "$TMP/echo-$ROUNDS.log"
sed 's/^/  node: /' "$TMP/node-$ROUNDS.log"
