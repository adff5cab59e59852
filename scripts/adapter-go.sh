#!/usr/bin/env bash
# The Go adapter (adapters/go) from its own toolchain up: module downloads,
# vet and `go test`, the generated code checked against the .proto, then
# the conformance kit against the adapter's conformance server, directly
# (`--target`) and through the registration lifecycle (`--backend-cmd`).
#
#   scripts/adapter-go.sh
#   scripts/adapter-go.sh --install-only   module downloads only (scripts/adapter-overhead.sh)
#
# Idempotent and cached: modules land in Go's module cache (GOMODCACHE) and
# the protoc plugins in $REPO/.deps/go/bin, so a second run only re-runs the
# tests. Dependencies come from the Go module proxy (GOPROXY) only.
# The regeneration check needs protoc: it runs when protoc is on PATH, or
# installs it (scripts/install-deps.sh protoc) when ADAPTER_GO_REGEN=1.
# Exits non-zero when any step fails.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ADAPTER="$REPO/adapters/go"
step() { printf '\n==> %s\n' "$*"; }
export CARGO_TERM_COLOR=never

command -v go >/dev/null || { echo "adapter-go: no 'go' on PATH (Go 1.26 or newer is needed)" >&2; exit 2; }

step "Go modules (from the module proxy, cached)"
(cd "$ADAPTER" && go mod download && go mod verify)
[ "${1:-}" = "--install-only" ] && exit 0

step "generated code matches forwarding.proto"
if [ "${ADAPTER_GO_REGEN:-0}" = 1 ] && ! command -v protoc >/dev/null; then
  "$REPO/scripts/install-deps.sh" protoc
fi
if command -v protoc >/dev/null; then
  (cd "$ADAPTER" && go generate ./forwardingpb)
  git -C "$REPO" diff --exit-code -- adapters/go/forwardingpb \
    || { echo "adapter-go: adapters/go/forwardingpb is stale: run 'go generate ./...' in adapters/go and commit" >&2; exit 1; }
  echo "up to date"
else
  echo "skipped: no protoc (ADAPTER_GO_REGEN=1 installs it)"
fi

step "gofmt, go vet, go test (with -race when cgo works)"
(cd "$ADAPTER" && unformatted="$(gofmt -l .)" && { [ -z "$unformatted" ] || { echo "gofmt needed: $unformatted" >&2; exit 1; }; })
# The race detector needs cgo (a C compiler); without one, plain go test.
RACE=""
[ "$(cd "$ADAPTER" && go env CGO_ENABLED)" = 1 ] && command -v "$(cd "$ADAPTER" && go env CC)" >/dev/null && RACE="-race"
(cd "$ADAPTER" && go vet ./... && go test -count=1 $RACE ./...)

step "the conformance kit"
cargo build -q -p conformance --bin gateway-conformance
KIT="${CARGO_TARGET_DIR:-$REPO/target}/debug/gateway-conformance"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
(cd "$ADAPTER" && go build -o "$WORK/conformance-server" ./cmd/conformance-server)

step "gateway-conformance --target (the adapter's conformance server)"
"$WORK/conformance-server" --listen 127.0.0.1:0 >"$WORK/ready" 2>"$WORK/server.log" &
SERVER_PID=$!
ADDR=""
for _ in $(seq 1 100); do
  ADDR="$(awk '/^READY /{print $2; exit}' "$WORK/ready")"
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; echo "adapter-go: the conformance server exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "adapter-go: no READY line within 10 s" >&2; exit 1; }
status=0
"$KIT" --target "grpc://$ADDR" || status=$?
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
[ "$status" = 0 ] || { echo "--- conformance server log" >&2; tail -50 "$WORK/server.log" >&2; exit "$status"; }

step "gateway-conformance --backend-cmd (register, renew, re-register, deregister and drain)"
"$KIT" --backend-cmd "$WORK/conformance-server --gateway {registry}" 2>"$WORK/lifecycle.log" \
  || { tail -50 "$WORK/lifecycle.log" >&2; exit 1; }

step "adapter-go: all passed"
