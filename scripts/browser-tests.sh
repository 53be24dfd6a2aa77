#!/usr/bin/env bash
# The dashboard in a real browser: Debian's chromium driven by playwright-core (npm, pinned,
# cached under target/browser/node) runs tests/browser/dashboard.test.mjs (node:test) against
# a service started here with its own redis-server and a tokens file (start_service in
# scripts/lib.sh). Accessibility is checked with axe-core (npm, pinned). Screenshots of every
# view at 1280x800 and 390x844, light and dark, land in target/browser/screenshots (CI
# artefacts). Needs target/debug/swarmstate (cargo test builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cmd chromium chromium
ensure_cmd curl curl
# No install scripts: playwright-core downloads no browser; it drives /usr/bin/chromium.
node_dir=target/browser/node
npm_pinned "$node_dir" "playwright-core@1.65.1" "axe-core@4.14.1"
start_service
shots=target/browser/screenshots
rm -rf "$shots"
mkdir -p "$shots"
echo ">> dashboard tests in headless chromium ($(chromium --version 2>/dev/null | head -1))"
DASHBOARD_NODE_MODULES="$PWD/$node_dir/node_modules" DASHBOARD_URL="http://127.0.0.1:$port" DASHBOARD_TOKEN="$token" \
  DASHBOARD_READ_TOKEN="$read_token" DASHBOARD_READ_NS="$read_ns" DASHBOARD_SHOTS="$PWD/$shots" \
  node --test --test-concurrency=1 tests/browser/ || { tail -40 "$data/service.log"; exit 1; }
echo ">> screenshots: $(ls "$shots" | wc -l) in $shots"
