#!/usr/bin/env bash
# A real PostgreSQL 15 for the replica coordination tests: Debian's binaries
# (/usr/lib/postgresql/15/bin), a fresh cluster (initdb) in a private temp folder, on an
# ephemeral loopback port, trust authentication for one superuser `drydock`, fsync off
# (nothing here needs to outlive the run).
#
#   scripts/pg.sh start        installs postgresql-15 when missing, starts the server;
#                              prints the folder (and only that) on stdout
#   scripts/pg.sh env DIR      prints the `export` lines the tests read:
#                              DRYDOCK_TEST_PG_{HOST,PORT,USER}
#   scripts/pg.sh stop DIR     stops the server by PID and removes the folder
#   scripts/pg.sh kill DIR     kill -9 of the postmaster (a crash, for the replica soak's
#                              own cluster, never the shared one); returns once the
#                              postmaster and every process it had started are gone
#   scripts/pg.sh restart DIR  starts the server again on the same data and port
#
# PG_SYNCHRONOUS_COMMIT=on (default off) makes commits wait for the WAL write: with it a
# commit survives `kill` (a process crash; fsync stays off, the machine does not crash).
#
# The server also speaks TLS (for the tests of `database.sslmode`): a private CA signs its
# certificate (for 127.0.0.1 and localhost) and a client certificate for the role
# `drydock_cert`, which may log in only with it (pg_hba `hostssl ... cert`); the files
# are in DIR/tls, named by DRYDOCK_TEST_PG_TLS. Plain connections work as before.
#
# initdb refuses to run as root: as root, the cluster belongs to the `postgres` user the
# package creates. Fails loudly (non-zero, with the server's log tail) when anything
# cannot start.
set -euo pipefail

BIN=/usr/lib/postgresql/15/bin
say() { echo "pg.sh: $*" >&2; }
STARTING=""
die() {
  say "FATAL: $*"
  if [ -n "$STARTING" ]; then stop "$STARTING"; fi
  exit 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

install_missing() {
  [ -x "$BIN/initdb" ] && [ -x "$BIN/pg_ctl" ] && return 0
  say "installing postgresql-15"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  { $sudo apt-get update -q >&2 &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
      postgresql-15 >&2; } || die "could not install postgresql-15"
  [ -x "$BIN/initdb" ] || die "postgresql-15 installed, but $BIN/initdb is not there"
}

# A private CA in $1 and the certificates it signs: server.{pem,key} for 127.0.0.1 and
# localhost, client.{pem,key} for the role drydock_cert.
make_tls() {
  local t=$1
  mkdir -p "$t"
  (
    cd "$t"
    ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    openssl req -x509 $ec -keyout ca.key -out ca.pem -days 7 -subj "/CN=drydock test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
    sign() { # name CN extensions
      openssl req $ec -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
        -out "$1.pem" -extfile "$1.ext"
    }
    sign server localhost "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
    sign client drydock_cert "extendedKeyUsage=clientAuth"
    chmod 600 ./*.key
  ) >"$t/openssl.log" 2>&1 || { cat "$t/openssl.log" >&2; return 1; }
}

# Runs a PostgreSQL binary as the cluster's owner.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  install_missing
  local base=${TMPDIR:-/tmp} dir port
  dir=$(mktemp -d "$base/drydock-pg.XXXXXX")
  STARTING=$dir
  mkdir -p "$dir/data" "$dir/run"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres: "$dir" || die "could not give $dir to the postgres user"
  fi
  chmod 700 "$dir/data"
  make_tls "$dir/tls" || die "could not make the test certificates (openssl)"
  port=$(free_port)
  echo "$port" >"$dir/port"
  local t0=$SECONDS
  echo "-c listen_addresses=127.0.0.1 -p $port -k $dir/run -c fsync=off \
-c synchronous_commit=${PG_SYNCHRONOUS_COMMIT:-off} -c full_page_writes=off \
-c max_connections=200 -c ssl=on -c ssl_cert_file=$dir/tls/server.pem \
-c ssl_key_file=$dir/tls/server.key -c ssl_ca_file=$dir/tls/ca.pem" >"$dir/options"
  as_owner "$BIN/initdb" -D "$dir/data" -U drydock --auth=trust --encoding=UTF8 \
    --no-locale >"$dir/initdb.log" 2>&1 \
    || { tail -20 "$dir/initdb.log" >&2 || true; die "initdb failed"; }
  # TLS, and certificate login for drydock_cert (before the trust lines initdb wrote).
  {
    echo "hostssl all drydock_cert 127.0.0.1/32 cert"
    echo "host all drydock_cert 127.0.0.1/32 reject"
    cat "$dir/data/pg_hba.conf"
  } >"$dir/pg_hba.new" && mv "$dir/pg_hba.new" "$dir/data/pg_hba.conf"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres: "$dir/tls" "$dir/data/pg_hba.conf" || die "could not give the TLS files to postgres"
  fi
  run_server "$dir"
  "$BIN/psql" -h 127.0.0.1 -p "$port" -U drydock -d postgres -q \
    -c "CREATE ROLE drydock_cert LOGIN SUPERUSER" >/dev/null \
    || die "could not create the role drydock_cert"
  cat >"$dir/env" <<EOF
export DRYDOCK_TEST_PG_HOST=127.0.0.1
export DRYDOCK_TEST_PG_PORT=$port
export DRYDOCK_TEST_PG_USER=drydock
export DRYDOCK_TEST_PG_TLS=$dir/tls
EOF
  STARTING=""
  say "PostgreSQL 15 on 127.0.0.1:$port in $((SECONDS - t0)) s; state in $dir"
  echo "$dir"
}

# Starts the server of DIR on its data, port and options; fails loudly.
run_server() {
  local dir=$1 port
  port=$(cat "$dir/port")
  # -w: pg_ctl returns once the server accepts connections (or fails).
  as_owner "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
    -o "$(cat "$dir/options")" >"$dir/pg_ctl.log" 2>&1 \
    || { tail -30 "$dir/server.log" >&2 || true; die "PostgreSQL did not start on 127.0.0.1:$port"; }
  "$BIN/pg_isready" -h 127.0.0.1 -p "$port" -U drydock >/dev/null \
    || { tail -30 "$dir/server.log" >&2 || true; die "PostgreSQL does not answer on 127.0.0.1:$port"; }
}

crash() {
  local dir=${1:?usage: pg.sh kill DIR} pid children p i
  pid=$(head -1 "$dir/data/postmaster.pid" 2>/dev/null) || die "no postmaster.pid in $dir/data"
  kill -0 "$pid" 2>/dev/null || die "the postmaster ($pid) of $dir is not running"
  children=$(pgrep -P "$pid" || true)
  kill -9 "$pid"
  # The children notice the postmaster's death and exit; a new postmaster refuses to
  # start while they still hold the shared memory.
  for p in $pid $children; do
    for ((i = 0; i < 300; i++)); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$p" 2>/dev/null && die "process $p of the killed PostgreSQL did not exit"
  done
  say "killed PostgreSQL $pid (kill -9) and its $(echo "$children" | wc -w) processes are gone"
}

restart() {
  local dir=${1:?usage: pg.sh restart DIR}
  run_server "$dir"
  say "PostgreSQL restarted on 127.0.0.1:$(cat "$dir/port")"
}

stop() {
  local dir=${1:?usage: pg.sh stop DIR}
  [ -d "$dir" ] || return 0
  local pid=""
  # The postmaster's PID is the first line of postmaster.pid.
  [ -f "$dir/data/postmaster.pid" ] && pid=$(head -1 "$dir/data/postmaster.pid")
  if [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null; then
    local i
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  env) cat "${2:?usage: pg.sh env DIR}/env" ;;
  stop) stop "${2:-}" ;;
  kill) crash "${2:-}" ;;
  restart) restart "${2:-}" ;;
  *) echo "usage: $0 start | env DIR | stop DIR | kill DIR | restart DIR" >&2; exit 2 ;;
esac
