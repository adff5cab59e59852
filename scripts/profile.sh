#!/usr/bin/env bash
# Where a forwarded request's instructions go: the gateway under callgrind
# (1 tokio worker, as in scripts/bench.sh), bench-backend behind it, 2,000
# warm-up requests, then exactly N counted ones (default 10,000) over 64
# keep-alive connections. Prints instructions per request and the functions
# with the most inclusive instructions per request; keeps the callgrind file.
#
#   scripts/profile.sh [--no-build] [--requests N] [--out DIR] [--observability] [--rate-limit] [--route-rules] [--cache] [--jwt]
#
# --observability: the same build three times - `[metrics] enabled = false`,
# the default (metrics on), and metrics plus `[access_log]` to a file - and
# prints what metrics and the access log cost per request:
#   metrics cost: +X.X% instructions/request (target <= 5%) PASS|MISS
#   access log cost: +X.X% instructions/request over metrics on
#
# --rate-limit: the same build with no policy, then with a `[[rate_limits]]`
# policy on the route keyed by client address (high enough never to refuse),
# and prints what the local limit check costs per request:
#   rate limit cost: +N instructions/request (+X.X%)
#
# --route-rules: the same build with no `[[routes]]`, then with a rule on the
# route that strips its prefix and adds a request and a response header, and
# prints what the rule costs per request:
#   route rule cost: +N instructions/request (+X.X%)
# --cache: the same build with no `[[cache]]`, with a policy on another
# service (the route has none: what a configured cache costs the others),
# and with one on the route (`default_ttl = "1h"`: every counted request is
# a HIT, the backend is not called), and prints both against the first:
#   cache, route without a policy: +N instructions/request (+X.X%)
#   cache HIT: +N instructions/request (+X.X%)
# --jwt: the same build with no policy, then with an `[[auth]]` policy on
# the route (an HS256 JWT provider, `secret_env`, checks of iss/aud/exp, the
# `sub` claim copied to a header) plus a local `[[rate_limits]]` keyed by
# that claim, every request carrying the same token: first with the
# decision cache (the default: repeated tokens skip the signature check),
# then with `[auth_cache] ttl = "0s"` (every request verified):
#   jwt + claim rate limit cost: +N instructions/request (+X.X%) cached, +M uncached
#
# Then: callgrind_annotate --inclusive=yes DIR/callgrind.out.* | less
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD=1 REQS=10000 OUT="" COMPARE=0 RATE=0 ROUTES=0 CACHE=0 JWT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    --requests) REQS="${2:?}"; shift ;;
    --out) OUT="${2:?}"; shift ;;
    --observability) COMPARE=1 ;;
    --rate-limit) RATE=1 ;;
    --route-rules) ROUTES=1 ;;
    --cache) CACHE=1 ;;
    --jwt) JWT=1 ;;
    *) echo "usage: scripts/profile.sh [--no-build] [--requests N] [--out DIR] [--observability] [--rate-limit] [--route-rules] [--cache] [--jwt]" >&2; exit 2 ;;
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
wait_for() { local i; for i in $(seq 1 1200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $*" >&2; return 1; }

"$BIN/bench-backend" --grpc 127.0.0.1:0 --http 127.0.0.1:0 --body-bytes 64 >"$WORK/backend.out" 2>"$WORK/backend.err" &
PIDS+=($!)
wait_for grep -q '^READY' "$WORK/backend.out"
grpc="$(sed -n 's/^READY .*grpc=\([^ ]*\).*/\1/p' "$WORK/backend.out")"

# profile NAME [gateway args...]: one gateway under callgrind, warmed up,
# N counted requests; sets PER_REQUEST and FILE.
profile() {
  local name="$1"; shift
  local dir="$WORK/$name"; mkdir -p "$dir"
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out.%p" \
    --log-file="$dir/valgrind.log" "$BIN/gateway" --public 127.0.0.1:0 --internal 127.0.0.1:0 \
    --registration 127.0.0.1:0 --admin 127.0.0.1:0 "$@" >"$dir/gateway.out" 2>"$dir/gateway.err" &
  local gw=$!; PIDS+=("$gw")
  wait_for grep -q '^gateway listening' "$dir/gateway.out"
  addr() { sed -n "s/^gateway listening .*$1=\([^ ]*\).*/\1/p" "$dir/gateway.out"; }
  local pub reg adm
  pub="$(addr public)" reg="$(addr registration)" adm="$(addr admin)"
  wait_for curl -sf "http://$adm/readyz"
  curl -sf -o /dev/null -X PUT -H 'content-type: application/json' \
    -d "{\"service\":\"bench\",\"address\":\"$grpc\",\"routes\":[{\"path_prefix\":\"/bench\"}],\"health\":{\"kind\":\"ttl\"},\"lease_ms\":3600000}" \
    "http://$reg/v1/registrations"
  wait_for curl -sf -o /dev/null "${CURL_HEADERS[@]+"${CURL_HEADERS[@]}"}" "http://$pub/bench/x"
  load() { "$BIN/loadgen" --target http --url "http://$pub/bench/x" --rate 0 --concurrency 64 --connections 64 \
    "${LOAD_HEADERS[@]+"${LOAD_HEADERS[@]}"}" --requests "$1" --duration 1800s --warmup 0s --timeout 60s --expect-body-bytes 64 >"$dir/$2.json" 2>"$dir/$2.err"; }
  load 2000 warmup
  callgrind_control -z "$gw" >/dev/null
  load "$REQS" counted
  callgrind_control -d "$gw" >/dev/null
  FILE="$(ls -t "$dir"/callgrind.out."$gw".* | head -n 1)"
  local total
  total="$(callgrind_annotate "$FILE" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)"
  PER_REQUEST=$((total / REQS))
  echo "gateway ($name): $PER_REQUEST instructions per request ($total over $REQS requests); $FILE"
  kill "$gw" 2>/dev/null || true
  wait "$gw" 2>/dev/null || true
}

if [ "$COMPARE" = 1 ]; then
  printf '[metrics]\nenabled = false\n' >"$WORK/metrics-off.toml"
  printf '[access_log]\nenabled = true\npath = "%s"\n' "$WORK/access.log" >"$WORK/access-log.toml"
  profile metrics-off --config "$WORK/metrics-off.toml"; off=$PER_REQUEST
  profile metrics-on; on=$PER_REQUEST
  profile access-log --config "$WORK/access-log.toml"; logged=$PER_REQUEST
  awk -v on="$on" -v off="$off" 'BEGIN { c = (on - off) * 100 / off;
    printf "metrics cost: %+.1f%% instructions/request (%d on, %d off; target <= 5%%) %s\n", c, on, off, (c <= 5 ? "PASS" : "MISS") }'
  awk -v on="$on" -v l="$logged" 'BEGIN {
    printf "access log cost: %+.1f%% instructions/request over metrics on (%d with the log to a file)\n", (l - on) * 100 / on, l }'
  echo "access log lines written: $(wc -l <"$WORK/access.log")"
  exit 0
fi

if [ "$RATE" = 1 ]; then
  printf '[[rate_limits]]\nservice = "bench"\nrate = 1000000000\nper = "1s"\nkey = "client"\n' >"$WORK/rate-limit.toml"
  profile no-limit; none=$PER_REQUEST
  profile rate-limit --config "$WORK/rate-limit.toml"; limited=$PER_REQUEST
  awk -v a="$none" -v b="$limited" 'BEGIN {
    printf "rate limit cost: %+d instructions/request (%+.1f%%; %d with the limit, %d without)\n", b - a, (b - a) * 100 / a, b, a }'
  exit 0
fi

if [ "$ROUTES" = 1 ]; then
  # bench-backend answers any path, so the stripped /x is served alike.
  printf '[[routes]]\nservice = "bench"\nstrip_prefix = true\nrequest_headers = { add = { "x-from-gateway" = "1" } }\nresponse_headers = { add = { "x-frame-options" = "DENY" } }\n' >"$WORK/route-rule.toml"
  profile no-rule; none=$PER_REQUEST
  profile route-rule --config "$WORK/route-rule.toml"; ruled=$PER_REQUEST
  awk -v a="$none" -v b="$ruled" 'BEGIN {
    printf "route rule cost: %+d instructions/request (%+.1f%%; %d with the rule, %d without)\n", b - a, (b - a) * 100 / a, b, a }'
  exit 0
fi

if [ "$CACHE" = 1 ]; then
  printf '[[cache]]\nservice = "other"\n' >"$WORK/cache-other.toml"
  printf '[[cache]]\nservice = "bench"\ndefault_ttl = "1h"\n' >"$WORK/cache-hit.toml"
  profile no-cache; none=$PER_REQUEST
  profile cache-other --config "$WORK/cache-other.toml"; other=$PER_REQUEST
  profile cache-hit --config "$WORK/cache-hit.toml"; hit=$PER_REQUEST
  awk -v a="$none" -v b="$other" -v h="$hit" 'BEGIN {
    printf "cache, route without a policy: %+d instructions/request (%+.1f%%; %d, %d without [[cache]])\n", b - a, (b - a) * 100 / a, b, a
    printf "cache HIT: %+d instructions/request (%+.1f%%; %d; the backend call is skipped)\n", h - a, (h - a) * 100 / a, h }'
  exit 0
fi

if [ "$JWT" = 1 ]; then
  export BENCH_JWT_SECRET="profile-secret-0123456789abcdef"
  b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
  head="$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)"
  body="$(printf '{"sub":"bench-user","iss":"profile","aud":"bench","exp":%d,"scope":"bench:read"}' "$(( $(date +%s) + 86400 ))" | b64url)"
  sig="$(printf '%s.%s' "$head" "$body" | openssl dgst -sha256 -hmac "$BENCH_JWT_SECRET" -binary | b64url)"
  token="$head.$body.$sig"
  policy='[auth_providers.bench]
kind = "jwt"
issuer = "profile"
audiences = ["bench"]
secret_env = "BENCH_JWT_SECRET"
algorithms = ["HS256"]
claims_to_headers = { sub = "x-auth-subject" }

[[auth]]
service = "bench"
provider = "bench"
scopes = ["bench:read"]

[[rate_limits]]
service = "bench"
rate = 1000000000
per = "1s"
key = "claim"
claim = "sub"
'
  printf '%s' "$policy" >"$WORK/jwt.toml"
  printf '%s\n[auth_cache]\nttl = "0s"\n' "$policy" >"$WORK/jwt-nocache.toml"
  profile no-policy; none=$PER_REQUEST
  LOAD_HEADERS=(--header "authorization: Bearer $token") CURL_HEADERS=(-H "authorization: Bearer $token")
  profile jwt --config "$WORK/jwt.toml"; cached=$PER_REQUEST
  profile jwt-nocache --config "$WORK/jwt-nocache.toml"; uncached=$PER_REQUEST
  awk -v a="$none" -v b="$cached" -v c="$uncached" 'BEGIN {
    printf "jwt + claim rate limit cost: %+d instructions/request (%+.1f%%) cached, %+d (%+.1f%%) uncached (%d cached, %d uncached, %d without a policy)\n",
      b - a, (b - a) * 100 / a, c - a, (c - a) * 100 / a, b, c, a }'
  exit 0
fi

profile default
callgrind_annotate --threshold=100 --inclusive=yes "$FILE" 2>/dev/null \
  | awk -v n="$REQS" '/^ *[0-9,]+ +\(/ { v=$1; gsub(",", "", v); $1=""; $2=""; printf "%9d  %s\n", v/n, substr($0, 1, 160) }' \
  | head -n 60
