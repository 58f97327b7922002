#!/usr/bin/env bash
# Replicas on one bucket behind nginx (round robin, docs/storage.md's example): aggregate
# push and pull MiB/s and manifest GET req/s through the balancer with 1, 2 and 3
# replicas, and one GC cycle on a generated store with and without a push/pull load
# running meanwhile. On a 2-core machine that also runs RGW, PostgreSQL, nginx and the
# clients, more replicas add overhead, not capacity: the figures show the overhead.
#
#   bash scripts/bench-replicas.sh [--out FILE]
#
# For each replica count N (REPLICAS, "1 2 3"): a fresh bucket root and database, N
# release `registry serve` processes in replica mode (htpasswd, one admin, no GC at
# start-up), nginx in front; then through nginx CLIENTS (4) concurrent
# `drydock-bench push-blob` of distinct SIZE_MIB (64) files, then the same pulls
# (`pull-blob`, verified), each timed as a whole (aggregate MiB/s = bytes / wall), and
# `drydock-bench manifest` (CONNS connections, DURATION). Blob GETs are served by the
# replicas (`storage.redirect.disable`), not redirected to the bucket. Then GC_REPLICAS (2) replicas
# on a root holding a `drydock-bench gen-store` store (REPOS, MANIFESTS, ... as
# scripts/bench-gc.sh; put with s3_tree): `POST /admin/gc?wait=true&grace=0s` to the
# first replica, once quiet, and once (on a fresh copy) while CLIENTS push/pull loops
# run through nginx; the cycle's wall, mark and sweep, and the load's errors (must be 0).
#
# Uses the RGW named by DRYDOCK_TEST_S3_* and the PostgreSQL named by DRYDOCK_TEST_PG_*
# when set, else starts them (scripts/rgw.sh, scripts/pg.sh) and stops them on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

REPLICAS=${REPLICAS:-1 2 3}
GC_REPLICAS=${GC_REPLICAS:-2}
CLIENTS=${CLIENTS:-4}
SIZE_MIB=${SIZE_MIB:-64}
bench_args "$@"
for cmd in cargo python3 curl htpasswd nginx psql; do
  command -v "$cmd" >/dev/null || die "$cmd is needed"
done

bench_setup replicas
PG_DIR="" PIDS=()
stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
cleanup() {
  stop_all
  bench_cleanup
  bench_s3_cleanup
  if [ -n "$PG_DIR" ]; then bash scripts/pg.sh stop "$PG_DIR"; fi
}
trap cleanup EXIT
bench_s3_setup
if [ -z "${DRYDOCK_TEST_PG_HOST:-}" ]; then
  PG_DIR=$(bash scripts/pg.sh start)
  eval "$(bash scripts/pg.sh env "$PG_DIR")"
fi
PREFIX="bench-replicas-$$"
export DRYDOCK_BENCH_AUTHORIZATION="Basic $(printf 'bench:%s' "$PASS" | base64 -w0)"
psql_admin() {
  psql -q -h "$DRYDOCK_TEST_PG_HOST" -p "$DRYDOCK_TEST_PG_PORT" -U "$DRYDOCK_TEST_PG_USER" \
    -d postgres -c "$1" >/dev/null
}
for c in $(seq 1 "$CLIENTS"); do head -c $((SIZE_MIB << 20)) /dev/urandom >"$WORK/file.$c"; done
cut -d' ' -f1-3 /proc/loadavg >"$RES/load_start"
log "load average at start: $(cat "$RES/load_start")"

# wait_answers URL: until GET URL answers at all (bounded).
wait_answers() {
  local i
  for i in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" != 000 ] && return 0
    sleep 0.1
  done
  die "$1 does not answer"
}

# start_replicas N ROOT DB: N replicas on bucket root ROOT and database DB behind nginx;
# sets LB (the balancer's URL) and FIRST (the first replica's).
start_replicas() {
  local n=$1 root=$2 db=$3 i host upstream=""
  psql_admin "CREATE DATABASE $db"
  for i in $(seq 1 "$n"); do
    host="127.0.0.1:$(free_port)"
    # Blobs served through the replicas, not by a redirect to the bucket.
    { bench_s3_storage "/$root"
      echo "  redirect: {disable: true}"
      echo "log: {level: warn, accesslog: {disabled: true}}"
      echo "http: {addr: '$host'}"
      echo "auth: {htpasswd: {path: $WORK/htpasswd}}"
      echo "access: {admins: [bench]}"
      echo "gc: {on_startup: false}"
      echo "maintenance: {enabled: false}"
      echo "database: {enabled: true, host: $DRYDOCK_TEST_PG_HOST, port: $DRYDOCK_TEST_PG_PORT, user: $DRYDOCK_TEST_PG_USER, dbname: $db, sslmode: disable}"
    } >"$WORK/replica.$i.yml"
    env "${CLEAN_ENV[@]}" "$WORK/registry" serve "$WORK/replica.$i.yml" 2>"$RES/$db.replica.$i.log" &
    PIDS+=($!)
    wait_answers "http://$host/v2/"
    [ "$i" = 1 ] && FIRST="http://$host"
    upstream+="    server $host;"$'\n'
  done
  local port dir="$WORK/nginx-$db"
  port=$(free_port)
  mkdir -p "$dir"
  # docs/storage.md's example, on loopback.
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {}
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  upstream drydock {
$upstream  }
  server {
    listen 127.0.0.1:$port;
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_read_timeout 900s;
    location / {
      proxy_pass http://drydock;
      proxy_http_version 1.1;
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
  nginx -p "$dir" -c "$dir/nginx.conf" 2>"$dir/nginx.log" &
  PIDS+=($!)
  LB="http://127.0.0.1:$port"
  wait_answers "$LB/v2/"
}

# parallel NAME CMD...: CMD run by CLIENTS clients at once (CLIENT replaced by 1..CLIENTS
# in its arguments); writes the wall seconds to $RES/NAME.wall, fails if one failed.
parallel() {
  local name=$1 c pids=() t0 t1 failed=0
  shift
  t0=$(date +%s.%N)
  for c in $(seq 1 "$CLIENTS"); do
    "${@//CLIENT/$c}" >"$RES/$name.$c.out" 2>&1 &
    pids+=($!)
  done
  for c in "${pids[@]}"; do wait "$c" || failed=1; done
  t1=$(date +%s.%N)
  [ "$failed" = 0 ] || { cat "$RES/$name".*.out >&2; die "$name: a client failed"; }
  python3 -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' "$t0" "$t1" >"$RES/$name.wall"
}

for n in $REPLICAS; do
  log "$n replica(s)"
  start_replicas "$n" "$PREFIX/r$n" "bench_r$n"
  parallel "push.$n" "$WORK/drydock-bench" push-blob --url "$LB" --file "$WORK/file.CLIENT" \
    --repo "bench/r$n-CLIENT"
  parallel "pull.$n" "$WORK/drydock-bench" pull-blob --url "$LB" --file "$WORK/file.CLIENT" \
    --repo "bench/r$n-CLIENT" --repeat 1
  "$WORK/drydock-bench" manifest --url "$LB" -c "$CONNS" -d "$DURATION" --json >"$RES/manifest.$n.json"
  stop_all
done

# The GC cycle, quiet and under load, on fresh copies of one generated store.
gen_store "$WORK/store" "$RES/gen.json"
# gc_cycle NAME LOADED: the store put into a fresh root, GC_REPLICAS replicas, one cycle.
gc_cycle() {
  local name=$1 loaded=$2 root="$PREFIX/$1" loop=()
  s3 put "$WORK/store" "$root" >"$RES/$name.put"
  start_replicas "$GC_REPLICAS" "$root" "bench_$name"
  if [ "$loaded" = yes ]; then
    # Push and pull loops through nginx until the cycle ends (or 30 minutes).
    rm -f "$WORK/stop.$name"
    local c
    for c in $(seq 1 "$CLIENTS"); do
      ( i=0
        while [ ! -e "$WORK/stop.$name" ] && [ "$i" -lt 1000 ]; do
          i=$((i + 1))
          "$WORK/drydock-bench" push-blob --url "$LB" --file "$WORK/file.$c" --repo "bench/gc-$c-$i" --json || exit 1
          "$WORK/drydock-bench" pull-blob --url "$LB" --file "$WORK/file.$c" --repo "bench/gc-$c-$i" --repeat 1 --json || exit 1
        done ) >"$RES/$name.load.$c.out" 2>&1 &
      loop+=($!)
    done
  fi
  curl -sf -u "bench:$PASS" -X POST -o "$RES/$name.json" -w '%{time_total}\n' \
    "$FIRST/admin/gc?wait=true&grace=0s" >"$RES/$name.wall" || die "$name: POST /admin/gc failed"
  if [ "$loaded" = yes ]; then
    touch "$WORK/stop.$name"
    local p failed=0
    for p in "${loop[@]}"; do wait "$p" || failed=1; done
    [ "$failed" = 0 ] || { tail -5 "$RES/$name".load.*.out >&2; die "$name: a load client failed"; }
  fi
  stop_all
}
gc_cycle gc_quiet no
gc_cycle gc_loaded yes
cut -d' ' -f1-3 /proc/loadavg >"$RES/load_end"

python3 - "$RES" "$REPLICAS" "$CLIENTS" "$SIZE_MIB" "$CONNS" "$DURATION" "$GC_REPLICAS" "$(git rev-parse --short HEAD)" <<'EOF' | tee ${OUT:+"$OUT"}
import glob, json, os, sys
res, replicas, clients, size, conns, duration, gc_n, commit = sys.argv[1:]
clients, size = int(clients), int(size)
def text(n):
    with open(os.path.join(res, n)) as f:
        return f.read().strip()
print(f"Through nginx (round robin), {clients} clients each moving a distinct {size} MiB blob "
      f"(push, then pull), manifest GET by tag with {conns} connections for {duration}; "
      f"commit {commit}.")
print()
print("| replicas | push MiB/s | pull MiB/s | manifest GET req/s | p99 ms |")
print("| ---: | ---: | ---: | ---: | ---: |")
for n in replicas.split():
    push = clients * size / float(text(f"push.{n}.wall"))
    pull = clients * size / float(text(f"pull.{n}.wall"))
    row = json.loads(text(f"manifest.{n}.json"))["rows"][0]
    if row["errors"]:
        sys.exit(f"{n} replicas: {row['errors']} manifest GETs failed")
    print(f"| {n} | {push:,.1f} | {pull:,.1f} | {row['ops_per_s']:,.0f} | {row['latency']['p99_ms']:.2f} |")
print()
gen = json.loads(text("gen.json"))
print(f"One GC cycle (`POST /admin/gc?wait=true&grace=0s` to one of {gc_n} replicas) on a "
      f"fresh root holding {gen['repositories']} repositories, {gen['manifests']:,} manifests, "
      f"{gen['blobs']:,} blobs ({gen['orphan_blobs']:,} orphans):")
print()
print("| load | wall s | mark s | sweep s | blobs removed (expected) | pushes+pulls during it |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
bad = False
for name, label in (("gc_quiet", "none"), ("gc_loaded", f"{clients} clients pushing and pulling")):
    rep = json.loads(text(f"{name}.json"))
    ops = "-"
    if name == "gc_loaded":
        ops = sum(open(f).read().count('"rows"') for f in glob.glob(os.path.join(res, f"{name}.load.*.out")))
    if rep["blobs_removed"] != gen["expected_removed_blobs_plain"]:
        bad = True
    print(f"| {label} | {float(text(name + '.wall')):.2f} | {rep['mark_ms'] / 1e3:.2f} | "
          f"{rep['sweep_ms'] / 1e3:.2f} | {rep['blobs_removed']:,} ({gen['expected_removed_blobs_plain']:,}) | {ops} |")
print()
print(f"Load average at the start: {text('load_start')}; at the end: {text('load_end')}.")
if bad:
    sys.exit("MISMATCH: a cycle removed other than the generator's orphans")
EOF
