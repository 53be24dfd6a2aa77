#!/usr/bin/env bash
# Run swarmstate on http://127.0.0.1:8080 with its own supervised redis-server (data under
# ./data). Installs redis-server (and Rust) when missing. Extra arguments go to
# `swarmstate serve`, e.g. `scripts/run.sh --redis-url redis://10.0.0.5:6379`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cmd redis-server redis-server
ensure_cargo
cargo build --release --locked --bin swarmstate
exec target/release/swarmstate serve "$@"
