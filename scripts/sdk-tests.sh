#!/usr/bin/env bash
# Clients users have, against a live service: the committed OpenAPI document must pass
# openapi-spec-validator, and a Python client generated from it with openapi-python-client
# (no warning allowed) runs tests/sdk/python_scenario.py. Tools go into a venv under
# target/sdk (reused between runs). Needs target/debug/swarmstate (cargo test builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_python_venv
ensure_cmd curl curl
out=target/sdk
mkdir -p "$out"
if [ ! -x "$out/venv/bin/python" ]; then
  python3 -m venv "$out/venv"
fi
py="$out/venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check openapi-spec-validator==0.9.0 openapi-python-client==0.29.1
echo ">> openapi-spec-validator openapi/openapi.json"
"$py" -m openapi_spec_validator openapi/openapi.json
echo ">> openapi-python-client generate"
rm -rf "$out/python"
"$out/venv/bin/openapi-python-client" generate --path openapi/openapi.json --output-path "$out/python" --fail-on-warning
"$py" -m pip install -q --disable-pip-version-check "$out/python"

# A live service with its own redis-server (the embedded default) on a free port.
data=$(mktemp -d)
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SWARMSTATE_DATA_DIR="$data" SWARMSTATE_LISTEN="127.0.0.1:$port" SWARMSTATE_LOG=warn \
  target/debug/swarmstate serve >"$data/service.log" 2>&1 &
service=$!
trap 'kill "$service" 2>/dev/null; wait "$service" 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$data/service.log"; exit 1; }
echo ">> python SDK scenario"
"$py" tests/sdk/python_scenario.py "http://127.0.0.1:$port"
