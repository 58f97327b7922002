#!/usr/bin/env bash
# Runs every test of drydock: installs what the tests drive when it is missing (skopeo,
# podman, docker, CNCF Distribution's docker-registry, systemd-analyze, nginx, mkfs.ext4,
# python3-venv),
# puts oras-py in a virtual environment under target/ (never a global pip install),
# starts a Ceph RGW on loopback for the S3 tests (scripts/rgw.sh) and a PostgreSQL 15 for
# the replica coordination tests (scripts/pg.sh), both stopped on exit,
# builds the binaries the process tests spawn, then runs the whole workspace's tests
# with --no-fail-fast and prints one line of totals at the end.
# Fails loudly when something cannot be installed; no test is skipped.
# Needs root (or sudo) and network access to Debian's archive and PyPI the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"

missing=()
for pair in skopeo:skopeo podman:podman docker:docker.io dockerd:docker.io \
            docker-registry:docker-registry systemd-analyze:systemd nginx:nginx-light \
            mkfs.ext4:e2fsprogs; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  # shellcheck disable=SC2207
  pkgs=($(printf '%s\n' "${missing[@]}" | sort -u))
  echo "== installing ${pkgs[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if ! { $SUDO apt-get update -q && \
         DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
           "${pkgs[@]}"; }; then
    echo "FATAL: could not install ${pkgs[*]}; the end-to-end tests need them" >&2
    exit 1
  fi
fi

VENV="$TARGET/oras-venv"
if ! "$VENV/bin/python" -c "import oras.client" >/dev/null 2>&1; then
  echo "== installing oras-py into $VENV (the ORAS client the artifact tests drive)"
  if ! { python3 -m venv "$VENV" && "$VENV/bin/python" -m pip install --quiet oras; }; then
    echo "FATAL: could not install oras-py from PyPI into $VENV" >&2
    exit 1
  fi
fi
export DRYDOCK_PYTHON="$VENV/bin/python"

# A real S3 server for the S3 driver's tests (Ceph RGW, scripts/rgw.sh): started before
# the tests, its endpoint and credentials exported for them, stopped by PID on exit.
echo "== starting Ceph RGW"
if ! RGW_DIR=$(bash scripts/rgw.sh start); then
  echo "FATAL: could not start Ceph RGW (scripts/rgw.sh start); the S3 tests need it" >&2
  exit 1
fi
PG_DIR=""
trap 'bash scripts/rgw.sh stop "$RGW_DIR"; [ -z "$PG_DIR" ] || bash scripts/pg.sh stop "$PG_DIR"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
eval "$(bash scripts/rgw.sh env "$RGW_DIR")"

# A real PostgreSQL 15 for the replica coordination tests (scripts/pg.sh): a fresh
# cluster on a loopback port, its address exported for them, stopped by PID on exit.
echo "== starting PostgreSQL"
if ! PG_DIR=$(bash scripts/pg.sh start); then
  echo "FATAL: could not start PostgreSQL (scripts/pg.sh start); the replica tests need it" >&2
  exit 1
fi
eval "$(bash scripts/pg.sh env "$PG_DIR")"

echo "== building"
cargo build --workspace --bins
echo "== testing"
log="$TARGET/test-output.log"
set +e
cargo test --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
echo "== conformance workflows again, with authentication on (htpasswd + access policy)"
# --workspace, as above: with -p conformance alone cargo resolves other features and
# rebuilds every dependency (minutes on two cores) for the same test binaries.
DRYDOCK_TEST_AUTH=htpasswd cargo test --workspace --no-fail-fast --test pull --test push \
  --test discovery --test management --test artifacts -- --test-threads=2 2>&1 | tee -a "$log"
auth_status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] || status=$auth_status
set -e
# One line of totals over every test binary ("test result: ok. 12 passed; 0 failed; 1 ignored; ...").
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
