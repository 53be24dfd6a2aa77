#!/usr/bin/env bash
# Clients users have, against a live service that requires bearer tokens (start_service in
# scripts/lib.sh: a tokens file with an admin token and a read-only one over one namespace):
# the committed OpenAPI document must pass openapi-spec-validator, and a Python client generated
# from it with openapi-python-client (no warning allowed) runs tests/sdk/python_scenario.py
# with the admin token (and checks 401 without one, 403 with the read-only one). Tools go into
# a venv under target/sdk (reused between runs). Then scripts/sdk-ts.sh, against the same service: redocly
# lint of the document (tests/sdk/redocly.yaml), a TypeScript fetch client generated with
# @hey-api/openapi-ts (no warning allowed) into target/sdk/ts, tests/sdk/ts_scenario.ts
# type-checked with tsc against it and run with tsx (npm packages pinned, cached under
# target/sdk/node; installs Node.js from the OS packages when missing). Needs
# target/debug/swarmstate (cargo test builds it).
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
# openapi-python-client formats with ruff, which lives in the venv (a warning otherwise).
export PATH="$PWD/$out/venv/bin:$PATH"
"$py" -m pip install -q --disable-pip-version-check openapi-spec-validator==0.9.0 openapi-python-client==0.29.1
echo ">> openapi-spec-validator openapi/openapi.json"
"$py" -m openapi_spec_validator openapi/openapi.json
echo ">> openapi-python-client generate"
rm -rf "$out/python"
"$out/venv/bin/openapi-python-client" generate --path openapi/openapi.json --output-path "$out/python" --fail-on-warning
"$py" -m pip install -q --disable-pip-version-check "$out/python"

# A live service with its own redis-server (the embedded default) on a free port, with a
# tokens file: $token (admin, every namespace, queue and channel), $read_token (read, $read_ns).
start_service
echo ">> python SDK scenario"
SDK_TOKEN=$token SDK_READ_TOKEN=$read_token SDK_READ_NS=$read_ns \
  "$py" tests/sdk/python_scenario.py "http://127.0.0.1:$port"
SDK_TOKEN=$token SDK_READ_TOKEN=$read_token SDK_READ_NS=$read_ns \
  bash scripts/sdk-ts.sh "http://127.0.0.1:$port"

# schemathesis, all checks, against the live document; 10 examples per operation, fixed seed,
# with the admin token (ignored_auth, among all checks, sends requests without it or with a
# wrong one and expects 401). The watch socket and event streams are left out (they stream;
# tests/it covers them).
echo ">> schemathesis (all checks, 10 examples per operation)"
"$py" -m pip install -q --disable-pip-version-check schemathesis==4.32.5
report="$out/schemathesis.json"
rm -f "$report"
(cd "$out" && PYTHONPATH="$OLDPWD/tests/sdk" SCHEMATHESIS_HOOKS=st_hooks "$PWD/venv/bin/schemathesis" \
  --config-file "$OLDPWD/tests/sdk/schemathesis.toml" run "http://127.0.0.1:$port/openapi.json" \
  -H "Authorization: Bearer $token" --checks all --max-examples 10 --seed 1 --request-timeout 40 --no-color \
  --exclude-path /v1/watch --exclude-path-regex '.*/events$' \
  --report json --report-json-path "$PWD/schemathesis.json" >"$PWD/schemathesis.log" 2>&1) || true
[ -s "$report" ] || { tail -50 "$out/schemathesis.log"; exit 1; }
"$py" tests/sdk/schemathesis_gate.py "$report" "$out/schemathesis.log" || { tail -120 "$out/schemathesis.log"; exit 1; }
