#!/usr/bin/env bash
# The replicated topology as plain processes on 127.0.0.1: Consul, Kafka,
# three gateway replicas (gw1..gw3), HAProxy in front of them, the two
# example services, which register *through HAProxy* (so on any replica),
# and Prometheus scraping the replicas' /metrics (Debian's `prometheus`, run
# as our own process; --no-prometheus leaves it out).
#
#   scripts/topology.sh up              [--dir DIR] [--debug] [--no-kafka] [--no-prometheus]
#   scripts/topology.sh status          [--dir DIR]
#   scripts/topology.sh rolling-restart [--dir DIR]   restart gw1..gw3 one by one
#   scripts/topology.sh down            [--dir DIR] [--keep-data]
#   scripts/topology.sh todo [up|status|down|test]   the TODO demo instead: one
#                                       gateway, auth (Rust), todos (Python) and
#                                       activity (Go) on the default ports
#                                       (scripts/todo-demo.sh, examples/todo)
#
# `up` installs what is missing (scripts/install-deps.sh), builds the
# binaries if there are none (cargo build --release -p gateway-bin -p
# order-service), starts everything, waits until each piece is ready (polling
# with deadlines) and until a product registered through HAProxy answers
# through every replica. Running `up` again reuses whatever is still running
# and starts only what is missing. `down` stops everything (gateways with
# SIGTERM: they fail readiness, drain, exit) and, unless --keep-data, deletes
# the Kafka data so the next `up` starts as empty as Consul's dev agent does.
#
# Ports (fixed; haproxy/haproxy.cfg has the same numbers):
#
#   HAProxy   public 127.0.0.1:8000   internal 127.0.0.1:8001   registration 127.0.0.1:8090
#             stats  127.0.0.1:8404/stats, Prometheus 127.0.0.1:8404/metrics,
#             runtime API 127.0.0.1:8405
#   gwN       public 8N01   internal 8N02   registration 8N03   admin 8N04   (N = 1, 2, 3)
#   Prometheus 127.0.0.1:9090 (scrapes gw1..gw3 admin /metrics and HAProxy every 5s;
#             config DIR/prometheus.yml, data DIR/prometheus; observability/grafana/gateway.json
#             is the dashboard to import into a Grafana pointed at it)
#   Consul, Kafka: free ports picked on first start (DIR/consul/consul.env,
#             DIR/kafka/kafka.env); the product and order services: free ports.
#
# DIR (default: $REPO/.topology) holds pid files, the gateways' generated
# configs, logs/*.log (one per process) and the Consul and Kafka data dirs.
#
# Options / environment:
#   --debug            use target/debug binaries (cargo build without --release)
#   --no-kafka         no Kafka; replicas share state through Consul only
#   --no-prometheus    (up) no Prometheus
#   --keep-data        (down) keep the Kafka data for the next `up`
#   GATEWAY_BIN, ORDER_SERVICE_BIN   use these binaries instead
#   KAFKA_TOPIC        registrations topic (default forwarding.registrations)
#   RUST_LOG           gateway/order-service log filter (default info)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HAPROXY_CFG="$REPO/haproxy/haproxy.cfg"
KAFKA_TOPIC="${KAFKA_TOPIC:-forwarding.registrations}"
GATEWAYS=(gw1 gw2 gw3)
HAP_PUBLIC=8000 HAP_INTERNAL=8001 HAP_REG=8090 HAP_STATS=8404 HAP_API=8405
PROM_PORT=9090
# Drain: readiness fails this long before the listeners close. HAProxy
# checks every 500ms with fall 1, so it takes a draining replica out well
# within this window (see haproxy/README.md).
READINESS_DELAY="1500ms"
DRAIN_GRACE="10s"

T0="$(date +%s%3N)"
say() { local t=$(( $(date +%s%3N) - T0 )); printf '[topology %3d.%ds] %s\n' $((t / 1000)) $((t % 1000 / 100)) "$*"; }
warn() { printf '[topology] WARNING: %s\n' "$*" >&2; }
die() {
  printf '[topology] ERROR: %s\n' "$*" >&2
  if [ "${CMD:-}" = up ]; then printf '[topology] what started is still running: scripts/topology.sh status | down\n' >&2; fi
  exit 1
}
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# --- arguments ----------------------------------------------------------------
[ $# -ge 1 ] || usage
CMD="$1"; shift
# The TODO demo is its own small topology with its own script.
if [ "$CMD" = todo ]; then
  [ $# -ge 1 ] || set -- up
  exec "$REPO/scripts/todo-demo.sh" "$@"
fi
case "$CMD" in up|down|status|rolling-restart) ;; -h|--help|help) usage ;; *) usage ;; esac
DIR="$REPO/.topology" PROFILE=release USE_KAFKA=1 KEEP_DATA=0 USE_PROMETHEUS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) [ $# -ge 2 ] || usage; DIR="$2"; shift 2 ;;
    --dir=*) DIR="${1#--dir=}"; shift ;;
    --debug) PROFILE=debug; shift ;;
    --no-kafka) USE_KAFKA=0; shift ;;
    --no-prometheus) USE_PROMETHEUS=0; shift ;;
    --keep-data) KEEP_DATA=1; shift ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage ;;
  esac
done
mkdir -p "$DIR/logs"
DIR="$(cd "$DIR" && pwd)"
LOGS="$DIR/logs"
STATE="$DIR/topology.env"   # binaries and Kafka mode chosen by `up`

# One `up`/`down`/`rolling-restart` at a time per DIR (status needs no lock).
# Every process started below gets fd 8 closed (8>&-), or it would hold the
# lock for as long as it runs.
if [ "$CMD" != status ]; then
  exec 8>"$DIR/.lock"
  flock -n 8 || die "another scripts/topology.sh is running on $DIR"
fi

# --- helpers --------------------------------------------------------------------
gw_n() { echo "${1#gw}"; }
gw_port() { echo "8$(gw_n "$1")0$2"; }   # gw_port gwN 1..4 -> 8N01..8N04 (public, internal, registration, admin)

now_ms() { date +%s%3N; }

# is_running PID: alive and not a zombie
is_running() {
  local st
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1
  st="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# pid_of NAME: the recorded pid if that process is alive and still has the
# recorded command-line signature (not a recycled pid); else empty
pid_of() {
  local p sig
  [ -f "$DIR/$1.pid" ] || return 0
  p="$(cat "$DIR/$1.pid" 2>/dev/null || true)"
  sig="$(cat "$DIR/$1.sig" 2>/dev/null || true)"
  is_running "$p" || return 0
  tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$sig" || return 0
  echo "$p"
}

# start_bg NAME SIGNATURE CMD... : detached (own session), stdin /dev/null,
# stdout+stderr to logs/NAME.log (previous run kept as NAME.log.prev)
start_bg() {
  local name="$1" sig="$2"; shift 2
  [ -f "$LOGS/$name.log" ] && mv -f "$LOGS/$name.log" "$LOGS/$name.log.prev"
  NO_COLOR=1 setsid "$@" </dev/null >"$LOGS/$name.log" 2>&1 8>&- &
  echo $! >"$DIR/$name.pid"
  printf '%s\n' "$sig" >"$DIR/$name.sig"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

require_free_ports() {   # require_free_ports WHAT PORT...
  local what="$1" p; shift
  for p in "$@"; do
    port_busy "$p" && die "$what: port 127.0.0.1:$p is already in use by another process (ss -ltnp 'sport = :$p')"
  done
  return 0
}

# wait_for DESCRIPTION TIMEOUT_S NAME|- CMD... : poll CMD every 0.2s until it
# succeeds; fail at the deadline or as soon as process NAME has died
wait_for() {
  local what="$1" timeout="$2" name="$3"; shift 3
  local deadline=$(( $(now_ms) + timeout * 1000 ))
  while ! "$@" >/dev/null 2>&1; do
    if [ "$name" != - ] && [ -z "$(pid_of "$name")" ]; then
      tail -n 30 "$LOGS/$name.log" >&2 2>/dev/null || true
      die "$name exited while waiting for $what (log: $LOGS/$name.log)"
    fi
    if [ "$(now_ms)" -ge "$deadline" ]; then
      if [ "$name" != - ]; then
        tail -n 30 "$LOGS/$name.log" >&2 2>/dev/null || true
        die "timed out after ${timeout}s waiting for $what (log: $LOGS/$name.log)"
      fi
      die "timed out after ${timeout}s waiting for $what"
    fi
    sleep 0.2
  done
}

# stop_procs TIMEOUT_S NAME... : SIGTERM all, wait for all with one deadline,
# SIGKILL whatever is left
stop_procs() {
  local timeout="$1"; shift
  local name p pids=() names=()
  for name in "$@"; do
    p="$(pid_of "$name")"
    if [ -n "$p" ]; then
      kill -TERM "$p" 2>/dev/null || true
      pids+=("$p"); names+=("$name")
    fi
  done
  local deadline=$(( $(now_ms) + timeout * 1000 )) i left
  while :; do
    left=0
    for p in "${pids[@]+"${pids[@]}"}"; do is_running "$p" && left=1; done
    [ "$left" = 0 ] && break
    [ "$(now_ms)" -ge "$deadline" ] && break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    if is_running "${pids[$i]}"; then
      warn "${names[$i]} (pid ${pids[$i]}) did not stop within ${timeout}s: SIGKILL"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
  done
  for name in "$@"; do rm -f "$DIR/$name.pid" "$DIR/$name.sig"; done
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }
http_code() { curl -s -o /dev/null --max-time 3 -w '%{http_code}' "$@" || true; }

# haproxy_states BACKEND: "gw1=UP gw2=DOWN ..." from the stats CSV
haproxy_states() {
  curl -fsS --max-time 2 "http://127.0.0.1:$HAP_STATS/stats;csv;norefresh" 2>/dev/null \
    | awk -F, -v b="$1" '$1==b && $2!="FRONTEND" && $2!="BACKEND" {printf "%s%s=%s", sep, $2, $18; sep=" "}'
}
# haproxy_server_up BACKEND SERVER
haproxy_server_up() { haproxy_states "$1" | tr ' ' '\n' | grep -qx "$2=UP"; }
haproxy_all_up() {
  local b g
  for b in gateways_public gateways_internal gateways_registration; do
    for g in "${GATEWAYS[@]}"; do haproxy_server_up "$b" "$g" || return 1; done
  done
}

has_flag() { "$1" --help 2>/dev/null | grep -q -- "$2"; }

# --- binaries -------------------------------------------------------------------
pick_binaries() {
  local tdir="$REPO/target/$PROFILE" cargo_flags=()
  [ "$PROFILE" = release ] && cargo_flags=(--release)
  if [ -z "${GATEWAY_BIN:-}" ] || [ -z "${ORDER_SERVICE_BIN:-}" ]; then
    if [ ! -x "$tdir/gateway" ] || [ ! -x "$tdir/order-service" ]; then
      command -v cargo >/dev/null 2>&1 || die "no binaries in $tdir and no cargo: install Rust (rustup)"
      say "building: cargo build ${cargo_flags[*]} -p gateway-bin -p order-service"
      (cd "$REPO" && cargo build "${cargo_flags[@]}" -p gateway-bin -p order-service) \
        || die "cargo build failed"
    fi
  fi
  GW_BIN="${GATEWAY_BIN:-$tdir/gateway}"
  ORDER_BIN="${ORDER_SERVICE_BIN:-$tdir/order-service}"
  [ -x "$GW_BIN" ] || die "gateway binary $GW_BIN is not executable"
  [ -x "$ORDER_BIN" ] || die "order-service binary $ORDER_BIN is not executable"
  # A binary built before the Consul registry cannot run this topology.
  if ! has_flag "$GW_BIN" --consul; then
    local dbg="$REPO/target/debug/gateway"
    if [ -z "${GATEWAY_BIN:-}" ] && [ "$PROFILE" = release ] && [ -x "$dbg" ] && has_flag "$dbg" --consul; then
      warn "$GW_BIN is out of date (no --consul): using $dbg; run 'cargo build --release -p gateway-bin -p order-service'"
      GW_BIN="$dbg"
      [ -z "${ORDER_SERVICE_BIN:-}" ] && [ -x "$REPO/target/debug/order-service" ] && ORDER_BIN="$REPO/target/debug/order-service"
    else
      die "$GW_BIN has no --consul flag (out of date): run 'cargo build ${cargo_flags[*]} -p gateway-bin -p order-service'"
    fi
  fi
}

# --- components -----------------------------------------------------------------
gateway_args() {   # gateway_args gwN -> the full command line
  local g="$1"
  local -a a=("$GW_BIN" --config "$DIR/$g.toml" --node-id "$g"
    --public "127.0.0.1:$(gw_port "$g" 1)" --internal "127.0.0.1:$(gw_port "$g" 2)"
    --registration "127.0.0.1:$(gw_port "$g" 3)" --admin "127.0.0.1:$(gw_port "$g" 4)"
    --consul "http://$CONSUL_HTTP_ADDR"
    # Consul mode accepts private ranges by default, not loopback: on one
    # machine every backend registers a 127.0.0.1 address.
    --allow-network 127.0.0.0/8)
  if [ "$KAFKA_MODE" = on ]; then a+=(--kafka-brokers "$KAFKA_BOOTSTRAP" --kafka-topic "$KAFKA_TOPIC"); fi
  printf '%s\0' "${a[@]}"
}

start_gateway() {   # start_gateway gwN (no wait)
  local g="$1"
  if [ -n "$(pid_of "$g")" ]; then say "$g: already running (pid $(pid_of "$g"))"; return 0; fi
  require_free_ports "$g" "$(gw_port "$g" 1)" "$(gw_port "$g" 2)" "$(gw_port "$g" 3)" "$(gw_port "$g" 4)"
  cat >"$DIR/$g.toml" <<TOML
# generated by scripts/topology.sh; flags set the node id, listeners,
# Consul, Kafka and allowed networks
trusted_proxies = ["127.0.0.0/8", "::1/128"]   # HAProxy runs on loopback

[drain]
# /readyz fails this long before the listeners close: HAProxy (check inter
# 500ms, fall 1) stops sending new requests first.
readiness_delay = "$READINESS_DELAY"
grace = "$DRAIN_GRACE"
TOML
  local -a cmd; mapfile -d '' cmd < <(gateway_args "$g")
  RUST_LOG="${RUST_LOG:-info}" start_bg "$g" "--node-id $g" "${cmd[@]}"
  say "$g: started (pid $(cat "$DIR/$g.pid")), public :$(gw_port "$g" 1) internal :$(gw_port "$g" 2) registration :$(gw_port "$g" 3) admin :$(gw_port "$g" 4)"
}

wait_gateway() {
  local g="$1"
  wait_for "$g readiness (GET :$(gw_port "$g" 4)/readyz)" 60 "$g" http_ok "http://127.0.0.1:$(gw_port "$g" 4)/readyz"
}

load_state() {
  [ -f "$STATE" ] || die "no $STATE: run 'scripts/topology.sh up' first"
  # shellcheck disable=SC1090
  . "$STATE"
  # shellcheck disable=SC1091
  . "$DIR/consul/consul.env"
  if [ "$KAFKA_MODE" = on ]; then
    # shellcheck disable=SC1091
    . "$DIR/kafka/kafka.env"
  fi
}

# write_prometheus_config FILE: the replicas' admin listeners (/metrics) and
# HAProxy's exporter, as observability/prometheus.yml does for compose.
write_prometheus_config() {
  local g
  {
    printf 'global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n'
    printf 'scrape_configs:\n  - job_name: gateway\n    static_configs:\n'
    for g in "${GATEWAYS[@]}"; do
      printf '      - targets: ["127.0.0.1:%s"]\n        labels: {replica: %s}\n' "$(gw_port "$g" 4)" "$g"
    done
    printf '  - job_name: haproxy\n    static_configs:\n      - targets: ["127.0.0.1:%s"]\n' "$HAP_STATS"
  } >"$1"
}

# --- up -------------------------------------------------------------------------
cmd_up() {
  local t0; t0="$(now_ms)"
  command -v curl >/dev/null 2>&1 || die "curl not found (apt-get install -y curl)"
  local deps=(consul haproxy python)
  [ "$USE_KAFKA" = 1 ] && deps+=(kafka)
  [ "$USE_PROMETHEUS" = 1 ] && deps+=(prometheus)
  say "dependencies: scripts/install-deps.sh ${deps[*]}"
  "$REPO/scripts/install-deps.sh" "${deps[@]}" >"$LOGS/install-deps.log" 2>&1 \
    || { tail -n 30 "$LOGS/install-deps.log" >&2; die "scripts/install-deps.sh failed (log: $LOGS/install-deps.log)"; }

  pick_binaries
  say "gateway: $GW_BIN"
  say "order-service: $ORDER_BIN"
  local out
  out="$(haproxy -c -q -f "$HAPROXY_CFG" 2>&1)" || { printf '%s\n' "$out" >&2; die "invalid $HAPROXY_CFG"; }

  # Kafka starts in the background (JVM start-up) while Consul starts.
  local kafka_job=""
  if [ "$USE_KAFKA" = 1 ]; then
    "$REPO/scripts/kafka-dev.sh" start "$DIR/kafka" >"$LOGS/kafka-dev.out" 2>&1 8>&- &
    kafka_job=$!
  fi
  CONSUL_HTTP_ADDR="$("$REPO/scripts/consul-dev.sh" start "$DIR/consul" 8>&-)" || die "Consul did not start (log: $DIR/consul/consul.log)"
  say "consul: http://$CONSUL_HTTP_ADDR (pid $(cat "$DIR/consul/consul.pid"))"

  KAFKA_MODE=off KAFKA_BOOTSTRAP=""
  if [ -n "$kafka_job" ]; then
    if ! wait "$kafka_job"; then
      # kafka-dev.sh draws a random cluster id; one starting with '-' is
      # taken for an option by kafka-storage format (1 start in 64). A new
      # draw fixes it.
      if grep -q 'formatting the Kafka storage' "$LOGS/kafka-dev.out"; then
        warn "formatting the Kafka storage failed (cluster id?), retrying once"
        "$REPO/scripts/kafka-dev.sh" start "$DIR/kafka" >"$LOGS/kafka-dev.out" 2>&1 8>&- \
          || { cat "$LOGS/kafka-dev.out" >&2; die "Kafka did not start (log: $DIR/kafka/kafka.log)"; }
      else
        cat "$LOGS/kafka-dev.out" >&2; die "Kafka did not start (log: $DIR/kafka/kafka.log)"
      fi
    fi
    KAFKA_BOOTSTRAP="$(tail -n 1 "$LOGS/kafka-dev.out")"
    say "kafka: $KAFKA_BOOTSTRAP (pid $(cat "$DIR/kafka/kafka.pid"))"
    # The registrations topic: compacted (the latest record per key is the
    # state), one partition (one total order of registrations).
    if [ -x "$REPO/.deps/bin/kafka-topics" ]; then
      "$REPO/.deps/bin/kafka-topics" --bootstrap-server "$KAFKA_BOOTSTRAP" --create --if-not-exists \
          --topic "$KAFKA_TOPIC" --partitions 1 --replication-factor 1 --config cleanup.policy=compact \
          >"$LOGS/kafka-topics.log" 2>&1 \
        || { cat "$LOGS/kafka-topics.log" >&2; die "creating topic $KAFKA_TOPIC failed"; }
      say "kafka: topic $KAFKA_TOPIC (cleanup.policy=compact)"
    else
      warn ".deps/bin/kafka-topics missing: topic $KAFKA_TOPIC not created (the broker auto-creates it, not compacted)"
    fi
    if has_flag "$GW_BIN" --kafka-brokers; then
      KAFKA_MODE=on
    else
      warn "$GW_BIN has no --kafka-brokers flag yet: Kafka runs, the gateways do not use it (replicas sync through Consul)"
    fi
  fi
  cat >"$STATE" <<ENV
GW_BIN='$GW_BIN'
ORDER_BIN='$ORDER_BIN'
KAFKA_MODE=$KAFKA_MODE
USE_KAFKA=$USE_KAFKA
ENV

  local g
  for g in "${GATEWAYS[@]}"; do start_gateway "$g"; done
  for g in "${GATEWAYS[@]}"; do wait_gateway "$g"; done
  say "gateways ready"

  if [ -n "$(pid_of haproxy)" ]; then
    say "haproxy: already running (pid $(pid_of haproxy))"
  else
    require_free_ports haproxy "$HAP_PUBLIC" "$HAP_INTERNAL" "$HAP_REG" "$HAP_STATS" "$HAP_API"
    start_bg haproxy "$HAPROXY_CFG" haproxy -db -f "$HAPROXY_CFG"
    say "haproxy: started (pid $(cat "$DIR/haproxy.pid")), public :$HAP_PUBLIC internal :$HAP_INTERNAL registration :$HAP_REG stats :$HAP_STATS"
  fi
  wait_for "HAProxy to see gw1..gw3 UP in every backend" 30 haproxy haproxy_all_up

  if [ "$USE_PROMETHEUS" = 1 ]; then
    if [ -n "$(pid_of prometheus)" ]; then
      say "prometheus: already running (pid $(pid_of prometheus))"
    else
      require_free_ports prometheus "$PROM_PORT"
      write_prometheus_config "$DIR/prometheus.yml"
      mkdir -p "$DIR/prometheus"
      # Our own process, never the package's system service.
      start_bg prometheus "--web.listen-address=127.0.0.1:$PROM_PORT" \
        prometheus --config.file="$DIR/prometheus.yml" --storage.tsdb.path="$DIR/prometheus" \
          --web.listen-address="127.0.0.1:$PROM_PORT"
      say "prometheus: started (pid $(cat "$DIR/prometheus.pid")), http://127.0.0.1:$PROM_PORT"
    fi
    wait_for "Prometheus ready" 30 prometheus http_ok "http://127.0.0.1:$PROM_PORT/-/ready"
  fi

  if [ -n "$(pid_of product)" ]; then
    say "product: already running (pid $(pid_of product))"
  else
    start_bg product "product-service-py/server.py" \
      python3 "$REPO/examples/product-service-py/server.py" --listen 127.0.0.1:0 \
        --gateway "http://127.0.0.1:$HAP_REG"
    say "product: started (pid $(cat "$DIR/product.pid")), registers via HAProxy :$HAP_REG"
  fi
  if [ -n "$(pid_of order)" ]; then
    say "order: already running (pid $(pid_of order))"
  else
    RUST_LOG="${RUST_LOG:-info}" start_bg order "order-service --listen" \
      "$ORDER_BIN" --listen 127.0.0.1:0 --gateway "http://127.0.0.1:$HAP_REG" \
        --products-via "http://127.0.0.1:$HAP_INTERNAL"
    say "order: started (pid $(cat "$DIR/order.pid")), registers via HAProxy :$HAP_REG, calls products via HAProxy :$HAP_INTERNAL"
  fi
  wait_for "product registration (READY)" 60 product grep -q '^READY ' "$LOGS/product.log"

  # The point of the exercise: a registration that landed on one replica is
  # routable through every replica (and through HAProxy).
  wait_for "GET /product/1 via HAProxy" 60 product http_ok "http://127.0.0.1:$HAP_PUBLIC/product/1"
  for g in "${GATEWAYS[@]}"; do
    wait_for "GET /product/1 via $g" 60 product http_ok "http://127.0.0.1:$(gw_port "$g" 1)/product/1"
  done
  wait_for "GET /order via HAProxy" 60 order http_ok "http://127.0.0.1:$HAP_PUBLIC/order"
  for g in "${GATEWAYS[@]}"; do
    wait_for "GET /order via $g" 60 order http_ok "http://127.0.0.1:$(gw_port "$g" 1)/order"
  done

  local t1; t1="$(now_ms)"
  say "up in $(( (t1 - t0) / 1000 )).$(printf '%03d' $(( (t1 - t0) % 1000 )))s"
  cat <<TXT

  curl -s http://127.0.0.1:$HAP_PUBLIC/product/1                 # through HAProxy (any replica)
  curl -s http://127.0.0.1:8101/product/1                     # through gw1 (8201 gw2, 8301 gw3)
  curl -s -X POST http://127.0.0.1:$HAP_PUBLIC/order/purchase/1      # order -> product, both via the gateways
  curl -sN http://127.0.0.1:$HAP_PUBLIC/order/events               # server-sent events: hello, then one per purchase
  curl -s http://127.0.0.1:8104/admin/services                # gw1's view (8204, 8304)
  http://127.0.0.1:$HAP_STATS/stats   http://127.0.0.1:$HAP_STATS/metrics   http://$CONSUL_HTTP_ADDR/ui
  http://127.0.0.1:$PROM_PORT/graph?g0.expr=sum+by+(status)+(rate(gateway_requests_total[1m]))   # Prometheus (unless --no-prometheus)
  scripts/topology.sh status | rolling-restart | down          (logs: $LOGS)
TXT
}

# --- status ---------------------------------------------------------------------
cmd_status() {
  local ok=0 p g name detail
  row() { printf '  %-9s %-8s %-9s %s\n' "$@"; }
  row component pid state detail
  p=""; detail=""
  if [ -f "$DIR/consul/consul.env" ]; then
    # shellcheck disable=SC1091
    . "$DIR/consul/consul.env"
    p="$(cat "$DIR/consul/consul.pid" 2>/dev/null || true)"; detail="http://$CONSUL_HTTP_ADDR"
  fi
  if is_running "$p"; then row consul "$p" running "$detail"; else row consul - stopped "$detail"; ok=1; fi
  p=""; detail=""
  local kafka_expected=1
  if [ -f "$STATE" ]; then
    # shellcheck disable=SC1090
    . "$STATE"; [ "${USE_KAFKA:-1}" = 1 ] || kafka_expected=0
  fi
  if [ -f "$DIR/kafka/kafka.env" ]; then
    # shellcheck disable=SC1091
    . "$DIR/kafka/kafka.env"
    p="$(cat "$DIR/kafka/kafka.pid" 2>/dev/null || true)"; detail="$KAFKA_BOOTSTRAP topic $KAFKA_TOPIC"
  fi
  if is_running "$p"; then row kafka "$p" running "$detail (gateways use it: ${KAFKA_MODE:-?})"
  elif [ "$kafka_expected" = 1 ]; then row kafka - stopped "$detail"; ok=1
  else row kafka - off "--no-kafka"; fi
  for g in "${GATEWAYS[@]}"; do
    p="$(pid_of "$g")"
    detail="public :$(gw_port "$g" 1) internal :$(gw_port "$g" 2) registration :$(gw_port "$g" 3) admin :$(gw_port "$g" 4)"
    if [ -z "$p" ]; then row "$g" - stopped "$detail"; ok=1
    elif http_ok "http://127.0.0.1:$(gw_port "$g" 4)/readyz"; then row "$g" "$p" ready "$detail"
    else row "$g" "$p" not-ready "$detail"; ok=1; fi
  done
  p="$(pid_of haproxy)"
  if [ -z "$p" ]; then row haproxy - stopped "public :$HAP_PUBLIC internal :$HAP_INTERNAL registration :$HAP_REG stats :$HAP_STATS"; ok=1
  else
    row haproxy "$p" running "public :$HAP_PUBLIC internal :$HAP_INTERNAL registration :$HAP_REG stats :$HAP_STATS/stats"
    local b
    for b in gateways_public gateways_internal gateways_registration; do
      row "" "" "" "$b: $(haproxy_states "$b")"
    done
  fi
  for name in product order; do
    p="$(pid_of "$name")"
    if [ -z "$p" ]; then row "$name" - stopped ""; ok=1; else row "$name" "$p" running ""; fi
  done
  # Optional (--no-prometheus): shown, never a failure.
  p="$(pid_of prometheus)"
  if [ -z "$p" ]; then row prometheus - stopped "http://127.0.0.1:$PROM_PORT"
  else row prometheus "$p" running "http://127.0.0.1:$PROM_PORT"; fi

  echo
  echo "  GET /product/1"
  local code
  code="$(http_code "http://127.0.0.1:$HAP_PUBLIC/product/1")"
  printf '    via %-8s 127.0.0.1:%-5s -> %s\n' haproxy "$HAP_PUBLIC" "$code"
  [ "$code" = 200 ] || ok=1
  for g in "${GATEWAYS[@]}"; do
    code="$(http_code "http://127.0.0.1:$(gw_port "$g" 1)/product/1")"
    printf '    via %-8s 127.0.0.1:%-5s -> %s\n' "$g" "$(gw_port "$g" 1)" "$code"
    [ "$code" = 200 ] || ok=1
  done
  if [ "$ok" = 0 ]; then echo; echo "  all up"; fi
  return "$ok"
}

# --- rolling restart ------------------------------------------------------------
cmd_rolling_restart() {
  load_state
  [ -n "$(pid_of haproxy)" ] || die "haproxy is not running: scripts/topology.sh up"
  local g t0; t0="$(now_ms)"
  for g in "${GATEWAYS[@]}"; do
    say "$g: SIGTERM (readiness fails, HAProxy takes it out, in-flight requests finish)"
    stop_procs 30 "$g"
    start_gateway "$g"
    wait_gateway "$g"
    local b
    for b in gateways_public gateways_internal gateways_registration; do
      wait_for "HAProxy to see $g UP in $b" 30 "$g" haproxy_server_up "$b" "$g"
    done
    say "$g: back in rotation"
  done
  local t1; t1="$(now_ms)"
  say "rolling restart done in $(( (t1 - t0) / 1000 ))s"
}

# --- down -----------------------------------------------------------------------
cmd_down() {
  local t0; t0="$(now_ms)"
  # Examples first, while HAProxy and the gateways still run: they deregister
  # through them on SIGTERM.
  stop_procs 20 order product
  # Gateways: SIGTERM -> fail readiness for drain.readiness_delay -> close
  # listeners -> finish in-flight requests within drain.grace -> exit.
  stop_procs 30 "${GATEWAYS[@]}"
  stop_procs 10 haproxy prometheus
  if [ "$KEEP_DATA" = 0 ]; then rm -rf "$DIR/prometheus"; fi
  if [ -d "$DIR/kafka" ]; then
    "$REPO/scripts/kafka-dev.sh" stop "$DIR/kafka" || warn "kafka-dev.sh stop failed"
    if [ "$KEEP_DATA" = 0 ]; then rm -rf "$DIR/kafka"; fi
  fi
  if [ -d "$DIR/consul" ]; then
    "$REPO/scripts/consul-dev.sh" stop "$DIR/consul" || warn "consul-dev.sh stop failed"
  fi
  rm -f "$STATE"
  local t1; t1="$(now_ms)"
  say "down in $(( (t1 - t0) / 1000 ))s (logs kept in $LOGS)"
}

case "$CMD" in
  up) cmd_up ;;
  status) cmd_status ;;
  rolling-restart) cmd_rolling_restart ;;
  down) cmd_down ;;
esac
