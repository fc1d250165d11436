#!/usr/bin/env bash
# Installs (if needed) and starts a throw-away PostgreSQL server on 127.0.0.1:5432 with
# trust authentication for loopback, for the test suite. Idempotent: a server already
# answering there is left alone. Prints the URL to use.
set -euo pipefail

URL="postgres://postgres@127.0.0.1:5432/postgres"
PGDATA="${POSTDOG_PGDATA:-/tmp/postdog-pgdata}"

if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "PostgreSQL already running: $URL"
    exit 0
fi

bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
if [ -z "$bindir" ] || [ ! -x "$bindir/postgres" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
    bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi

# The server refuses to run as root; use the postgres account the package created.
id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
if [ ! -f "$PGDATA/PG_VERSION" ]; then
    rm -rf "$PGDATA"
    install -d -o postgres -m 700 "$PGDATA"
    su postgres -s /bin/sh -c "$bindir/initdb -D '$PGDATA' -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8" >/dev/null
fi
su postgres -s /bin/sh -c "$bindir/pg_ctl -D '$PGDATA' -l '$PGDATA/server.log' -w -t 60 \
    -o \"-c listen_addresses=127.0.0.1 -c port=5432 -c unix_socket_directories=/tmp -c fsync=off -c max_connections=300\" start" >/dev/null

for _ in $(seq 1 30); do
    if pg_isready -h 127.0.0.1 -p 5432 -q; then
        echo "PostgreSQL running: $URL"
        exit 0
    fi
    sleep 1
done
echo "PostgreSQL did not start; its log:" >&2
cat "$PGDATA/server.log" >&2 || true
exit 1
