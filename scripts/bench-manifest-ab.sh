#!/usr/bin/env bash
# Manifest GET by tag across builds: each registry binary given serves its own store on
# tmpfs (access log off, log level warn, no GC or maintenance at start-up), and
# `drydock-bench manifest` runs against them in turn, round after round, so every
# binary meets the same background load. Prints each round's req/s, p99 ms, errors,
# requests, server CPU ticks and context switches (all threads, from /proc), then per
# binary the median req/s, the median of the per-round ratios to the first binary, and
# the median server CPU per request and context switches per request.
#
# Usage: [ROUNDS=4] [DUR=5s] [BENCH=target/release/drydock-bench] \
#          bash scripts/bench-manifest-ab.sh BIN_A BIN_B [BIN_C ...]
# Build older commits in a worktree (`cargo build --release --bin registry`) and copy
# each binary under a name of its own: the names label the rows.
set -euo pipefail
ROUNDS=${ROUNDS:-4}
BENCH=${BENCH:-$(dirname "$0")/../target/release/drydock-bench}
W=$(mktemp -d /dev/shm/abm.XXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT
i=0; names=(); declare -A spid
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
csw() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/{s+=$2} END{print s}'; }
for bin in "$@"; do
  n=$(basename "$bin"); port=$((5301+i)); names+=("$n:$port"); i=$((i+1))
  mkdir -p "$W/$n"
  cat > "$W/$n/config.yml" <<EOC
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $W/$n/root}, delete: {enabled: true}}
gc: {on_startup: false}
maintenance: {enabled: false}
http: {addr: 127.0.0.1:$port}
EOC
  env -u REGISTRY_HTTP_ADDR "$bin" serve "$W/$n/config.yml" > "$W/$n/log" 2>&1 & pids+=($!); spid[$n]=$!
  "$BENCH" wait --url "http://127.0.0.1:$port" >/dev/null
done
uptime
for r in $(seq "$ROUNDS"); do
  for x in "${names[@]}"; do
    n=${x%%:*}; p=${x#*:}
    c0=$(cpu "${spid[$n]}"); s0=$(csw "${spid[$n]}")
    v=$("$BENCH" manifest --url "http://127.0.0.1:$p" -d "${DUR:-5s}" --warmup 0s --json | python3 -c 'import json,sys; r=json.load(sys.stdin)["rows"][0]; print(round(r["ops_per_s"]), r["latency"]["p99_ms"], r["errors"], r["ops"])')
    c1=$(cpu "${spid[$n]}"); s1=$(csw "${spid[$n]}")
    echo "round $r $n $v $((c1-c0)) $((s1-s0))" | tee -a "$W/rows"
  done
done
uptime
python3 - "$W/rows" "$(getconf CLK_TCK)" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
tick_us = 1e6 / int(sys.argv[2])
by, cpu, order = {}, {}, []
for _, r, n, ops, p99, err, total, ticks, cs in rows:
    by.setdefault(n, {})[r] = float(ops)
    cpu.setdefault(n, []).append((int(ticks) * tick_us / int(total), int(cs) / int(total)))
    if n not in order:
        order.append(n)
base = order[0]
for n in order:
    rat = [by[n][r] / by[base][r] for r in by[n]]
    us = statistics.median(c[0] for c in cpu[n])
    cs = statistics.median(c[1] for c in cpu[n])
    print(f"{n}: median {statistics.median(by[n].values()):.0f} req/s; to {base}: "
          f"median {statistics.median(rat):.3f} (min {min(rat):.3f}, max {max(rat):.3f}); "
          f"server CPU {us:.1f} us/req, {cs:.3f} context switches/req")
PY
