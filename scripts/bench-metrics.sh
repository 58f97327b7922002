#!/usr/bin/env bash
# The cost of metrics on the hot path: manifest GET by tag against drydock with metrics
# off (the default) and on (http.debug.prometheus.enabled), in alternating rounds, each
# on a fresh server with the same store.
#
# Usage: [ROUNDS=6] [DURATION=10s] [CONNS=32] bash scripts/bench-metrics.sh [--out FILE]
#
# What it does: cargo build --release; per round, for each mode (the order flips every
# round), starts `registry serve` on a fresh copy-free root (access log off, log level
# warn, no GC at start-up), runs `drydock-bench manifest --by tag --method GET`, stops
# it. Prints each round's req/s and p99, the medians, and on/off; fails if a request
# failed. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
OUT=""
[ "${1:-}" = "--out" ] && OUT=${2:?--out FILE}
log() { echo "== $*" >&2; }
die() { echo "FATAL: $*" >&2; exit 1; }

log "building (cargo build --release --workspace --bins)"
cargo build --release --workspace --bins >&2
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/drydock-metrics.XXXXXX")
cp "$TARGET/registry" "$TARGET/drydock-bench" "$WORK/"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
CLEAN_ENV=(-u RUST_LOG)
while read -r var; do CLEAN_ENV+=(-u "$var"); done < <(compgen -e | grep '^REGISTRY_' || true)

# run MODE ROUND: one server, one load run; appends "MODE req/s p99" to $WORK/rows.
run() {
  local mode=$1 round=$2 port dport root cfg
  port=$(free_port); dport=$(free_port)
  root="$WORK/root-$mode-$round"
  cfg="$WORK/config-$mode.yml"
  {
    echo "log: {level: warn, accesslog: {disabled: true}}"
    echo "storage: {filesystem: {rootdirectory: $root}, delete: {enabled: true}}"
    echo "gc: {on_startup: false}"
    echo "maintenance: {enabled: false}"
    if [ "$mode" = on ]; then
      echo "http: {addr: 127.0.0.1:$port, debug: {addr: 127.0.0.1:$dport, prometheus: {enabled: true}}}"
    else
      echo "http: {addr: 127.0.0.1:$port}"
    fi
  } >"$cfg"
  env "${CLEAN_ENV[@]}" "$WORK/registry" serve "$cfg" 2>"$WORK/server-$mode-$round.log" &
  PID=$!
  "$WORK/drydock-bench" wait --url "http://127.0.0.1:$port" >/dev/null
  "$WORK/drydock-bench" manifest --url "http://127.0.0.1:$port" --by tag --method GET \
    -c "$CONNS" -d "$DURATION" --json >"$WORK/r-$mode-$round.json" \
    || die "drydock-bench failed ($mode, round $round)"
  if [ "$mode" = on ]; then
    curl -sf "http://127.0.0.1:$dport/metrics" | grep -q 'registry_http_requests_total{handler="manifest"' \
      || die "metrics were on but the scrape shows no manifest requests"
  fi
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  python3 - "$mode" "$WORK/r-$mode-$round.json" >>"$WORK/rows" <<'PY'
import json, sys
row = json.load(open(sys.argv[2]))["rows"][0]
if row["errors"]:
    sys.exit(f"{sys.argv[1]}: {row['errors']} failed requests")
print(sys.argv[1], row["ops_per_s"], row["latency"]["p99_ms"])
PY
}

log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="off on"; else order="on off"; fi
  for mode in $order; do
    log "round $round: metrics $mode"
    run "$mode" "$round"
  done
done
log "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$WORK/rows" "$ROUNDS" "$DURATION" "$CONNS" "$(git rev-parse --short HEAD)" <<'PY' | tee ${OUT:+"$OUT"}
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {"off": [], "on": []}
for mode, rps, p99 in rows:
    by[mode].append((float(rps), float(p99)))
print(f"manifest GET by tag, {sys.argv[4]} connections, {sys.argv[3]} per run, "
      f"{sys.argv[2]} rounds alternating (commit {sys.argv[5]}):\n")
print("| metrics | req/s per round | median req/s | median p99 ms |")
print("| --- | --- | ---: | ---: |")
med = {}
for mode in ("off", "on"):
    v = by[mode]
    med[mode] = statistics.median(r for r, _ in v)
    p99 = statistics.median(p for _, p in v)
    print(f"| {mode} | {', '.join(f'{r:,.0f}' for r, _ in v)} | {med[mode]:,.0f} | {p99:.2f} |")
print(f"\non/off: {med['on'] / med['off']:.3f} (target: at least 0.95)")
PY
