#!/usr/bin/env bash
# drydock against CNCF Distribution 2.8.2 (Debian's docker-registry) and against the
# machine itself, in one run on this machine, over loopback, one server at a time.
#
#   bash scripts/bench-compare.sh                    # markdown table on stdout
#   bash scripts/bench-compare.sh --out results.md   # ... written to a file
#
# What it does: cargo build --release --workspace --bins; creates two random test files of SIZE_MIB
# (drydock-bench gen-file); measures the references (openssl dgst -sha256 on the file, best of 3;
# dd bs=4M conv=fdatasync of it, a private nginx serving it and a small static file;
# nginx stays up, idle, and is pulled from again right before each registry's pull);
# then starts drydock (fresh root, access log off, log level warn, no GC at startup)
# and runs every drydock-bench scenario against it, stops it, repeats the pushes and
# the pull with storage.filesystem.directwrites on, and does the same with
# docker-registry (its OWN config: fresh root, access log off, log level error, deletes
# on, http.secret set, no auth). Each server's VmHWM (peak RSS) is sampled from
# /proc/PID/status over its whole run. Prints absolute numbers and the ratios
# drydock/Distribution and drydock/reference, and the issue's targets met or missed.
#
# Environment: SIZE_MIB (512), DURATION (10s per load row), CONNS (32), LIST_CONNS (8),
# TAGS (5000), REPOS (1000), CLIENTS (16), IMAGES (640), CHUNK_MIB (64), TMPDIR (where
# the files and roots go), DOCKER_REGISTRY (/usr/bin/docker-registry), NGINX (nginx).
# Progress goes to stderr. Everything it creates is removed on exit. Run it on a quiet
# machine: the load average at the start and the end is part of the output.
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-512}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
LIST_CONNS=${LIST_CONNS:-8}
TAGS=${TAGS:-5000}
REPOS=${REPOS:-1000}
CLIENTS=${CLIENTS:-16}
IMAGES=${IMAGES:-640}
CHUNK_MIB=${CHUNK_MIB:-64}
DOCKER_REGISTRY=${DOCKER_REGISTRY:-/usr/bin/docker-registry}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
OUT=""
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=${2:?--out needs a file}; shift 2 ;;
    --out=*) OUT=${1#--out=}; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || { echo "SIZE_MIB must be a positive integer" >&2; exit 2; }

cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { echo "== $*" >&2; }
die() { echo "FATAL: $*" >&2; exit 1; }

for cmd in cargo curl openssl dd python3 wrk; do
  command -v "$cmd" >/dev/null || die "$cmd is needed (apt-get install -y --no-install-recommends wrk curl openssl python3)"
done
[ -x "$DOCKER_REGISTRY" ] || die "$DOCKER_REGISTRY not found (apt-get install docker-registry)"
[ -x "$NGINX" ] || die "nginx not found (apt-get install nginx)"

WORK=""
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'echo "terminated" >&2; exit 143' TERM

log "building (cargo build --release --workspace --bins)"
cargo build --release --workspace --bins >&2
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"
for bin in registry drydock-bench; do
  [ -x "$TARGET/$bin" ] || die "$TARGET/$bin was not built"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/drydock-compare.XXXXXX")
chmod 755 "$WORK" # nginx's workers run as another user
need_kib=$(( SIZE_MIB * 1024 * 7 ))
free_kib=$(df -Pk "$WORK" | awk 'NR==2 {print $4}')
[ "$free_kib" -ge "$need_kib" ] || die "$WORK needs $((need_kib / 1024)) MiB free, has $((free_kib / 1024))"
# Private copies: a rebuild during the run cannot change what is measured.
cp "$TARGET/registry" "$TARGET/drydock-bench" "$WORK/"
DRYDOCK="$WORK/registry"
BENCH="$WORK/drydock-bench"
RES="$WORK/results"
mkdir -p "$RES"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
now() { date +%s.%N; }
elapsed() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.6f}")' "$1" "$2"; }
# bench OUT.json ARGS...: runs drydock-bench with --json. Exit 2 means it ran but some
# requests failed: the report (which counts and quotes them) is kept and shown.
bench() {
  local out=$1 rc=0
  shift
  "$BENCH" "$@" --json >"$out" || rc=$?
  if [ "$rc" -eq 2 ]; then
    echo "WARNING: drydock-bench $* had errors:" >&2
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); [print("  ", e, file=sys.stderr) for e in r["error_samples"]]' "$out"
  elif [ "$rc" -ne 0 ]; then
    die "drydock-bench $* failed ($rc)"
  fi
}

# Starts a sampler of VmHWM of $1 into $2 (the highest value seen).
start_hwm_sampler() {
  ( set +e
    max=0
    while kill -0 "$1" 2>/dev/null; do
      v=$(awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null)
      if [ -n "$v" ] && [ "$v" -gt "$max" ]; then max=$v; echo "$max" >"$2"; fi
      sleep 0.5
    done ) &
  PIDS+=("$!")
}

# Both servers read REGISTRY_* overrides from the environment: start them without any.
CLEAN_ENV=(-u RUST_LOG)
while read -r var; do CLEAN_ENV+=(-u "$var"); done < <(compgen -e | grep '^REGISTRY_' || true)

cut -d' ' -f1-3 /proc/loadavg >"$RES/load_start"
log "load average at start: $(cat "$RES/load_start")"

# ---- test files and references ---------------------------------------------------------
log "creating two $SIZE_MIB MiB random test files"
"$BENCH" gen-file --size-mib "$SIZE_MIB" --file "$WORK/blob.bin" >/dev/null
"$BENCH" gen-file --size-mib "$SIZE_MIB" --file "$WORK/blob2.bin" >/dev/null
sync

# The best of three: one run right after the files are written and synced measured
# 1,161 MiB/s where others made 1,388, which made the push target easier to meet.
log "reference: openssl dgst -sha256 (best of 3)"
best=""
for _ in 1 2 3; do
  t0=$(now); openssl dgst -sha256 -r "$WORK/blob.bin" >/dev/null; t1=$(now)
  secs=$(elapsed "$t0" "$t1")
  if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)" "$secs" "$best"; then
    best=$secs
  fi
done
echo "$best" >"$RES/ref_sha_s"
log "reference: dd bs=4M conv=fdatasync"
t0=$(now); dd if="$WORK/blob.bin" of="$WORK/dd.tmp" bs=4M conv=fdatasync status=none; t1=$(now)
elapsed "$t0" "$t1" >"$RES/ref_dd_s"
rm -f "$WORK/dd.tmp"
sync

log "reference: nginx"
NPORT=$(free_port)
mkdir -p "$WORK/nginx/tmp" "$WORK/www"
ln "$WORK/blob.bin" "$WORK/www/blob.bin"
python3 - "$WORK/www/small.json" <<'EOF'
import json, os, sys
# A static JSON file of about a small manifest's size.
doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                  "digest": "sha256:" + os.urandom(32).hex(), "size": 250},
       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                   "digest": "sha256:" + os.urandom(32).hex(), "size": 4096} for _ in range(2)]}
open(sys.argv[1], "w").write(json.dumps(doc))
EOF
stat -c %s "$WORK/www/small.json" >"$RES/small_bytes"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  default_type application/octet-stream;
  types { application/json json; }
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  server {
    listen 127.0.0.1:$NPORT;
    root $WORK/www;
  }
}
EOF
"$NGINX" -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
"$BENCH" wait --url "http://127.0.0.1:$NPORT" || { cat "$WORK/nginx/error.log" >&2; die "nginx did not start"; }
bench "$RES/nginx-get-noverify.json" get --url "http://127.0.0.1:$NPORT/blob.bin" \
  --file "$WORK/blob.bin" --no-verify
bench "$RES/nginx-get-verify.json" get --url "http://127.0.0.1:$NPORT/blob.bin" \
  --file "$WORK/blob.bin"
curl -sS -o /dev/null -w '%{speed_download}\n' "http://127.0.0.1:$NPORT/blob.bin" >"$RES/nginx-curl-bps"
wrk -t2 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$NPORT/small.json" >"$RES/nginx-wrk.txt"
# nginx keeps running: each registry's pull is paired with an nginx pull made just
# before it (cleanup stops it).

# ---- the registries ------------------------------------------------------------------
# run_all NAME URL: every scenario; each result to $RES/NAME-<scenario>.json.
run_all() {
  local name=$1 url=$2
  run() { # file args...
    local file=$1; shift
    bench "$RES/$name-$file.json" "$@" --url "$url"
  }
  local load=(-c "$CONNS" -d "$DURATION")
  local list=(-c "$LIST_CONNS" -d "$DURATION")
  log "$name: push-blob ($SIZE_MIB MiB, monolithic)"
  run push push-blob --size-mib "$SIZE_MIB" --file "$WORK/blob.bin" --repo bench/blob
  log "$name: push-blob ($SIZE_MIB MiB, chunks of $CHUNK_MIB MiB)"
  run push-chunked push-blob --size-mib "$SIZE_MIB" --file "$WORK/blob2.bin" \
    --chunk-mib "$CHUNK_MIB" --repo bench/chunked
  log "$name: pull-blob (and nginx right before it)"
  bench "$RES/$name-nginx-pull.json" get --url "http://127.0.0.1:$NPORT/blob.bin" \
    --file "$WORK/blob.bin" --no-verify
  run pull-noverify pull-blob --file "$WORK/blob.bin" --repo bench/blob --no-verify
  run pull-verify pull-blob --file "$WORK/blob.bin" --repo bench/blob
  log "$name: manifest GET/HEAD ($CONNS connections, $DURATION each)"
  run manifest-get-tag manifest --by tag --method GET "${load[@]}"
  run manifest-get-digest manifest --by digest --method GET "${load[@]}"
  run manifest-head-tag manifest --by tag --method HEAD "${load[@]}"
  log "$name: blob-head"
  run blob-head blob-head "${load[@]}"
  log "$name: wrk GET manifest by tag (cross-check of the client)"
  wrk -t2 -c"$CONNS" -d"$DURATION" --latency \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$url/v2/bench/manifest/manifests/latest" >"$RES/$name-wrk.txt"
  log "$name: small-images ($CLIENTS clients, $IMAGES images)"
  run small-images small-images --clients "$CLIENTS" --images "$IMAGES"
  log "$name: tags ($TAGS)"
  run tags tags --tags "$TAGS" "${list[@]}"
  log "$name: catalog ($REPOS)"
  run catalog catalog --repos "$REPOS" "${list[@]}"
}

# drydock
PORT=$(free_port)
mkdir -p "$WORK/drydock-root"
cat >"$WORK/drydock.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/drydock-root
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
gc:
  on_startup: false
EOF
log "drydock: starting on 127.0.0.1:$PORT"
env "${CLEAN_ENV[@]}" "$DRYDOCK" serve "$WORK/drydock.yml" 2>"$WORK/drydock.log" &
DPID=$!
PIDS+=("$DPID")
"$BENCH" wait --url "http://127.0.0.1:$PORT" || { cat "$WORK/drydock.log" >&2; die "drydock did not start"; }
start_hwm_sampler "$DPID" "$RES/drydock-hwm"
run_all drydock "http://127.0.0.1:$PORT"
awk '/^VmHWM:/ {print $2}' "/proc/$DPID/status" >"$RES/drydock-hwm-end"
kill -TERM "$DPID"; wait "$DPID" 2>/dev/null || true
[ -s "$WORK/drydock.log" ] && { log "drydock's log:"; tail -20 "$WORK/drydock.log" >&2; }
rm -rf "$WORK/drydock-root"
sync

# drydock with storage.filesystem.directwrites (O_DIRECT pushes): the two pushes again,
# and the pulls that follow them, whose first read comes from the device.
PORT=$(free_port)
mkdir -p "$WORK/drydock-root"
sed -e "s/127.0.0.1:[0-9]*/127.0.0.1:$PORT/" \
    -e 's/^  filesystem:$/  filesystem:\n    directwrites: true/' \
    "$WORK/drydock.yml" >"$WORK/drydock-direct.yml"
log "drydock, directwrites: starting on 127.0.0.1:$PORT"
env "${CLEAN_ENV[@]}" "$DRYDOCK" serve "$WORK/drydock-direct.yml" 2>"$WORK/drydock-direct.log" &
DPID=$!
PIDS+=("$DPID")
"$BENCH" wait --url "http://127.0.0.1:$PORT" || { cat "$WORK/drydock-direct.log" >&2; die "drydock did not start"; }
bench "$RES/drydock-direct-push.json" push-blob --size-mib "$SIZE_MIB" \
  --file "$WORK/blob.bin" --repo bench/blob --url "http://127.0.0.1:$PORT"
bench "$RES/drydock-direct-push-chunked.json" push-blob --size-mib "$SIZE_MIB" \
  --file "$WORK/blob2.bin" --chunk-mib "$CHUNK_MIB" --repo bench/chunked --url "http://127.0.0.1:$PORT"
bench "$RES/drydock-direct-pull-noverify.json" pull-blob --file "$WORK/blob.bin" \
  --repo bench/blob --no-verify --url "http://127.0.0.1:$PORT"
kill -TERM "$DPID"; wait "$DPID" 2>/dev/null || true
rm -rf "$WORK/drydock-root"
sync

# CNCF Distribution, with its own config: no auth (Debian's default config turns
# htpasswd on; it is never used here).
PORT=$(free_port)
mkdir -p "$WORK/distribution-root"
cat >"$WORK/distribution.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/distribution-root
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
  secret: drydock-bench-$(date +%s)-$RANDOM
EOF
log "distribution: starting on 127.0.0.1:$PORT"
env "${CLEAN_ENV[@]}" "$DOCKER_REGISTRY" serve "$WORK/distribution.yml" 2>"$WORK/distribution.log" &
RPID=$!
PIDS+=("$RPID")
"$BENCH" wait --url "http://127.0.0.1:$PORT" || { cat "$WORK/distribution.log" >&2; die "docker-registry did not start"; }
start_hwm_sampler "$RPID" "$RES/distribution-hwm"
run_all distribution "http://127.0.0.1:$PORT"
awk '/^VmHWM:/ {print $2}' "/proc/$RPID/status" >"$RES/distribution-hwm-end"
kill -TERM "$RPID"; wait "$RPID" 2>/dev/null || true
rm -rf "$WORK/distribution-root"

cut -d' ' -f1-3 /proc/loadavg >"$RES/load_end"
log "load average at end: $(cat "$RES/load_end")"

# ---- the table -------------------------------------------------------------------------
REPORT="$WORK/report.md"
python3 - "$RES" "$SIZE_MIB" "$DURATION" "$CONNS" "$LIST_CONNS" "$TAGS" "$REPOS" \
  "$CLIENTS" "$IMAGES" "$CHUNK_MIB" >"$REPORT" <<'EOF'
import json, os, re, sys
res, size_mib, duration, conns, list_conns, tags, repos, clients, images, chunk = sys.argv[1:]
size_mib = int(size_mib)

def load(name):
    with open(os.path.join(res, name + ".json")) as f:
        return json.load(f)

def text(name):
    with open(os.path.join(res, name)) as f:
        return f.read().strip()

def row(server, scen, i=0):
    return load(f"{server}-{scen}")["rows"][i]

def wrk(name):
    t = text(name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    def ms(label):
        m = re.search(label + r"\s+([\d.]+)(us|ms|s)\b", t)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v * 1000 if u == "s" else v
    errs = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    if m: errs += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    if m: errs += sum(int(x) for x in m.groups())
    return {"rps": rps, "p50": ms("50%"), "p99": ms("99%"), "errors": errs}

def hwm(server):
    vals = []
    for f in (f"{server}-hwm", f"{server}-hwm-end"):
        try: vals.append(int(text(f)))
        except (OSError, ValueError): pass
    return max(vals) / 1024 if vals else float("nan")

ref_sha = size_mib / float(text("ref_sha_s"))
ref_dd = size_mib / float(text("ref_dd_s"))
ng_nv = load("nginx-get-noverify")["rows"][0]
ng_v = load("nginx-get-verify")["rows"][0]
ng_curl = float(text("nginx-curl-bps")) / 2**20
ng_wrk = wrk("nginx-wrk.txt")
wd, wr = wrk("drydock-wrk.txt"), wrk("distribution-wrk.txt")

def f(x, p=1):
    if x is None: return "-"
    if isinstance(x, float) and x != x: return "n/a"
    return f"{x:,.{p}f}"

def ratio(a, b, p=2):
    if a is None or b is None or b == 0: return "-"
    return f"{a / b:.{p}f}×"

lines = []
out = lines.append
out(f"Blob: {size_mib} MiB of random data. Load rows: {conns} connections (listings: "
    f"{list_conns}), {duration} each after a 1 s warm-up, client drydock-bench "
    f"(2 threads) unless marked wrk. Errors are counted in every row.")
out("")
out("| measure | drydock | Distribution 2.8.2 | drydock/Distribution | reference | drydock/reference | errors (drydock/Distribution) |")
out("| --- | ---: | ---: | ---: | --- | ---: | ---: |")

def line(label, d, r, ref_label="", ref=None, p=1, errs=None, lower_better=False):
    tag = " (lower is better)" if lower_better else ""
    out(f"| {label}{tag} | {f(d, p)} | {f(r, p)} | {ratio(d, r)} | {ref_label} | "
        f"{ratio(d, ref) if ref is not None else '-'} | {errs if errs else '0 / 0'} |")

def errs(scen, i=0):
    return f"{row('drydock', scen, i)['errors']} / {row('distribution', scen, i)['errors']}"

for scen, label in (("push", "blob push, monolithic (POST + PUT), MiB/s"),
                    ("push-chunked", f"blob push, chunked ({chunk} MiB PATCHes), MiB/s")):
    d, r = row("drydock", scen), row("distribution", scen)
    line(label, d.get("mib_per_s"), r.get("mib_per_s"),
         f"openssl dgst -sha256 {f(ref_sha)} MiB/s", ref_sha, errs=errs(scen))
for scen, label in (("push", "blob push, monolithic, directwrites: true, MiB/s"),
                    ("push-chunked", f"blob push, chunked ({chunk} MiB), directwrites: true, MiB/s")):
    d = row("drydock-direct", scen)
    line(label, d.get("mib_per_s"), None, f"openssl dgst -sha256 {f(ref_sha)} MiB/s", ref_sha,
         errs=f"{d['errors']} / -")
d = row("drydock-direct", "pull-noverify")
line(f"blob pull after a directwrites push (first read from the device; {d.get('note') or ''}), MiB/s",
     d.get("mib_per_s"), None, f"nginx, same client {f(ng_nv['mib_per_s'])} MiB/s", ng_nv["mib_per_s"],
     errs=f"{d['errors']} / -")
d, r = row("drydock", "nginx-pull"), row("distribution", "nginx-pull")
line("nginx pull right before each registry's pull, MiB/s", d.get("mib_per_s"), r.get("mib_per_s"),
     errs=errs("nginx-pull"))
for scen, label, ref in (("pull-noverify", "blob pull, not hashed by the client, MiB/s", ng_nv),
                         ("pull-verify", "blob pull, sha256 verified by the client, MiB/s", ng_v)):
    d, r = row("drydock", scen), row("distribution", scen)
    line(label, d.get("mib_per_s"), r.get("mib_per_s"),
         f"nginx, same client {f(ref['mib_per_s'])} MiB/s", ref["mib_per_s"], errs=errs(scen))
for scen, label in (("manifest-get-tag", "manifest GET by tag"),
                    ("manifest-get-digest", "manifest GET by digest"),
                    ("manifest-head-tag", "manifest HEAD by tag"),
                    ("blob-head", "blob HEAD")):
    d, r = row("drydock", scen), row("distribution", scen)
    line(f"{label}, req/s", d["ops_per_s"], r["ops_per_s"], errs=errs(scen))
    line(f"{label}, p99 ms", d["latency"]["p99_ms"], r["latency"]["p99_ms"], p=2,
         lower_better=True)
line("manifest GET by tag (wrk -t2), req/s", wd["rps"], wr["rps"],
     f"nginx static file (wrk -t2) {f(ng_wrk['rps'])} req/s", ng_wrk["rps"],
     errs=f"{wd['errors']} / {wr['errors']}")
line("manifest GET by tag (wrk -t2), p99 ms", wd["p99"], wr["p99"],
     f"nginx static file {f(ng_wrk['p99'], 2)} ms", ng_wrk["p99"], p=2, lower_better=True)
d, r = row("drydock", "small-images"), row("distribution", "small-images")
line(f"small images ({clients} clients, {images} images), images/s", d["ops_per_s"],
     r["ops_per_s"], errs=errs("small-images"))
line("small images, p99 ms per image (push + pull)", d["latency"]["p99_ms"],
     r["latency"]["p99_ms"], p=1, lower_better=True)
for scen, what, n in (("tags", "tags/list", tags), ("catalog", "_catalog", repos)):
    d, r = row("drydock", scen, 0), row("distribution", scen, 0)
    line(f"{what} setup: {d['name']}, per s", d["ops_per_s"], r["ops_per_s"])
    for i in (1, 2, 3):
        d, r = row("drydock", scen, i), row("distribution", scen, i)
        desc = (f"{what} ({n}), {d['name']} [items/req/op: "
                f"{f(d.get('items_per_op'), 0)}/{f(d.get('requests_per_op'), 0)} vs "
                f"{f(r.get('items_per_op'), 0)}/{f(r.get('requests_per_op'), 0)}]")
        line(f"{desc}, ops/s", d["ops_per_s"], r["ops_per_s"], errs=errs(scen, i))
        line(f"{what} ({n}), {d['name']}, p99 ms", d["latency"]["p99_ms"],
             r["latency"]["p99_ms"], p=2, lower_better=True)
dh, rh = hwm("drydock"), hwm("distribution")
line("server peak RSS over the whole run (VmHWM), MiB", dh, rh, lower_better=True)
out("")
out("References on this machine:")
out("")
out("| reference | value |")
out("| --- | ---: |")
out(f"| openssl dgst -sha256 of the test file | {f(ref_sha)} MiB/s |")
out(f"| dd bs=4M conv=fdatasync of the test file | {f(ref_dd)} MiB/s |")
out(f"| nginx serving the test file, drydock-bench get, not hashed | {f(ng_nv['mib_per_s'])} MiB/s |")
out(f"| nginx serving the test file, drydock-bench get, sha256 verified | {f(ng_v['mib_per_s'])} MiB/s |")
out(f"| nginx serving the test file, curl | {f(ng_curl)} MiB/s |")
out(f"| nginx static {text('small_bytes')}-byte JSON file, wrk -t2 -c{conns} | {f(ng_wrk['rps'])} req/s, p50 {f(ng_wrk['p50'], 2)} ms, p99 {f(ng_wrk['p99'], 2)} ms |")
out("")

d_push = row("drydock", "push")["mib_per_s"]
d_pull = row("drydock", "pull-noverify")["mib_per_s"]
d_get, r_get = row("drydock", "manifest-get-tag"), row("distribution", "manifest-get-tag")
d_img, r_img = row("drydock", "small-images")["ops_per_s"], row("distribution", "small-images")["ops_per_s"]
def met(ok): return "**met**" if ok else "**missed**"
out("Targets of the issue (server side; garbage collection: scripts/bench-gc.sh):")
out("")
out("| target | measured | |")
out("| --- | --- | --- |")
out(f"| blob push ≥ 80% of openssl sha256 | {f(d_push)} / {f(ref_sha)} MiB/s = {100 * d_push / ref_sha:.0f}% | {met(d_push >= 0.8 * ref_sha)} |")
dd_push = row("drydock-direct", "push")["mib_per_s"]
out(f"| blob push ≥ 80% of openssl sha256, with directwrites: true | {f(dd_push)} / {f(ref_sha)} MiB/s = {100 * dd_push / ref_sha:.0f}% | {met(dd_push >= 0.8 * ref_sha)} |")
ng_pair = row("drydock", "nginx-pull")["mib_per_s"]
out(f"| blob pull ≥ 90% of nginx (nginx pulled right before drydock) | {f(d_pull)} / {f(ng_pair)} MiB/s = {100 * d_pull / ng_pair:.0f}% | {met(d_pull >= 0.9 * ng_pair)} |")
g = d_get["ops_per_s"] / r_get["ops_per_s"]
p99 = d_get["latency"]["p99_ms"]
out(f"| manifest GET by tag ≥ 20× Distribution, p99 ≤ 5 ms at {conns} connections | {g:.1f}×, p99 {p99:.2f} ms | {met(g >= 20 and p99 <= 5)} |")
out(f"| small images ≥ 4× Distribution | {d_img / r_img:.1f}× | {met(d_img >= 4 * r_img)} |")
out(f"| server peak RSS ≤ Distribution's | {f(dh)} vs {f(rh)} MiB | {met(dh <= rh)} |")
out("")
out(f"Load average (1/5/15 min) at the start: {text('load_start')}; at the end: {text('load_end')}.")
print("\n".join(lines))
EOF

if [ -n "$OUT" ]; then
  cp "$REPORT" "$OUT"
  log "written to $OUT"
fi
cat "$REPORT"
