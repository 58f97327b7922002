#!/usr/bin/env bash
# The cost of authentication on the hot path: manifest GET by tag at CONNS connections
# against drydock without auth (anonymous), with htpasswd and Basic credentials on every
# request (cached after the first bcrypt), and with a bearer token from the built-in
# token service, in rounds of rotating order, each on a fresh server.
#
# Usage: [ROUNDS=6] [DURATION=10s] [CONNS=32] bash scripts/bench-auth.sh [--out FILE]
#
# What it does: cargo build --release; per round, for each mode (the order rotates every
# round), starts `registry serve` on a fresh root (access log off, log level warn, no GC
# at start-up), for bearer fetches a token (repository:bench/manifest:pull,push) from
# /token with curl, runs `drydock-bench manifest --by tag --method GET` with the mode's
# Authorization header (the scenario pushes its image with it first), and stops it.
# Prints each round's req/s and p99, the medians, the server's CPU per request (from
# /proc/PID/stat over the run: steadier than req/s on a busy machine), and
# basic/anonymous and bearer/anonymous; fails if a request failed. Needs htpasswd (apache2-utils), openssl
# and curl. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
bench_args "$@"
for tool in htpasswd openssl curl python3; do
  command -v "$tool" >/dev/null || die "$tool is needed (htpasswd: apt-get install apache2-utils)"
done
bench_setup auth

USER=bench PASS=bench-pw
htpasswd -Bbn "$USER" "$PASS" >"$WORK/htpasswd" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/token-key.pem" 2>/dev/null
BASIC="Basic $(printf '%s:%s' "$USER" "$PASS" | base64 -w0)"

# run MODE ROUND: one server, one load run; appends "MODE req/s p99" to $WORK/rows.
run() {
  local mode=$1 round=$2 port root cfg auth=()
  port=$(free_port)
  root="$WORK/root-$mode-$round"
  cfg="$WORK/config-$mode.yml"
  {
    bench_config "$root"
    echo "http: {addr: 127.0.0.1:$port}"
    case $mode in
      basic) echo "auth: {htpasswd: {path: $WORK/htpasswd}}" ;;
      bearer)
        echo "auth:"
        echo "  htpasswd: {path: $WORK/htpasswd}"
        echo "  token: {realm: /token, service: bench, issuer: bench}"
        echo "  tokenserver: {key: $WORK/token-key.pem}"
        ;;
    esac
  } >"$cfg"
  env "${CLEAN_ENV[@]}" "$WORK/registry" serve "$cfg" 2>"$WORK/server-$mode-$round.log" &
  PID=$!
  "$WORK/drydock-bench" wait --url "http://127.0.0.1:$port" >/dev/null
  case $mode in
    basic) auth=(--authorization "$BASIC") ;;
    bearer)
      local token
      token=$(curl -sf -u "$USER:$PASS" \
        "http://127.0.0.1:$port/token?service=bench&scope=repository:bench/manifest:pull,push" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])') \
        || die "no token from the built-in token service"
      auth=(--authorization "Bearer $token")
      ;;
  esac
  # No warm-up, so the server's CPU over the run divides by every request it served
  # (but the scenario's one small image push).
  local cpu0 cpu1
  cpu0=$(server_cpu "$PID")
  "$WORK/drydock-bench" "${auth[@]}" manifest --url "http://127.0.0.1:$port" --by tag \
    --method GET -c "$CONNS" -d "$DURATION" --warmup 0s --json >"$WORK/r-$mode-$round.json" \
    || die "drydock-bench failed ($mode, round $round)"
  cpu1=$(server_cpu "$PID")
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  bench_row "$mode" "$WORK/r-$mode-$round.json" $((cpu1 - cpu0))
}

log "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
  for mode in $(bench_order "$round" anonymous basic bearer); do
    log "round $round: $mode"
    run "$mode" "$round"
  done
done
log "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

bench_summary auth 0.85 anonymous anonymous basic bearer
