#!/usr/bin/env bash
# Blob GET speed of two drydock binaries (A/B: a change against its base), on this
# machine, over loopback. Both servers run at once, each on its own fresh root holding
# the same blob of random data (pushed once, then in the page cache); the GETs alternate
# between them (A B, then B A, ...), so load from other work on a shared machine falls
# on both alike. Prints each GET's MiB/s, the medians, the ratio B/A and the load average
# at the start and the end.
#
#   bash scripts/bench-blob-ab.sh BIN_A BIN_B
#   SIZE_MIB=512 ROUNDS=10 bash scripts/bench-blob-ab.sh old/registry new/registry
#
# Environment: SIZE_MIB (512), ROUNDS (10: each round GETs from both), RANGE (unset: whole
# blob; "bytes=A-B" sends that Range header on every GET), TMPDIR (where the roots go).
set -euo pipefail

A=${1:?usage: bench-blob-ab.sh BIN_A BIN_B}
B=${2:?usage: bench-blob-ab.sh BIN_A BIN_B}
SIZE_MIB=${SIZE_MIB:-512}
ROUNDS=${ROUNDS:-10}
RANGE=${RANGE:-}
for bin in "$A" "$B"; do [ -x "$bin" ] || { echo "$bin is not an executable" >&2; exit 2; }; done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/drydock-ab.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
dd if=/dev/urandom of="$WORK/blob" bs=1M count="$SIZE_MIB" iflag=fullblock status=none
DIGEST="sha256:$(sha256sum "$WORK/blob" | cut -d' ' -f1)"

declare -A URL
for side in a b; do
  bin=$A; [ $side = b ] && bin=$B
  port=$(free_port)
  mkdir -p "$WORK/$side-root"
  cat >"$WORK/$side.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/$side-root
http:
  addr: 127.0.0.1:$port
EOF
  env -u RUST_LOG "$bin" serve "$WORK/$side.yml" 2>"$WORK/$side.log" &
  PIDS+=("$!")
  url="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do curl -sf -o /dev/null "$url/v2/" && break; sleep 0.1; done
  loc=$(curl -sS -f -X POST -o /dev/null -w '%header{location}' "$url/v2/bench/blobs/uploads/")
  case $loc in http*) ;; *) loc="$url$loc" ;; esac
  code=$(curl -sS -T "$WORK/blob" -H 'Expect:' -o /dev/null -w '%{http_code}' "$loc?digest=$DIGEST")
  [ "$code" = 201 ] || { echo "$side: push answered $code" >&2; cat "$WORK/$side.log" >&2; exit 1; }
  URL[$side]=$url
  # One GET to warm the page cache and the server.
  curl -sS -o /dev/null "$url/v2/bench/blobs/$DIGEST"
done
rm -f "$WORK/blob"

get() { # side -> MiB/s
  local args=(-sS -o /dev/null -w '%{http_code} %{time_total} %{size_download}')
  [ -n "$RANGE" ] && args+=(-H "Range: $RANGE")
  local out code t size
  out=$(curl "${args[@]}" "${URL[$1]}/v2/bench/blobs/$DIGEST")
  read -r code t size <<<"$out"
  case $code in 200|206) ;; *) echo "$1: GET answered $code" >&2; exit 1 ;; esac
  python3 -c 'import sys; print(f"{int(sys.argv[1]) / 1048576 / float(sys.argv[2]):.1f}")' "$size" "$t"
}

RA=(); RB=()
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="a b"; else order="b a"; fi
  for side in $order; do
    v=$(get $side)
    if [ $side = a ]; then RA+=("$v"); else RB+=("$v"); fi
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$SIZE_MIB" "$LOAD_START" "$LOAD_END" "${RANGE:-whole}" "${RA[*]}" "${RB[*]}" <<'EOF'
import statistics, sys
size, ls, le, rng, a, b = sys.argv[1:7]
a = [float(x) for x in a.split()]; b = [float(x) for x in b.split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"blob GET, {size} MiB blob, range {rng}, {len(a)} GETs each, alternating")
print(f"A MiB/s: {' '.join(f'{x:.0f}' for x in a)}  median {ma:.1f}")
print(f"B MiB/s: {' '.join(f'{x:.0f}' for x in b)}  median {mb:.1f}")
print(f"B/A (medians): {mb / ma:.3f}")
print(f"load average: start {ls}, end {le}")
EOF
