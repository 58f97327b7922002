#!/usr/bin/env bash
# Raw S3 PUT/GET rate on a Ceph RGW, with the client the S3 driver uses (object_store),
# next to the driver's own writer and reader: the limit drydock's pushes and pulls on S3
# are judged against (registry/examples/s3_rate.rs).
#
#   bash scripts/bench-s3.sh                 # starts a private RGW, runs, stops it
#   SIZE_MIB=512 PART_MIB=10 bash scripts/bench-s3.sh
#
# Uses the RGW named by DRYDOCK_TEST_S3_* when set (scripts/rgw.sh env DIR), else starts
# one with scripts/rgw.sh and stops it on exit. Prints one JSON object on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DRYDOCK_TEST_S3_ENDPOINT:-}" ]; then
  RGW_DIR=$(bash scripts/rgw.sh start)
  trap 'bash scripts/rgw.sh stop "$RGW_DIR"' EXIT
  eval "$(bash scripts/rgw.sh env "$RGW_DIR")"
fi
# The dev profile: dependencies (object_store, sha2, the TLS and HTTP stack) build at
# opt-level 2-3 there (see Cargo.toml), and a release build of the tree costs minutes.
cargo build -q -p registry --example s3_rate >&2
"${CARGO_TARGET_DIR:-target}/debug/examples/s3_rate"
