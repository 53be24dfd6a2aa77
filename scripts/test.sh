#!/usr/bin/env bash
# The whole test suite: formatting, clippy, unit tests and the integration tests (which start
# their own redis-server processes), then the SDK checks (scripts/sdk-tests.sh) and the README
# tour run against a fresh service (scripts/readme-tour.sh). Installs
# redis-server, redis-tools, prometheus (promtool), python3-venv (and Rust) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cmd redis-server redis-server
ensure_cmd redis-benchmark redis-tools
ensure_cmd promtool prometheus
ensure_cargo
echo ">> cargo fmt --check"
cargo fmt --all -- --check
echo ">> cargo clippy"
cargo clippy --locked --all-targets --all-features -- -D warnings
echo ">> cargo test"
cargo test --locked
echo ">> SDK checks (spec validators, generated Python and TypeScript clients, schemathesis)"
bash scripts/sdk-tests.sh
echo ">> README tour against a fresh service"
bash scripts/readme-tour.sh
