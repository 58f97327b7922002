#!/usr/bin/env bash
# Runs every fuzz target (registry/src/fuzz.rs: one per parser of client and
# configuration input, proptest on the stable toolchain, corpus in registry/fuzz/corpus)
# for a set time, each run with a fresh seed, and prints a markdown table of runs, cases
# and failures. A failure's output (the seed and proptest's smallest failing input) goes
# to stderr and the table names its seed; rerun one with
#   DRYDOCK_FUZZ_SEED=<seed> DRYDOCK_FUZZ_CASES=<cases> cargo test -p registry --lib fuzz::<target>
#
# Usage: [SECONDS_PER_TARGET=60] [CASES=20000] bash scripts/fuzz.sh [--out FILE]
# Exits 1 when a target failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PER=${SECONDS_PER_TARGET:-60}
CASES=${CASES:-20000}
OUT=""
[ "${1:-}" = "--out" ] && OUT=${2:?--out FILE}

echo "== building the registry's unit tests" >&2
BIN=$(cargo test -p registry --lib --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])')
[ -x "$BIN" ] || { echo "FATAL: no test binary built" >&2; exit 1; }
mapfile -t TARGETS < <("$BIN" --list 2>/dev/null | sed -n 's/^\(fuzz::[a-z_]*\): test$/\1/p')
[ ${#TARGETS[@]} -gt 0 ] || { echo "FATAL: no fuzz targets listed" >&2; exit 1; }

rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
failed=0
for t in "${TARGETS[@]}"; do
  runs=0 fails=0 bad_seeds=""
  end=$((SECONDS + PER))
  while [ $SECONDS -lt $end ]; do
    seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
    if ! out=$(DRYDOCK_FUZZ_SEED=$seed DRYDOCK_FUZZ_CASES=$CASES "$BIN" --exact "$t" -q 2>&1); then
      fails=$((fails + 1)); failed=1
      bad_seeds="$bad_seeds $seed"
      echo "== $t failed with DRYDOCK_FUZZ_SEED=$seed" >&2
      echo "$out" >&2
    fi
    runs=$((runs + 1))
  done
  echo "== $t: $runs runs, $fails failed" >&2
  echo "| \`${t#fuzz::}\` | $runs | $((runs * CASES)) | $fails |${bad_seeds:- -} |" >>"$rows"
done

{
  echo "scripts/fuzz.sh, ${PER}s per target, $CASES cases a run, commit $(git rev-parse --short HEAD), load $(cut -d' ' -f1-3 /proc/loadavg):"
  echo
  echo "| target | runs | inputs | failed runs | failing seeds |"
  echo "| --- | ---: | ---: | ---: | --- |"
  cat "$rows"
} | tee ${OUT:+"$OUT"}
exit $failed
