#!/usr/bin/env bash
# A real S3 server for the tests: Ceph's RADOS Gateway from Debian (radosgw, ceph-mon,
# ceph-osd) with one monitor and one memstore OSD, no cephx, on loopback, everything
# (config, data, logs, sockets, pid files) under one private temp folder.
#
#   scripts/rgw.sh start        installs the packages when missing, starts the cluster,
#                               creates a user and a bucket; prints the folder (and only
#                               that) on stdout
#   scripts/rgw.sh env DIR      prints the `export` lines the tests read:
#                               DRYDOCK_TEST_S3_{ENDPOINT,REGION,BUCKET,ACCESS_KEY,SECRET_KEY}
#   scripts/rgw.sh stop DIR     stops the daemons by PID and removes the folder
#
# Fails loudly (non-zero, with the daemon's log tail) when anything cannot start.
set -euo pipefail

say() { echo "rgw.sh: $*" >&2; }
# A start that fails half way stops what it started (by PID) before it exits.
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
  local missing=()
  for pair in radosgw:radosgw radosgw-admin:radosgw ceph-mon:ceph-mon ceph-osd:ceph-osd \
              monmaptool:ceph-mon ceph:ceph-common; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  # shellcheck disable=SC2207
  local pkgs=($(printf '%s\n' "${missing[@]}" | sort -u))
  say "installing ${pkgs[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  { $sudo apt-get update -q >&2 &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
      "${pkgs[@]}" >&2; } || die "could not install ${pkgs[*]}"
}

# Waits up to $2 seconds for command $1 to succeed.
wait_for() {
  local cmd=$1 secs=$2 i
  for ((i = 0; i < secs * 5; i++)); do
    if eval "$cmd" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  return 1
}

start() {
  install_missing
  local dir mon_port rgw_port fsid
  # On tmpfs when there is room: the monitor refuses to start on a nearly full disk,
  # and nothing here needs to outlive the run.
  local base=${TMPDIR:-/tmp}
  if [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 1048576 ]; then
    base=/dev/shm
  fi
  dir=$(mktemp -d "$base/drydock-rgw.XXXXXX")
  STARTING=$dir
  mkdir -p "$dir"/{run,log,mon,osd0,rgw}
  mon_port=$(free_port)
  rgw_port=$(free_port)
  fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
  local conf=$dir/ceph.conf
  cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = false
run dir = $dir/run
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
pid file = $dir/run/\$name.pid
keyring = $dir/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
ms bind msgr1 = false
# Without cephx there is no session key, so the default "secure" mode between radosgw
# and the monitor cannot be had: radosgw would hang in authentication.
ms mon client mode = crc
ms client mode = crc
ms mon service mode = crc
ms service mode = crc
ms cluster mode = crc
ms mon cluster mode = crc
[mon]
mon data = $dir/mon
[osd]
osd data = $dir/osd0
osd objectstore = memstore
memstore device bytes = 8589934592
osd max object size = 134217728
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
# Deleted objects' data goes at once (RGW's default waits two hours), or the memstore
# OSD fills up over a test run and every write hangs.
rgw gc obj min wait = 0
rgw gc processor period = 5
rgw gc processor max time = 5
rgw data = $dir/rgw
rgw dns name = localhost
EOF
  : >"$dir/keyring"
  echo "$rgw_port" >"$dir/port"
  local t0=$SECONDS
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null \
    || die "monmaptool failed"
  ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" >"$dir/log/mkfs-mon.log" 2>&1 \
    || { tail -20 "$dir/log/mkfs-mon.log" >&2 || true; die "ceph-mon --mkfs failed"; }
  timeout 60 ceph-mon -c "$conf" -i a 2>>"$dir/log/daemons.err" || die "ceph-mon did not start"
  wait_for "timeout 5 ceph -c '$conf' mon stat" 30 \
    || { tail -20 "$dir/log/mon.a.log" >&2 || true; die "the monitor does not answer"; }
  local id
  id=$(timeout 20 ceph -c "$conf" osd create 2>>"$dir/log/daemons.err") || die "ceph osd create failed"
  ceph-osd -c "$conf" -i "$id" --mkfs >"$dir/log/mkfs-osd.log" 2>&1 \
    || { tail -20 "$dir/log/mkfs-osd.log" >&2 || true; die "ceph-osd --mkfs failed"; }
  timeout 60 ceph-osd -c "$conf" -i "$id" 2>>"$dir/log/daemons.err" || die "ceph-osd did not start"
  wait_for "timeout 5 ceph -c '$conf' osd stat -f json | grep -q '\"num_up_osds\":1'" 60 \
    || { tail -20 "$dir/log/osd.$id.log" >&2 || true; die "the OSD did not come up"; }
  timeout 60 radosgw -c "$conf" -n client.rgw 2>>"$dir/log/daemons.err" \
    || { tail -30 "$dir/log/client.rgw.log" >&2 || true; die "radosgw did not start"; }
  wait_for "curl -sf -o /dev/null http://127.0.0.1:$rgw_port/" 90 \
    || { tail -30 "$dir/log/client.rgw.log" >&2 || true; die "radosgw does not answer on 127.0.0.1:$rgw_port"; }
  local ak sk
  ak=$(python3 -c 'import secrets; print("DD" + secrets.token_hex(9).upper())')
  sk=$(python3 -c 'import secrets; print(secrets.token_hex(20))')
  radosgw-admin -c "$conf" -n client.rgw user create --uid drydock --display-name drydock \
    --access-key "$ak" --secret "$sk" >"$dir/log/user.json" 2>"$dir/log/user.err" \
    || { cat "$dir/log/user.err" >&2 || true; die "radosgw-admin user create failed"; }
  local bucket=drydock-test
  # curl signs x-amz-content-sha256 only when given (RGW requires it): the empty body's.
  curl -sf -X PUT --user "$ak:$sk" --aws-sigv4 "aws:amz:default:s3" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    "http://127.0.0.1:$rgw_port/$bucket" >"$dir/log/bucket.log" 2>&1 \
    || { cat "$dir/log/bucket.log" >&2 || true; die "could not create bucket $bucket"; }
  cat >"$dir/env" <<EOF
export DRYDOCK_TEST_S3_ENDPOINT=http://127.0.0.1:$rgw_port
export DRYDOCK_TEST_S3_REGION=default
export DRYDOCK_TEST_S3_BUCKET=$bucket
export DRYDOCK_TEST_S3_ACCESS_KEY=$ak
export DRYDOCK_TEST_S3_SECRET_KEY=$sk
EOF
  chmod 600 "$dir/env"
  STARTING=""
  say "RGW on 127.0.0.1:$rgw_port (bucket $bucket) in $((SECONDS - t0)) s; state in $dir"
  echo "$dir"
}

stop() {
  local dir=${1:?usage: rgw.sh stop DIR}
  [ -d "$dir" ] || return 0
  local f pid pids=()
  for f in "$dir"/run/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    if kill "$pid" 2>/dev/null; then pids+=("$pid"); fi
  done
  local i
  for ((i = 0; i < 50; i++)); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  env) cat "${2:?usage: rgw.sh env DIR}/env" ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 start | env DIR | stop DIR" >&2; exit 2 ;;
esac
