#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: `tools/pg-test.sh start DIR` creates DIR (a
# fresh data directory owned by the unprivileged `postgres` user, since PostgreSQL refuses to
# run as root), initialises it with trust authentication for local connections, and starts
# the server listening ONLY on a Unix socket in DIR/sock (listen_addresses='' — no TCP, so
# nothing can reach it from the network and the tests reach it from inside their
# loopback-only user namespace through the socket file). It prints shell `export` lines for
# PGHOST/PGUSER/PGDATABASE and TRACKERLESS_TEST_PG (what the PostgreSQL tests read);
# `eval "$(tools/pg-test.sh start DIR)"`. `tools/pg-test.sh stop DIR` stops it and removes DIR.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 start|stop DIR" >&2
    exit 2
fi

bin=${PG_BIN:-}
if [ -z "$bin" ]; then
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
fi
if [ -z "$bin" ] || [ ! -x "$bin/pg_ctl" ]; then
    echo "error: PostgreSQL server binaries not found (apt-get install postgresql, or set PG_BIN)" >&2
    exit 1
fi

# Run a command as the postgres user when we are root; as ourselves otherwise.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "$cmd" in
start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir"
    fi
    # The socket directory must be traversable, and the socket writable, by the tests'
    # namespaced root, which the server sees as an unmapped "other" user.
    chmod 0755 "$dir"
    if ! as_pg test -x "$dir"; then
        echo "error: $dir is not reachable by the postgres user (make its parents world-traversable)" >&2
        exit 1
    fi
    as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    as_pg mkdir -p "$dir/sock"
    chmod 0777 "$dir/sock"
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses='' -c unix_socket_directories='$dir/sock' -c unix_socket_permissions=0777 -c fsync=on -c max_connections=200" \
        start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    echo "export PGHOST='$dir/sock' PGUSER=postgres PGDATABASE=postgres"
    echo "export TRACKERLESS_TEST_PG='postgresql:///postgres?host=$dir/sock&user=postgres'"
    ;;
stop)
    if [ -d "$dir/data" ]; then
        as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
