#!/usr/bin/env bash
# Blob speed of two drydock binaries (A/B: a change against its base), on this machine,
# over loopback. Both servers run at once, each on its own fresh root holding the same
# blob of random data (pushed once, then in the page cache); the measured requests
# alternate between them (A B, then B A, ...), so load from other work on a shared
# machine falls on both alike. Prints each round's number, the medians, the ratio B/A
# and the load average at the start and the end.
#
#   bash scripts/bench-blob-ab.sh BIN_A BIN_B
#   SIZE_MIB=512 ROUNDS=10 bash scripts/bench-blob-ab.sh old/registry new/registry
#   MODE=push bash scripts/bench-blob-ab.sh old/registry new/registry
#
# Environment: MODE (get: blob GET with curl, MiB/s; push: `drydock-bench push-blob` of
# the same blob into a new repository each round, MiB/s, the pool's copy reused after
# the first, so no fsync; small: `drydock-bench small-images`, images/s), SIZE_MIB (512),
# ROUNDS (10: each round measures both), RANGE (get: "bytes=A-B" sends that Range
# header), CHUNK_MIB (push: PATCH chunks of this size), IMAGES (small: 160), TMPDIR
# (where the roots go), DRYDOCK_BENCH (target/release/drydock-bench).
set -euo pipefail

A=${1:?usage: bench-blob-ab.sh BIN_A BIN_B}
B=${2:?usage: bench-blob-ab.sh BIN_A BIN_B}
SIZE_MIB=${SIZE_MIB:-512}
ROUNDS=${ROUNDS:-10}
RANGE=${RANGE:-}
MODE=${MODE:-get}
CHUNK_MIB=${CHUNK_MIB:-}
IMAGES=${IMAGES:-160}
DRYDOCK_BENCH=${DRYDOCK_BENCH:-$(dirname "$0")/../target/release/drydock-bench}
case $MODE in get|push|small) ;; *) echo "MODE is get, push or small" >&2; exit 2 ;; esac
[ "$MODE" = get ] || [ -x "$DRYDOCK_BENCH" ] || { echo "$DRYDOCK_BENCH not built" >&2; exit 2; }
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

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "$0")/bench-lib.sh" # bench_config, free_port

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
dd if=/dev/urandom of="$WORK/blob" bs=1M count="$SIZE_MIB" iflag=fullblock status=none
DIGEST="sha256:$(sha256sum "$WORK/blob" | cut -d' ' -f1)"

declare -A URL
for side in a b; do
  bin=$A; [ $side = b ] && bin=$B
  port=$(free_port)
  mkdir -p "$WORK/$side-root"
  { bench_config "$WORK/$side-root"; echo "http: {addr: 127.0.0.1:$port}"; } >"$WORK/$side.yml"
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
[ "$MODE" = push ] || rm -f "$WORK/blob"
[ "$MODE" = push ] && echo "$DIGEST" | cut -d: -f2 >"$WORK/blob.sha256"

# measure SIDE ROUND -> one number
measure() {
  case $MODE in
    get) get "$1" ;;
    push)
      local args=(push-blob --url "${URL[$1]}" --size-mib "$SIZE_MIB" --file "$WORK/blob"
                  --repo "bench/r$2" --json)
      [ -n "$CHUNK_MIB" ] && args+=(--chunk-mib "$CHUNK_MIB")
      "$DRYDOCK_BENCH" "${args[@]}" 2>/dev/null | row_field mib_per_s ;;
    small)
      "$DRYDOCK_BENCH" small-images --url "${URL[$1]}" --images "$IMAGES" \
        --repo-prefix "bench/r$2" --json 2>/dev/null | row_field ops_per_s ;;
  esac
}
row_field() {
  python3 -c 'import json, sys
r = json.load(sys.stdin)
assert not r["rows"][0]["errors"], r["error_samples"]
print("%.1f" % r["rows"][0][sys.argv[1]])' "$1"
}

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
    v=$(measure $side "$r$side")
    if [ $side = a ]; then RA+=("$v"); else RB+=("$v"); fi
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$SIZE_MIB" "$LOAD_START" "$LOAD_END" "$MODE ${RANGE}${CHUNK_MIB:+chunks of $CHUNK_MIB MiB}" "${RA[*]}" "${RB[*]}" <<'EOF'
import statistics, sys
size, ls, le, what, a, b = sys.argv[1:7]
a = [float(x) for x in a.split()]; b = [float(x) for x in b.split()]
ma, mb = statistics.median(a), statistics.median(b)
unit = "images/s" if what.startswith("small") else "MiB/s"
print(f"{what}, {size} MiB blob, {len(a)} rounds, alternating")
print(f"A {unit}: {' '.join(f'{x:.0f}' for x in a)}  median {ma:.1f}")
print(f"B {unit}: {' '.join(f'{x:.0f}' for x in b)}  median {mb:.1f}")
print(f"B/A (medians): {mb / ma:.3f}")
print(f"load average: start {ls}, end {le}")
EOF
