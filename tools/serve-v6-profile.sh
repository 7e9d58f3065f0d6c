#!/usr/bin/env bash
# Where an IPv6 node's serving time goes, against an IPv4 node's (issue 13, "Queries served
# per second, IPv6 vs IPv4" in BENCHMARKS.md). Two modes:
#
#   tools/serve-v6-profile.sh perf   one IPv4-only and one IPv6-only dht-node, each under
#                                    the bench-serve.sh load while `perf record` samples it;
#                                    prints replies/s, the kernel / user split, and the
#                                    symbols whose share differs most between the families.
#   tools/serve-v6-profile.sh pair   one dual-stack dht-node (and NODE2's, if set) stays up
#                                    while the load alternates between its IPv4 and IPv6
#                                    sockets every D seconds for ROUNDS rounds; prints each
#                                    round and the median IPv6 / IPv4 ratio. The same process
#                                    serves both families, so start-up effects (memory
#                                    layout, port hashing) cancel out of the ratio.
#
# Settings: ROUNDS (10), D seconds per load (3), NODE2 (a second dht-node build, e.g. the
# one before a change: both are measured in the same rounds), NO_BUILD.
# Like `V6=1 tools/bench-serve.sh`, it re-executes itself in a network namespace of its own
# (`unshare -n` as root, else `unshare -rn`), brings that namespace's `lo` up and adds the
# fd77:: test addresses to it: nothing leaves loopback. `perf` needs perf(1) and a
# perf_event_paranoid that lets it sample (run as root).
set -euo pipefail

MODE=${1:-}
[[ $MODE == perf || $MODE == pair ]] || { echo "usage: $0 perf|pair" >&2; exit 2; }
ROUNDS=${ROUNDS:-10}
D=${D:-3}
cd "$(dirname "$0")/.."
if [[ -z ${NO_BUILD:-} ]]; then
    cargo build --release --features testing --bin dht-node --bin dht-loadgen >&2
fi
if [[ -z ${SERVE_V6_PROFILE_OUTER_NETNS:-} ]]; then
    command -v unshare > /dev/null || { echo "error: needs unshare (util-linux)" >&2; exit 1; }
    export SERVE_V6_PROFILE_OUTER_NETNS
    SERVE_V6_PROFILE_OUTER_NETNS=$(readlink /proc/self/ns/net)
    flags=-rn
    [[ $(id -u) == 0 ]] && flags=-n
    exec env NO_BUILD=1 unshare "$flags" bash "$PWD/tools/serve-v6-profile.sh" "$@"
fi
if [[ $(readlink /proc/self/ns/net) == "$SERVE_V6_PROFILE_OUTER_NETNS" ]]; then
    echo "error: not in a network namespace of our own; refusing to add addresses" >&2
    exit 1
fi
ip link set lo up
ip -6 addr add fd77::90:1/128 dev lo nodad
for i in 1 2 3 4 5 6 7 8; do ip -6 addr add "fd77::91:$i/128" dev lo nodad; done

BIN=target/release
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
    wait 2> /dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

# start_node NAME BIN PORT BINDS...: a node pinned to core 0; its pid goes to PID_<NAME>.
start_node() {
    local name=$1 bin=$2 port=$3
    shift 3
    local args=()
    for b in "$@"; do args+=(--bind "${b/PORT/$port}"); done
    mkdir -p "$TMP/$name"
    taskset -c 0 "$bin" "${args[@]}" --bootstrap 127.90.0.2:1 --bootstrap "[fd77::90:2]:1" \
        --allow-net 127.0.0.0/8 --allow-net fd77::/16 --no-subnet-limit --rate-limit 0 \
        --reply-quota 0 --data-dir "$TMP/$name" --stats-interval 0 2> "$TMP/$name.err" &
    PIDS+=($!)
    printf -v "PID_$name" %s $!
    sleep 1
}

# load TARGET SOURCE_BASE PID SECONDS: prints the replies per second.
load() {
    taskset -c 1 $BIN/dht-loadgen load --target "$1" --source-base "$2" --duration "$4" \
        --warmup 0.5 --sources 8 --concurrency 16 --mix ping,find_node,get_peers \
        --answer-pings --busy-poll --server-pid "$3" |
        awk '/^RESULT/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "replies_per_s") print kv[2] } }'
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), checkout $(git rev-parse --short HEAD)"
if [[ $MODE == perf ]]; then
    command -v perf > /dev/null || { echo "error: perf mode needs perf(1)" >&2; exit 1; }
    start_node v4 $BIN/dht-node 7400 "127.90.0.1:PORT"
    start_node v6 $BIN/dht-node 7401 "[fd77::90:1]:PORT"
    for fam in v4 v6; do
        if [[ $fam == v4 ]]; then t=127.90.0.1:7400 s=127.91.0.1 pid=$PID_v4; else t="[fd77::90:1]:7401" s=fd77::91:1 pid=$PID_v6; fi
        load "$t" "$s" "$pid" $((D + 3)) > "$TMP/rate-$fam" &
        lp=$!
        sleep 1.5
        perf record -F 2999 -g -o "$TMP/perf-$fam.data" -p "$pid" -- sleep "$D" > /dev/null 2>&1
        wait $lp
        perf report -i "$TMP/perf-$fam.data" --no-children --sort dso --stdio -g none 2> /dev/null |
            awk '/%/ && !/^#/ { print $1, $2 }' > "$TMP/dso-$fam"
        perf report -i "$TMP/perf-$fam.data" --no-children --sort sym --stdio -g none 2> /dev/null |
            awk '/%/ && !/^#/ { v = $1; sub("%", "", v); print $3, v }' | sort > "$TMP/sym-$fam"
        echo "$fam: $(cat "$TMP/rate-$fam") replies/s under perf; share of the node's CPU by object:"
        head -4 "$TMP/dso-$fam" | sed 's/^/    /'
    done
    echo "symbols whose share of the node's CPU differs most (percentage points, IPv6 minus IPv4):"
    join -a1 -a2 -e 0 -o 0,1.2,2.2 "$TMP/sym-v4" "$TMP/sym-v6" |
        awk '{ printf "%+6.2f  %-45s v4 %5.2f%%  v6 %5.2f%%\n", $3 - $2, $1, $2, $3 }' |
        sort -g | { head -12; echo "    ..."; tail -16; }
    exit 0
fi

# pair
start_node a $BIN/dht-node 7410 "127.90.0.1:PORT" "[fd77::90:1]:PORT"
NODES=(a)
if [[ -n ${NODE2:-} ]]; then
    [[ -x $NODE2 ]] || { echo "error: NODE2=$NODE2 is not an executable" >&2; exit 1; }
    start_node b "$NODE2" 7411 "127.90.0.1:PORT" "[fd77::90:1]:PORT"
    NODES+=(b)
    echo "# a = $BIN/dht-node, b = $NODE2"
fi
echo "# $ROUNDS rounds; each loads every node over IPv4 then IPv6 for ${D}s (after 0.5 s warm-up)"
printf '%-5s %-4s %10s %10s %8s\n' round node ipv4/s ipv6/s ipv6/ipv4
for r in $(seq "$ROUNDS"); do
    for n in "${NODES[@]}"; do
        port=7410
        [[ $n == b ]] && port=7411
        pid_var=PID_$n
        v4=$(load "127.90.0.1:$port" 127.91.0.1 "${!pid_var}" "$D")
        v6=$(load "[fd77::90:1]:$port" fd77::91:1 "${!pid_var}" "$D")
        printf '%-5s %-4s %10s %10s %7.1f%%\n' "$r" "$n" "$v4" "$v6" "$(echo "100 * $v6 / $v4" | bc -l)"
    done
done | tee "$TMP/pairs"
for n in "${NODES[@]}"; do
    awk -v n="$n" '$2 == n { sub("%", "", $5); print $5 }' "$TMP/pairs" | sort -g |
        awk -v n="$n" '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "node %s: IPv6 / IPv4 median %.1f%% [%.1f-%.1f] over %d rounds\n", n, m, v[1], v[NR], NR }'
done
