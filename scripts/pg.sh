# shellcheck shell=bash
# Start a throw-away PostgreSQL server for the test suite (sourced by scripts/test).
# As root it runs as the `postgres` user; it installs Debian's postgresql if no binaries exist.
# Exports PERKBRIDGE_TEST_POSTGRES_URL and stops the server on exit.

find_pg_bin() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
  done
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return 0; fi
  return 1
}

start_test_postgres() {
  local pgbin
  if ! pgbin=$(find_pg_bin); then
    echo "scripts/pg.sh: PostgreSQL binaries missing; installing Debian's postgresql" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    pgbin=$(find_pg_bin) || { echo "scripts/pg.sh: no initdb after install" >&2; return 1; }
  fi
  PG_DATA_DIR=$(mktemp -d /tmp/perkbridge-pg.XXXXXX)
  local as=()
  if [ "$(id -u)" = "0" ]; then
    chown postgres:postgres "$PG_DATA_DIR"
    as=(runuser -u postgres --)
  fi
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  "${as[@]}" "$pgbin/initdb" -D "$PG_DATA_DIR/data" -A trust -U postgres -E UTF8 --no-locale >/dev/null
  "${as[@]}" "$pgbin/pg_ctl" -D "$PG_DATA_DIR/data" -l "$PG_DATA_DIR/data/server.log" -w -t 60 \
    -o "-p $port -k $PG_DATA_DIR/data -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null
  PG_STOP=("${as[@]}" "$pgbin/pg_ctl" -D "$PG_DATA_DIR/data" -m immediate -w stop)
  export PERKBRIDGE_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
  echo "scripts/pg.sh: PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
}

stop_test_postgres() {
  if [ -n "${PG_DATA_DIR:-}" ]; then
    "${PG_STOP[@]}" >/dev/null 2>&1 || true
    rm -rf "$PG_DATA_DIR"
  fi
}
