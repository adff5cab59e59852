#!/usr/bin/env bash
# The README walkthrough in one script: the gateway on its default ports, the
# Python product service and the Rust order service, then a few curls.
#
#   scripts/demo.sh           run and keep everything up until Ctrl-C
#   scripts/demo.sh --check   run the curls, check the answers, stop (CI)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1

PUBLIC=127.0.0.1:8080 INTERNAL=127.0.0.1:8081 REG=127.0.0.1:8090 ADMIN=127.0.0.1:8091
LOGS="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
wait_for() { # wait_for DESCRIPTION COMMAND... (polls with a 30 s deadline)
  local what=$1; shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $what; logs in $LOGS" >&2; exit 1
}

scripts/install-deps.sh python >/dev/null
cargo build --release -q -p gateway-bin -p order-service

say "gateway (embedded registry, no Consul/Kafka needed)"
target/release/gateway >"$LOGS/gateway.out" 2>"$LOGS/gateway.log" & pids+=($!)
wait_for "gateway /readyz" curl -fsS "http://$ADMIN/readyz"
cat "$LOGS/gateway.out"

say "product service (Python, grpcio) registers itself"
python3 examples/product-service-py/server.py --listen 127.0.0.1:0 --gateway "http://$REG" \
  >"$LOGS/product.out" 2>"$LOGS/product.log" & pids+=($!)
say "order service (Rust, service-sdk) registers itself"
target/release/order-service --gateway "http://$REG" --products-via "http://$INTERNAL" \
  >"$LOGS/order.out" 2>"$LOGS/order.log" & pids+=($!)
wait_for "product routable" curl -fsS "http://$PUBLIC/product/1"
wait_for "order routable" curl -fsS "http://$PUBLIC/order"

run() { printf '$ %s\n' "$*"; "$@"; echo; }
say "try it"
run curl -s "http://$PUBLIC/product/1"
run curl -s -X POST "http://$PUBLIC/order/purchase/1"
run curl -s "http://$PUBLIC/order"
run curl -s "http://$PUBLIC/nope"
run curl -s "http://$REG/v1/registrations"
say "streaming: server-sent events, a streamed upload"
run curl -sN "http://$PUBLIC/product/events?count=1"
head -c 50000000 /dev/zero > "$LOGS/upload.bin"
run curl -s -X POST -H 'transfer-encoding: chunked' --data-binary "@$LOGS/upload.bin" "http://$PUBLIC/product/upload"

if [ "$CHECK" = 1 ]; then
  code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
  [ "$(code "http://$PUBLIC/product/2")" = 200 ]
  [ "$(code -X POST "http://$PUBLIC/order/purchase/2")" = 201 ]
  [ "$(code "http://$PUBLIC/nope")" = 404 ]
  [ "$(code "http://$ADMIN/admin/services")" = 200 ]
  curl -sN --max-time 10 "http://$PUBLIC/product/events?count=1" | grep -q '^event: hello'
  want="$(sha256sum "$LOGS/upload.bin" | cut -d' ' -f1)"
  curl -s -X POST -H 'transfer-encoding: chunked' --data-binary "@$LOGS/upload.bin" \
    "http://$PUBLIC/product/upload" | grep -q "\"sha256\": *\"$want\""
  echo "demo check passed"
  exit 0
fi
say "running; Ctrl-C stops everything (logs in $LOGS)"
wait
