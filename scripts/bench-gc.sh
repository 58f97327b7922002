#!/usr/bin/env bash
# Offline garbage collection: drydock's `registry garbage-collect` against CNCF
# Distribution 2.8.2's `docker-registry garbage-collect`, on the same generated store.
#
#   bash scripts/bench-gc.sh                    # markdown table on stdout
#   bash scripts/bench-gc.sh --out gc.md        # ... written to a file as well
#
# What it does: cargo build --release --workspace --bins; `drydock-bench gen-store` writes a store in
# Distribution's layout (REPOS repositories, MANIFESTS OCI manifests of 1 config +
# LAYERS layers each, UNTAGGED of them untagged, ORPHANS unreferenced blobs); checks it
# with `docker-registry garbage-collect --dry-run` (which must succeed and plan to remove
# exactly the orphans); then, for each collector and each mode (plain, and removing
# untagged manifests), copies the store afresh and times the collection with
# /usr/bin/time -v (wall time, "Maximum resident set size"). It counts the pool's blobs
# before and after each run: in plain mode both collectors must remove the same number
# (the script fails otherwise), which must be the generator's prediction.
#
# Each run is repeated REPEAT times (each on a fresh copy); the table gives the median
# wall time with the range. The filesystem the stores are on is named in the report,
# and where it sits on a block device, the device's discard requests during each run
# are counted from /sys/block/<dev>/stat: on a filesystem mounted with `discard` and
# without a journal (this VM's root), every freed block is a synchronous discard, and
# those, not the collector, set the floor of a -m run. `TMPDIR=/dev/shm` runs it all on
# tmpfs, where nothing is discarded.
#
# Environment: REPOS (100), MANIFESTS (10000), LAYERS (9), UNTAGGED (0.3), ORPHANS
# (5000), REPEAT (1), TMPDIR (where the stores go: ~2 GB each, three of them at most),
# DOCKER_REGISTRY (/usr/bin/docker-registry). Progress goes to stderr; everything it
# creates is removed on exit.
set -euo pipefail

REPOS=${REPOS:-100}
MANIFESTS=${MANIFESTS:-10000}
LAYERS=${LAYERS:-9}
UNTAGGED=${UNTAGGED:-0.3}
ORPHANS=${ORPHANS:-5000}
REPEAT=${REPEAT:-1}
DOCKER_REGISTRY=${DOCKER_REGISTRY:-/usr/bin/docker-registry}
OUT=""
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=${2:?--out needs a file}; shift 2 ;;
    --out=*) OUT=${1#--out=}; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
ROOT=$(pwd)
. scripts/bench-lib.sh

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

log "building (cargo build --release --workspace --bins)"
cargo build --release --workspace --bins >&2
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"
for bin in registry drydock-bench; do
  [ -x "$TARGET/$bin" ] || die "$TARGET/$bin was not built"
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/drydock-gc.XXXXXX")
cp "$TARGET/registry" "$TARGET/drydock-bench" "$WORK/"
RES="$WORK/results"
mkdir -p "$RES"
cut -d' ' -f1-3 /proc/loadavg >"$RES/load_start"
# Where the stores are: filesystem type, mount options, and the block device (if any)
# whose discard counters each run reads.
FS_TYPE=$(findmnt -n -o FSTYPE --target "$WORK" | head -1)
FS_SOURCE=$(findmnt -n -o SOURCE --target "$WORK" | head -1)
FS_OPTIONS=$(findmnt -n -o OPTIONS --target "$WORK" | head -1)
DEV_STAT=""
if [ -b "$FS_SOURCE" ]; then
  dev=$(basename "$(readlink -f "$FS_SOURCE")")
  if [ -r "/sys/class/block/$dev/stat" ]; then DEV_STAT="/sys/class/block/$dev/stat"; fi
fi
journal="-"
if [ "$FS_TYPE" = "ext4" ] && [ -n "$DEV_STAT" ]; then
  # ext4 names its journal thread here; "<none>" means no journal.
  jt="/sys/fs/ext4/$(basename "$(readlink -f "$FS_SOURCE")")/journal_task"
  [ -r "$jt" ] && journal=$(cat "$jt")
fi
echo "$FS_TYPE on ${FS_SOURCE:-?} (${FS_OPTIONS:-?}); ext4 journal task: $journal" >"$RES/fs"
log "stores on: $(cat "$RES/fs")"
# discards: the device's completed discard requests so far ("-" without a device).
discards() { if [ -n "$DEV_STAT" ]; then awk '{print $12}' "$DEV_STAT"; else echo -; fi; }
log "load average at start: $(cat "$RES/load_start")"

log "generating the store"
gen_store "$WORK/store" "$RES/gen.json"
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
expected=$(json_field "$RES/gen.json" expected_removed_blobs_plain)
[ "$(cat "$RES/dry-run.eligible")" = "$expected" ] ||
  die "docker-registry --dry-run plans to remove $(cat "$RES/dry-run.eligible") blobs; the generator expects $expected"
BLOBS_BEFORE=$(count_blobs "$WORK/store")
echo "$BLOBS_BEFORE" >"$RES/blobs_before"

# collect NAME MODE RUN: a fresh copy of the store, one timed collection, blob counts,
# discards.
collect() {
  local name=$1 mode=$2 run=$3 dir="$WORK/$1-$2" cfg rc=0 d0 d1
  local tag="$name-$mode.$run"
  log "$name, $mode, run $run of $REPEAT: copying the store"
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
  d0=$(discards)
  env -u RUST_LOG /usr/bin/time -v -o "$RES/$tag.time" "${cmd[@]}" \
    >"$RES/$tag.out" 2>"$RES/$tag.err" || rc=$?
  d1=$(discards)
  if [ "$rc" -ne 0 ]; then
    tail -20 "$RES/$tag.err" >&2
    die "$name garbage-collect ($mode) failed ($rc)"
  fi
  if [ "$d0" = "-" ]; then echo - >"$RES/$tag.discards"; else echo $(( d1 - d0 )) >"$RES/$tag.discards"; fi
  echo $(( BLOBS_BEFORE - $(count_blobs "$dir") )) >"$RES/$tag.removed"
  rm -rf "$dir" "$dir.yml"
}

for mode in plain untagged; do
  for run in $(seq 1 "$REPEAT"); do
    collect drydock "$mode" "$run"
    collect distribution "$mode" "$run"
  done
done
cut -d' ' -f1-3 /proc/loadavg >"$RES/load_end"

REPORT="$WORK/report.md"
python3 - "$RES" "$REPEAT" >"$REPORT" <<'EOF'
import json, os, re, sys
res, repeat = sys.argv[1], int(sys.argv[2])
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
def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
def runs(name, mode):
    """Median wall and CPU, peak RSS, discards (median) and removed blobs over the runs."""
    ts = [time_v(f"{name}-{mode}.{i}") for i in range(1, repeat + 1)]
    walls = [t["wall"] for t in ts]
    removed = {int(text(f"{name}-{mode}.{i}.removed")) for i in range(1, repeat + 1)}
    if len(removed) != 1:
        sys.exit(f"{name} {mode}: the runs removed different numbers of blobs: {sorted(removed)}")
    disc = [text(f"{name}-{mode}.{i}.discards") for i in range(1, repeat + 1)]
    disc = "-" if "-" in disc else f"{median([int(x) for x in disc]):,.0f}"
    return {"wall": median(walls), "lo": min(walls), "hi": max(walls),
            "cpu": median([t["cpu"] for t in ts]), "rss_mib": max(t["rss_mib"] for t in ts),
            "discards": disc, "removed": removed.pop()}
gen = json.loads(text("gen.json"))
out = []
p = out.append
p(f"Store: {gen['repositories']} repositories, {gen['manifests']:,} manifests "
  f"({gen['tagged_manifests']:,} tagged, {gen['untagged_manifests']:,} untagged), "
  f"{gen['blobs']:,} blobs ({gen['orphan_blobs']:,} orphans), {gen['layer_links']:,} layer "
  f"links; generated in {gen['seconds']:.1f} s. `docker-registry garbage-collect --dry-run` "
  f"on it: exit 0, {text('dry-run.eligible')} blobs eligible for deletion.")
p("")
p(f"Stores on: {text('fs')}. Runs per row: {repeat} (wall: median, with the range).")
p("")
p("| mode | collector | wall s | CPU s | peak RSS MiB | device discards | blobs removed (expected) | Distribution/drydock wall | drydock/Distribution RSS |")
p("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
def wall(x):
    return f"{x['wall']:.2f}" if repeat == 1 else f"{x['wall']:.2f} ({x['lo']:.2f}–{x['hi']:.2f})"
results = {}
for mode, label, exp in (("plain", "plain (keep untagged)", gen["expected_removed_blobs_plain"]),
                         ("untagged", "remove untagged (`-m` / `--delete-untagged`)",
                          gen["expected_removed_blobs_untagged"])):
    d, r = runs("drydock", mode), runs("distribution", mode)
    dn, rn = d["removed"], r["removed"]
    results[mode] = (d, r, dn, rn, exp)
    speed = r["wall"] / d["wall"] if d["wall"] > 0 else float("inf")
    mem = d["rss_mib"] / r["rss_mib"]
    p(f"| {label} | drydock | {wall(d)} | {d['cpu']:.2f} | {d['rss_mib']:.1f} | {d['discards']} | {dn:,} ({exp:,}) | {speed:.1f}× | {mem:.2f}× |")
    p(f"| {label} | Distribution 2.8.2 | {wall(r)} | {r['cpu']:.2f} | {r['rss_mib']:.1f} | {r['discards']} | {rn:,} ({exp:,}) | | |")
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
p(f"Wall time and peak RSS (the largest of the runs) from /usr/bin/time -v; device "
  f"discards: completed discard requests of the store's block device during the run "
  f"(`-` on a filesystem without one); each run on a fresh copy of the store "
  f"(made just before it, so both collectors start with the same warm page cache). "
  f"Load average at the start: {text('load_start')}; at the end: {text('load_end')}.")
print("\n".join(out))
EOF

if [ -n "$OUT" ]; then
  cp "$REPORT" "$OUT"
  log "written to $OUT"
fi
cat "$REPORT"
dn=$(cat "$RES/drydock-plain.1.removed")
rn=$(cat "$RES/distribution-plain.1.removed")
[ "$dn" = "$rn" ] || die "in plain mode drydock removed $dn blobs, Distribution $rn"
