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
# it. Prints each round's req/s and p99, the medians, the server's CPU per request (from
# /proc) and on/off; fails if a request failed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
bench_args "$@"
bench_setup metrics

# run MODE ROUND: one server, one load run; appends its row to $WORK/rows.
run() {
  local mode=$1 round=$2 port dport root cfg
  port=$(free_port); dport=$(free_port)
  root="$WORK/root-$mode-$round"
  cfg="$WORK/config-$mode.yml"
  {
    bench_config "$root"
    if [ "$mode" = on ]; then
      echo "http: {addr: 127.0.0.1:$port, debug: {addr: 127.0.0.1:$dport, prometheus: {enabled: true}}}"
    else
      echo "http: {addr: 127.0.0.1:$port}"
    fi
  } >"$cfg"
  env "${CLEAN_ENV[@]}" "$WORK/registry" serve "$cfg" 2>"$WORK/server-$mode-$round.log" &
  PID=$!
  "$WORK/drydock-bench" wait --url "http://127.0.0.1:$port" >/dev/null
  # No warm-up, so the server's CPU over the run divides by every request it served
  # (but the scenario's one small image push): a figure that holds on a busy machine,
  # where req/s follows whatever else runs.
  local cpu0 cpu1
  cpu0=$(server_cpu "$PID")
  "$WORK/drydock-bench" manifest --url "http://127.0.0.1:$port" --by tag --method GET \
    -c "$CONNS" -d "$DURATION" --warmup 0s --json >"$WORK/r-$mode-$round.json" \
    || die "drydock-bench failed ($mode, round $round)"
  cpu1=$(server_cpu "$PID")
  if [ "$mode" = on ]; then
    # The whole scrape first: `curl | grep -q` fails under pipefail when grep stops
    # reading at its match and curl gets SIGPIPE.
    local scrape
    scrape=$(curl -sf "http://127.0.0.1:$dport/metrics") || die "no scrape from the debug listener"
    grep -q 'registry_http_requests_total{handler="manifest"' <<<"$scrape" \
      || die "metrics were on but the scrape shows no manifest requests"
  fi
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  bench_row "$mode" "$WORK/r-$mode-$round.json" $((cpu1 - cpu0))
}

log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
  for mode in $(bench_order "$round" off on); do
    log "round $round: metrics $mode"
    run "$mode" "$round"
  done
done
log "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

bench_summary metrics 0.95 off off on
