#!/usr/bin/env bash
# Queries served per second by one dht-node on one core, side by side with a plain UDP echo
# server under the same loopback load (benchmark (b) of BENCHMARKS.md).
#
# Each round starts the echo server pinned to core 0, loads it from core 1 (dht-loadgen
# --busy-poll: the generator owns core 1 and never sleeps), stops it, then does the same with
# a fresh dht-node (and NODE2, if set); rounds interleave so background load hits all alike.
# Prints every round, then the median and spread of each column and the node/echo ratios:
#   replies/s          what the generator measured (closed loop: rate = throughput);
#   cpu                share of core 0 the server used while measured (< ~95 % means the
#                      server was not the bottleneck: the generator or other processes were);
#   per cpu-s          replies/s divided by that share: the server's cost per query, which
#                      stays comparable when the machine is busy.
#
# Settings (environment): ROUNDS (3), DURATION seconds (10), WARMUP seconds (1),
# SOURCES (8), CONCURRENCY (16, per source), MIX (ping,find_node,get_peers), PORT (7000),
# SERVER_CPU (0), LOADGEN_CPU (1), NODE2 (path of a second dht-node build to measure in
# the same rounds, e.g. a prototype), NICE (-15: server and generator each run in their own
# session, whose scheduler autogroup gets this nice value when allowed, so that compilers
# running on the same two cores disturb the measurement less; plain `nice` is not enough
# where sched_autogroup is on), NO_BUILD (set to skip cargo build).
# ROUTER=1 adds a `dht-node --router` column: the router seeds its store from a 300-node
# testnet (dht-testnet on 127.93.0.0/16, pinned to the generator's core and idle during the
# measurement) before each load, so every find_node/get_peers reply carries 16 contacts.
# LT=1 adds a `libtorrent` column: python libtorrent 2.x's DHT (tools/lt_node.py --quiet: no
# alert per query, libtorrent's per-IP DHT rate limits raised as in the interop tests), pinned
# to the server core like the others; its network thread answers the queries.
# V6=1 adds IPv6 columns measured in the same rounds: `echo6` (the echo server on
# [fd77::90:1]) and `node6` (dht-node bound to that IPv6 address alone, an IPv6-only node),
# loaded from fd77::91:1..SOURCES; the summary adds node6/node and node6/echo6 per round.
# Those addresses exist nowhere: the script builds the binaries, then re-executes itself
# under `unshare -rn` (a new user and network namespace whose only interface is its own
# `lo`) and adds them to that `lo` itself (`nodad`, no route). Everything, the IPv4 columns
# too, then runs inside the namespace. In a user namespace a negative nice is refused, so
# there every column runs at the default priority (printed as a note); run as root, the
# script uses `unshare -n` instead (a new network namespace only, same checks), which
# keeps NICE. V6_UNSHARE overrides the unshare flags (e.g. V6_UNSHARE=-rn as root).
# Everything binds to 127.90.0.0/16, 127.91.0.0/16 (sources) and 127.93.0.0/16 (testnet),
# and with V6=1 to fd77::90:1 and fd77::91:x on the namespace's `lo`; nothing leaves
# loopback.
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
NICE=${NICE:--15}
SERVER_IP=127.90.0.1
SERVER_IP6=fd77::90:1
SOURCE_BASE=127.91.0.1
SOURCE_BASE6=fd77::91:1

cd "$(dirname "$0")/.."
if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release --features testing --bin dht-node --bin dht-loadgen --bin dht-testnet >&2
fi

# V6=1: run the rest in a namespace of our own (BENCH_SERVE_OUTER_NETNS names the namespace
# we came from, so the child can check it really is in another one before touching `lo`).
if [[ -n ${V6:-} && -z ${BENCH_SERVE_OUTER_NETNS:-} ]]; then
    command -v unshare > /dev/null || { echo "error: V6=1 needs unshare (util-linux)" >&2; exit 1; }
    export BENCH_SERVE_OUTER_NETNS
    BENCH_SERVE_OUTER_NETNS=$(readlink /proc/self/ns/net)
    flags=-rn
    [[ $(id -u) == 0 ]] && flags=-n
    exec env NO_BUILD=1 unshare "${V6_UNSHARE:-$flags}" bash "$PWD/tools/bench-serve.sh" "$@"
fi
if [[ -n ${V6:-} ]]; then
    if [[ $(readlink /proc/self/ns/net) == "$BENCH_SERVE_OUTER_NETNS" ]]; then
        echo "error: not in a network namespace of our own; refusing to add addresses" >&2
        exit 1
    fi
    # Only `lo` exists here; it starts down.
    ip link set lo up
    ip -6 addr add "$SERVER_IP6/128" dev lo nodad
    for i in $(seq 0 $((SOURCES - 1))); do
        ip -6 addr add "fd77::91:$(printf '%x' $((0x${SOURCE_BASE6##*:} + i)))/128" dev lo nodad
    done
    echo "# V6: own network namespace ($(readlink /proc/self/ns/net), uid $(id -u) inside), lo up with $SERVER_IP6 and $SOURCES source addresses from $SOURCE_BASE6"
fi
BIN=target/release
for b in dht-node dht-loadgen; do
    [[ -x $BIN/$b ]] || { echo "error: $BIN/$b is missing (build it first)" >&2; exit 1; }
done

. tools/bench-common.sh  # pinned, boost, check_nice
check_nice

TMP=$(mktemp -d)
SERVER_PID=
LOAD_PID=
TESTNET_PID=
cleanup() {
    for pid in $LOAD_PID $SERVER_PID $TESTNET_PID; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Fails if something already listens on UDP $1 (a leftover server would be measured instead).
check_free() {
    if ss -Hlun "src $1" | grep -q .; then
        echo "error: udp $1 is already in use" >&2
        exit 1
    fi
}

# Waits until the server we started listens on UDP $1 (up to 10 s).
wait_bound() {
    for _ in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "error: the server for $1 exited" >&2; exit 1; }
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

# Runs the load against $1 from sources starting at $3, writing the loadgen's output to $2.
run_load() {
    local addr=$1 log=$2 sources=$3
    pinned "$LOADGEN_CPU" $BIN/dht-loadgen load --target "$addr" --source-base "$sources" \
        --duration "$DURATION" \
        --warmup "$WARMUP" --sources "$SOURCES" --concurrency "$CONCURRENCY" --mix "$MIX" \
        --answer-pings --busy-poll --server-pid "$SERVER_PID" > "$log" &
    LOAD_PID=$!
    boost "$LOAD_PID" dht-loadgen
    wait "$LOAD_PID" || { echo "error: dht-loadgen failed" >&2; cat "$log" >&2; exit 1; }
    LOAD_PID=
}

# Prints "replies_per_s server_cpu timeouts loadgen_cpu" from a loadgen log.
result_of() {
    awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                     print v["replies_per_s"], v["server_cpu"], v["timeouts"], v["loadgen_cpu"] }' "$1"
}

# The address server kind $1 listens on, port $2 (IPv6 for the kinds ending in 6).
addr_of() {
    if [[ $1 == *6 ]]; then echo "[$SERVER_IP6]:$2"; else echo "$SERVER_IP:$2"; fi
}

# Starts server $1 (echo, node, node2, echo6, node6, ...) on port $2 and leaves its pid in
# SERVER_PID.
start_server() {
    local kind=$1 port=$2 addr bin=$BIN/dht-loadgen
    addr=$(addr_of "$kind" "$port")
    check_free "$addr"
    case $kind in
        echo | echo6)
            pinned "$SERVER_CPU" "$bin" echo --bind "$addr" 2> "$TMP/$kind.err" &
            ;;
        node | node2)
            bin=$BIN/dht-node
            [[ $kind == node2 ]] && bin=$NODE2
            rm -rf "$TMP/data-$kind"
            mkdir -p "$TMP/data-$kind"
            pinned "$SERVER_CPU" "$bin" --bind "$addr" --bootstrap 127.90.0.2:1 \
                --allow-net 127.0.0.0/8 --no-subnet-limit --rate-limit 0 --reply-quota 0 \
                --data-dir "$TMP/data-$kind" \
                --stats-interval 0 2> "$TMP/$kind.err" &
            ;;
        node6)
            # IPv6 only: its IPv6 socket is its only one.
            bin=$BIN/dht-node
            rm -rf "$TMP/data-$kind"
            mkdir -p "$TMP/data-$kind"
            pinned "$SERVER_CPU" "$bin" --bind "$addr" --bootstrap "[fd77::90:2]:1" \
                --allow-net fd77::/16 --no-subnet-limit --rate-limit 0 --reply-quota 0 \
                --data-dir "$TMP/data-$kind" \
                --stats-interval 0 2> "$TMP/$kind.err" &
            ;;
        libtorrent)
            bin=python3
            # lt_node.py quits when its stdin closes; the script holds the fifo open.
            [[ -p $TMP/lt.in ]] || { mkfifo "$TMP/lt.in"; exec 3<> "$TMP/lt.in"; }
            pinned "$SERVER_CPU" python3 tools/lt_node.py --bind "$addr" --quiet \
                < "$TMP/lt.in" > "$TMP/$kind.out" 2> "$TMP/$kind.err" &
            ;;
        router)
            bin=$BIN/dht-node
            rm -rf "$TMP/data-$kind"
            mkdir -p "$TMP/data-$kind"
            pinned "$SERVER_CPU" "$bin" --router --router-verify-delay 0 --bind "$addr" \
                --bootstrap "$TESTNET_ADDR" --allow-net 127.0.0.0/8 --rate-limit 0 --reply-quota 0 \
                --data-dir "$TMP/data-$kind" --stats-interval 1 \
                > "$TMP/$kind.out" 2> "$TMP/$kind.err" &
            ;;
    esac
    SERVER_PID=$!
    wait_bound "$addr"
    # /proc/PID/comm holds the first 15 bytes of the binary's name.
    boost "$SERVER_PID" "$(basename "$bin" | cut -c1-15)"
}

SERVERS="echo node"
[[ -n ${V6:-} ]] && SERVERS="$SERVERS echo6 node6"
if [[ -n ${ROUTER:-} ]]; then
    SERVERS="$SERVERS router"
    $BIN/dht-testnet --nodes 300 --subnet 93 --stats-interval 0 --print-addrs 1 \
        > "$TMP/testnet.out" 2> "$TMP/testnet.err" &
    TESTNET_PID=$!
    for _ in $(seq 300); do
        TESTNET_ADDR=$(grep -m1 -oE '127\.93\.[0-9]+\.[0-9]+:[0-9]+' "$TMP/testnet.out" || true)
        [[ -n $TESTNET_ADDR ]] && grep -q -i ready "$TMP/testnet.out" && break
        sleep 0.2
    done
    [[ -n ${TESTNET_ADDR:-} ]] || { echo "error: the testnet did not start" >&2; cat "$TMP/testnet.err" >&2; exit 1; }
    taskset -p -c "$LOADGEN_CPU" "$TESTNET_PID" > /dev/null
    echo "# router seeded from a 300-node testnet at $TESTNET_ADDR"
fi
if [[ -n ${NODE2:-} ]]; then
    [[ -x $NODE2 ]] || { echo "error: NODE2=$NODE2 is not an executable" >&2; exit 1; }
    SERVERS="$SERVERS node2"
fi
if [[ -n ${LT:-} ]]; then
    python3 -c 'import libtorrent' 2> /dev/null || { echo "error: LT=1 needs python libtorrent (pip install libtorrent)" >&2; exit 1; }
    SERVERS="$SERVERS libtorrent"
    echo "# libtorrent $(python3 -c 'import libtorrent; print(libtorrent.__version__)')"
fi

echo "# $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "# load: $SOURCES sources x $CONCURRENCY outstanding, mix $MIX, ${DURATION}s after ${WARMUP}s warm-up; server on core $SERVER_CPU, generator on core $LOADGEN_CPU, nice $NICE"
[[ -n ${NODE2:-} ]] && echo "# node2 = $NODE2"
printf '%-5s %-10s | %10s %6s %11s %8s %8s | %7s %9s\n' round server \
    replies/s cpu per-cpu-s timeouts gen-cpu ratio ratio-cpu
RESULTS=$TMP/results
: > "$RESULTS"
port=$PORT
for round in $(seq "$ROUNDS"); do
    e_rate=
    e6_rate=
    for kind in $SERVERS; do
        port=$((port + 1))
        start_server "$kind" "$port"
        if [[ $kind == router ]]; then
            # Wait until the router has verified most of the testnet.
            for _ in $(seq 300); do
                stored=$({ grep -oE 'router stored [0-9]+' "$TMP/router.out" || true; } | tail -1 | awk '{print $3}')
                [[ ${stored:-0} -ge 250 ]] && break
                sleep 0.1
            done
        fi
        sources=$SOURCE_BASE
        [[ $kind == *6 ]] && sources=$SOURCE_BASE6
        run_load "$(addr_of "$kind" "$port")" "$TMP/$kind-$round.log" "$sources"
        read -r rate cpu timeouts gen < <(result_of "$TMP/$kind-$round.log")
        stop_server
        if [[ $kind == echo ]]; then e_rate=$rate; e_cpu=$cpu; fi
        if [[ $kind == echo6 ]]; then e6_rate=$rate; e6_cpu=$cpu; fi
        # The IPv6 columns' ratios are to the IPv6 echo server.
        ref_rate=$e_rate ref_cpu=$e_cpu
        [[ $kind == *6 ]] && { ref_rate=$e6_rate; ref_cpu=$e6_cpu; }
        awk -v r="$round" -v k="$kind" -v rate="$rate" -v cpu="$cpu" -v to="$timeouts" \
            -v gen="$gen" -v er="$ref_rate" -v ec="$ref_cpu" 'BEGIN {
            if (cpu <= 0 || ec <= 0) { print "error: no server cpu time measured" > "/dev/stderr"; exit 1 }
            pc = rate / cpu; epc = er / ec
            printf "%-5s %-10s | %10.0f %5.1f%% %11.0f %8d %7.1f%% | %6.1f%% %8.1f%%\n",
                r, k, rate, 100 * cpu, pc, to, 100 * gen, 100 * rate / er, 100 * pc / epc
            print k, rate, 100 * cpu, pc, 100 * rate / er, 100 * pc / epc >> "'"$RESULTS"'"
        }'
    done
done

# Median and min-max of every column, per server.
echo "median [min-max] over $ROUNDS rounds:"
for kind in $SERVERS; do
    awk -v k="$kind" '$1 == k { for (i = 2; i <= NF; i++) col[i, ++n[i]] = $i; nf = NF }
    END {
        split("- replies/s cpu% per-cpu-s ratio% ratio-cpu%", name, " ")
        line = sprintf("  %-10s", k)
        for (i = 2; i <= nf; i++) {
            m = n[i]
            for (j = 1; j <= m; j++) v[j] = col[i, j]
            for (a = 2; a <= m; a++) { x = v[a]; b = a - 1; while (b >= 1 && v[b] > x) { v[b + 1] = v[b]; b-- } v[b + 1] = x }
            med = (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
            line = line sprintf("  %s %.1f [%.1f-%.1f]", name[i], med, v[1], v[m])
        }
        print line
    }' "$RESULTS"
done
if [[ -n ${V6:-} ]]; then
    # Per round: node6 / node and echo6 / echo (replies/s and per cpu-s); then medians.
    awk '{ rate[$1, ++n[$1]] = $2; pc[$1, n[$1]] = $4 }
    function median(a, m,   j, b, x, v) {
        for (j = 1; j <= m; j++) v[j] = a[j]
        for (j = 2; j <= m; j++) { x = v[j]; b = j - 1; while (b >= 1 && v[b] > x) { v[b + 1] = v[b]; b-- } v[b + 1] = x }
        return sprintf("%.1f%% [%.1f-%.1f]", (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2, v[1], v[m])
    }
    END {
        m = n["node6"]
        for (i = 1; i <= m; i++) {
            nr[i] = 100 * rate["node6", i] / rate["node", i]; np[i] = 100 * pc["node6", i] / pc["node", i]
            er[i] = 100 * rate["echo6", i] / rate["echo", i]; ep[i] = 100 * pc["echo6", i] / pc["echo", i]
            printf "  round %d: node6/node %.1f%% (per cpu-s %.1f%%), echo6/echo %.1f%% (per cpu-s %.1f%%)\n", i, nr[i], np[i], er[i], ep[i]
        }
        print "IPv6 vs IPv4, median [min-max] over " m " rounds:"
        print "  node6/node   replies/s " median(nr, m) "  per-cpu-s " median(np, m)
        print "  echo6/echo   replies/s " median(er, m) "  per-cpu-s " median(ep, m)
    }' "$RESULTS"
    echo "  (node6/echo6: the ratio% columns of node6 above)"
fi
echo "full loadgen output of the last round:"
for kind in $SERVERS; do
    sed "s/^/  $kind: /" "$TMP/$kind-$ROUNDS.log"
done
