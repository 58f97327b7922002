#!/usr/bin/env bash
# The model-based GC soak (conformance/tests/model_soak.rs), run long: each variant
# until its collector has run SOAK_CYCLES cycles (default 10000) while the clients keep
# pushing, re-using, deleting and checking what they were told they pushed. Prints every
# variant's figures and a Markdown table for docs/gc.md; exits non-zero on any failure.
#
#   SOAK_CYCLES=10000   cycles per variant (the clients run at least SOAK_OPS ops each)
#   SOAK_SEED=N         the seed (default: the clock); printed, and reproduces the mix
#   SOAK_CLIENTS=8 SOAK_OPS=100 SOAK_PENDING_TTL_MS=400 SOAK_VERIFY_EVERY=10
#   SOAK_EXPECT_FIXED=1 add issue 15's flows (default: the test's EXPECT_FIXED_DEFAULT)
#   SOAK_FLOWS=1,3      only these of issue 15's flows (1 re-use of untagged manifests,
#                       2 the retention variant, 3 artifact manifest by Content-Type)
#   SOAK_VARIANTS="gc_with_untagged_removal gc_keeping_untagged retention_and_upload_purge scrub"
#   SOAK_VARIANTS=replicas_with_kills  the replica soak (issue 19): three replicas behind
#                       nginx, one RGW bucket, a PostgreSQL of its own, replicas and
#                       PostgreSQL killed with kill -9; it needs nginx and the RGW of
#                       scripts/rgw.sh (eval "$(scripts/rgw.sh env DIR)")
#   SOAK_FAULTS=4 SOAK_FAULT_EVERY=2  faults, one every so many cycles (replica and
#                       PostgreSQL alternating; SOAK_CLIENTS=4 SOAK_OPS=40 by default)
set -euo pipefail
cd "$(dirname "$0")/.."

export SOAK_CYCLES=${SOAK_CYCLES:-10000}
export SOAK_SEED=${SOAK_SEED:-$(date +%s)}
variants=${SOAK_VARIANTS:-gc_with_untagged_removal gc_keeping_untagged retention_and_upload_purge scrub}

echo "== building the soak"
cargo test -p conformance --test model_soak --no-run 2>&1 | tail -n 1
case " $variants " in
  *" replicas_with_kills "*) cargo build --workspace --bins 2>&1 | tail -n 1 ;;
esac

log=$(mktemp -t soak-gc.XXXXXX)
status=0
for v in $variants; do
  echo "== soak_$v: SOAK_SEED=$SOAK_SEED SOAK_CYCLES=$SOAK_CYCLES (log: $log)"
  one=$(mktemp -t soak-gc-one.XXXXXX)
  if ! cargo test -q -p conformance --test model_soak "soak_$v" -- --exact --nocapture \
       >"$one" 2>&1; then
    status=1
  fi
  cat "$one" >>"$log"
  grep -E '^(soak |SOAK-CAUGHT|SOAK-FIGURES)' "$one" | cut -c1-2000 || true
  fails=$(grep -c '^SOAK FAILURE' "$one" || true)
  if [ "$fails" -gt 0 ]; then
    echo "-- $fails failures; the first ones:"
    grep '^SOAK FAILURE' "$one" | head -n 10 | cut -c1-600
  fi
  rm -f "$one"
done

echo
echo "== figures (commit $(git rev-parse --short HEAD), seed $SOAK_SEED, $(nproc) cores)"
echo
if grep '^SOAK-FIGURES ' "$log" | grep -qv 'variant=replicas '; then
  echo "| variant | s | GC cycles | retention / scrub runs | manifests pushed | indexes over untagged | referrers (on untagged) | re-tags | deletes by tag / digest | artifact 201 / 400 | items pulled and hashed | failures |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  grep '^SOAK-FIGURES ' "$log" | grep -v 'variant=replicas ' | while read -r _ fields; do
    declare -A f=()
    for kv in $fields; do f[${kv%%=*}]=${kv#*=}; done
    echo "| ${f[variant]} | ${f[secs]} | ${f[gc_cycles]} | ${f[retention_runs]} / ${f[scrub_runs]} | ${f[manifests]} | ${f[indexes_over_untagged]} | ${f[referrers]} (${f[referrers_on_untagged]}) | ${f[retags]} | ${f[deletes_by_tag]} / ${f[deletes_by_digest]} | ${f[artifacts_accepted]} / ${f[artifacts_refused]} | ${f[items_verified]} | ${f[failures]} |"
    unset f
  done
fi
if grep -q '^SOAK-FIGURES variant=replicas ' "$log"; then
  echo
  echo "| variant | clients | s | GC cycles (cut) | replica kills (mid-cycle) | PostgreSQL kills (mid-cycle) | operations | manifests pushed | indexes over untagged | cut: transport / 502 / 503 / 500 | checks cut | items pulled and hashed | failures |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  grep '^SOAK-FIGURES variant=replicas ' "$log" | while read -r _ fields; do
    declare -A f=()
    for kv in $fields; do f[${kv%%=*}]=${kv#*=}; done
    echo "| ${f[variant]} | ${f[clients]} | ${f[secs]} | ${f[gc_cycles]} (${f[cycles_cut]}) | ${f[replica_kills]} (${f[replica_kills_mid_cycle]}) | ${f[pg_kills]} (${f[pg_kills_mid_cycle]}) | ${f[ops]} | ${f[manifests]} | ${f[indexes_over_untagged]} | ${f[cut_transport]} / ${f[cut_502]} / ${f[cut_503]} / ${f[cut_500]} | ${f[checks_cut]} | ${f[items_verified]} | ${f[failures]} |"
    unset f
  done
fi
echo
grep '^SOAK-CAUGHT ' "$log" || true
[ "$status" -eq 0 ] && echo "== soak passed" || echo "== soak FAILED (full log: $log)"
exit "$status"
