#!/usr/bin/env bash
# Runs a command with TEST_DATABASE_URL pointing at a PostgreSQL server:
#
#     bash scripts/with-postgres.sh cargo bench --bench store_claim
#
# If TEST_DATABASE_URL is set already, the command just runs. Otherwise a throwaway server is
# started: initdb + pg_ctl in a temporary directory on a free loopback port, as the
# unprivileged user `nobody` when run as root, and stopped and removed when the command ends.
# Without PostgreSQL installed the command runs without it (CI fails instead). Tests run the
# server without fsync; PG_DURABLE=1 keeps PostgreSQL's durable defaults (for benchmarks).
set -euo pipefail

pg_bin() {
    local found
    found=$(command -v initdb 2>/dev/null || true)
    if [ -z "$found" ]; then
        found=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    fi
    [ -n "$found" ] && dirname "$found"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $((20000 + RANDOM % 30000))
}

PG_DIR=""
stop_postgres() {
    if [ -n "$PG_DIR" ] && [ -f "$PG_DIR/data/postmaster.pid" ]; then
        as_pg "$BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    [ -n "$PG_DIR" ] && rm -rf "$PG_DIR"
}

as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u nobody -- "$@"
    else
        "$@"
    fi
}

if [ -z "${TEST_DATABASE_URL:-}" ]; then
    BIN=$(pg_bin || true)
    if [ -z "$BIN" ]; then
        echo "with-postgres.sh: PostgreSQL is not installed (no initdb); install it (Debian: apt-get install postgresql)" >&2
        echo "with-postgres.sh: or set TEST_DATABASE_URL to a server; the PostgreSQL half of the store tests would be skipped" >&2
        if [ -n "${CI:-}" ]; then exit 2; fi
    else
        PG_DIR=$(mktemp -d /tmp/provisioner-pg.XXXXXX)
        chmod 755 "$PG_DIR"
        mkdir "$PG_DIR/data" "$PG_DIR/socket"
        if [ "$(id -u)" = 0 ]; then chown nobody "$PG_DIR/data" "$PG_DIR/socket"; fi
        trap stop_postgres EXIT
        PORT=$(free_port)
        # Tests trade durability for speed; PG_DURABLE=1 keeps PostgreSQL's defaults (benchmarks).
        SPEED="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        if [ -n "${PG_DURABLE:-}" ]; then SPEED=""; fi
        as_pg "$BIN/initdb" -D "$PG_DIR/data" -U provisioner --auth=trust -E UTF8 --no-sync >"$PG_DIR/initdb.log" 2>&1 \
            || { cat "$PG_DIR/initdb.log" >&2; exit 2; }
        as_pg "$BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/socket/server.log" -w -t 60 \
            -o "-p $PORT -k $PG_DIR/socket -c listen_addresses=127.0.0.1 -c max_connections=300 $SPEED" \
            start >/dev/null \
            || { cat "$PG_DIR/socket/server.log" >&2; exit 2; }
        export TEST_DATABASE_URL="postgres://provisioner@127.0.0.1:$PORT/postgres"
        echo "with-postgres.sh: throwaway PostgreSQL on 127.0.0.1:$PORT"
    fi
fi

"$@"
