#!/usr/bin/env bash
# Garbage collection on one S3 bucket: drydock's online collector against CNCF
# Distribution 2.8.2's `docker-registry garbage-collect` on its s3 driver, on copies of
# the same generated store in a Ceph RGW bucket.
#
#   bash scripts/bench-gc-s3.sh                      # markdown table on stdout
#   REPOS=100 MANIFESTS=1000 ORPHANS=500 bash scripts/bench-gc-s3.sh --out gc-s3.md
#   COLLECTORS=drydock bash scripts/bench-gc-s3.sh   # drydock alone (the 100k store)
#
# What it does: release builds (`registry`, `drydock-bench`, and the example `s3_tree`,
# which puts, counts and deletes keys with the S3 driver's client, 64 requests at a
# time); `drydock-bench gen-store` writes the store on disk (scripts/bench-gc.sh's
# generator and sizes); then for each mode (plain, and removing untagged manifests),
# each run and each collector (alternating which goes first) it puts the store into a
# fresh bucket root and collects there:
# - Distribution: `docker-registry garbage-collect [--delete-untagged]` with its s3
#   configuration, timed by /usr/bin/time -v (AWS_CA_BUNDLE unset: its driver panics on
#   it);
# - drydock: `registry serve` on the root (htpasswd, one admin), then what an operator
#   runs: `POST /admin/gc?wait=true&grace=0s[&remove_untagged=true]` over HTTP; the
#   request's wall time, and the cycle's own mark_ms and sweep_ms from its report. The
#   server's CPU and peak RSS are read from /proc around the cycle.
# It counts the pool's blobs (`blobs/.../data` keys) and the repositories' keys before
# and after each run. Both collectors must remove the same number of blobs, and the
# generator's prediction, in each mode: the script fails otherwise (after printing the
# table).
#
# Environment: REPOS (100), MANIFESTS (10000), LAYERS (9), UNTAGGED (0.3), ORPHANS
# (5000), REPEAT (1), MODES ("plain untagged"), COLLECTORS ("drydock distribution"),
# DOCKER_REGISTRY (/usr/bin/docker-registry). Uses the RGW named by DRYDOCK_TEST_S3_*
# when set (scripts/rgw.sh env DIR), else starts one and stops it on exit. The roots
# (bench-gc-s3-<pid>/...) stay in the bucket (RGW took over 30 s per DeleteObjects of
# 1,000 keys under load); everything else it creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

REPEAT=${REPEAT:-1}
MODES=${MODES:-plain untagged}
COLLECTORS=${COLLECTORS:-drydock distribution}
DOCKER_REGISTRY=${DOCKER_REGISTRY:-/usr/bin/docker-registry}
bench_args "$@"

for cmd in cargo python3 curl htpasswd; do
  command -v "$cmd" >/dev/null || die "$cmd is needed (htpasswd: apt-get install apache2-utils)"
done
[ -x /usr/bin/time ] || die "/usr/bin/time is needed (apt-get install time)"
case " $COLLECTORS " in
  *" distribution "*) [ -x "$DOCKER_REGISTRY" ] || die "$DOCKER_REGISTRY not found (apt-get install docker-registry)" ;;
esac

bench_setup gc-s3
cleanup() {
  bench_cleanup
  bench_s3_cleanup
}
trap cleanup EXIT
bench_s3_setup
PREFIX="bench-gc-s3-$$"
cut -d' ' -f1-3 /proc/loadavg >"$RES/load_start"
log "load average at start: $(cat "$RES/load_start")"

log "generating the store"
gen_store "$WORK/store" "$RES/gen.json"
cat "$RES/gen.json" >&2

# collect NAME MODE RUN: the store put into a fresh root, one collection, key counts.
collect() {
  local name=$1 mode=$2 run=$3
  local tag="$name-$mode.$run" root="$PREFIX/$name-$mode-$run"
  log "$name, $mode, run $run of $REPEAT: putting the store into $root"
  s3 put "$WORK/store" "$root" >"$RES/$tag.put"
  log "  $(cat "$RES/$tag.put")"
  local v2="$root/docker/registry/v2" blobs0 repo0
  blobs0=$(s3 count "$v2/blobs" /data)
  repo0=$(s3 count "$v2/repositories")
  local cfg="$WORK/$tag.yml" rc=0
  case $name in
    distribution)
      { echo "version: 0.1"; echo "log: {level: error, accesslog: {disabled: true}}"
        bench_s3_storage "/$root"; } >"$cfg"
      local flags=()
      [ "$mode" = untagged ] && flags=(--delete-untagged)
      log "  $DOCKER_REGISTRY garbage-collect ${flags[*]}"
      env -u AWS_CA_BUNDLE "${CLEAN_ENV[@]}" /usr/bin/time -v -o "$RES/$tag.time" \
        "$DOCKER_REGISTRY" garbage-collect "${flags[@]}" "$cfg" >"$RES/$tag.out" 2>"$RES/$tag.err" || rc=$?
      [ "$rc" -eq 0 ] || { tail -20 "$RES/$tag.err" >&2; die "docker-registry garbage-collect ($mode) failed ($rc)"; }
      ;;
    drydock)
      local host="127.0.0.1:$(free_port)" code="" i
      { bench_s3_storage "/$root"
        echo "log: {level: warn, accesslog: {disabled: true}}"
        echo "http: {addr: '$host'}"
        echo "auth: {htpasswd: {path: $WORK/htpasswd}}"
        echo "access: {admins: [bench]}"
        echo "gc: {on_startup: false}"
        echo "maintenance: {enabled: false}"; } >"$cfg"
      env "${CLEAN_ENV[@]}" "$WORK/registry" serve "$cfg" 2>"$RES/$tag.log" &
      PID=$!
      for i in $(seq 1 600); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://$host/v2/" || true)
        [ "$code" != 000 ] && break
        kill -0 "$PID" 2>/dev/null || { tail -20 "$RES/$tag.log" >&2; die "the server stopped"; }
        sleep 0.1
      done
      [ "$code" = 401 ] || die "the server answers /v2/ with $code"
      local q="wait=true&grace=0s" c0 t0 t1
      [ "$mode" = untagged ] && q="$q&remove_untagged=true"
      log "  POST /admin/gc?$q"
      c0=$(server_cpu "$PID")
      t0=$(date +%s.%N)
      curl -sf -u "bench:$PASS" -X POST -o "$RES/$tag.json" "http://$host/admin/gc?$q" || rc=$?
      t1=$(date +%s.%N)
      echo "$(( $(server_cpu "$PID") - c0 )) $(getconf CLK_TCK)" >"$RES/$tag.cpu"
      awk '/VmHWM/ {print $2}' "/proc/$PID/status" >"$RES/$tag.rss"
      python3 -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' "$t0" "$t1" >"$RES/$tag.wall"
      kill "$PID"
      wait "$PID" || true
      PID=""
      [ "$rc" -eq 0 ] || { tail -20 "$RES/$tag.log" >&2; die "POST /admin/gc failed (curl $rc)"; }
      ;;
  esac
  echo $(( blobs0 - $(s3 count "$v2/blobs" /data) )) >"$RES/$tag.removed"
  echo $(( repo0 - $(s3 count "$v2/repositories") )) >"$RES/$tag.repo_removed"
  echo "$blobs0" >"$RES/$tag.blobs_before"
  log "  removed $(cat "$RES/$tag.removed") of $blobs0 blobs, $(cat "$RES/$tag.repo_removed") of $repo0 repository keys"
}

for mode in $MODES; do
  for run in $(seq 1 "$REPEAT"); do
    # shellcheck disable=SC2086
    for name in $(bench_order "$run" $COLLECTORS); do collect "$name" "$mode" "$run"; done
  done
done
cut -d' ' -f1-3 /proc/loadavg >"$RES/load_end"

python3 - "$RES" "$REPEAT" "$MODES" "$COLLECTORS" "$(git rev-parse --short HEAD)" <<'EOF' | tee ${OUT:+"$OUT"}
import json, os, re, statistics, sys
res, repeat, modes, collectors, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split(), sys.argv[5]
def text(n):
    with open(os.path.join(res, n)) as f:
        return f.read().strip()
def one(name, mode, i):
    tag = f"{name}-{mode}.{i}"
    r = {"removed": int(text(tag + ".removed")), "repo": int(text(tag + ".repo_removed")),
         "put": json.loads(text(tag + ".put"))}
    if name == "distribution":
        t = text(tag + ".time")
        secs = 0.0
        for part in re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t).group(1).split(":"):
            secs = secs * 60 + float(part)
        r["wall"] = secs
        r["cpu"] = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", t).group(1)) for k in ("User", "System"))
        r["rss"] = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
        r["mark"] = r["sweep"] = None
    else:
        rep = json.loads(text(tag + ".json"))
        ticks, hz = map(int, text(tag + ".cpu").split())
        r["wall"] = float(text(tag + ".wall"))
        r["cpu"] = ticks / hz
        r["rss"] = int(text(tag + ".rss")) / 1024
        r["mark"], r["sweep"] = rep["mark_ms"] / 1e3, rep["sweep_ms"] / 1e3
        r["reported_blobs"] = rep["blobs_removed"]
    return r
gen = json.loads(text("gen.json"))
print(f"Store: {gen['repositories']} repositories, {gen['manifests']:,} manifests "
      f"({gen['untagged_manifests']:,} untagged), {gen['blobs']:,} blobs "
      f"({gen['orphan_blobs']:,} orphans), {gen['layer_links']:,} layer links, "
      f"{gen['bytes'] / 2**20:,.0f} MiB; commit {commit}; {repeat} run(s) per row (median).")
print()
print("| mode | collector | wall s | mark s | sweep s | CPU s | peak RSS MiB | blobs removed (expected) | repository keys removed | Distribution/drydock wall |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
bad, fills = [], []
for mode in modes:
    exp = gen["expected_removed_blobs_plain" if mode == "plain" else "expected_removed_blobs_untagged"]
    med = {}
    for name in collectors:
        rs = [one(name, mode, i) for i in range(1, repeat + 1)]
        fills += [r["put"] for r in rs]
        m = lambda k: statistics.median(r[k] for r in rs) if rs[0][k] is not None else None
        med[name] = m("wall")
        removed = sorted({r["removed"] for r in rs})
        for r in rs:
            if r["removed"] != exp:
                bad.append(f"{name} {mode}: removed {r['removed']} blobs, expected {exp}")
            if "reported_blobs" in r and r["reported_blobs"] != r["removed"]:
                bad.append(f"{name} {mode}: its report says {r['reported_blobs']} blobs, the bucket lost {r['removed']}")
        f = lambda x: "-" if x is None else f"{x:,.2f}"
        ratio = ""
        if name == collectors[-1] and {"drydock", "distribution"} <= med.keys():
            ratio = f"{med['distribution'] / med['drydock']:.1f}×"
        label = "Distribution 2.8.2" if name == "distribution" else "drydock"
        print(f"| {mode} | {label} | {f(m('wall'))} | {f(m('mark'))} | {f(m('sweep'))} | {f(m('cpu'))} | "
              f"{f(max(r['rss'] for r in rs))} | {', '.join(f'{x:,}' for x in removed)} ({exp:,}) | "
              f"{', '.join(f'{x:,}' for x in sorted({r['repo'] for r in rs}))} | {ratio} |")
print()
objs = fills[0]["objects"]
rate = statistics.median(p["objects"] / p["seconds"] for p in fills)
print(f"Each run on a fresh root: the store's {objs:,} files put into it by s3_tree "
      f"(64 requests at a time, median {rate:,.0f} objects/s). drydock: the `POST "
      f"/admin/gc?wait=true` request's wall time, the cycle's own mark and sweep, the "
      f"server's CPU during it; Distribution: /usr/bin/time -v of the command. Load "
      f"average at the start: {text('load_start')}; at the end: {text('load_end')}.")
if bad:
    print()
    for b in bad:
        print(f"MISMATCH: {b}")
    sys.exit(1)
EOF
