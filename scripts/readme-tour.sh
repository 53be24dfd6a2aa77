#!/usr/bin/env bash
# The README tour, made true: starts target/debug/swarmstate serve on a free port with a fresh
# data dir (its own embedded redis-server), then tests/sdk/readme_tour.py runs every ```sh block
# of README.md in document order in one bash session, with B=http://127.0.0.1:<port>, and checks
# each command's documented answer. Convention (README, "A tour with curl"): a comment
#   # → <status> [<code>][, "field": <JSON>][, <n> items][, Header: value][, contains "text"][, events: <name> [<id>], …]
# at the end of the command's last line or on the line after it; `# → not run: <reason>` skips a
# command, `<!-- readme-tour: not run: <reason> -->` before a fence skips a block. Every curl
# command must carry one. Usage: scripts/readme-tour.sh [README.md] (another file, e.g. a copy
# with a wrong answer to see the check fail). Needs target/debug/swarmstate (built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cmd python3 python3
ensure_cmd curl curl
ensure_cmd jq jq
ensure_cmd redis-server redis-server
readme=${1:-README.md}
if [ ! -x target/debug/swarmstate ]; then
  ensure_cargo
  cargo build --locked -q --bin swarmstate
fi

start_service --no-tokens
echo ">> README tour ($readme) against a fresh service on :$port"
python3 tests/sdk/readme_tour.py "$readme" "http://127.0.0.1:$port" || { echo ">> service log:"; tail -20 "$data/service.log"; exit 1; }
