#!/usr/bin/env bash
# Push and pull MiB/s of one blob through the server on S3: drydock (the dev build of
# `registry`, as scripts/bench-s3.sh builds its example) and CNCF Distribution's
# `docker-registry` on its s3 driver, both on the same Ceph RGW, with curl as the client:
# a monolithic push (POST, then one PUT with the body), a chunked push (PATCH of
# CHUNK_MIB each, then PUT), and a pull (GET to /dev/null). Each server's peak RSS
# (VmHWM) follows. Compare with scripts/bench-s3.sh (the raw S3 rate of the same RGW).
#
#   eval "$(bash scripts/rgw.sh env "$(bash scripts/rgw.sh start)")"
#   SIZE_MIB=512 CHUNK_MIB=16 bash scripts/bench-s3-server.sh
#
# Needs DRYDOCK_TEST_S3_* (scripts/rgw.sh env DIR). Prints one line per server and case.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DRYDOCK_TEST_S3_ENDPOINT:?run scripts/rgw.sh start and eval its env first}"
SIZE_MIB=${SIZE_MIB:-512}
CHUNK_MIB=${CHUNK_MIB:-16}
TARGET="${CARGO_TARGET_DIR:-target}"
cargo build -q --bin registry >&2

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://$1/v2/" && return 0
    sleep 0.1
  done
  echo "no answer on $1" >&2
  return 1
}
s3_keys() { # the storage.s3 keys both servers read
  cat <<EOF
    region: $DRYDOCK_TEST_S3_REGION
    regionendpoint: $DRYDOCK_TEST_S3_ENDPOINT
    bucket: $DRYDOCK_TEST_S3_BUCKET
    rootdirectory: /bench-$1-$$
    accesskey: $DRYDOCK_TEST_S3_ACCESS_KEY
    secretkey: $DRYDOCK_TEST_S3_SECRET_KEY
    forcepathstyle: true
    chunksize: 10485760
EOF
}

head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/blob"
digest="sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)"
split -b "${CHUNK_MIB}M" -d -a 4 "$work/blob" "$work/chunk."

mibs() { python3 -c "import sys; print(f'{$SIZE_MIB/float(sys.argv[1]):.1f}')" "$1"; }
location() { # absolute upload URL from a response's headers
  local l
  l=$(tr -d '\r' <"$2" | awk 'tolower($1)=="location:" {print $2}')
  case "$l" in http*) echo "$l" ;; *) echo "http://$1$l" ;; esac
}
with_digest() { case "$1" in *\?*) echo "$1&digest=$digest" ;; *) echo "$1?digest=$digest" ;; esac; }

run_cases() { # host name pid
  local host=$1 name=$2 pid=$3 repo="bench/blob-$RANDOM" loc t0 t1 code off
  # monolithic
  curl -s -o /dev/null -D "$work/h" -X POST "http://$host/v2/$repo/blobs/uploads/"
  loc=$(location "$host" "$work/h")
  t0=$(date +%s.%N)
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'content-type: application/octet-stream' \
    --data-binary @"$work/blob" "$(with_digest "$loc")")
  t1=$(date +%s.%N)
  [ "$code" = 201 ] || { echo "$name monolithic push: $code" >&2; return 1; }
  echo "$name push monolithic ${SIZE_MIB} MiB: $(mibs "$(echo "$t1 - $t0" | bc)") MiB/s"
  # chunked
  repo="bench/chunked-$RANDOM"
  curl -s -o /dev/null -D "$work/h" -X POST "http://$host/v2/$repo/blobs/uploads/"
  loc=$(location "$host" "$work/h")
  off=0
  t0=$(date +%s.%N)
  for c in "$work"/chunk.*; do
    local n
    n=$(stat -c %s "$c")
    code=$(curl -s -o /dev/null -D "$work/h" -w '%{http_code}' -X PATCH \
      -H 'content-type: application/octet-stream' \
      -H "content-range: $off-$((off + n - 1))" --data-binary @"$c" "$loc")
    [ "$code" = 202 ] || { echo "$name PATCH at $off: $code" >&2; return 1; }
    loc=$(location "$host" "$work/h")
    off=$((off + n))
  done
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "$(with_digest "$loc")")
  t1=$(date +%s.%N)
  [ "$code" = 201 ] || { echo "$name chunked push: $code" >&2; return 1; }
  echo "$name push ${CHUNK_MIB} MiB chunks: $(mibs "$(echo "$t1 - $t0" | bc)") MiB/s"
  # pull
  t0=$(date +%s.%N)
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://$host/v2/$repo/blobs/$digest")
  t1=$(date +%s.%N)
  [ "$code" = 200 ] || { echo "$name pull: $code" >&2; return 1; }
  echo "$name pull: $(mibs "$(echo "$t1 - $t0" | bc)") MiB/s"
  echo "$name peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$pid/status")"
}

# drydock
host="127.0.0.1:$(free_port)"
{ printf 'storage:\n  s3:\n'; s3_keys drydock; printf 'http:\n  addr: %s\n' "$host"; } >"$work/drydock.yml"
RUST_LOG=warn "$TARGET/debug/registry" serve "$work/drydock.yml" 2>"$work/drydock.log" &
pids+=($!)
wait_port "$host"
run_cases "$host" drydock "${pids[-1]}"

# Distribution (its s3 driver panics when AWS_CA_BUNDLE is set)
host="127.0.0.1:$(free_port)"
{
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  s3:\n'
  s3_keys distribution
  printf '    secure: false\n    v4auth: true\n  redirect:\n    disable: true\n'
  printf 'http:\n  addr: %s\n  secret: bench\n' "$host"
} >"$work/dist.yml"
env -u AWS_CA_BUNDLE docker-registry serve "$work/dist.yml" >"$work/dist.log" 2>&1 &
pids+=($!)
wait_port "$host"
run_cases "$host" distribution "${pids[-1]}"
