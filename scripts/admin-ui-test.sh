#!/usr/bin/env bash
# Browser test of the admin UI (issue 11): headless Chromium (Debian
# package, scripts/install-deps.sh chromium) driven by playwright-core (npm,
# installed into gateway-bin/tests/browser/node_modules), against the debug
# `gateway` binary: two gateways peered with each other, a backend, an
# upstream error found in the log pane by its request id, a restart.
# Screenshots: target/admin-ui/admin-ui.png (full page) and
# target/admin-ui/admin-ui-1366x768.png (what a laptop shows).
#
#   scripts/admin-ui-test.sh
#
# Idempotent: installs what is missing, then builds and runs. scripts/test.sh
# runs it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

scripts/install-deps.sh chromium
command -v node >/dev/null 2>&1 || { echo "admin-ui-test: node (>= 18) is needed" >&2; exit 1; }
BROWSER_DIR="$REPO/gateway-bin/tests/browser"
if [ ! -f "$BROWSER_DIR/node_modules/playwright-core/package.json" ]; then
  echo "[admin-ui-test] npm install playwright-core"
  (cd "$BROWSER_DIR" && npm install --no-audit --no-fund --silent)
fi

cargo build -q -p gateway-bin
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
mkdir -p "$TARGET_DIR/admin-ui"
node "$BROWSER_DIR/admin-ui.mjs" "$TARGET_DIR/debug/gateway" "$TARGET_DIR/admin-ui"
