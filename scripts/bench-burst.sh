#!/usr/bin/env bash
# Memory in a burst of manifest bodies, and after it (issue 16, item 5): drydock against
# CNCF Distribution (Debian's docker-registry), on this machine, over loopback.
#
# The burst: CONNS connections each send a manifest PUT announcing BODY bytes (default
# 4 MiB - 1) and all of the body but its last byte, and hold the connection until all
# of them have sent. Then all close at once. The server's VmRSS is read from
# /proc/PID/status while they hold, and 1 s, 5 s, 15 s and 30 s after they closed;
# VmHWM gives the peak. drydock runs twice: with its default oci.manifest_memory (the
# bound: most bodies are refused with 429 before they are read) and with a budget
# that lets the whole burst in (what is given back after it).
#
#   bash scripts/bench-burst.sh            # a table
#   REGISTRY=path/to/registry bash scripts/bench-burst.sh   # another drydock binary
#
# Environment: CONNS (default 100), BODY (bytes, default 4194303), REGISTRY (default:
# target/release/registry, built), DOCKER_REGISTRY (default /usr/bin/docker-registry;
# skipped when missing). Progress goes to stderr. Everything it creates is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CONNS=${CONNS:-100}
BODY=${BODY:-4194303}
DOCKER_REGISTRY=${DOCKER_REGISTRY:-/usr/bin/docker-registry}
log() { echo "== $*" >&2; }

if [ -z "${REGISTRY:-}" ]; then
  log "building (cargo build --release --bin registry)"
  cargo build --release --bin registry >&2
  REGISTRY="${CARGO_TARGET_DIR:-$ROOT/target}/release/registry"
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/drydock-burst.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

cat >"$WORK/burst.py" <<'EOF'
import os, socket, subprocess, sys, time, urllib.request

name, conns, body, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cmd = sys.argv[5:]

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def status(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(l.split(":", 1) for l in f if ":" in l)
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024

port = free_port()
root = os.path.join(work, f"root-{name}")
os.makedirs(root)
cfg = os.path.join(work, f"{name}.yml")
extra = os.environ.get("EXTRA", "")
with open(cfg, "w") as f:
    f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n{extra}")
env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_") and k != "RUST_LOG"}
server = subprocess.Popen(cmd + [cfg], env=env, stderr=open(os.path.join(work, f"{name}.log"), "w"))
for _ in range(300):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).read()
        break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit(f"{name} did not start")
idle, _ = status(server.pid)
head = (f"PUT /v2/burst/m/manifests/t HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
        f"Content-Length: {body}\r\n\r\n").encode()
payload = b"{" + b" " * (body - 2)
socks, cut = [], set()
for i in range(conns):
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.sendall(head + payload)
    except OSError:
        cut.add(i)
    socks.append(s)
# Bodies the server did not hold: answered at once (429) or cut off; a held body gets
# no answer yet.
for i, s in enumerate(socks):
    s.setblocking(False)
    try:
        if s.recv(16):
            cut.add(i)
    except BlockingIOError:
        pass
    except OSError:
        cut.add(i)
refused = len(cut)
time.sleep(1)
held, _ = status(server.pid)
for s in socks:
    s.close()
after = {}
start = time.time()
for t in (1, 5, 15, 30):
    time.sleep(max(0, start + t - time.time()))
    after[t] = status(server.pid)[0]
_, peak = status(server.pid)
server.terminate()
server.wait()
print(f"{name:<28} {idle:>6} {held:>6} {peak:>6} {after[1]:>6} {after[5]:>6} {after[15]:>6} {after[30]:>6} {refused:>8}")
EOF

printf '%-28s %6s %6s %6s %6s %6s %6s %6s %8s\n' "server (RSS in MiB)" idle held peak +1s +5s +15s +30s refused
log "drydock, default oci.manifest_memory"
python3 "$WORK/burst.py" drydock "$CONNS" "$BODY" "$WORK" "$REGISTRY" serve
log "drydock, oci.manifest_memory large enough for the burst"
EXTRA="oci:
  manifest_memory: $(( (CONNS + 1) * BODY ))
" python3 "$WORK/burst.py" drydock-whole-burst "$CONNS" "$BODY" "$WORK" "$REGISTRY" serve
if [ -x "$DOCKER_REGISTRY" ]; then
  log "distribution ($DOCKER_REGISTRY)"
  python3 "$WORK/burst.py" distribution "$CONNS" "$BODY" "$WORK" "$DOCKER_REGISTRY" serve
else
  log "no $DOCKER_REGISTRY: distribution skipped"
fi
