# Shared by the A/B benchmarks of the hot path (bench-metrics.sh, bench-auth.sh); sourced,
# not run. After `bench_args "$@"` and `bench_setup NAME`:
# $WORK holds release builds of `registry` and `drydock-bench`, the server in $PID is
# stopped on exit, and CLEAN_ENV unsets what would change a server's configuration.

# bench_args "$@": ROUNDS, DURATION and CONNS from the environment (6, 10s, 32) and
# OUT from `--out FILE`.
bench_args() {
  ROUNDS=${ROUNDS:-6}
  DURATION=${DURATION:-10s}
  CONNS=${CONNS:-32}
  OUT=""
  if [ "${1:-}" = "--out" ]; then
    OUT=${2:?--out FILE}
  fi
}

log() { echo "== $*" >&2; }
die() { echo "FATAL: $*" >&2; exit 1; }

bench_setup() {
  log "building (cargo build --release --workspace --bins)"
  cargo build --release --workspace --bins >&2
  local target="${CARGO_TARGET_DIR:-$PWD/target}/release"
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/drydock-$1.XXXXXX")
  cp "$target/registry" "$target/drydock-bench" "$WORK/"
  PID=""
  trap bench_cleanup EXIT
  CLEAN_ENV=(-u RUST_LOG -u DRYDOCK_BENCH_AUTHORIZATION)
  while read -r var; do CLEAN_ENV+=(-u "$var"); done < <(compgen -e | grep '^REGISTRY_' || true)
}

bench_cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$WORK"
}

# bench_config ROOT: the configuration every measured server shares (fresh root, access
# log off, log level warn, no GC at start-up, no maintenance); the caller adds `http`.
bench_config() {
  echo "log: {level: warn, accesslog: {disabled: true}}"
  echo "storage: {filesystem: {rootdirectory: $1}, delete: {enabled: true}}"
  echo "gc: {on_startup: false}"
  echo "maintenance: {enabled: false}"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# server_cpu PID: the process's user+system CPU so far, in clock ticks.
server_cpu() {
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# bench_row MODE JSON [CPU_TICKS]: appends "MODE req/s p99 cpu-us-per-request" from
# drydock-bench's JSON (and the server's CPU ticks over the run, "-" without) to
# $WORK/rows; fails if a request failed.
bench_row() {
  python3 - "$1" "$2" "${3:--}" "$(getconf CLK_TCK)" >>"$WORK/rows" <<'PY'
import json, sys
row = json.load(open(sys.argv[2]))["rows"][0]
if row["errors"]:
    sys.exit(f"{sys.argv[1]}: {row['errors']} failed requests")
ticks, hz = sys.argv[3], int(sys.argv[4])
cpu = "-" if ticks == "-" else f"{int(ticks) / hz * 1e6 / max(row['ops'], 1):.1f}"
print(sys.argv[1], row["ops_per_s"], row["latency"]["p99_ms"], cpu)
PY
}

# bench_order ROUND MODE...: the modes rotated by the round, one a line, so no mode
# always runs first (or last).
bench_order() {
  local round=$1
  shift
  local modes=("$@")
  local k=$(( (round - 1) % $# ))
  printf '%s\n' "${modes[@]:k}" "${modes[@]:0:k}"
}

# bench_summary LABEL TARGET BASE MODE...: the table of $WORK/rows (to $OUT too when
# set) and each other mode's median req/s (and server CPU per request, when measured)
# over BASE's; the req/s ratio is judged against TARGET.
bench_summary() {
  python3 - "$WORK/rows" "$ROUNDS" "$DURATION" "$CONNS" "$(git rev-parse --short HEAD)" "$@" \
    <<'PY' | tee ${OUT:+"$OUT"}
import statistics, sys
rows_file, rounds, duration, conns, commit, label, target, base, *modes = sys.argv[1:]
by = {m: [] for m in modes}
for mode, rps, p99, cpu in (l.split() for l in open(rows_file)):
    by[mode].append((float(rps), float(p99), None if cpu == "-" else float(cpu)))
with_cpu = all(c is not None for v in by.values() for _, _, c in v)
print(f"manifest GET by tag, {conns} connections, {duration} per run, "
      f"{rounds} rounds in rotating order (commit {commit}):\n")
head = f"| {label} | req/s per round | median req/s | median p99 ms |"
rule = "| --- | --- | ---: | ---: |"
if with_cpu:
    head += " median server CPU µs/request |"
    rule += " ---: |"
print(head)
print(rule)
med, cpu = {}, {}
for mode in modes:
    v = by[mode]
    med[mode] = statistics.median(r for r, _, _ in v)
    p99 = statistics.median(p for _, p, _ in v)
    line = f"| {mode} | {', '.join(f'{r:,.0f}' for r, _, _ in v)} | {med[mode]:,.0f} | {p99:.2f} |"
    if with_cpu:
        cpu[mode] = statistics.median(c for _, _, c in v)
        line += f" {cpu[mode]:.1f} |"
    print(line)
print()
for mode in modes:
    if mode != base:
        text = f"{mode}/{base}: {med[mode] / med[base]:.3f} req/s (target: at least {target})"
        if with_cpu:
            text += f", {cpu[mode] / cpu[base]:.3f} server CPU per request"
        print(text)
PY
}

# gen_store DIR JSON: a store in Distribution's layout from `drydock-bench gen-store`
# (REPOS 100, MANIFESTS 10000, LAYERS 9, UNTAGGED 0.3, ORPHANS 5000 from the
# environment), its report in JSON; needs $WORK/drydock-bench.
gen_store() {
  "$WORK/drydock-bench" gen-store --repos "${REPOS:-100}" --manifests "${MANIFESTS:-10000}" \
    --layers-per-manifest "${LAYERS:-9}" --untagged-fraction "${UNTAGGED:-0.3}" \
    --orphans "${ORPHANS:-5000}" --json "$1" >"$2"
}

# json_field FILE KEY: one top-level field of a JSON file.
json_field() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# bench_s3_storage ROOTDIR: a `storage` section on the bucket root ROOTDIR of the S3
# server named by DRYDOCK_TEST_S3_* (scripts/rgw.sh env), deletes on; drydock and
# Distribution both read it.
bench_s3_storage() {
  cat <<YAML
storage:
  s3:
    region: $DRYDOCK_TEST_S3_REGION
    regionendpoint: $DRYDOCK_TEST_S3_ENDPOINT
    bucket: $DRYDOCK_TEST_S3_BUCKET
    rootdirectory: $1
    accesskey: $DRYDOCK_TEST_S3_ACCESS_KEY
    secretkey: $DRYDOCK_TEST_S3_SECRET_KEY
    forcepathstyle: true
    secure: false
  delete:
    enabled: true
YAML
}

# bench_s3_setup NAME: after bench_setup NAME, the S3 side of a benchmark: $WORK/s3_tree
# (release build of the example), the RGW named by DRYDOCK_TEST_S3_* or one started now
# (RGW_DIR, stopped by bench_s3_cleanup), $WORK/htpasswd with the admin `bench` whose
# password is $PASS, and $RES.
bench_s3_setup() {
  log "building the S3 tool (cargo build --release -p registry --example s3_tree)"
  cargo build --release -p registry --example s3_tree >&2
  cp "${CARGO_TARGET_DIR:-$PWD/target}/release/examples/s3_tree" "$WORK/"
  RGW_DIR=""
  if [ -z "${DRYDOCK_TEST_S3_ENDPOINT:-}" ]; then
    RGW_DIR=$(bash scripts/rgw.sh start)
    eval "$(bash scripts/rgw.sh env "$RGW_DIR")"
  fi
  RES="$WORK/results"
  mkdir -p "$RES"
  PASS=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
  htpasswd -Bbn bench "$PASS" >"$WORK/htpasswd" 2>/dev/null
}

bench_s3_cleanup() {
  if [ -n "${RGW_DIR:-}" ]; then bash scripts/rgw.sh stop "$RGW_DIR"; fi
}

s3() { "$WORK/s3_tree" "$@"; }
