#!/usr/bin/env bash
# Benchmark: the same answer loaded four ways in one run.
#
#   (a) direct       loadgen --gRPC-->                    bench-backend (ForwardingService)
#   (b) gateway      loadgen --HTTP/1.1 keep-alive--> gateway --gRPC--> bench-backend
#   (c) haproxy      loadgen --HTTP/1.1 keep-alive--> haproxy --HTTP/1.1--> bench-backend (plain HTTP)
#   (d) grpc-gateway loadgen --HTTP/1.1 keep-alive--> grpc-gateway --gRPC--> Go backend
#       (examples/bench/grpc-gateway: grpc-gateway v2's runtime.ServeMux and a
#       generated handler for GET /bench/{name} answering a google.api.HttpBody;
#       the Go gRPC backend answers the same status, content type and body bytes
#       as bench-backend. Built with `go build` from the Go module proxy and
#       cached under target/bench-grpc-gateway/, keyed by the sources and the Go
#       version. Without Go, or if the build fails, (d) is skipped and said so.)
#
# For each: requests/s at saturation (closed loop), p50/p99 at a fixed arrival
# rate (open model, latency from the scheduled send time), and for the proxy
# processes CPU time per request and RSS.
#
# Instructions per request (callgrind; BENCH_CALLGRIND=0 skips it): for each
# proxy - gateway, haproxy, grpc-gateway - a second instance is started under
# `valgrind --tool=callgrind` (same configuration and thread count as above,
# on other free ports, the backends as above, not under valgrind), then
#   1. warm-up: loadgen sends BENCH_CALLGRIND_WARMUP requests through it
#      (2,000; --quick 200) at saturation, 64 connections;
#   2. `callgrind_control -z` zeroes the counters;
#   3. loadgen (a new process) sends exactly BENCH_CALLGRIND_REQUESTS requests
#      (20,000; --quick 2,000) at saturation over --concurrency (64)
#      keep-alive connections, every answer checked (status, body size);
#   4. 1 s later (the proxy has seen the 64 connections close)
#      `callgrind_control -d` dumps the counters;
#   5. instructions per request = the dump's `totals:` Ir (all threads, user
#      space only: the kernel's work for syscalls is not counted) / requests.
# Nothing is subtracted: the count includes accepting and closing the 64
# client connections and whatever the proxy does on its own meanwhile (timers,
# Go's garbage collector and scheduler). Instruction counts do not depend on
# other load on the machine, unlike CPU time; they do move a little with the
# number of requests (the 64 connection set-ups are amortised over them), so
# compare figures measured with the same BENCH_CALLGRIND_REQUESTS. valgrind
# copes with all three; the Go proxy runs under it with
# GODEBUG=asyncpreemptoff=1 (callgrind 3.19 aborts on the SIGURG signals of
# Go's asynchronous preemption), that instance only. A proxy that does not
# come up or answer under valgrind is reported as "n/a" with the reason.
#
# Targets (issue 10), each printed with its ratio and PASS/MISS:
#   gateway CPU/request at saturation <= 1.5 x haproxy's
#   gateway CPU/request at saturation <= 0.5 x grpc-gateway's
#   gateway instructions/request      <= 2 x haproxy's
#   gateway p99 - direct p99 at the fixed rate (2,000 req/s) <= 0.3 ms
#   gateway idle RSS                  <= 10 MiB
# A target whose figure could not be measured (no Go, valgrind failed) is
# "n/a": reported, never a pass.
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
#   --strict    exit 1 when a target is missed or n/a (default: only on errors;
#               a missing grpc-gateway peer makes its target n/a, not a miss)
#   --out DIR   keep every raw result (JSON lines, configs, logs) in DIR
#
# Environment: BENCH_RATE (default 2000), BENCH_CONCURRENCY (64),
# BENCH_BODY_BYTES (64), BENCH_DURATION / BENCH_WARMUP (override both modes),
# BENCH_ROUNDS (fixed-rate rounds, best p99 kept; default 2, --quick 1),
# BENCH_NICE (niceness of every benchmark process; default -10 as root, else 0),
# TOKIO_WORKER_THREADS (gateway worker threads; default 1 here, like
# HAProxy's nbthread 1; the gateway's own default is one per core),
# BENCH_GO_MAXPROCS (GOMAXPROCS of the grpc-gateway proxy; default 1 for the
# same reason; its Go backend always gets 1, like bench-backend's 1 worker),
# BENCH_CALLGRIND (1; 0 = no instruction counts), BENCH_CALLGRIND_REQUESTS,
# BENCH_CALLGRIND_WARMUP (see above), BENCH_GRPC_GATEWAY (1; 0 = no (d)).
# Streaming: BENCH_STREAM_BYTES (upload and download size; 1GiB, --quick
# 64MiB), BENCH_SSE_EVENTS (2000), BENCH_SSE_INTERVAL_US (1000),
# BENCH_WS_MESSAGES (2000).
#
# Idempotent: installs haproxy and valgrind if missing
# (scripts/install-deps.sh), builds (the Go peer only when its sources or Go
# changed), starts everything on free loopback ports, stops everything on exit.
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
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
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
if [ "$QUICK" = 1 ]; then CG_REQS=2000 CG_WARM=200; else CG_REQS=20000 CG_WARM=2000; fi
CG_REQS="${BENCH_CALLGRIND_REQUESTS:-$CG_REQS}"
CG_WARM="${BENCH_CALLGRIND_WARMUP:-$CG_WARM}"
CALLGRIND="${BENCH_CALLGRIND:-1}"
GGW_ENABLED="${BENCH_GRPC_GATEWAY:-1}"
GO_PROCS="${BENCH_GO_MAXPROCS:-1}"

say() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------
if [ "$CALLGRIND" = 1 ]; then "$REPO/scripts/install-deps.sh" haproxy valgrind >&2; else "$REPO/scripts/install-deps.sh" haproxy >&2; fi
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
PIDS=() LOAD_PID="" SAMPLER_PID="" CG_PID=""
cleanup() {
  local rc=$? p _
  trap - EXIT INT TERM
  if [ -n "${LOAD_PID:-}" ]; then kill -TERM "$LOAD_PID" 2>/dev/null || true; fi
  if [ -n "${CG_PID:-}" ]; then PIDS+=("$CG_PID"); fi
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

# The grpc-gateway peer: `go build` of examples/bench/grpc-gateway, cached
# under target/bench-grpc-gateway/ by a hash of its sources and `go version`,
# so it is built once (CI included) and again only when something changed.
GGW_DIR="$REPO/examples/bench/grpc-gateway"
GGW_BIN="" GGW_WHY=""
build_ggw() {
  if [ "$GGW_ENABLED" != 1 ]; then GGW_WHY="BENCH_GRPC_GATEWAY=0"; return 1; fi
  if ! command -v go >/dev/null 2>&1; then GGW_WHY="go not found"; return 1; fi
  local key dir bin
  key="$(cd "$GGW_DIR" && { go version; find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) \
    | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -c1-16)"
  dir="${CARGO_TARGET_DIR:-$REPO/target}/bench-grpc-gateway"
  bin="$dir/bench-grpc-gateway-$key"
  if [ -x "$bin" ]; then GGW_BIN="$bin"; say "grpc-gateway peer: $bin (cached)"; return 0; fi
  mkdir -p "$dir"
  say "grpc-gateway peer: go build (modules from the Go module proxy; log $dir/build.log)"
  if (cd "$GGW_DIR" && GOFLAGS="-buildvcs=false -mod=readonly" timeout 600 go build -trimpath -o "$bin.tmp" .) \
       >"$dir/build.log" 2>&1 && mv "$bin.tmp" "$bin"; then
    find "$dir" -maxdepth 1 -name 'bench-grpc-gateway-*' ! -name "bench-grpc-gateway-$key" -delete
    GGW_BIN="$bin"
    return 0
  fi
  rm -f "$bin.tmp"
  GGW_WHY="go build failed: $(tail -n 2 "$dir/build.log" | tr '\n' ' ')"
  return 1
}
build_ggw || say "grpc-gateway peer skipped: $GGW_WHY"

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

# (d) grpc-gateway: its Go gRPC backend (GOMAXPROCS 1, like bench-backend's one
# worker, with the load generator and backend) and the proxy (GOMAXPROCS
# BENCH_GO_MAXPROCS, with the proxies).
GGW_PID="" GGWB_PID="" GGW_HTTP="" GGWB_GRPC=""
start_ggw() {
  GOMAXPROCS=1 $LOAD_CPU "$GGW_BIN" -mode backend -grpc 127.0.0.1:0 -body-bytes "$BODY" \
    >"$WORK/ggw-backend.out" 2>"$WORK/ggw-backend.err" &
  GGWB_PID=$!; PIDS+=("$GGWB_PID")
  wait_for "grpc-gateway backend READY" 20 grep -q '^READY ' "$WORK/ggw-backend.out"
  alive "$GGWB_PID" "grpc-gateway backend" "$WORK/ggw-backend.err"
  GGWB_GRPC="$(sed -n 's/^READY grpc=\([^ ]*\).*/\1/p' "$WORK/ggw-backend.out")"
  GOMAXPROCS="$GO_PROCS" $PROXY_CPU "$GGW_BIN" -mode proxy -http 127.0.0.1:0 -backend "$GGWB_GRPC" \
    >"$WORK/ggw.out" 2>"$WORK/ggw.err" &
  GGW_PID=$!; PIDS+=("$GGW_PID")
  wait_for "grpc-gateway READY" 20 grep -q '^READY ' "$WORK/ggw.out"
  alive "$GGW_PID" grpc-gateway "$WORK/ggw.err"
  GGW_HTTP="$(sed -n 's/^READY http=\([^ ]*\).*/\1/p' "$WORK/ggw.out")"
  wait_for "grpc-gateway /bench/x" 20 is_200 "http://$GGW_HTTP/bench/x"
  say "grpc-gateway http=$GGW_HTTP (GOMAXPROCS $GO_PROCS), its backend grpc=$GGWB_GRPC"
}
if [ -n "$GGW_BIN" ]; then start_ggw; fi

# Same answer on every path?
direct_body="$(curl -s "http://$BACKEND_HTTP/bench/x" | wc -c)"
gw_body="$(curl -s "http://$GW_PUBLIC/bench/x" | wc -c)"
hp_body="$(curl -s "http://127.0.0.1:$HAPROXY_PORT/bench/x" | wc -c)"
if [ "$direct_body" != "$BODY" ] || [ "$gw_body" != "$BODY" ] || [ "$hp_body" != "$BODY" ]; then
  die "body sizes differ: backend=$direct_body gateway=$gw_body haproxy=$hp_body (want $BODY)"
fi
if [ -n "$GGW_PID" ]; then
  # The same bytes and content type as the other paths, not only the size.
  cmp -s <(curl -s "http://$BACKEND_HTTP/bench/x") <(curl -s "http://$GGW_HTTP/bench/x") \
    || die "grpc-gateway's body differs from bench-backend's"
  ct="$(curl -s -o /dev/null -w '%{content_type}' "http://$GGW_HTTP/bench/x")"
  [ "$ct" = text/plain ] || die "grpc-gateway answers content-type '$ct', want text/plain"
fi

sleep 0.5
GW_IDLE_KIB="$(status_kib "$GATEWAY_PID" VmRSS)"
HP_IDLE_KIB="$(status_kib "$HAPROXY_PID" VmRSS)"
GGW_IDLE_KIB=""
if [ -n "$GGW_PID" ]; then GGW_IDLE_KIB="$(status_kib "$GGW_PID" VmRSS)"; fi
say "idle RSS: gateway ${GW_IDLE_KIB} KiB, haproxy ${HP_IDLE_KIB} KiB, grpc-gateway ${GGW_IDLE_KIB:--} KiB"

# ---------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------
declare -A RES CPU RSS ERRS OTHER BACKEND_OF
: >"$WORK/results.jsonl"
# load NAME MODE PROXY_PID LOADGEN_ARGS...
load() {
  local name="$1" mode="$2" pid="$3"; shift 3
  local u0=0 s0=0 u1=0 s1=0 b0 b1 out ok bpid="${BACKEND_OF[$name]:-$BACKEND_PID}"
  if [ "$pid" != - ]; then read -r u0 s0 < <(cpu_split "$pid"); fi
  b0="$(cpu_ticks "$bpid")"
  local m0 w0 m1 w1; m0="$(machine_busy)" w0="$(now_ms)"
  # In the background + wait, so a signal interrupts the run at once.
  $LOAD_CPU "$BIN/loadgen" --duration "$DUR" --warmup "$WARM" --expect-body-bytes "$BODY" "$@" \
    >"$WORK/loadgen.out" 2>"$WORK/loadgen.err" &
  LOAD_PID=$!
  wait "$LOAD_PID" || die "loadgen failed for $name/$mode: $(tail -n 3 "$WORK/loadgen.err")"
  LOAD_PID=""
  out="$(cat "$WORK/loadgen.out")"
  if [ "$pid" != - ]; then read -r u1 s1 < <(cpu_split "$pid"); fi
  b1="$(cpu_ticks "$bpid")"
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
GGW_ARGS=(--target http --url "http://$GGW_HTTP/bench/x")
BACKEND_OF[grpcgw]="$GGWB_PID"

say "saturation runs: $DUR each (+$WARM warm-up), concurrency $CONC"
load direct  sat -              "${GRPC_ARGS[@]}" --rate 0 --concurrency "$CONC"
load gateway sat "$GATEWAY_PID" "${GW_ARGS[@]}"   --rate 0 --concurrency "$CONC" --connections "$CONC"
load haproxy sat "$HAPROXY_PID" "${HP_ARGS[@]}"   --rate 0 --concurrency "$CONC" --connections "$CONC"
if [ -n "$GGW_PID" ]; then
  load grpcgw sat "$GGW_PID"    "${GGW_ARGS[@]}"  --rate 0 --concurrency "$CONC" --connections "$CONC"
fi
say "fixed-rate runs: $RATE req/s for $DUR each (+$WARM warm-up), best of $ROUNDS round(s)"
for _ in $(seq 1 "$ROUNDS"); do
  load direct  rate -              "${GRPC_ARGS[@]}" --rate "$RATE"
  load gateway rate "$GATEWAY_PID" "${GW_ARGS[@]}"   --rate "$RATE" --connections 32
  load haproxy rate "$HAPROXY_PID" "${HP_ARGS[@]}"   --rate "$RATE" --connections 32
  if [ -n "$GGW_PID" ]; then
    load grpcgw rate "$GGW_PID"    "${GGW_ARGS[@]}"  --rate "$RATE" --connections 32
  fi
done

GW_HWM_KIB="$(status_kib "$GATEWAY_PID" VmHWM)"
HP_HWM_KIB="$(status_kib "$HAPROXY_PID" VmHWM)"
GGW_HWM_KIB=""
if [ -n "$GGW_PID" ]; then GGW_HWM_KIB="$(status_kib "$GGW_PID" VmHWM)"; fi
for p in "$BACKEND_PID" "$GATEWAY_PID" "$HAPROXY_PID" $GGW_PID $GGWB_PID; do alive "$p" "a benchmark process" /dev/null; done

# ---------------------------------------------------------------------------
# Instructions per request: each proxy again, under callgrind (method in the
# header). The instances above keep running, untouched.
# ---------------------------------------------------------------------------
declare -A IR IR_WHY
CG_OPTS=(--tool=callgrind --dump-instr=no --dump-line=no)
# cg_start NAME COMMAND...: start COMMAND under callgrind as CG_PID.
cg_start() {
  local name="$1"; shift
  # shellcheck disable=SC2086
  $PROXY_CPU valgrind "${CG_OPTS[@]}" --callgrind-out-file="$WORK/callgrind.$name.%p" \
    --log-file="$WORK/callgrind.$name.log" "$@" >"$WORK/cg-$name.out" 2>"$WORK/cg-$name.err" &
  CG_PID=$!
}
cg_stop() {
  [ -n "$CG_PID" ] || return 0
  kill -TERM "$CG_PID" 2>/dev/null || true
  local _
  for _ in $(seq 1 100); do kill -0 "$CG_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$CG_PID" 2>/dev/null || true
  wait "$CG_PID" 2>/dev/null || true
  CG_PID=""
}
# cg_loadgen OUTFILE REQUESTS URL: exactly REQUESTS requests at saturation.
cg_loadgen() {
  $LOAD_CPU "$BIN/loadgen" --target http --url "$3" --rate 0 --concurrency "$CONC" --connections "$CONC" \
    --requests "$2" --duration 1800s --warmup 0s --timeout 60s --expect-body-bytes "$BODY" \
    >"$1" 2>"$1.err" &
  LOAD_PID=$!
  if ! wait "$LOAD_PID"; then LOAD_PID=""; return 1; fi
  LOAD_PID=""
  local out; out="$(cat "$1")"
  [ "$(jget "$out" total_ok)" = "$2" ] && [ "$(jget "$out" total_errors)" = 0 ]
}
# cg_measure NAME URL: steps 1-5 of the header on the running CG_PID.
cg_measure() {
  local name="$1" url="$2" t0 f totals
  t0=$SECONDS
  if ! cg_loadgen "$WORK/cg-$name.warm.json" "$CG_WARM" "$url"; then
    IR_WHY["$name"]="warm-up through callgrind failed: $(tail -c 200 "$WORK/cg-$name.warm.json" "$WORK/cg-$name.warm.json.err" | tr '\n' ' ')"; return 1
  fi
  sleep 0.5
  timeout 60 callgrind_control -z "$CG_PID" >"$WORK/cg-$name.ctl" 2>&1 \
    || { IR_WHY["$name"]="callgrind_control -z failed: $(tail -n 2 "$WORK/cg-$name.ctl" | tr '\n' ' ')"; return 1; }
  if ! cg_loadgen "$WORK/cg-$name.json" "$CG_REQS" "$url"; then
    IR_WHY["$name"]="the counted run failed: $(tail -c 300 "$WORK/cg-$name.json" "$WORK/cg-$name.json.err" | tr '\n' ' ')"; return 1
  fi
  sleep 1
  timeout 60 callgrind_control -d "$CG_PID" >>"$WORK/cg-$name.ctl" 2>&1 \
    || { IR_WHY["$name"]="callgrind_control -d failed: $(tail -n 2 "$WORK/cg-$name.ctl" | tr '\n' ' ')"; return 1; }
  f="$(ls -t "$WORK/callgrind.$name.$CG_PID".* 2>/dev/null | head -n 1)"
  totals="$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$f" 2>/dev/null | head -n 1)"
  [ -n "$totals" ] || { IR_WHY["$name"]="no totals in the callgrind dump"; return 1; }
  IR["$name"]="$(awk -v t="$totals" -v n="$CG_REQS" 'BEGIN { printf "%.0f", t / n }')"
  printf '{"name":"%s","run":"callgrind","requests":%s,"warmup_requests":%s,"ir_total":%s,"ir_per_req":%s,"loadgen":%s}\n' \
    "$name" "$CG_REQS" "$CG_WARM" "$totals" "${IR[$name]}" "$(cat "$WORK/cg-$name.json")" >>"$WORK/results.jsonl"
  say "$(printf '%-8s callgrind: %s Ir over %s requests = %s instructions/request (%ss)' \
    "$name" "$totals" "$CG_REQS" "${IR[$name]}" "$((SECONDS - t0))")"
}
# cg_wait NAME WHAT TIMEOUT_S COMMAND...: like wait_for, but a failure only
# marks NAME n/a.
cg_wait() {
  local name="$1" what="$2" t="$3"; shift 3
  local deadline=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$CG_PID" 2>/dev/null; then
      IR_WHY["$name"]="exited under valgrind: $(tail -n 3 "$WORK/cg-$name.err" "$WORK/callgrind.$name.log" 2>/dev/null | tr '\n' ' ')"; return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then IR_WHY["$name"]="timed out under valgrind waiting for $what"; return 1; fi
    sleep 0.2
  done
}

cg_gateway() {
  cg_start gateway "$BIN/gateway" --public 127.0.0.1:0 --internal 127.0.0.1:0 \
    --registration 127.0.0.1:0 --admin 127.0.0.1:0
  cg_wait gateway "its listening line" 120 grep -q '^gateway listening ' "$WORK/cg-gateway.out" || return 1
  local out="$WORK/cg-gateway.out" pub reg adm code
  pub="$(sed -n 's/^gateway listening .*public=\([^ ]*\).*/\1/p' "$out")"
  reg="$(sed -n 's/^gateway listening .*registration=\([^ ]*\).*/\1/p' "$out")"
  adm="$(sed -n 's/^gateway listening .*admin=\([^ ]*\).*/\1/p' "$out")"
  cg_wait gateway /readyz 120 is_200 "http://$adm/readyz" || return 1
  code="$(curl -s -o "$WORK/cg-register.json" -w '%{http_code}' --max-time 30 -X PUT \
    -H 'content-type: application/json' -d "$REG" "http://$reg/v1/registrations")"
  case "$code" in 2??) ;; *) IR_WHY[gateway]="registration failed under valgrind: HTTP $code"; return 1 ;; esac
  cg_wait gateway "route /bench" 120 is_200 "http://$pub/bench/x" || return 1
  cg_measure gateway "http://$pub/bench/x"
}
cg_haproxy() {
  local port; port="$(free_port)"
  cat >"$WORK/haproxy-callgrind.cfg" <<CFG
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

frontend bench
    bind 127.0.0.1:$port
    default_backend backend

backend backend
    http-reuse always
    server b1 $BACKEND_HTTP
CFG
  cg_start haproxy haproxy -db -f "$WORK/haproxy-callgrind.cfg"
  cg_wait haproxy "/bench/x" 120 is_200 "http://127.0.0.1:$port/bench/x" || return 1
  cg_measure haproxy "http://127.0.0.1:$port/bench/x"
}
cg_grpcgw() {
  # GOMAXPROCS as in the runs above; the Go backend is the one started above.
  # GODEBUG=asyncpreemptoff=1: the Go runtime preempts long-running goroutines
  # with SIGURG, and callgrind 3.19 aborts on those signals under load
  # (threads.c assertion `sigNum == vgCallgrind_current_state.sig`); without
  # them goroutines yield only at function calls, which a proxy's short
  # handlers do anyway. Only this instance runs so; the runs above do not.
  GODEBUG=asyncpreemptoff=1 GOMAXPROCS="$GO_PROCS" cg_start grpcgw "$GGW_BIN" -mode proxy -http 127.0.0.1:0 -backend "$GGWB_GRPC"
  cg_wait grpcgw "its READY line" 120 grep -q '^READY ' "$WORK/cg-grpcgw.out" || return 1
  local http; http="$(sed -n 's/^READY http=\([^ ]*\).*/\1/p' "$WORK/cg-grpcgw.out")"
  cg_wait grpcgw "/bench/x" 120 is_200 "http://$http/bench/x" || return 1
  cg_measure grpcgw "http://$http/bench/x"
}

if [ "$CALLGRIND" = 1 ]; then
  say "instructions per request: callgrind, $CG_WARM warm-up + $CG_REQS counted requests per proxy, $CONC connections"
  for n in gateway haproxy grpcgw; do
    if [ "$n" = grpcgw ] && [ -z "$GGW_PID" ]; then IR_WHY[grpcgw]="no grpc-gateway peer ($GGW_WHY)"; continue; fi
    "cg_$n" || say "$n: no instruction count: ${IR_WHY[$n]}"
    cg_stop
  done
else
  for n in gateway haproxy grpcgw; do IR_WHY["$n"]="BENCH_CALLGRIND=0"; done
fi

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
mib() { if [ -n "${1:-}" ]; then awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; else printf -- '-'; fi; }
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }

errors_total=0
row() { # NAME LABEL IDLE_KIB HWM_KIB
  local n="$1" s="${RES[$1.sat]:-}" r="${RES[$1.rate]:-}"
  local e="${ERRS[$1]:-0}"
  errors_total=$((errors_total + e))
  if [ -z "$s" ]; then
    printf '| %-25s | %9s | %7s | %7s | %7s | %6s | %8s | %8s | %9s | %8s | %8s | %8s |\n' "$2" - - - - - - - - - - -
    return
  fi
  printf '| %-25s | %9s | %7s | %7s | %7s | %6s | %8s | %8s | %9s | %8s | %8s | %8s |\n' "$2" \
    "$(fmt "$(jget "$s" rps)" '%.0f')" \
    "$(ms "$(jget "$r" p50_us)")" "$(ms "$(jget "$r" p99_us)")" "$(ms "$(jget "$r" max_us)")" "$e" \
    "$(fmt "${CPU[$n.sat]:-}" '%.1f')" "$(fmt "${CPU[$n.rate]:-}" '%.1f')" "$(fmt "${IR[$n]:-}" '%.0f')" \
    "$(mib "${3:-}")" "$(mib "${RSS[$n.sat]:-}")" "$(mib "${4:-}")"
}

{
  echo
  echo "Benchmark: $(nproc) CPUs, body $BODY B, saturation concurrency $CONC, fixed rate $RATE req/s (best p99 of $ROUNDS), $DUR per run (+$WARM warm-up)$( [ "$PIN" = 1 ] && echo ', pinned')"
  echo "gateway tokio workers: ${TOKIO_WORKER_THREADS:-$(nproc) (default)}; haproxy nbthread 1; grpc-gateway GOMAXPROCS $GO_PROCS; backends 1 worker / GOMAXPROCS 1; loadgen 1 thread + scheduler thread; nice $NICE."
  echo "Latencies in ms (open model, from the scheduled send time); CPU = proxy process utime+stime per request; instr/r = proxy's user-space instructions per request under callgrind ($CG_REQS requests after $CG_WARM, $CONC connections); RSS in MiB."
  echo
  printf '| %-25s | %9s | %7s | %7s | %7s | %6s | %8s | %8s | %9s | %8s | %8s | %8s |\n' \
    "path" "sat req/s" "p50" "p99" "max" "errors" "CPU µs/r" "CPU µs/r" "instr/r" "RSS idle" "RSS sat" "RSS peak"
  printf '| %-25s | %9s | %7s | %7s | %7s | %6s | %8s | %8s | %9s | %8s | %8s | %8s |\n' \
    "" "" "@$RATE" "@$RATE" "@$RATE" "" "@sat" "@$RATE" "callgrind" "" "" ""
  printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' \
    "$(printf -- '-%.0s' {1..27})" "$(printf -- '-%.0s' {1..11})" "$(printf -- '-%.0s' {1..9})" \
    "$(printf -- '-%.0s' {1..9})" "$(printf -- '-%.0s' {1..9})" "$(printf -- '-%.0s' {1..8})" \
    "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..11})" \
    "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..10})"
  row direct  "(a) direct gRPC"
  row gateway "(b) gateway HTTP/1.1" "$GW_IDLE_KIB" "$GW_HWM_KIB"
  row haproxy "(c) haproxy HTTP/1.1" "$HP_IDLE_KIB" "$HP_HWM_KIB"
  row grpcgw  "(d) grpc-gateway HTTP/1.1" "$GGW_IDLE_KIB" "$GGW_HWM_KIB"
  [ -n "$GGW_PID" ] || echo "(d) not run: $GGW_WHY"
  for n in gateway haproxy grpcgw; do
    if [ -z "${IR[$n]:-}" ] && [ -n "${IR_WHY[$n]:-}" ]; then echo "instr/r of $n: n/a ($(head -c 300 <<<"${IR_WHY[$n]}"))"; fi
  done
  echo
  echo "Other load on the machine during these runs (CPU not used by the benchmark, % of $NCPU CPUs; high = noisy):"
  echo "  saturation: direct ${OTHER[direct.sat]}%, gateway ${OTHER[gateway.sat]}%, haproxy ${OTHER[haproxy.sat]}%, grpc-gateway ${OTHER[grpcgw.sat]:--}%;" \
    "fixed rate: direct ${OTHER[direct.rate]}%, gateway ${OTHER[gateway.rate]}%, haproxy ${OTHER[haproxy.rate]}%, grpc-gateway ${OTHER[grpcgw.rate]:--}%"
  echo
} | tee "$WORK/table.md"

# ratio A B: A / B with two decimals, empty when either is missing or B is 0.
ratio() { if [ -n "${1:-}" ] && [ -n "${2:-}" ]; then awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b }'; fi; }
P99_DIRECT="$(jget "${RES[direct.rate]}" p99_us)"
P99_GW="$(jget "${RES[gateway.rate]}" p99_us)"
P99_ADDED_MS="$(awk -v a="$P99_GW" -v b="$P99_DIRECT" 'BEGIN { printf "%.2f", (a - b) / 1000 }')"
P99_ADDED_HP_MS="$(awk -v a="$(jget "${RES[haproxy.rate]}" p99_us)" -v b="$P99_DIRECT" 'BEGIN { printf "%.2f", (a - b) / 1000 }')"
P99_ADDED_GGW_MS=""
if [ -n "${RES[grpcgw.rate]:-}" ]; then
  P99_ADDED_GGW_MS="$(awk -v a="$(jget "${RES[grpcgw.rate]}" p99_us)" -v b="$P99_DIRECT" 'BEGIN { printf "%.2f", (a - b) / 1000 }')"
fi
CPU_RATIO="$(ratio "${CPU[gateway.sat]:-}" "${CPU[haproxy.sat]:-}")"
CPU_RATIO_GGW="$(ratio "${CPU[gateway.sat]:-}" "${CPU[grpcgw.sat]:-}")"
CPU_RATIO_RATE="$(ratio "${CPU[gateway.rate]:-}" "${CPU[haproxy.rate]:-}")"
IR_RATIO="$(ratio "${IR[gateway]:-}" "${IR[haproxy]:-}")"
IR_RATIO_GGW="$(ratio "${IR[gateway]:-}" "${IR[grpcgw]:-}")"
GW_IDLE_MIB="$(mib "$GW_IDLE_KIB")"
# verdict VALUE LIMIT: PASS when VALUE <= LIMIT, MISS above, n/a without a value.
verdict() {
  if [ -z "${1:-}" ]; then echo "n/a"
  elif awk -v v="$1" -v l="$2" 'BEGIN { exit !(v <= l) }'; then echo "PASS"
  else echo "MISS"; fi
}
V_CPU="$(verdict "$CPU_RATIO" 1.5)" V_CPU_GGW="$(verdict "$CPU_RATIO_GGW" 0.5)" V_IR="$(verdict "$IR_RATIO" 2)"
V_P99="$(verdict "$P99_ADDED_MS" 0.3)" V_RSS="$(verdict "$GW_IDLE_MIB" 10)"
tline() { printf '  %-52s %8s %-4s %-18s %s\n' "$1" "$2" "$3" "$4" "$5"; }
{
  echo "Targets (issue 10):"
  tline "gateway CPU/req / haproxy CPU/req, saturation" "${CPU_RATIO:--}" x "(target <= 1.5x)" "$V_CPU"
  tline "  ($(fmt "${CPU[gateway.sat]:-}" '%.1f') / $(fmt "${CPU[haproxy.sat]:-}" '%.1f') µs)" "" "" "" ""
  tline "gateway CPU/req / grpc-gateway CPU/req, saturation" "${CPU_RATIO_GGW:--}" x "(target <= 0.5x)" "$V_CPU_GGW"
  tline "  ($(fmt "${CPU[gateway.sat]:-}" '%.1f') / $(fmt "${CPU[grpcgw.sat]:-}" '%.1f') µs)" "" "" "" ""
  tline "gateway instr/req / haproxy instr/req (callgrind)" "${IR_RATIO:--}" x "(target <= 2x)" "$V_IR"
  tline "  ($(fmt "${IR[gateway]:-}" '%.0f') / $(fmt "${IR[haproxy]:-}" '%.0f'))" "" "" "" ""
  tline "gateway p99 - direct p99 at $RATE req/s" "$P99_ADDED_MS" ms "(target <= 0.3 ms)" "$V_P99"
  tline "gateway idle RSS" "$GW_IDLE_MIB" MiB "(target <= 10 MiB)" "$V_RSS"
  echo "For information:"
  tline "gateway instr/req / grpc-gateway instr/req" "${IR_RATIO_GGW:--}" x "" ""
  tline "gateway CPU/req / haproxy CPU/req at $RATE req/s" "${CPU_RATIO_RATE:--}" x "" ""
  tline "p99 added over direct at $RATE req/s: haproxy" "$P99_ADDED_HP_MS" ms "" ""
  tline "p99 added over direct at $RATE req/s: grpc-gateway" "${P99_ADDED_GGW_MS:--}" ms "" ""
  tline "idle RSS: haproxy / grpc-gateway" "$(mib "$HP_IDLE_KIB") / $(mib "${GGW_IDLE_KIB:-}")" MiB "" ""
  [ "$errors_total" = 0 ] || echo "  ERRORS: $errors_total requests failed"
} | tee -a "$WORK/table.md"
jnum() { if [ -n "${1:-}" ]; then printf '%s' "$1"; else printf 'null'; fi; }
printf '{"p99_added_ms":%s,"gateway_idle_rss_mib":%s,"cpu_ratio_sat":%s,"cpu_ratio_grpc_gateway_sat":%s,"cpu_ratio_rate":%s,"instr_per_req":{"gateway":%s,"haproxy":%s,"grpc_gateway":%s},"instr_ratio":%s,"instr_ratio_grpc_gateway":%s,"callgrind_requests":%s,"verdicts":{"cpu_haproxy":"%s","cpu_grpc_gateway":"%s","instr_haproxy":"%s","p99_added":"%s","idle_rss":"%s"},"errors":%s}\n' \
  "$P99_ADDED_MS" "$GW_IDLE_MIB" "$(jnum "$CPU_RATIO")" "$(jnum "$CPU_RATIO_GGW")" "$(jnum "$CPU_RATIO_RATE")" \
  "$(jnum "${IR[gateway]:-}")" "$(jnum "${IR[haproxy]:-}")" "$(jnum "${IR[grpcgw]:-}")" \
  "$(jnum "$IR_RATIO")" "$(jnum "$IR_RATIO_GGW")" "$CG_REQS" \
  "$V_CPU" "$V_CPU_GGW" "$V_IR" "$V_P99" "$V_RSS" "$errors_total" >"$WORK/summary.json"

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
# --strict: a miss fails, and so does a figure that could not be measured,
# except the grpc-gateway comparison when the peer could not be built.
if [ "$STRICT" = 1 ]; then
  strict_ok=1
  for v in "$V_CPU" "$V_IR" "$V_P99" "$V_RSS"; do [ "$v" = PASS ] || strict_ok=0; done
  case "$V_CPU_GGW" in PASS) ;; n/a) [ -z "$GGW_PID" ] || strict_ok=0 ;; *) strict_ok=0 ;; esac
  [ "$strict_ok" = 1 ] || die "a target was missed (--strict)"
fi
if [ "$STRICT" = 1 ] && [ "$GW_STREAMS" != 1 ]; then die "the gateway does not stream (--strict)"; fi
