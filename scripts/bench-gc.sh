#!/usr/bin/env bash
# Offline garbage collection: drydock's `registry garbage-collect` against CNCF
# Distribution 2.8.2's `docker-registry garbage-collect`, on the same generated store.
#
#   bash scripts/bench-gc.sh                    # markdown table on stdout
#   bash scripts/bench-gc.sh --out gc.md        # ... written to a file as well
#
# What it does: cargo build --release --bins; `drydock-bench gen-store` writes a store in
# Distribution's layout (REPOS repositories, MANIFESTS OCI manifests of 1 config +
# LAYERS layers each, UNTAGGED of them untagged, ORPHANS unreferenced blobs); checks it
# with `docker-registry garbage-collect --dry-run` (which must succeed and plan to remove
# exactly the orphans); then, for each collector and each mode (plain, and removing
# untagged manifests), copies the store afresh and times the collection with
# /usr/bin/time -v (wall time, "Maximum resident set size"). It counts the pool's blobs
# before and after each run: in plain mode both collectors must remove the same number
# (the script fails otherwise), which must be the generator's prediction.
#
# Environment: REPOS (100), MANIFESTS (10000), LAYERS (9), UNTAGGED (0.3), ORPHANS
# (5000), TMPDIR (where the stores go: ~2 GB each, five of them at most),
# DOCKER_REGISTRY (/usr/bin/docker-registry). Progress goes to stderr; everything it
# creates is removed on exit.
set -euo pipefail

REPOS=${REPOS:-100}
MANIFESTS=${MANIFESTS:-10000}
LAYERS=${LAYERS:-9}
UNTAGGED=${UNTAGGED:-0.3}
ORPHANS=${ORPHANS:-5000}
DOCKER_REGISTRY=${DOCKER_REGISTRY:-/usr/bin/docker-registry}
OUT=""
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=${2:?--out needs a file}; shift 2 ;;
    --out=*) OUT=${1#--out=}; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { echo "== $*" >&2; }
die() { echo "FATAL: $*" >&2; exit 1; }

for cmd in cargo python3 cp find; do
  command -v "$cmd" >/dev/null || die "$cmd is needed"
done
[ -x /usr/bin/time ] || die "/usr/bin/time is needed (apt-get install time)"
[ -x "$DOCKER_REGISTRY" ] || die "$DOCKER_REGISTRY not found (apt-get install docker-registry)"

WORK=""
cleanup() { [ -n "$WORK" ] && rm -rf "$WORK"; }
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'echo "terminated" >&2; exit 143' TERM

log "building (cargo build --release --bins)"
cargo build --release --bins >&2
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"
for bin in registry drydock-bench; do
  [ -x "$TARGET/$bin" ] || die "$TARGET/$bin was not built"
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/drydock-gc.XXXXXX")
cp "$TARGET/registry" "$TARGET/drydock-bench" "$WORK/"
RES="$WORK/results"
mkdir -p "$RES"
cut -d' ' -f1-3 /proc/loadavg >"$RES/load_start"
log "load average at start: $(cat "$RES/load_start")"

log "generating the store"
"$WORK/drydock-bench" gen-store --repos "$REPOS" --manifests "$MANIFESTS" \
  --layers-per-manifest "$LAYERS" --untagged-fraction "$UNTAGGED" --orphans "$ORPHANS" \
  --json "$WORK/store" >"$RES/gen.json"
cat "$RES/gen.json" >&2
sync

config() { # root -> config path (one file works for both collectors)
  cat >"$1.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $1
  delete:
    enabled: true
gc:
  on_startup: false
EOF
  echo "$1.yml"
}
count_blobs() { find "$1/docker/registry/v2/blobs" -name data -type f | wc -l; }

log "checking the store: docker-registry garbage-collect --dry-run"
cfg=$(config "$WORK/store")
env -u RUST_LOG "$DOCKER_REGISTRY" garbage-collect --dry-run "$cfg" >"$RES/dry-run.out" 2>&1 ||
  { tail -20 "$RES/dry-run.out" >&2; die "docker-registry garbage-collect --dry-run failed on the generated store"; }
grep -c 'blob eligible for deletion' "$RES/dry-run.out" >"$RES/dry-run.eligible" || true
expected=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["expected_removed_blobs_plain"])' "$RES/gen.json")
[ "$(cat "$RES/dry-run.eligible")" = "$expected" ] ||
  die "docker-registry --dry-run plans to remove $(cat "$RES/dry-run.eligible") blobs; the generator expects $expected"
BLOBS_BEFORE=$(count_blobs "$WORK/store")
echo "$BLOBS_BEFORE" >"$RES/blobs_before"

# collect NAME MODE: a fresh copy of the store, one timed collection, blob counts.
collect() {
  local name=$1 mode=$2 dir="$WORK/$1-$2" cfg rc=0
  log "$name, $mode: copying the store"
  rm -rf "$dir"
  cp -a "$WORK/store" "$dir"
  cfg=$(config "$dir")
  sync
  local cmd
  case "$name/$mode" in
    drydock/plain) cmd=("$WORK/registry" garbage-collect --grace 0s --json "$cfg") ;;
    drydock/untagged) cmd=("$WORK/registry" garbage-collect --grace 0s -m --json "$cfg") ;;
    distribution/plain) cmd=("$DOCKER_REGISTRY" garbage-collect "$cfg") ;;
    distribution/untagged) cmd=("$DOCKER_REGISTRY" garbage-collect --delete-untagged "$cfg") ;;
  esac
  log "$name, $mode: ${cmd[*]}"
  env -u RUST_LOG /usr/bin/time -v -o "$RES/$name-$mode.time" "${cmd[@]}" \
    >"$RES/$name-$mode.out" 2>"$RES/$name-$mode.err" || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -20 "$RES/$name-$mode.err" >&2
    die "$name garbage-collect ($mode) failed ($rc)"
  fi
  echo $(( BLOBS_BEFORE - $(count_blobs "$dir") )) >"$RES/$name-$mode.removed"
  rm -rf "$dir" "$dir.yml"
}

for mode in plain untagged; do
  collect drydock "$mode"
  collect distribution "$mode"
done
cut -d' ' -f1-3 /proc/loadavg >"$RES/load_end"

REPORT="$WORK/report.md"
python3 - "$RES" >"$REPORT" <<'EOF'
import json, os, re, sys
res = sys.argv[1]
def text(n):
    with open(os.path.join(res, n)) as f:
        return f.read().strip()
def time_v(n):
    t = text(n + ".time")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t).group(1)
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", t).group(1))
    sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", t).group(1))
    return {"wall": secs, "rss_mib": rss / 1024, "cpu": user + sys_}
gen = json.loads(text("gen.json"))
out = []
p = out.append
p(f"Store: {gen['repositories']} repositories, {gen['manifests']:,} manifests "
  f"({gen['tagged_manifests']:,} tagged, {gen['untagged_manifests']:,} untagged), "
  f"{gen['blobs']:,} blobs ({gen['orphan_blobs']:,} orphans), {gen['layer_links']:,} layer "
  f"links; generated in {gen['seconds']:.1f} s. `docker-registry garbage-collect --dry-run` "
  f"on it: exit 0, {text('dry-run.eligible')} blobs eligible for deletion.")
p("")
p("| mode | collector | wall s | CPU s | peak RSS MiB | blobs removed (expected) | Distribution/drydock wall | drydock/Distribution RSS |")
p("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
results = {}
for mode, label, exp in (("plain", "plain (keep untagged)", gen["expected_removed_blobs_plain"]),
                         ("untagged", "remove untagged (`-m` / `--delete-untagged`)",
                          gen["expected_removed_blobs_untagged"])):
    d, r = time_v(f"drydock-{mode}"), time_v(f"distribution-{mode}")
    dn, rn = int(text(f"drydock-{mode}.removed")), int(text(f"distribution-{mode}.removed"))
    results[mode] = (d, r, dn, rn, exp)
    speed = r["wall"] / d["wall"] if d["wall"] > 0 else float("inf")
    mem = d["rss_mib"] / r["rss_mib"]
    p(f"| {label} | drydock | {d['wall']:.2f} | {d['cpu']:.2f} | {d['rss_mib']:.1f} | {dn:,} ({exp:,}) | {speed:.1f}× | {mem:.2f}× |")
    p(f"| {label} | Distribution 2.8.2 | {r['wall']:.2f} | {r['cpu']:.2f} | {r['rss_mib']:.1f} | {rn:,} ({exp:,}) | | |")
p("")
def met(ok): return "**met**" if ok else "**missed**"
d, r, dn, rn, exp = results["untagged"]
s, m = r["wall"] / d["wall"], d["rss_mib"] / r["rss_mib"]
p("| target | measured | |")
p("| --- | --- | --- |")
p(f"| gc -m ≥ 25× faster than Distribution, ≤ 1/4 of its peak memory | {s:.1f}× faster, {m:.2f}× the memory | {met(s >= 25 and m <= 0.25)} |")
d, r, dn, rn, exp = results["plain"]
s = r["wall"] / d["wall"]
p(f"| plain gc ≥ 10× faster than Distribution | {s:.1f}× | {met(s >= 10)} |")
p(f"| both remove the same blobs in plain mode | drydock {dn:,}, Distribution {rn:,}, expected {exp:,} | {met(dn == rn == exp)} |")
p("")
p(f"Wall time and peak RSS from /usr/bin/time -v; each run on a fresh copy of the store "
  f"(made just before it, so both collectors start with the same warm page cache). "
  f"Load average at the start: {text('load_start')}; at the end: {text('load_end')}.")
print("\n".join(out))
EOF

if [ -n "$OUT" ]; then
  cp "$REPORT" "$OUT"
  log "written to $OUT"
fi
cat "$REPORT"
dn=$(cat "$RES/drydock-plain.removed")
rn=$(cat "$RES/distribution-plain.removed")
[ "$dn" = "$rn" ] || die "in plain mode drydock removed $dn blobs, Distribution $rn"
