#!/usr/bin/env bash
# Where a forwarded request's instructions go: the gateway under callgrind
# (1 tokio worker, as in scripts/bench.sh), bench-backend behind it, 2,000
# warm-up requests, then exactly N counted ones (default 10,000) over 64
# keep-alive connections. Prints instructions per request and the functions
# with the most inclusive instructions per request; keeps the callgrind file.
#
#   scripts/profile.sh [--no-build] [--requests N] [--out DIR]
#
# Then: callgrind_annotate --inclusive=yes DIR/callgrind.out.* | less
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD=1 REQS=10000 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    --requests) REQS="${2:?}"; shift ;;
    --out) OUT="${2:?}"; shift ;;
    *) echo "usage: scripts/profile.sh [--no-build] [--requests N] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
"$REPO/scripts/install-deps.sh" valgrind >&2
[ "$BUILD" = 0 ] || (cd "$REPO" && cargo build --release -p gateway-bin -p bench >&2)
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
WORK="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/profile.XXXXXX")}"
mkdir -p "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_for() { local i; for i in $(seq 1 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $*" >&2; return 1; }

"$BIN/bench-backend" --grpc 127.0.0.1:0 --http 127.0.0.1:0 --body-bytes 64 >"$WORK/backend.out" 2>"$WORK/backend.err" &
PIDS+=($!)
wait_for grep -q '^READY' "$WORK/backend.out"
grpc="$(sed -n 's/^READY .*grpc=\([^ ]*\).*/\1/p' "$WORK/backend.out")"
TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p" \
  --log-file="$WORK/valgrind.log" "$BIN/gateway" --public 127.0.0.1:0 --internal 127.0.0.1:0 \
  --registration 127.0.0.1:0 --admin 127.0.0.1:0 >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
GW=$!; PIDS+=("$GW")
wait_for grep -q '^gateway listening' "$WORK/gateway.out"
addr() { sed -n "s/^gateway listening .*$1=\([^ ]*\).*/\1/p" "$WORK/gateway.out"; }
pub="$(addr public)" reg="$(addr registration)" adm="$(addr admin)"
wait_for curl -sf "http://$adm/readyz"
curl -sf -o /dev/null -X PUT -H 'content-type: application/json' \
  -d "{\"service\":\"bench\",\"address\":\"$grpc\",\"routes\":[{\"path_prefix\":\"/bench\"}],\"health\":{\"kind\":\"ttl\"},\"lease_ms\":3600000}" \
  "http://$reg/v1/registrations"
wait_for curl -sf -o /dev/null "http://$pub/bench/x"
load() { "$BIN/loadgen" --target http --url "http://$pub/bench/x" --rate 0 --concurrency 64 --connections 64 \
  --requests "$1" --duration 1800s --warmup 0s --timeout 60s --expect-body-bytes 64 >"$WORK/$2.json" 2>"$WORK/$2.err"; }
load 2000 warmup
callgrind_control -z "$GW" >/dev/null
load "$REQS" counted
callgrind_control -d "$GW" >/dev/null
file="$(ls -t "$WORK"/callgrind.out."$GW".* | head -n 1)"
total="$(callgrind_annotate "$file" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)"
echo "gateway: $((total / REQS)) instructions per request ($total over $REQS requests); $file"
callgrind_annotate --threshold=100 --inclusive=yes "$file" 2>/dev/null \
  | awk -v n="$REQS" '/^ *[0-9,]+ +\(/ { v=$1; gsub(",", "", v); $1=""; $2=""; printf "%9d  %s\n", v/n, substr($0, 1, 160) }' \
  | head -n 60
