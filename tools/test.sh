#!/usr/bin/env bash
# Runs the whole test suite the way CI does: installs python libtorrent (the third-party
# peer the interop tests talk to), builds everything with network access, then runs the
# tests inside a fresh loopback-only network namespace so no test can reach anything but
# 127.0.0.0/8 (every test binary runs even after one fails, so one run shows every failure).
# Falls back to a plain run only where unprivileged namespaces are unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import libtorrent' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check 'libtorrent>=2,<3'
fi
python3 -c 'import libtorrent; print("python libtorrent", libtorrent.__version__)'

cargo test --no-run --quiet "$@"

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q postgresql >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }
fi

# A throwaway PostgreSQL (Unix socket only) for the crawl's PostgreSQL tests, started here as
# the `postgres` user because it cannot start inside the tests' root-only user namespace.
pg_dir=$(mktemp -d /tmp/trackerless-pg.XXXXXX)
chmod 0755 "$pg_dir"
trap 'tools/pg-test.sh stop "$pg_dir/pg"; rm -rf "$pg_dir"' EXIT
eval "$(tools/pg-test.sh start "$pg_dir/pg")"

if command -v unshare >/dev/null 2>&1 && unshare -rn true 2>/dev/null; then
    echo "running tests in a loopback-only network namespace"
    unshare -rn sh -c 'ip link set lo up && exec cargo test --offline --no-fail-fast "$@"' sh "$@"
else
    echo "warning: unshare is unavailable; running tests without a network namespace" >&2
    cargo test --offline --no-fail-fast "$@"
fi
