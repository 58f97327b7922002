#!/usr/bin/env bash
# Runs every test of drydock: installs what the tests drive when it is missing (skopeo,
# podman, docker, CNCF Distribution's docker-registry, systemd-analyze, oras-py),
# builds the binary the process tests spawn, then runs the whole workspace's tests.
# Fails loudly when something cannot be installed; no test is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pair in skopeo:skopeo podman:podman docker:docker.io dockerd:docker.io \
            docker-registry:docker-registry systemd-analyze:systemd; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
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

if ! python3 -c "import oras.client" >/dev/null 2>&1; then
  echo "== installing oras-py (the ORAS client the artifact tests drive)"
  if ! python3 -m pip install --quiet oras; then
    echo "FATAL: could not install oras-py from PyPI" >&2
    exit 1
  fi
fi

echo "== building"
cargo build --workspace --bins
echo "== testing"
cargo test --workspace -- --test-threads=2
