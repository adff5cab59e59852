#!/usr/bin/env bash
# The Node adapter (adapters/node), end to end: install its npm dependencies
# (cached: skipped while package-lock.json is unchanged), run its tests with
# node's test runner, build the conformance kit, and run the kit against the
# adapter's conformance server (an Express app served through the adapter):
# the contract (`--target`) and the registration lifecycle (`--backend-cmd`),
# then HTTP through the real `gateway` binary (test/gateway.test.js).
#
#   scripts/adapter-node.sh            everything; exit 1 on any failure
#   scripts/adapter-node.sh --no-kit   install and unit/end-to-end tests only
#   scripts/adapter-node.sh --install-only   npm dependencies only (scripts/adapter-overhead.sh)
#
# Needs node >= 18.3 and npm on PATH (Debian: apt-get install nodejs npm) and
# the registry npm is configured with. Prints the kit's summary lines, last.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ADAPTER="$REPO/adapters/node"
KIT=1
[ "${1:-}" = "--no-kit" ] && KIT=0
step() { printf '\n==> %s\n' "$*"; }
die() { printf 'adapter-node: %s\n' "$*" >&2; exit 2; }

command -v node >/dev/null || die "node not found (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null || die "npm not found (Debian: apt-get install npm)"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>18||(a===18&&b>=3)?0:1)' \
  || die "node $(node --version) is too old: the adapter needs 18.3 or later"

step "npm dependencies (adapters/node)"
# node_modules/.lock-sha256 records the lock file it was installed from.
lock_sum="$(sha256sum "$ADAPTER/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$ADAPTER/node_modules/.lock-sha256" 2>/dev/null)" = "$lock_sum" ]; then
  echo "up to date"
else
  (cd "$ADAPTER" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" > "$ADAPTER/node_modules/.lock-sha256"
fi
[ "${1:-}" = "--install-only" ] && exit 0

step "node --test (adapters/node)"
(cd "$ADAPTER" && node --test test/)

[ "$KIT" = 1 ] || exit 0

step "build the conformance kit"
(cd "$REPO" && cargo build --quiet -p conformance --bin gateway-conformance)
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO/$TARGET_DIR" ;; esac
KIT_BIN="$TARGET_DIR/debug/gateway-conformance"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

step "conformance server (adapters/node/conformance/server.js)"
# Port 0: the server binds a free port and prints `READY host:port`.
node "$ADAPTER/conformance/server.js" --listen 127.0.0.1:0 >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
addr=""
for _ in $(seq 1 100); do
  addr="$(awk '/^READY /{print $2; exit}' "$WORK/server.out")"
  [ -n "$addr" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.err" >&2; die "the conformance server exited"; }
  sleep 0.1
done
[ -n "$addr" ] || { cat "$WORK/server.err" >&2; die "the conformance server did not report READY within 10 s"; }
echo "serving on $addr"

status=0
step "gateway-conformance --target grpc://$addr"
"$KIT_BIN" --target "grpc://$addr" | tee "$WORK/target.log" || status=1
kill "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""

step "gateway-conformance --backend-cmd (registration lifecycle)"
# The kit runs `sh -c "exec CMD"`, so its SIGTERM reaches node itself.
(cd "$REPO" && "$KIT_BIN" --backend-cmd "node adapters/node/conformance/server.js --gateway {registry}") \
  | tee "$WORK/lifecycle.log" || status=1

step "through a real gateway (HTTP -> gateway -> Express app over Send and Stream)"
(cd "$REPO" && cargo build --quiet -p gateway-bin --bin gateway)
(cd "$ADAPTER" && FORWARDING_GATEWAY_BIN="$TARGET_DIR/debug/gateway" node --test test/gateway.test.js) \
  | tee "$WORK/gateway.log" || status=1

step "summary (Node adapter)"
echo "contract:  $(tail -n 1 "$WORK/target.log")"
echo "lifecycle: $(tail -n 1 "$WORK/lifecycle.log")"
echo "gateway:   $(awk '/^# pass /{p=$3} /^# fail /{f=$3} END{print p " passed, " f " failed"}' "$WORK/gateway.log")"
exit "$status"
