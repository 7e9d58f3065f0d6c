#!/usr/bin/env bash
# Runs the whole test suite the way CI does: installs the third-party programs the tests
# talk to (python libtorrent, aria2, PostgreSQL, Chromium) when missing, builds everything
# with network access, then runs the tests inside a fresh loopback-only network namespace
# so no test can reach anything but 127.0.0.0/8 (every test binary runs even after one
# fails, so one run shows every failure).
# Falls back to a plain run only where unprivileged namespaces are unavailable.
#
# Usage: tools/test.sh [CARGO_TEST_ARGS...]          the default suite (what CI runs)
#        tools/test.sh --slow [CARGO_TEST_ARGS...]   only the heavy #[ignore]d tests (the
#            several-minute churn run with packet loss), kept out of the default run so CI
#            stays under 30 minutes; CARGO_TEST_ARGS select targets (e.g. --test churn).
set -euo pipefail
cd "$(dirname "$0")/.."

# Third-party programs the tests run for real: aria2c (a peer), PostgreSQL (the crawler's
# shared store), Chromium (the crawler's web page in a real browser). Debian packages.
missing=()
command -v aria2c >/dev/null 2>&1 || missing+=(aria2)
[ -x /usr/lib/postgresql/15/bin/postgres ] || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

# Appended to the cargo test command: nothing by default; in slow mode `--ignored` for
# the test binaries (after the caller's own `--` if they gave one, else after a new one).
tail=()
if [ "${1:-}" = "--slow" ]; then
    shift
    tail=(-- --ignored)
    for a in "$@"; do
        if [ "$a" = "--" ]; then tail=(--ignored); fi
    done
    echo "slow mode: running only the #[ignore]d tests"
fi

if ! python3 -c 'import libtorrent' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check 'libtorrent>=2,<3'
fi
python3 -c 'import libtorrent; print("python libtorrent", libtorrent.__version__)'
# tools/lt_node.py derives BEP 44 public keys with it (the bindings have no keypair call).
if ! python3 -c 'import cryptography' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check cryptography
fi

cargo test --no-run --quiet "$@"

# A throwaway PostgreSQL (Unix socket only) for the crawl's PostgreSQL tests, started here as
# the `postgres` user because it cannot start inside the tests' root-only user namespace.
pg_dir=$(mktemp -d /tmp/trackerless-pg.XXXXXX)
chmod 0755 "$pg_dir"
trap 'tools/pg-test.sh stop "$pg_dir/pg"; rm -rf "$pg_dir"' EXIT
eval "$(tools/pg-test.sh start "$pg_dir/pg")"

if command -v unshare >/dev/null 2>&1 && unshare -rn true 2>/dev/null; then
    echo "running tests in a loopback-only network namespace"
    unshare -rn sh -c 'ip link set lo up && exec cargo test --offline --no-fail-fast "$@"' \
        sh "$@" ${tail[@]+"${tail[@]}"}
else
    echo "warning: unshare is unavailable; running tests without a network namespace" >&2
    cargo test --offline --no-fail-fast "$@" ${tail[@]+"${tail[@]}"}
fi
