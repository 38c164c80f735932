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
#
# The server also speaks TLS (ssl=on) with certificates made here by `openssl`: a test CA, a
# server certificate for localhost / 127.0.0.1, a client certificate for the role
# `provisioner_cert` (which may only log in over TLS with it), and a second, unrelated CA.
# TEST_PG_SSL_DIR names the directory holding ca.pem, client.pem, client.key and other-ca.pem.
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

# Certificates for the throwaway server, in $1 (server.key ends up owned by the server's user).
make_certificates() {
    local dir=$1
    local ext="$dir/ext.cnf"
    (
        cd "$dir"
        for ca in ca other-ca; do
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3 \
                -subj "/CN=provisioner test $ca" -keyout "$ca.key" -out "$ca.pem" \
                -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        done
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$ext"
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
            -keyout server.key -out server.csr
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3 \
            -extfile "$ext" -out server.pem
        printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >"$ext"
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=provisioner_cert" \
            -keyout client.key -out client.csr
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3 \
            -extfile "$ext" -out client.pem
        chmod 600 server.key client.key
        rm -f ./*.csr ca.key other-ca.key ca.srl "$ext"
    ) >"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log" >&2; return 1; }
    if [ "$(id -u)" = 0 ]; then chown nobody "$dir/server.key"; fi
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
        SSL=""
        if command -v openssl >/dev/null; then
            mkdir "$PG_DIR/ssl"
            chmod 755 "$PG_DIR/ssl"
            make_certificates "$PG_DIR/ssl" || exit 2
            SSL="-c ssl=on -c ssl_cert_file=$PG_DIR/ssl/server.pem -c ssl_key_file=$PG_DIR/ssl/server.key -c ssl_ca_file=$PG_DIR/ssl/ca.pem"
            # The certificate role logs in only over TLS, only with a client certificate.
            hba="$PG_DIR/data/pg_hba.conf"
            { printf 'hostssl all provisioner_cert 127.0.0.1/32 cert\nhost all provisioner_cert 127.0.0.1/32 reject\n'; cat "$hba"; } >"$hba.new"
            cat "$hba.new" >"$hba" && rm -f "$hba.new"
            export TEST_PG_SSL_DIR="$PG_DIR/ssl"
        else
            echo "with-postgres.sh: no openssl; the server runs without TLS (the TLS tests are skipped, or fail in CI)" >&2
        fi
        as_pg "$BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/socket/server.log" -w -t 60 \
            -o "-p $PORT -k $PG_DIR/socket -c listen_addresses=127.0.0.1 -c max_connections=300 $SPEED $SSL" \
            start >/dev/null \
            || { cat "$PG_DIR/socket/server.log" >&2; exit 2; }
        export TEST_DATABASE_URL="postgres://provisioner@127.0.0.1:$PORT/postgres"
        echo "with-postgres.sh: throwaway PostgreSQL on 127.0.0.1:$PORT"
    fi
fi

"$@"
