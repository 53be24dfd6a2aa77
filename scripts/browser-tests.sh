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
ensure_cmd npm npm
ensure_cmd curl curl
pins=("playwright-core@1.65.1" "axe-core@4.14.1")
node_dir=target/browser/node
mkdir -p "$node_dir"
if [ "$(cat "$node_dir/.installed" 2>/dev/null)" != "${pins[*]}" ]; then
  echo ">> npm install ${pins[*]}"
  rm -rf "$node_dir/node_modules" "$node_dir/package.json" "$node_dir/package-lock.json" "$node_dir/.installed"
  echo '{"private": true}' >"$node_dir/package.json"
  # No install scripts: playwright-core downloads no browser; it drives /usr/bin/chromium.
  npm install --prefix "$node_dir" --no-audit --no-fund --save-exact --ignore-scripts --loglevel=error "${pins[@]}"
  echo "${pins[*]}" >"$node_dir/.installed"
fi
start_service
shots=target/browser/screenshots
rm -rf "$shots"
mkdir -p "$shots"
echo ">> dashboard tests in headless chromium ($(chromium --version 2>/dev/null | head -1))"
DASHBOARD_NODE_MODULES="$PWD/$node_dir/node_modules" DASHBOARD_URL="http://127.0.0.1:$port" DASHBOARD_TOKEN="$token" \
  DASHBOARD_READ_TOKEN="$read_token" DASHBOARD_READ_NS="$read_ns" DASHBOARD_SHOTS="$PWD/$shots" \
  node --test --test-concurrency=1 tests/browser/ || { tail -40 "$data/service.log"; exit 1; }
echo ">> screenshots: $(ls "$shots" | wc -l) in $shots"
