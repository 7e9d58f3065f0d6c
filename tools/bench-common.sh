# Shared helpers for the tools/bench-*.sh benchmarks and tools/flood-test.sh (sourced by
# bash, not run).
# Everything binds and sends on 127.0.0.0/8 only: testnet on 127.95.x.y, filler sources on
# 127.96.x.y, nodes under test on 127.97/127.98.x.y.

# BIN: where the binaries are (e.g. a copy built from a prototype branch); NO_BUILD=1 skips
# the cargo build.
BIN=${BIN:-target/release}

build() {
    if [ "${NO_BUILD:-0}" != 1 ]; then
        cargo build --release --features testing "$@" >&2
    fi
}

# Prints the machine line recorded with every result.
machine() {
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/ {print $2}') GB RAM, $(uname -sr)"
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), checkout $(git rev-parse --short HEAD) ($(git rev-parse --abbrev-ref HEAD)), binaries $BIN"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# start_testnet NODES LOGFILE [extra dht-testnet flags...]: starts a testnet in the background
# and waits until its tables are ready. Sets TESTNET_PID.
start_testnet() {
    local nodes=$1 log=$2
    shift 2
    RUST_LOG=error "$BIN/dht-testnet" --nodes "$nodes" --subnet 95 --print-addrs 0 "$@" >"$log" 2>&1 &
    TESTNET_PID=$!
    for _ in $(seq 1 600); do
        if grep -q "tables \(ready\|not ready\)" "$log"; then
            grep "tables" "$log" >&2
            return 0
        fi
        if ! kill -0 "$TESTNET_PID" 2>/dev/null; then
            echo "dht-testnet exited:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.5
    done
    echo "dht-testnet did not get ready" >&2
    return 1
}

# stop_pid PID: SIGTERM (dht-node persists on it) / SIGINT, then waits for the process.
stop_pid() {
    local pid=$1 sig=${2:-TERM}
    if kill -0 "$pid" 2>/dev/null; then
        kill "-$sig" "$pid" 2>/dev/null || true
        for _ in $(seq 1 200); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.1
        done
        echo "process $pid did not stop; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

# Priority for pinned measurements: nice alone does nothing where sched_autogroup is on
# (each session is one scheduling entity), so `pinned` starts a command in its own session
# and `boost` gives that session's autogroup the nice value NICE, which `check_nice` first
# lowers to 0 where the caller may not use it.
check_nice() {
    # GNU nice only warns when it may not lower the niceness (e.g. in a user namespace) and
    # runs the command anyway, so compare the niceness the command really got.
    if [[ $(nice -n "$NICE" nice 2>/dev/null) != $(($(nice) + NICE)) ]]; then
        echo "note: cannot run at nice $NICE; using the default priority" >&2
        NICE=0
    fi
}

# pinned CPU CMD...: runs CMD pinned to a core in a new session, replacing the calling
# (sub)shell so that `pinned ... &` leaves the command's own pid in $!.
pinned() {
    local cpu=$1
    shift
    exec setsid nice -n "$NICE" taskset -c "$cpu" "$@"
}

# boost PID COMM: gives process PID's autogroup (its own session) the chosen priority, where
# possible, once it runs binary COMM (before that, setsid may not have run yet and the write
# would land on the calling script's own autogroup).
boost() {
    for _ in $(seq 200); do
        [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]] && break
        sleep 0.01
    done
    if [[ -w /proc/$1/autogroup ]]; then
        echo "$NICE" > "/proc/$1/autogroup" 2>/dev/null || true
    fi
}
