#!/usr/bin/env bash
# Benchmark: the same backend loaded three ways in one run.
#
#   (a) direct      loadgen --gRPC-->                    bench-backend (ForwardingService)
#   (b) gateway     loadgen --HTTP/1.1 keep-alive--> gateway --gRPC--> bench-backend
#   (c) haproxy     loadgen --HTTP/1.1 keep-alive--> haproxy --HTTP/1.1--> bench-backend (plain HTTP)
#
# For each: requests/s at saturation (closed loop), p50/p99 at a fixed arrival
# rate (open model, latency from the scheduled send time), and for the proxy
# processes CPU time per request and RSS. Then the targets:
#   gateway p99 - direct p99 at the fixed rate  <= 1 ms
#   gateway idle RSS                            <= 20 MiB
#   gateway CPU/request / haproxy CPU/request   <= 3 (goal 1.5)
#
# Then the streaming section (ForwardingService.Stream), the same three ways
# with streambench (direct = gRPC Stream frames to the backend): upload and
# download MB/s of a large body (1 GiB, --quick 64 MiB), SSE event latency
# (backend send -> client receipt) and WebSocket echo round trip p50/p99, the
# proxy's CPU over the run and its RSS idle vs peak (sampled every 50 ms).
#
#   scripts/bench.sh [--quick] [--no-build] [--pin] [--strict] [--out DIR]
#
#   --quick     3 s per run, 1 s warm-up, 1 fixed-rate round (CI smoke);
#               default 10 s, 2 s warm-up, 2 fixed-rate rounds
#   --no-build  use the binaries already in target/release
#   --pin       taskset: loadgen + backend on CPU 0, the proxies on CPU 1
#   --strict    exit 1 when a target is missed (default: only on errors)
#   --out DIR   keep every raw result (JSON lines, configs, logs) in DIR
#
# Environment: BENCH_RATE (default 2000), BENCH_CONCURRENCY (64),
# BENCH_BODY_BYTES (64), BENCH_DURATION / BENCH_WARMUP (override both modes),
# BENCH_ROUNDS (fixed-rate rounds, best p99 kept; default 2, --quick 1),
# BENCH_NICE (niceness of every benchmark process; default -10 as root, else 0),
# TOKIO_WORKER_THREADS (gateway worker threads; default 1 here, like
# HAProxy's nbthread 1; the gateway's own default is one per core).
# Streaming: BENCH_STREAM_BYTES (upload and download size; 1GiB, --quick
# 64MiB), BENCH_SSE_EVENTS (2000), BENCH_SSE_INTERVAL_US (1000),
# BENCH_WS_MESSAGES (2000).
#
# Idempotent: installs haproxy if missing (scripts/install-deps.sh), builds,
# starts everything on free loopback ports, stops everything on exit.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUICK=0 BUILD=1 PIN=0 STRICT=0 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    --pin) PIN=1 ;;
    --strict) STRICT=1 ;;
    --out) OUT="${2:?--out needs a directory}"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    -h|--help) sed -n '2,41p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

RATE="${BENCH_RATE:-2000}"
CONC="${BENCH_CONCURRENCY:-64}"
BODY="${BENCH_BODY_BYTES:-64}"
if [ "$QUICK" = 1 ]; then DUR=3s WARM=1s ROUNDS=1; else DUR=10s WARM=2s ROUNDS=2; fi
DUR="${BENCH_DURATION:-$DUR}"
WARM="${BENCH_WARMUP:-$WARM}"
ROUNDS="${BENCH_ROUNDS:-$ROUNDS}"

say() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------
"$REPO/scripts/install-deps.sh" haproxy >&2
if ! command -v curl >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "curl not found (apt-get install -y curl)"
  say "installing curl"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }
fi
if [ "$BUILD" = 1 ]; then
  say "cargo build --release -p bench -p gateway-bin"
  (cd "$REPO" && cargo build --release -p bench -p gateway-bin >&2)
fi
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
for b in bench-backend loadgen streambench gateway; do [ -x "$BIN/$b" ] || die "missing $BIN/$b (run without --no-build)"; done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/bench.XXXXXX")"
PIDS=() LOAD_PID="" SAMPLER_PID=""
cleanup() {
  local rc=$? p _
  trap - EXIT INT TERM
  if [ -n "${LOAD_PID:-}" ]; then kill -TERM "$LOAD_PID" 2>/dev/null || true; fi
  if [ -n "${SAMPLER_PID:-}" ]; then kill -TERM "$SAMPLER_PID" 2>/dev/null || true; fi
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do
    for _ in $(seq 1 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ -n "$OUT" ]; then mkdir -p "$OUT"; cp -r "$WORK"/. "$OUT"/ 2>/dev/null || true; fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A shared machine: other users' compile jobs preempting the benchmark are the
# main source of tail latency. As root, run every benchmark process at a
# higher priority (BENCH_NICE, default -10; 0 to disable). It applies to all
# three paths alike.
NICE="${BENCH_NICE:-$([ "$(id -u)" = 0 ] && echo -10 || echo 0)}"
PRIO=""
if [ "$NICE" != 0 ]; then PRIO="nice -n $NICE"; fi
PROXY_CPU="$PRIO" LOAD_CPU="$PRIO"
if [ "$PIN" = 1 ]; then
  command -v taskset >/dev/null 2>&1 || die "--pin needs taskset (util-linux)"
  LOAD_CPU="$PRIO taskset -c 0" PROXY_CPU="$PRIO taskset -c 1"
fi
# Equal threads: HAProxy runs `nbthread 1` here, so the gateway gets one
# tokio worker too and CPU per request compares like with like. (With two
# workers on these two shared cores, workers waking each other cost ~40%
# more CPU per request: BENCHMARKS.md. Set TOKIO_WORKER_THREADS to compare.)
export TOKIO_WORKER_THREADS="${TOKIO_WORKER_THREADS:-1}"

TCK="$(getconf CLK_TCK)"
# utime+stime of a process (all threads), in clock ticks. Fields after the
# "(comm)" so a comm with spaces cannot shift them: utime is the 12th, stime the 13th.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# Busy ticks of the whole machine: user nice system steal (irq and softirq
# time is not charged to any process, so it would read as foreign load).
machine_busy() { awk '$1 == "cpu" {print $2 + $3 + $4 + $9}' /proc/stat; }
now_ms() { date +%s%3N; }
NCPU="$(nproc)"
cpu_split() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12, $13}'; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
# JSON field of a flat one-line object (loadgen's output).
jget() { sed -n "s/.*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" <<<"$1"; }
calc() { awk "BEGIN { printf \"%s\", $* }"; }
fmt() { if [ -n "${1:-}" ]; then awk -v v="$1" -v f="$2" 'BEGIN { printf f, v }'; else printf -- '-'; fi; }

wait_for() { # DESCRIPTION TIMEOUT_S COMMAND...
  local what="$1" t="$2"; shift 2
  local deadline=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out waiting for $what"
    sleep 0.1
  done
}
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1"; }
is_200() { [ "$(http_code "$1")" = 200 ]; }
alive() { kill -0 "$1" 2>/dev/null || die "$2 exited early: $(tail -n 5 "$3" 2>/dev/null)"; }

free_port() {
  local p _
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    # Connection refused => nothing listens there.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  die "no free port found"
}

# ---------------------------------------------------------------------------
# Start: backend, gateway, haproxy
# ---------------------------------------------------------------------------
say "starting bench-backend (body $BODY bytes)"
$LOAD_CPU "$BIN/bench-backend" --grpc 127.0.0.1:0 --http 127.0.0.1:0 --body-bytes "$BODY" \
  >"$WORK/backend.out" 2>"$WORK/backend.err" &
BACKEND_PID=$!; PIDS+=("$BACKEND_PID")
wait_for "bench-backend READY" 20 grep -q '^READY ' "$WORK/backend.out"
alive "$BACKEND_PID" bench-backend "$WORK/backend.err"
BACKEND_GRPC="$(sed -n 's/^READY .*grpc=\([^ ]*\).*/\1/p' "$WORK/backend.out")"
BACKEND_HTTP="$(sed -n 's/^READY .*http=\([^ ]*\).*/\1/p' "$WORK/backend.out")"
say "backend grpc=$BACKEND_GRPC http=$BACKEND_HTTP"

say "starting gateway"
$PROXY_CPU "$BIN/gateway" --public 127.0.0.1:0 --internal 127.0.0.1:0 \
  --registration 127.0.0.1:0 --admin 127.0.0.1:0 \
  >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
GATEWAY_PID=$!; PIDS+=("$GATEWAY_PID")
wait_for "gateway listening line" 20 grep -q '^gateway listening ' "$WORK/gateway.out"
alive "$GATEWAY_PID" gateway "$WORK/gateway.err"
gw_addr() { sed -n "s/^gateway listening .*$1=\([^ ]*\).*/\1/p" "$WORK/gateway.out"; }
GW_PUBLIC="$(gw_addr public)" GW_REG="$(gw_addr registration)" GW_ADMIN="$(gw_addr admin)"
wait_for "gateway /readyz" 20 is_200 "http://$GW_ADMIN/readyz"
say "gateway public=$GW_PUBLIC registration=$GW_REG admin=$GW_ADMIN"

REG="{\"service\":\"bench\",\"address\":\"$BACKEND_GRPC\",\"routes\":[{\"path_prefix\":\"/bench\"}],\"health\":{\"kind\":\"ttl\"},\"lease_ms\":3600000}"
code="$(curl -s -o "$WORK/register.json" -w '%{http_code}' --max-time 5 -X PUT \
  -H 'content-type: application/json' -d "$REG" "http://$GW_REG/v1/registrations")"
case "$code" in 2??) ;; *) die "registration failed: HTTP $code $(cat "$WORK/register.json")" ;; esac
wait_for "gateway route /bench" 20 is_200 "http://$GW_PUBLIC/bench/x"

# A port found free can be taken before HAProxy binds it (other tests pick
# ports the same way): HAProxy then exits at once, and is started again on
# other ports.
write_haproxy_cfg() {
cat >"$WORK/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    # WebSocket and long SSE (the streaming section): idle limit of a tunnel.
    timeout tunnel 1h

frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend backend

# The streaming section only, so the unary frontend above is untouched. By
# default HAProxy sends body data with MSG_MORE and the kernel holds small
# writes back (SSE events then arrive 100-200 ms late); http-no-delay is
# HAProxy's switch for interactive bodies, which SSE is.
frontend bench-stream
    bind 127.0.0.1:$HAPROXY_STREAM_PORT
    option http-no-delay
    default_backend backend

backend backend
    http-reuse always
    server b1 $BACKEND_HTTP
CFG
}
haproxy_up=0
for attempt in 1 2 3; do
  HAPROXY_PORT="$(free_port)"
  HAPROXY_STREAM_PORT="$(free_port)"
  [ "$HAPROXY_STREAM_PORT" != "$HAPROXY_PORT" ] || HAPROXY_STREAM_PORT="$(free_port)"
  write_haproxy_cfg
  haproxy -c -q -f "$WORK/haproxy.cfg" >&2 || die "haproxy rejected $WORK/haproxy.cfg"
  say "starting haproxy on 127.0.0.1:$HAPROXY_PORT (nbthread 1)"
  $PROXY_CPU haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>"$WORK/haproxy.err" &
  HAPROXY_PID=$!
  deadline=$((SECONDS + 20))
  while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$HAPROXY_PID" 2>/dev/null; do
    if is_200 "http://127.0.0.1:$HAPROXY_PORT/bench/x"; then haproxy_up=1; break; fi
    sleep 0.1
  done
  [ "$haproxy_up" = 1 ] && break
  say "haproxy did not come up (attempt $attempt): $(tail -n 2 "$WORK/haproxy.err" 2>/dev/null | tr '\n' ' ')"
  kill "$HAPROXY_PID" 2>/dev/null || true
  wait "$HAPROXY_PID" 2>/dev/null || true
done
[ "$haproxy_up" = 1 ] || die "timed out waiting for haproxy"
PIDS+=("$HAPROXY_PID")
alive "$HAPROXY_PID" haproxy "$WORK/haproxy.err"

# Same answer on every path?
direct_body="$(curl -s "http://$BACKEND_HTTP/bench/x" | wc -c)"
gw_body="$(curl -s "http://$GW_PUBLIC/bench/x" | wc -c)"
hp_body="$(curl -s "http://127.0.0.1:$HAPROXY_PORT/bench/x" | wc -c)"
if [ "$direct_body" != "$BODY" ] || [ "$gw_body" != "$BODY" ] || [ "$hp_body" != "$BODY" ]; then
  die "body sizes differ: backend=$direct_body gateway=$gw_body haproxy=$hp_body (want $BODY)"
fi

sleep 0.5
GW_IDLE_KIB="$(status_kib "$GATEWAY_PID" VmRSS)"
HP_IDLE_KIB="$(status_kib "$HAPROXY_PID" VmRSS)"
say "idle RSS: gateway ${GW_IDLE_KIB} KiB, haproxy ${HP_IDLE_KIB} KiB"

# ---------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------
declare -A RES CPU RSS ERRS OTHER
: >"$WORK/results.jsonl"
# load NAME MODE PROXY_PID LOADGEN_ARGS...
load() {
  local name="$1" mode="$2" pid="$3"; shift 3
  local u0=0 s0=0 u1=0 s1=0 b0 b1 out ok
  if [ "$pid" != - ]; then read -r u0 s0 < <(cpu_split "$pid"); fi
  b0="$(cpu_ticks "$BACKEND_PID")"
  local m0 w0 m1 w1; m0="$(machine_busy)" w0="$(now_ms)"
  # In the background + wait, so a signal interrupts the run at once.
  $LOAD_CPU "$BIN/loadgen" --duration "$DUR" --warmup "$WARM" --expect-body-bytes "$BODY" "$@" \
    >"$WORK/loadgen.out" 2>"$WORK/loadgen.err" &
  LOAD_PID=$!
  wait "$LOAD_PID" || die "loadgen failed for $name/$mode: $(tail -n 3 "$WORK/loadgen.err")"
  LOAD_PID=""
  out="$(cat "$WORK/loadgen.out")"
  if [ "$pid" != - ]; then read -r u1 s1 < <(cpu_split "$pid"); fi
  b1="$(cpu_ticks "$BACKEND_PID")"
  m1="$(machine_busy)" w1="$(now_ms)"
  # ticks -> microseconds per request, over every request of the run (warm-up
  # included, since the CPU counters span the whole run).
  ok="$(jget "$out" total_ok)"; [ "$ok" -gt 0 ] || ok=1
  local per="1000000 / $TCK / $ok" cpu="" usr="" sys="" rss="" bcpu
  bcpu="$(calc "($b1 - $b0) * $per")"
  if [ "$pid" != - ]; then
    cpu="$(calc "($u1 + $s1 - $u0 - $s0) * $per")"
    usr="$(calc "($u1 - $u0) * $per")" sys="$(calc "($s1 - $s0) * $per")"
    rss="$(status_kib "$pid" VmRSS)"
  fi
  # CPU used on the machine by anything but the benchmark's own processes
  # (other users' builds), in % of all CPUs over the run: the noise gauge.
  local lg other
  lg="$(jget "$out" cpu_ms)"; case "$lg" in ''|null) lg=0 ;; esac
  other="$(calc "(($m1 - $m0) - ($u1 + $s1 - $u0 - $s0) - ($b1 - $b0) - $lg * $TCK / 1000) * 100000 / $TCK / ($w1 - $w0 > 0 ? $w1 - $w0 : 1) / $NCPU")"
  other="$(fmt "$other" '%.0f')"; [ "${other#-}" = "$other" ] || other=0
  ERRS["$name"]=$(( ${ERRS["$name"]:-0} + $(jget "$out" errors) ))
  # Several rounds of the same run: keep the one with the lowest p99 (a
  # compile job of a neighbour hitting one round should not decide).
  local prev="${RES["$name.$mode"]:-}"
  if [ -z "$prev" ] || [ "$(jget "$out" p99_us)" -lt "$(jget "$prev" p99_us)" ]; then
    RES["$name.$mode"]="$out" CPU["$name.$mode"]="$cpu" RSS["$name.$mode"]="$rss" OTHER["$name.$mode"]="$other"
  fi
  printf '{"name":"%s","run":"%s","proxy_cpu_us_per_req":%s,"proxy_user_us_per_req":%s,"proxy_sys_us_per_req":%s,"proxy_rss_kib":%s,"backend_cpu_us_per_req":%s,"other_load_pct":%s,"loadgen":%s}\n' \
    "$name" "$mode" "${cpu:-null}" "${usr:-null}" "${sys:-null}" "${rss:-null}" "$bcpu" "$other" "$out" >>"$WORK/results.jsonl"
  say "$(printf '%-8s %-4s rps=%-9s p50=%-6s p99=%-6s errors=%s proxy cpu/req=%s us (usr %s + sys %s) backend cpu/req=%s us, other load %s%%' \
    "$name" "$mode" "$(jget "$out" rps)" "$(jget "$out" p50_us)" "$(jget "$out" p99_us)" "$(jget "$out" errors)" \
    "$(fmt "$cpu" '%.1f')" "$(fmt "$usr" '%.1f')" "$(fmt "$sys" '%.1f')" "$(fmt "$bcpu" '%.1f')" "$other")"
  sleep 0.5
}

GRPC_ARGS=(--target grpc --addr "$BACKEND_GRPC")
GW_ARGS=(--target http --url "http://$GW_PUBLIC/bench/x")
HP_ARGS=(--target http --url "http://127.0.0.1:$HAPROXY_PORT/bench/x")

say "saturation runs: $DUR each (+$WARM warm-up), concurrency $CONC"
load direct  sat -              "${GRPC_ARGS[@]}" --rate 0 --concurrency "$CONC"
load gateway sat "$GATEWAY_PID" "${GW_ARGS[@]}"   --rate 0 --concurrency "$CONC" --connections "$CONC"
load haproxy sat "$HAPROXY_PID" "${HP_ARGS[@]}"   --rate 0 --concurrency "$CONC" --connections "$CONC"
say "fixed-rate runs: $RATE req/s for $DUR each (+$WARM warm-up), best of $ROUNDS round(s)"
for _ in $(seq 1 "$ROUNDS"); do
  load direct  rate -              "${GRPC_ARGS[@]}" --rate "$RATE"
  load gateway rate "$GATEWAY_PID" "${GW_ARGS[@]}"   --rate "$RATE" --connections 32
  load haproxy rate "$HAPROXY_PID" "${HP_ARGS[@]}"   --rate "$RATE" --connections 32
done

GW_HWM_KIB="$(status_kib "$GATEWAY_PID" VmHWM)"
HP_HWM_KIB="$(status_kib "$HAPROXY_PID" VmHWM)"
for p in "$BACKEND_PID" "$GATEWAY_PID" "$HAPROXY_PID"; do alive "$p" "a benchmark process" /dev/null; done

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
mib() { if [ -n "${1:-}" ]; then awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; else printf -- '-'; fi; }
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }

errors_total=0
row() { # NAME LABEL IDLE_KIB HWM_KIB
  local n="$1" s="${RES[$1.sat]}" r="${RES[$1.rate]}"
  local e="${ERRS[$1]:-0}"
  errors_total=$((errors_total + e))
  printf '| %-24s | %9s | %7s | %7s | %7s | %6s | %8s | %8s | %8s | %8s | %8s |\n' "$2" \
    "$(fmt "$(jget "$s" rps)" '%.0f')" \
    "$(ms "$(jget "$r" p50_us)")" "$(ms "$(jget "$r" p99_us)")" "$(ms "$(jget "$r" max_us)")" "$e" \
    "$(fmt "${CPU[$n.sat]:-}" '%.1f')" "$(fmt "${CPU[$n.rate]:-}" '%.1f')" \
    "$(mib "${3:-}")" "$(mib "${RSS[$n.sat]:-}")" "$(mib "${4:-}")"
}

{
  echo
  echo "Benchmark: $(nproc) CPUs, body $BODY B, saturation concurrency $CONC, fixed rate $RATE req/s (best p99 of $ROUNDS), $DUR per run (+$WARM warm-up)$( [ "$PIN" = 1 ] && echo ', pinned')"
  echo "gateway tokio workers: ${TOKIO_WORKER_THREADS:-$(nproc) (default)}; haproxy nbthread 1; backend 1 worker; loadgen 1 thread + scheduler thread; nice $NICE."
  echo "Latencies in ms (open model, from the scheduled send time); CPU = proxy process utime+stime per request; RSS in MiB."
  echo
  printf '| %-24s | %9s | %7s | %7s | %7s | %6s | %8s | %8s | %8s | %8s | %8s |\n' \
    "path" "sat req/s" "p50" "p99" "max" "errors" "CPU µs/r" "CPU µs/r" "RSS idle" "RSS sat" "RSS peak"
  printf '| %-24s | %9s | %7s | %7s | %7s | %6s | %8s | %8s | %8s | %8s | %8s |\n' \
    "" "" "@$RATE" "@$RATE" "@$RATE" "" "@sat" "@$RATE" "" "" ""
  printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' \
    "$(printf -- '-%.0s' {1..26})" "$(printf -- '-%.0s' {1..11})" "$(printf -- '-%.0s' {1..9})" \
    "$(printf -- '-%.0s' {1..9})" "$(printf -- '-%.0s' {1..9})" "$(printf -- '-%.0s' {1..8})" \
    "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..10})" \
    "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..10})"
  row direct  "(a) direct gRPC"
  row gateway "(b) gateway HTTP/1.1" "$GW_IDLE_KIB" "$GW_HWM_KIB"
  row haproxy "(c) haproxy HTTP/1.1" "$HP_IDLE_KIB" "$HP_HWM_KIB"
  echo
  echo "Other load on the machine during these runs (CPU not used by the benchmark, % of $NCPU CPUs; high = noisy):"
  echo "  saturation: direct ${OTHER[direct.sat]}%, gateway ${OTHER[gateway.sat]}%, haproxy ${OTHER[haproxy.sat]}%;" \
    "fixed rate: direct ${OTHER[direct.rate]}%, gateway ${OTHER[gateway.rate]}%, haproxy ${OTHER[haproxy.rate]}%"
  echo
} | tee "$WORK/table.md"

P99_DIRECT="$(jget "${RES[direct.rate]}" p99_us)"
P99_GW="$(jget "${RES[gateway.rate]}" p99_us)"
P99_ADDED_MS="$(awk -v a="$P99_GW" -v b="$P99_DIRECT" 'BEGIN { printf "%.2f", (a - b) / 1000 }')"
CPU_RATIO="$(awk -v a="${CPU[gateway.sat]}" -v b="${CPU[haproxy.sat]}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
CPU_RATIO_RATE="$(awk -v a="${CPU[gateway.rate]}" -v b="${CPU[haproxy.rate]}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
GW_IDLE_MIB="$(mib "$GW_IDLE_KIB")"
verdict() { if awk -v v="$1" -v l="$2" 'BEGIN { exit !(v <= l) }'; then echo "met"; else echo "MISSED"; fi; }
V1="$(verdict "$P99_ADDED_MS" 1)" V2="$(verdict "$GW_IDLE_MIB" 20)" V3="$(verdict "$CPU_RATIO" 3)" V4="$(verdict "$CPU_RATIO" 1.5)"
tline() { printf '  %-44s %7s %-4s %-22s %s\n' "$1" "$2" "$3" "$4" "$5"; }
{
  echo "Targets:"
  tline "gateway p99 - direct p99 at $RATE req/s" "$P99_ADDED_MS" ms "(target <= 1 ms)" "$V1"
  tline "gateway idle RSS" "$GW_IDLE_MIB" MiB "(target <= 20 MiB)" "$V2"
  tline "gateway CPU/req / haproxy CPU/req (sat)" "$CPU_RATIO" x "(target <= 3x)" "$V3"
  tline "" "" "" "(goal <= 1.5x)" "$V4"
  tline "gateway CPU/req / haproxy CPU/req ($RATE/s)" "$CPU_RATIO_RATE" x "(for information)" ""
  [ "$errors_total" = 0 ] || echo "  ERRORS: $errors_total requests failed"
} | tee -a "$WORK/table.md"
printf '{"p99_added_ms":%s,"gateway_idle_rss_mib":%s,"cpu_ratio_sat":%s,"cpu_ratio_rate":%s,"errors":%s}\n' \
  "$P99_ADDED_MS" "$GW_IDLE_MIB" "$CPU_RATIO" "$CPU_RATIO_RATE" "$errors_total" >"$WORK/summary.json"

# ---------------------------------------------------------------------------
# Streaming: ForwardingService.Stream (uploads, downloads, SSE, WebSocket)
# ---------------------------------------------------------------------------
# Its own service on the same backend, registered only now, so the unary runs
# above are untouched: `streaming: true`; /upload is a default route (a
# chunked body goes by Stream on the gateway's own rule; its head comes only
# after the whole body, hence the long timeout), /download and /sse are
# `stream: true` routes, and WebSocket upgrades use Stream on any route.
if [ "$QUICK" = 1 ]; then STREAM_BYTES=64MiB; else STREAM_BYTES=1GiB; fi
STREAM_BYTES="${BENCH_STREAM_BYTES:-$STREAM_BYTES}"
SSE_EVENTS="${BENCH_SSE_EVENTS:-2000}"
SSE_INTERVAL_US="${BENCH_SSE_INTERVAL_US:-1000}"
WS_MESSAGES="${BENCH_WS_MESSAGES:-2000}"
SB_ARGS=(--upload-bytes "$STREAM_BYTES" --download-bytes "$STREAM_BYTES" --sse-events "$SSE_EVENTS"
  --sse-interval-us "$SSE_INTERVAL_US" --ws-messages "$WS_MESSAGES")

SREG="{\"service\":\"bench-stream\",\"address\":\"$BACKEND_GRPC\",\"streaming\":true,\"routes\":[{\"path_prefix\":\"/upload\",\"timeout_ms\":600000},{\"path_prefix\":\"/download\",\"stream\":true},{\"path_prefix\":\"/sse\",\"stream\":true},{\"path_prefix\":\"/ws\"}],\"health\":{\"kind\":\"ttl\"},\"lease_ms\":3600000}"
code="$(curl -s -o "$WORK/register-stream.json" -w '%{http_code}' --max-time 5 -X PUT \
  -H 'content-type: application/json' -d "$SREG" "http://$GW_REG/v1/registrations")"
case "$code" in 2??) ;; *) die "streaming registration failed: HTTP $code $(cat "$WORK/register-stream.json")" ;; esac
wait_for "gateway route /upload" 20 is_200 "http://$GW_PUBLIC/upload"
# Does the gateway stream yet? A Stream answer carries x-bench-via: stream; a
# gateway without Stream calls Send, which answers the fixed unary body.
GW_STREAMS=0
probe="$(curl -s -D - -o /dev/null --max-time 5 "http://$GW_PUBLIC/sse?count=1&interval_us=0" | tr -d '\r' || true)"
probe_status="$(sed -n '1s/^HTTP\/[0-9.]* \([0-9]*\).*/\1/p' <<<"$probe")"
[ "$probe_status" = 200 ] || die "GET /sse through the gateway: HTTP ${probe_status:-no answer}"
if grep -qix 'x-bench-via: stream' <<<"$probe"; then GW_STREAMS=1; fi
[ "$GW_STREAMS" = 1 ] || say "the gateway answered /sse without streaming (no ForwardingService.Stream yet): gateway streaming runs skipped"

# VmRSS of PID every 50 ms into FILE until killed or PID exits.
rss_sampler() {
  local k v _
  while [ -r "/proc/$1/status" ]; do
    while read -r k v _; do case "$k" in VmRSS:) echo "$v" ;; esac; done <"/proc/$1/status" 2>/dev/null || break
    sleep 0.05
  done >"$2"
}
declare -A SRES SIDLE SPEAK SCPU SOTHER
# stream_run NAME PROXY_PID STREAMBENCH_ARGS...
stream_run() {
  local name="$1" pid="$2"; shift 2
  local c0=0 c1=0 b0 b1 m0 w0 m1 w1 lg
  SIDLE["$name"]="" SPEAK["$name"]="" SCPU["$name"]=""
  b0="$(cpu_ticks "$BACKEND_PID")" m0="$(machine_busy)" w0="$(now_ms)"
  if [ "$pid" != - ]; then
    SIDLE["$name"]="$(status_kib "$pid" VmRSS)" c0="$(cpu_ticks "$pid")"
    rss_sampler "$pid" "$WORK/rss.$name.txt" &
    SAMPLER_PID=$!
  fi
  $LOAD_CPU "$BIN/streambench" "${SB_ARGS[@]}" "$@" \
    >"$WORK/streambench.$name.out" 2>"$WORK/streambench.$name.err" &
  LOAD_PID=$!
  wait "$LOAD_PID" || die "streambench failed for $name: $(tail -n 3 "$WORK/streambench.$name.err")"
  LOAD_PID=""
  if [ "$pid" != - ]; then
    kill -TERM "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
    c1="$(cpu_ticks "$pid")"
    SPEAK["$name"]="$(sort -n "$WORK/rss.$name.txt" | tail -n 1)"
    SCPU["$name"]="$(calc "($c1 - $c0) * 1000 / $TCK")"
  fi
  b1="$(cpu_ticks "$BACKEND_PID")" m1="$(machine_busy)" w1="$(now_ms)"
  SRES["$name"]="$(cat "$WORK/streambench.$name.out")"
  # Same noise gauge as the unary runs: machine CPU not used by the benchmark.
  lg="$(jget "${SRES[$name]}" cpu_ms)"; case "$lg" in ''|null) lg=0 ;; esac
  SOTHER["$name"]="$(calc "(($m1 - $m0) - ($c1 - $c0) - ($b1 - $b0) - $lg * $TCK / 1000) * 100000 / $TCK / ($w1 - $w0 > 0 ? $w1 - $w0 : 1) / $NCPU")"
  SOTHER["$name"]="$(fmt "${SOTHER[$name]}" '%.0f')"; [ "${SOTHER[$name]#-}" = "${SOTHER[$name]}" ] || SOTHER["$name"]=0
  printf '{"name":"%s","run":"stream","proxy_cpu_ms":%s,"proxy_idle_rss_kib":%s,"proxy_peak_rss_kib":%s,"other_load_pct":%s,"streambench":%s}\n' \
    "$name" "${SCPU[$name]:-null}" "${SIDLE[$name]:-null}" "${SPEAK[$name]:-null}" "${SOTHER[$name]}" "${SRES[$name]}" >>"$WORK/results.jsonl"
  say "$(printf '%-8s stream upload=%s MB/s download=%s MB/s sse p50/p99=%s/%s us ws p50/p99=%s/%s us proxy cpu=%s ms rss idle/peak=%s/%s KiB, other load %s%%' \
    "$name" "$(jget "${SRES[$name]}" upload_mb_s)" "$(jget "${SRES[$name]}" download_mb_s)" \
    "$(jget "${SRES[$name]}" sse_p50_us)" "$(jget "${SRES[$name]}" sse_p99_us)" \
    "$(jget "${SRES[$name]}" ws_p50_us)" "$(jget "${SRES[$name]}" ws_p99_us)" \
    "${SCPU[$name]:--}" "${SIDLE[$name]:--}" "${SPEAK[$name]:--}" "${SOTHER[$name]}")"
  sleep 0.5
}

say "streaming runs: upload + download $STREAM_BYTES, $SSE_EVENTS SSE events every $SSE_INTERVAL_US us, $WS_MESSAGES WebSocket echoes"
stream_run direct - --target grpc --addr "$BACKEND_GRPC" --expect-via stream
if [ "$GW_STREAMS" = 1 ]; then
  stream_run gateway "$GATEWAY_PID" --target http --url "http://$GW_PUBLIC" --expect-via stream
fi
stream_run haproxy "$HAPROXY_PID" --target http --url "http://127.0.0.1:$HAPROXY_STREAM_PORT" --expect-via http
for p in "$BACKEND_PID" "$GATEWAY_PID" "$HAPROXY_PID"; do alive "$p" "a benchmark process" /dev/null; done

srow() { # NAME LABEL
  local r="${SRES[$1]:-}"
  if [ -z "$r" ]; then
    printf '| %-24s | %8s | %8s | %7s | %7s | %7s | %7s | %8s | %8s | %8s |\n' "$2" - - - - - - - - -
    return
  fi
  printf '| %-24s | %8s | %8s | %7s | %7s | %7s | %7s | %8s | %8s | %8s |\n' "$2" \
    "$(fmt "$(jget "$r" upload_mb_s)" '%.0f')" "$(fmt "$(jget "$r" download_mb_s)" '%.0f')" \
    "$(fmt "$(jget "$r" sse_p50_us)" '%.0f')" "$(fmt "$(jget "$r" sse_p99_us)" '%.0f')" \
    "$(fmt "$(jget "$r" ws_p50_us)" '%.0f')" "$(fmt "$(jget "$r" ws_p99_us)" '%.0f')" \
    "$(fmt "${SCPU[$1]:-}" '%.0f')" "$(mib "${SIDLE[$1]:-}")" "$(mib "${SPEAK[$1]:-}")"
}
{
  echo
  echo "Streaming: upload and download $STREAM_BYTES each (MB/s = 10^6 B/s), $SSE_EVENTS SSE events every $SSE_INTERVAL_US µs, $WS_MESSAGES WebSocket echoes of 64 B."
  echo "Latencies in µs: SSE = backend send stamp -> client receipt, WS = echo round trip. CPU = proxy utime+stime over the whole run, in ms. RSS in MiB: idle before the run, peak sampled every 50 ms during it."
  echo
  printf '| %-24s | %8s | %8s | %7s | %7s | %7s | %7s | %8s | %8s | %8s |\n' \
    "path" "upload" "download" "SSE" "SSE" "WS" "WS" "proxy" "RSS" "RSS"
  printf '| %-24s | %8s | %8s | %7s | %7s | %7s | %7s | %8s | %8s | %8s |\n' \
    "" "MB/s" "MB/s" "p50" "p99" "p50" "p99" "CPU ms" "idle" "peak"
  printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' \
    "$(printf -- '-%.0s' {1..26})" "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..10})" \
    "$(printf -- '-%.0s' {1..9})" "$(printf -- '-%.0s' {1..9})" "$(printf -- '-%.0s' {1..9})" \
    "$(printf -- '-%.0s' {1..9})" "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..10})" \
    "$(printf -- '-%.0s' {1..10})"
  srow direct  "(a) direct gRPC Stream"
  srow gateway "(b) gateway HTTP/1.1"
  srow haproxy "(c) haproxy HTTP/1.1"
  [ "$GW_STREAMS" = 1 ] || echo "(b) not run: the gateway does not use ForwardingService.Stream yet (GET /sse came back through Send)."
  echo
  echo "Other load during the streaming runs (% of $NCPU CPUs): direct ${SOTHER[direct]}%, gateway ${SOTHER[gateway]:--}%, haproxy ${SOTHER[haproxy]}%"
  echo
} | tee -a "$WORK/table.md"
printf '{"stream_bytes":"%s","gateway_streams":%s,"gateway_idle_rss_kib":%s,"gateway_peak_rss_kib":%s}\n' \
  "$STREAM_BYTES" "$([ "$GW_STREAMS" = 1 ] && echo true || echo false)" \
  "${SIDLE[gateway]:-null}" "${SPEAK[gateway]:-null}" >"$WORK/stream-summary.json"

[ "$errors_total" = 0 ] || die "$errors_total requests failed"
if [ "$STRICT" = 1 ] && [ "$V1$V2$V3" != "metmetmet" ]; then die "a target was missed (--strict)"; fi
if [ "$STRICT" = 1 ] && [ "$GW_STREAMS" != 1 ]; then die "the gateway does not stream (--strict)"; fi
