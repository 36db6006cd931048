#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1:55432 for the tests (trust auth, user kiln)
# and print the URL to export as KILN_TEST_POSTGRES_URL. Installs Debian's postgresql if needed.
set -euo pipefail
port="${KILN_PG_PORT:-55432}"
dir="${KILN_PG_DIR:-/tmp/kiln-postgres}"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
run_as_postgres() { if [[ "$(id -u)" == 0 ]]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
if [[ ! -f "$dir/PG_VERSION" ]]; then
  mkdir -p "$dir"
  [[ "$(id -u)" == 0 ]] && chown postgres "$dir"
  run_as_postgres "'$bin/initdb' -D '$dir' -A trust -U kiln >/dev/null"
fi
if ! run_as_postgres "'$bin/pg_ctl' -D '$dir' status" >/dev/null 2>&1; then
  run_as_postgres "'$bin/pg_ctl' -D '$dir' -l '$dir/server.log' -w -o \"-p $port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off\" start" >/dev/null
fi
echo "postgres://kiln@127.0.0.1:$port/postgres"
