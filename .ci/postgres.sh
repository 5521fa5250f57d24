#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the test suite: .ci/postgres.sh start|url|stop
#
#   eval "$(.ci/postgres.sh start)"   # starts it (once) and sets POSTERM_TEST_PG
#   .ci/postgres.sh stop              # stops it and removes its files
#
# The cluster lives in $POSTERM_CI_PG_DIR (default /tmp/posterm-ci-pg), listens on 127.0.0.1
# only, on $POSTERM_CI_PG_PORT (default 55432), trusts local connections (a test server: no
# password, nothing but loopback reaches it). Running as root, the server runs as Debian's
# `postgres` user (PostgreSQL refuses root), created if missing. With no server binaries,
# Debian's `postgresql` package is installed (apt, as root). Every wait is bounded.
#
# POSTERM_CI_PG_DURABLE=1 starts it with PostgreSQL's durable defaults instead (fsync,
# synchronous_commit and full_page_writes on): what `python -m posterm.bench ledger --db` is
# measured on, in a directory and on a port of its own, e.g.
#   POSTERM_CI_PG_DIR=/tmp/posterm-bench-pg POSTERM_CI_PG_PORT=55433 POSTERM_CI_PG_DURABLE=1 .ci/postgres.sh start
set -euo pipefail
DIR=${POSTERM_CI_PG_DIR:-/tmp/posterm-ci-pg}
PORT=${POSTERM_CI_PG_PORT:-55432}
URL="postgresql://posterm@127.0.0.1:${PORT}/posterm"

bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    done
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"; return 0
    fi
    return 1
}

install_server() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "postgres.sh: no PostgreSQL server binaries and not root: install Debian's postgresql" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq >&2
    timeout 900 apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

# Run a command as the cluster's owner: ourselves, or `postgres` when we are root.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    local bin
    bin=$(bindir) || { install_server; bin=$(bindir); }
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres
    fi
    if [ -f "$DIR/data/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
        echo "export POSTERM_TEST_PG=$URL"
        return 0
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"
    chmod 0700 "$DIR"
    [ "$(id -u)" -eq 0 ] && chown postgres "$DIR"
    # C locale: the same text order as SQLite's; UTF8 for every name a test uses.
    as_owner "$bin/initdb" -D "$DIR/data" -U posterm --auth=trust --encoding=UTF8 --locale=C \
        >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; return 1; }
    # No fsync: a throwaway server on a CI disk. The kill -9 tests kill host processes, never
    # this server, so what a commit means to them (acknowledged = visible to every other
    # connection) does not depend on it; a power loss would only lose this cluster, which a
    # run makes anew. With fsync, CREATE DATABASE and every commit wait on the disk: slow.
    local durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    [ "${POSTERM_CI_PG_DURABLE:-0}" = 1 ] && durability="-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
    as_owner "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$DIR -c max_connections=300 $durability" \
        start >&2 || { cat "$DIR/server.log" >&2; return 1; }
    timeout 60 "$bin/createdb" -h 127.0.0.1 -p "$PORT" -U posterm posterm >&2
    echo "export POSTERM_TEST_PG=$URL"
}

stop() {
    local bin
    if [ -d "$DIR/data" ] && bin=$(bindir); then
        as_owner "$bin/pg_ctl" -D "$DIR/data" -w -t 60 -m fast stop >&2 || true
    fi
    rm -rf "$DIR"
}

case "${1:-}" in
    start) start ;;
    url) echo "$URL" ;;
    stop) stop ;;
    *) echo "usage: $0 start|url|stop" >&2; exit 2 ;;
esac
