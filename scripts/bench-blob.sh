#!/usr/bin/env bash
# Big-blob throughput and memory: drydock against CNCF Distribution (Debian's
# docker-registry), on this machine, over loopback.
#
# For each registry: push one blob of random data (POST a session, then PUT ?digest=
# with the whole body, streamed by curl -T; Distribution 2.8 answers a monolithic
# POST ?digest= with a session and drops the body, so both get the same two requests),
# then pull it (GET to /dev/null), while a sampler reads the
# server's VmRSS and VmHWM from /proc/PID/status every 100 ms. References: openssl
# hashing the file, and dd copying it with fdatasync (what the disk and the hash cost).
#
#   bash scripts/bench-blob.sh            # a table
#   bash scripts/bench-blob.sh --json     # one JSON object on stdout
#   SIZE_MIB=256 bash scripts/bench-blob.sh
#
# Environment: SIZE_MIB (default 2048), TMPDIR (where the file and both roots go: the
# disk under test), DOCKER_REGISTRY (default /usr/bin/docker-registry).
# Progress goes to stderr. Everything it creates is removed on exit.
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-2048}
DOCKER_REGISTRY=${DOCKER_REGISTRY:-/usr/bin/docker-registry}
JSON=0
for arg in "$@"; do
  case $arg in
    --json) JSON=1 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || { echo "SIZE_MIB must be a positive integer" >&2; exit 2; }

cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { echo "== $*" >&2; }
die() { echo "FATAL: $*" >&2; exit 1; }

for cmd in cargo curl openssl dd python3; do
  command -v "$cmd" >/dev/null || die "$cmd is needed"
done
[ -x "$DOCKER_REGISTRY" ] || die "$DOCKER_REGISTRY not found (apt-get install docker-registry)"

WORK=""
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'echo "terminated" >&2; exit 143' TERM

log "building (cargo build --release --bin registry)"
cargo build --release --bin registry >&2
DRYDOCK="${CARGO_TARGET_DIR:-$ROOT/target}/release/registry"
[ -x "$DRYDOCK" ] || die "$DRYDOCK was not built"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/drydock-bench.XXXXXX")
need_kib=$(( SIZE_MIB * 1024 * 3 ))
free_kib=$(df -Pk "$WORK" | awk 'NR==2 {print $4}')
[ "$free_kib" -ge "$need_kib" ] || die "$WORK needs $((need_kib / 1024)) MiB free, has $((free_kib / 1024))"

# The helpers: a free loopback port, and the RSS sampler (runs until SIGTERM, then
# writes its peaks as JSON).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
cat >"$WORK/sample_rss.py" <<'EOF'
import json, signal, sys, time
pid, out, ready = sys.argv[1], sys.argv[2], sys.argv[3]
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
open(ready, "w").close()
peak_rss = hwm = samples = 0
while not stop:
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(l.split(":", 1) for l in f if ":" in l)
    except OSError:
        break
    peak_rss = max(peak_rss, int(fields["VmRSS"].split()[0]))
    hwm = max(hwm, int(fields["VmHWM"].split()[0]))
    samples += 1
    time.sleep(0.1)
with open(out, "w") as f:
    json.dump({"peak_rss_kib": peak_rss, "hwm_kib": hwm, "samples": samples}, f)
EOF
SAMPLER=""
start_sampler() { # pid out.json: returns once the sampler is sampling
  rm -f "$WORK/sampler.ready"
  python3 "$WORK/sample_rss.py" "$1" "$2" "$WORK/sampler.ready" &
  SAMPLER=$!
  PIDS+=("$SAMPLER")
  while [ ! -e "$WORK/sampler.ready" ]; do sleep 0.01; done
}
stop_sampler() { kill -TERM "$SAMPLER"; wait "$SAMPLER" || true; }
json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

now() { date +%s.%N; }
mibs() { python3 -c 'import sys; print(f"{float(sys.argv[1]) / float(sys.argv[2]):.1f}")' "$1" "$2"; }
elapsed() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.3f}")' "$1" "$2"; }
kib_to_mib() { python3 -c 'import sys; print(f"{int(sys.argv[1]) / 1024:.1f}")' "$1"; }

BLOB="$WORK/blob"
BYTES=$(( SIZE_MIB * 1024 * 1024 ))
log "writing $SIZE_MIB MiB of random data to $BLOB"
dd if=/dev/urandom of="$BLOB" bs=1M count="$SIZE_MIB" iflag=fullblock status=none
sync

# References: what hashing and a durable copy cost on this machine.
log "reference: openssl dgst -sha256"
t0=$(now)
DIGEST="sha256:$(openssl dgst -sha256 -r "$BLOB" | cut -d' ' -f1)"
t1=$(now)
REF_SHA_S=$(elapsed "$t0" "$t1")
log "reference: dd bs=4M conv=fdatasync"
t0=$(now)
dd if="$BLOB" of="$WORK/dd.tmp" bs=4M conv=fdatasync status=none
t1=$(now)
REF_DD_S=$(elapsed "$t0" "$t1")
rm -f "$WORK/dd.tmp"
sync

wait_ready() { # url pid
  local _
  for _ in $(seq 1 100); do
    kill -0 "$2" 2>/dev/null || return 1
    curl -sf -o /dev/null "$1/v2/" && return 0
    sleep 0.1
  done
  return 1
}

# bench NAME PID URL: pushes and pulls the blob; sets R_* variables.
bench() {
  local name=$1 pid=$2 url=$3 loc out code t size
  R_IDLE_KIB=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")

  log "$name: push"
  start_sampler "$pid" "$WORK/$name-push.json"
  loc=$(curl -sS -f -X POST -o /dev/null -w '%header{location}' "$url/v2/bench/blobs/uploads/" 2>/dev/null) ||
    loc=$(curl -sS -f -X POST -D - -o /dev/null "$url/v2/bench/blobs/uploads/" |
          tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
  [ -n "$loc" ] || die "$name: POST gave no Location"
  case $loc in http*) ;; *) loc="$url$loc" ;; esac
  case $loc in *\?*) loc="$loc&digest=$DIGEST" ;; *) loc="$loc?digest=$DIGEST" ;; esac
  out=$(curl -sS -T "$BLOB" -H 'Expect:' -H 'Content-Type: application/octet-stream' \
        -o /dev/null -w '%{http_code} %{time_total}' "$loc")
  stop_sampler
  read -r code t <<<"$out"
  [ "$code" = 201 ] || die "$name: push answered $code"
  R_PUSH_S=$t
  R_PUSH_PEAK=$(json_field "$WORK/$name-push.json" peak_rss_kib)

  log "$name: pull"
  start_sampler "$pid" "$WORK/$name-pull.json"
  out=$(curl -sS -o /dev/null -w '%{http_code} %{time_total} %{size_download}' \
        "$url/v2/bench/blobs/$DIGEST")
  stop_sampler
  read -r code t size <<<"$out"
  [ "$code" = 200 ] || die "$name: pull answered $code"
  [ "$size" = "$BYTES" ] || die "$name: pulled $size bytes, expected $BYTES"
  R_PULL_S=$t
  R_PULL_PEAK=$(json_field "$WORK/$name-pull.json" peak_rss_kib)
  R_HWM=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
  for t in "$(json_field "$WORK/$name-push.json" hwm_kib)" \
           "$(json_field "$WORK/$name-pull.json" hwm_kib)"; do
    [ "$t" -gt "$R_HWM" ] && R_HWM=$t
  done
  return 0
}

stop_server() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

declare -A RES
record() { # name
  RES[$1.push_mibs]=$(mibs "$SIZE_MIB" "$R_PUSH_S")
  RES[$1.pull_mibs]=$(mibs "$SIZE_MIB" "$R_PULL_S")
  RES[$1.push_s]=$R_PUSH_S
  RES[$1.pull_s]=$R_PULL_S
  RES[$1.idle_rss]=$(kib_to_mib "$R_IDLE_KIB")
  RES[$1.push_peak]=$(kib_to_mib "$R_PUSH_PEAK")
  RES[$1.pull_peak]=$(kib_to_mib "$R_PULL_PEAK")
  local peak=$R_PUSH_PEAK
  [ "$R_PULL_PEAK" -gt "$peak" ] && peak=$R_PULL_PEAK
  RES[$1.peak]=$(kib_to_mib "$peak")
  RES[$1.hwm]=$(kib_to_mib "$R_HWM")
}

# Both servers read REGISTRY_* overrides from the environment: start them without any.
CLEAN_ENV=(-u RUST_LOG)
while read -r var; do CLEAN_ENV+=(-u "$var"); done < <(compgen -e | grep '^REGISTRY_' || true)

# drydock
PORT=$(free_port)
mkdir -p "$WORK/drydock-root"
cat >"$WORK/drydock.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/drydock-root
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
EOF
log "drydock: starting on 127.0.0.1:$PORT"
env "${CLEAN_ENV[@]}" "$DRYDOCK" serve "$WORK/drydock.yml" 2>"$WORK/drydock.log" &
DPID=$!
PIDS+=("$DPID")
wait_ready "http://127.0.0.1:$PORT" "$DPID" || { cat "$WORK/drydock.log" >&2; die "drydock did not start"; }
bench drydock "$DPID" "http://127.0.0.1:$PORT"
record drydock
stop_server "$DPID"
rm -rf "$WORK/drydock-root"
sync

# CNCF Distribution, with its own config: no auth (Debian's default config turns
# htpasswd on; it is never used here).
PORT=$(free_port)
mkdir -p "$WORK/distribution-root"
cat >"$WORK/distribution.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/distribution-root
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
EOF
log "distribution: starting on 127.0.0.1:$PORT"
env "${CLEAN_ENV[@]}" "$DOCKER_REGISTRY" serve "$WORK/distribution.yml" \
  2>"$WORK/distribution.log" &
RPID=$!
PIDS+=("$RPID")
wait_ready "http://127.0.0.1:$PORT" "$RPID" || { cat "$WORK/distribution.log" >&2; die "docker-registry did not start"; }
bench distribution "$RPID" "http://127.0.0.1:$PORT"
record distribution
stop_server "$RPID"
rm -rf "$WORK/distribution-root"

REF_SHA_MIBS=$(mibs "$SIZE_MIB" "$REF_SHA_S")
REF_DD_MIBS=$(mibs "$SIZE_MIB" "$REF_DD_S")

if [ "$JSON" = 1 ]; then
  cat <<EOF
{"size_mib": $SIZE_MIB,
 "registries": {
$(for r in drydock distribution; do
  printf '  "%s": {"push_mib_s": %s, "pull_mib_s": %s, "push_s": %s, "pull_s": %s, "idle_rss_mib": %s, "push_peak_rss_mib": %s, "pull_peak_rss_mib": %s, "peak_rss_mib": %s, "vmhwm_mib": %s}' \
    "$r" "${RES[$r.push_mibs]}" "${RES[$r.pull_mibs]}" "${RES[$r.push_s]}" "${RES[$r.pull_s]}" \
    "${RES[$r.idle_rss]}" "${RES[$r.push_peak]}" "${RES[$r.pull_peak]}" "${RES[$r.peak]}" "${RES[$r.hwm]}"
  [ "$r" = drydock ] && echo ","
done)
 },
 "references": {"openssl_sha256_mib_s": $REF_SHA_MIBS, "openssl_sha256_s": $REF_SHA_S,
                "dd_fdatasync_mib_s": $REF_DD_MIBS, "dd_fdatasync_s": $REF_DD_S}}
EOF
else
  echo "blob: $SIZE_MIB MiB of random data; push = POST + PUT ?digest=, pull = GET; loopback"
  printf '%-13s %12s %12s %14s %14s %14s %10s\n' registry "push MiB/s" "pull MiB/s" \
    "peak RSS MiB" "push peak MiB" "pull peak MiB" "VmHWM MiB"
  for r in drydock distribution; do
    printf '%-13s %12s %12s %14s %14s %14s %10s\n' "$r" "${RES[$r.push_mibs]}" \
      "${RES[$r.pull_mibs]}" "${RES[$r.peak]}" "${RES[$r.push_peak]}" "${RES[$r.pull_peak]}" \
      "${RES[$r.hwm]}"
  done
  echo "references:"
  printf '  %-32s %8s MiB/s  (%s s)\n' "openssl dgst -sha256" "$REF_SHA_MIBS" "$REF_SHA_S"
  printf '  %-32s %8s MiB/s  (%s s)\n' "dd bs=4M conv=fdatasync" "$REF_DD_MIBS" "$REF_DD_S"
  echo "(peak RSS: highest VmRSS sampled every 100 ms during push and pull; VmHWM: the"
  echo " kernel's high-water mark over the server's whole life; idle RSS: drydock" \
    "${RES[drydock.idle_rss]} MiB, distribution ${RES[distribution.idle_rss]} MiB)"
fi
