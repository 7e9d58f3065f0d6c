#!/usr/bin/env bash
# Flood test (issue 6, part 4): a release dht-node with its default abuse defenses (per-IP
# rate limit 50 packets/10 s with 5-minute bans, 2 MiB/s reply quota) on 127.120.0.1 is
# flooded for DURATION seconds from SOURCES loopback addresses (127.121.0.1 onwards) at the
# load generator's maximum rate, while an honest prober pings it every 100 ms (rotating over
# 127.120.1.1-4 so each address stays under the per-IP limit) and its RSS is sampled every
# second. Passes when the honest pings' p99 stays under MAX_P99_MS, at most MAX_LOST_PCT of
# them are lost, and the RSS varies by at most MAX_RSS_SPREAD_PCT over the second half.
#
# The node runs on core NODE_CPU (0), the generator (flood thread, prober, sampler) on
# LOADGEN_CPU (1): the prober shares its core with the busy flood thread, which only makes
# its latencies worse. Everything binds to and sends to 127.120.0.0/15; the node's
# allow-list is 127.0.0.0/8 and its bootstrap router is a dead loopback port.
#
# Both run in their own sessions whose scheduler autogroup gets nice NICE (-15) where
# allowed, as in bench-serve.sh, so that compilers sharing the two cores disturb the
# measurement less.
#
# With NETNS=1 (needs root)
# the test runs in a fresh network namespace holding only its own loopback, so the kernel's
# UDP drop counters (printed at the end: datagrams dropped because a socket's receive buffer
# was full) count this test's packets alone.
#
# Settings (environment): DURATION (60), SOURCES (1000), MIX (ping,find_node,get_peers),
# MAX_P99_MS (50), MAX_LOST_PCT (1), MAX_RSS_SPREAD_PCT (5), PORT (6881), NICE (-15),
# NO_BUILD (skip cargo build), NODE_BIN (a dht-node build to test instead of
# target/release/dht-node), RATE_LIMIT / REPLY_QUOTA (passed to dht-node when set, e.g. 0
# to see the node without its defenses).
set -euo pipefail

DURATION=${DURATION:-60}
SOURCES=${SOURCES:-1000}
MIX=${MIX:-ping,find_node,get_peers}
MAX_P99_MS=${MAX_P99_MS:-50}
MAX_LOST_PCT=${MAX_LOST_PCT:-1}
MAX_RSS_SPREAD_PCT=${MAX_RSS_SPREAD_PCT:-5}
PORT=${PORT:-6881}
NODE_CPU=${NODE_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
NICE=${NICE:--15}
NODE_ADDR=127.120.0.1:$PORT

cd "$(dirname "$0")/.."
if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release --bin dht-node --bin dht-loadgen >&2
fi
if [[ -n ${NETNS:-} && -z ${FLOOD_TEST_IN_NETNS:-} ]]; then
    export FLOOD_TEST_IN_NETNS=1 NO_BUILD=1
    exec unshare -n sh -c 'ip link set lo up && exec "$0"' "$0"
fi
BIN=target/release
NODE_BIN=${NODE_BIN:-$BIN/dht-node}
for b in "$NODE_BIN" $BIN/dht-loadgen; do
    [[ -x $b ]] || { echo "error: $b is missing (build it first)" >&2; exit 1; }
done
if ss -Hlun "src $NODE_ADDR" | grep -q .; then
    echo "error: udp $NODE_ADDR is already in use" >&2
    exit 1
fi

. tools/bench-common.sh  # pinned, boost, check_nice
check_nice

TMP=$(mktemp -d)
NODE_PID=
cleanup() {
    if [[ -n $NODE_PID ]]; then
        kill "$NODE_PID" 2>/dev/null || true
        wait "$NODE_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

defenses=()
[[ -n ${RATE_LIMIT:-} ]] && defenses+=(--rate-limit "$RATE_LIMIT")
[[ -n ${REPLY_QUOTA:-} ]] && defenses+=(--reply-quota "$REPLY_QUOTA")
pinned "$NODE_CPU" "$NODE_BIN" --bind "$NODE_ADDR" --bootstrap 127.120.0.2:9 \
    --allow-net 127.0.0.0/8 --data-dir "$TMP/data" --stats-interval 10 "${defenses[@]}" \
    > "$TMP/node.out" 2> "$TMP/node.err" &
NODE_PID=$!
boost "$NODE_PID" "$(basename "$NODE_BIN" | cut -c1-15)"
for _ in $(seq 100); do
    kill -0 "$NODE_PID" 2>/dev/null || { echo "error: dht-node exited:" >&2; cat "$TMP/node.err" >&2; exit 1; }
    ss -Hlun "src $NODE_ADDR" | grep -q . && break
    sleep 0.1
done
# Let it settle so the first second of RSS is not its start-up.
sleep 2

echo "# $(date -u +%Y-%m-%dT%H:%MZ)  $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "# dht-node ${defenses[*]:-(default rate limit and reply quota)} on core $NODE_CPU; flood: $SOURCES sources, mix $MIX, ${DURATION}s, generator on core $LOADGEN_CPU"
echo "# nice $NICE (own autogroups)${FLOOD_TEST_IN_NETNS:+, private network namespace}"
udp_counter() { awk -v f="$1" '/^Udp:/ { if (!n++) for (i = 1; i <= NF; i++) col[$i] = i; else print $col[f] }' /proc/net/snmp; }
rcvbuf0=$(udp_counter RcvbufErrors)
in0=$(udp_counter InDatagrams)
pinned "$LOADGEN_CPU" $BIN/dht-loadgen flood --target "$NODE_ADDR" --duration "$DURATION" \
    --sources "$SOURCES" --mix "$MIX" --server-pid "$NODE_PID" \
    --max-p99-ms "$MAX_P99_MS" --max-lost-pct "$MAX_LOST_PCT" \
    --max-rss-spread-pct "$MAX_RSS_SPREAD_PCT" &
LOAD_PID=$!
boost "$LOAD_PID" dht-loadgen
status=0
wait "$LOAD_PID" || status=$?
kill -0 "$NODE_PID" 2>/dev/null || { echo "error: dht-node died during the flood:" >&2; cat "$TMP/node.err" >&2; exit 1; }
echo "# kernel UDP counters${FLOOD_TEST_IN_NETNS:+ (this namespace only)}: delivered $(( $(udp_counter InDatagrams) - in0 )), dropped on a full receive buffer $(( $(udp_counter RcvbufErrors) - rcvbuf0 ))"
echo "# node status lines:"
sed 's/^/#   /' "$TMP/node.out"
exit "$status"
