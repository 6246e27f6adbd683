# Sourced by scripts/test.sh: starts two throw-away PostgreSQL servers on
# free loopback ports for the torsion-db tests and exports how to reach them.
# The second one is only for the reconnect test, which restarts it.
# Idempotent: servers already running from an earlier run are reused.
# Run it by hand before `cargo nextest run -p torsion-db`:  source scripts/test.d/threads-db.sh

torsion_pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$torsion_pg_bin" ] || [ ! -x "$torsion_pg_bin/pg_ctl" ]; then
  echo "threads-db: PostgreSQL binaries not found (apt-get install postgresql)" >&2
  return 1 2>/dev/null || exit 1
fi
if [ "$(id -u)" = 0 ]; then
  id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  torsion_pg_user=postgres
  torsion_pg_as() { runuser -u postgres -- "$@"; }
else
  torsion_pg_user=$(id -un)
  torsion_pg_as() { "$@"; }
fi

torsion_pg_start() { # name -> sets torsion_pg_port, torsion_pg_dir
  local name=$1 base="${TMPDIR:-/tmp}/torsion-test-pg-$1"
  torsion_pg_dir="$base/data"
  if [ -f "$base/port" ] && torsion_pg_as "$torsion_pg_bin/pg_ctl" -D "$torsion_pg_dir" status >/dev/null 2>&1; then
    torsion_pg_port=$(cat "$base/port")
    return 0
  fi
  rm -rf "$base"
  mkdir -p "$base"
  chown "$torsion_pg_user" "$base"
  chmod 700 "$base"
  torsion_pg_as "$torsion_pg_bin/initdb" -D "$torsion_pg_dir" -U torsion --auth=trust -E UTF8 --no-sync >"$base/initdb.log" 2>&1 \
    || { cat "$base/initdb.log" >&2; return 1; }
  torsion_pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  echo "$torsion_pg_port" >"$base/port"
  torsion_pg_as "$torsion_pg_bin/pg_ctl" -D "$torsion_pg_dir" -l "$base/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $torsion_pg_port -c unix_socket_directories=$base -c fsync=off -c max_connections=200" \
    start >/dev/null || { cat "$base/server.log" >&2; return 1; }
  echo "threads-db: PostgreSQL ($name) on 127.0.0.1:$torsion_pg_port, data $torsion_pg_dir"
}

torsion_pg_start main
export TORSION_TEST_PG="host=127.0.0.1 port=$torsion_pg_port user=torsion dbname=postgres"
torsion_pg_start restart
export TORSION_TEST_PG_RESTART="host=127.0.0.1 port=$torsion_pg_port user=torsion dbname=postgres"
export TORSION_TEST_PG_RESTART_DATA="$torsion_pg_dir"
export TORSION_TEST_PG_CTL="$torsion_pg_bin/pg_ctl"
export TORSION_TEST_PG_USER="$torsion_pg_user"
unset -f torsion_pg_start torsion_pg_as
unset torsion_pg_bin torsion_pg_user torsion_pg_port torsion_pg_dir
