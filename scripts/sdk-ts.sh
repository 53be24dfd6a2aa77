#!/usr/bin/env bash
# The TypeScript side of the SDK checks, against a live service at <base-url> (scripts/sdk-tests.sh
# starts one with a tokens file and calls this): `redocly lint` of openapi/openapi.json (the
# recommended rules, tests/sdk/redocly.yaml: errors fail the run, warnings are shown), a fetch
# client generated from it by @hey-api/openapi-ts into target/sdk/ts (any generator warning fails
# the run), `tsc --noEmit` of tests/sdk/ts_scenario.ts against that client (a type error fails
# the run), then the scenario itself with tsx, with the tokens from the environment (an admin
# token, and a read-only one over one namespace for the 401/403 checks). The npm packages are
# pinned and installed once into target/sdk/node (reinstalled only when the pins below change).
# Needs Node.js >= 20.19.
#
# Usage: SDK_TOKEN=<admin token> SDK_READ_TOKEN=<read token> SDK_READ_NS=<its namespace> \
#        scripts/sdk-ts.sh <base-url>
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
usage="usage: SDK_TOKEN=<admin token> SDK_READ_TOKEN=<read token> SDK_READ_NS=<its namespace> scripts/sdk-ts.sh <base-url>"
base=${1:?$usage}
: "${SDK_TOKEN:?$usage}" "${SDK_READ_TOKEN:?$usage}" "${SDK_READ_NS:?$usage}"
ensure_cmd node nodejs
ensure_cmd npm npm
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "error: Node.js >= 20.19 is needed for @hey-api/openapi-ts and @redocly/cli; this is $(node --version)" >&2
  exit 1
fi

# The newest @hey-api/openapi-ts that runs on Node 20 is 0.95.0 (0.96 wants Node 22.13).
pins=(
  "@hey-api/openapi-ts@0.95.0"
  "@redocly/cli@2.77.0"
  "typescript@6.0.3"
  "tsx@4.23.15"
  "@types/node@20.19.43"
)
node_dir=target/sdk/node
bin=$node_dir/node_modules/.bin
# No install scripts: esbuild (under tsx) finds its binary from its platform package without one.
npm_pinned "$node_dir" "${pins[@]}"

echo ">> redocly lint openapi/openapi.json"
REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true \
  "$bin/redocly" lint --config tests/sdk/redocly.yaml --format=stylish openapi/openapi.json

echo ">> openapi-ts generate (@hey-api/client-fetch)"
out=target/sdk/ts
rm -rf "$out"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# A path without ./ would be read as a Hey API registry shorthand (organization/project).
"$bin/openapi-ts" --input ./openapi/openapi.json --output "$out" --client @hey-api/client-fetch \
  --no-log-file 2>"$log" || { cat "$log" >&2; exit 1; }
if [ -s "$log" ]; then
  cat "$log" >&2
  echo "error: openapi-ts wrote warnings (above) for openapi/openapi.json" >&2
  exit 1
fi

echo ">> tsc --noEmit tests/sdk/ts_scenario.ts"
"$bin/tsc" --noEmit -p tests/sdk/tsconfig.json

echo ">> typescript SDK scenario"
"$bin/tsx" --tsconfig tests/sdk/tsconfig.json tests/sdk/ts_scenario.ts "$base"
