#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the store tests, from Debian's packages.
# Prints `export FOUNDRY_TEST_POSTGRES=<url>` on success; prints a note and nothing to export when
# it cannot (no root for apt), and the PostgreSQL tests are then skipped (except in CI).
# Usage: eval "$(bash .ci/postgres.sh)"
set -euo pipefail
PORT=${FOUNDRY_PG_PORT:-55432}
say() { echo "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo -n "$@"; else return 1; fi; }
if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  say "installing Debian's postgresql for the store tests..."
  as_root apt-get update -qq || { say "note: no root for apt; PostgreSQL tests will be skipped"; exit 0; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
URL="postgresql+psycopg://foundry:foundry@127.0.0.1:$PORT/foundry_test"  # a password, so a wrong one can be tested
if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then echo "export FOUNDRY_TEST_POSTGRES=$URL"; exit 0; fi
DATA=$(mktemp -d /tmp/foundry-pg.XXXXXX)
RUN=()
if [ "$(id -u)" -eq 0 ]; then chown postgres "$DATA"; RUN=(runuser -u postgres --); fi  # the server refuses root
echo foundry > "$DATA/.pw" && chmod 644 "$DATA/.pw"
"${RUN[@]}" "$BIN/initdb" -D "$DATA/db" -A scram-sha-256 -U foundry --pwfile "$DATA/.pw" >/dev/null
"${RUN[@]}" "$BIN/pg_ctl" -D "$DATA/db" -l "$DATA/db/server.log" -w \
  -o "-p $PORT -k $DATA -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
PGPASSWORD=foundry "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U foundry foundry_test
say "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT (data in $DATA)"
echo "export FOUNDRY_TEST_POSTGRES=$URL"
