#!/usr/bin/env bash
# Run a throw-away Consul dev agent (in-memory state) on 127.0.0.1, free ports
# (picked again if one is taken before consul binds it).
#
#   scripts/consul-dev.sh start   <datadir>   start (no-op if already running); prints host:port
#   scripts/consul-dev.sh stop    <datadir>   SIGTERM, wait, SIGKILL after a deadline
#   scripts/consul-dev.sh restart <datadir>   stop + start on the same ports (state is lost: -dev)
#
# Files in <datadir>: consul.log, consul.pid, consul.env (sourceable):
#   CONSUL_HTTP_ADDR=127.0.0.1:<http port>   CONSUL_PID=<pid>   CONSUL_*_PORT=...
# Binary: $CONSUL_BIN, else $REPO/.deps/bin/consul (scripts/install-deps.sh consul),
# else consul on PATH.  CONSUL_START_TIMEOUT (seconds, default 60).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
START_TIMEOUT="${CONSUL_START_TIMEOUT:-60}"
STOP_TIMEOUT="${CONSUL_STOP_TIMEOUT:-20}"

die() { printf '[consul-dev] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { echo "usage: $0 start|stop|restart <datadir>" >&2; exit 2; }

[ $# -eq 2 ] || usage
cmd="$1"
case "$cmd" in start|stop|restart) ;; *) usage ;; esac
mkdir -p "$2"
DATA="$(cd "$2" && pwd)"
LOG="$DATA/consul.log" PIDF="$DATA/consul.pid" ENVF="$DATA/consul.env"

find_consul() {
  if [ -n "${CONSUL_BIN:-}" ]; then echo "$CONSUL_BIN"
  elif [ -x "$REPO/.deps/bin/consul" ]; then echo "$REPO/.deps/bin/consul"
  elif command -v consul >/dev/null 2>&1; then command -v consul
  else die "consul not found: run scripts/install-deps.sh consul"
  fi
}

# pid from the pid file if that process is alive and is consul; else empty
running_pid() {
  local p
  [ -f "$PIDF" ] || return 0
  p="$(cat "$PIDF" 2>/dev/null || true)"
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
  tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q 'consul' || return 0
  echo "$p"
}

# N distinct free ports on 127.0.0.1, free for both TCP and UDP (serf uses both)
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
n, held, ports = int(sys.argv[1]), [], []
while len(ports) < n:
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p))
    except OSError:
        t.close(); u.close(); continue
    held += [t, u]; ports.append(p)
print(" ".join(map(str, ports)))
PY
}

do_stop() {
  local p; p="$(running_pid)"
  if [ -n "$p" ]; then
    kill -TERM "$p" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then
      echo "[consul-dev] consul (pid $p) did not exit in ${STOP_TIMEOUT}s, sending SIGKILL" >&2
      kill -KILL "$p" 2>/dev/null || true
      while kill -0 "$p" 2>/dev/null; do sleep 0.1; done
    fi
  fi
  rm -f "$PIDF"
}

do_start() {   # do_start [reuse-ports]
  local p; p="$(running_pid)"
  if [ -n "$p" ]; then
    # shellcheck disable=SC1090
    . "$ENVF"; echo "$CONSUL_HTTP_ADDR"; return 0
  fi
  local bin; bin="$(find_consul)"
  [ -x "$bin" ] || die "consul binary $bin is not executable: run scripts/install-deps.sh consul"
  local http serf_lan serf_wan server grpc
  if [ "${1:-}" = reuse-ports ] && [ -f "$ENVF" ]; then
    # shellcheck disable=SC1090
    . "$ENVF"
    http="$CONSUL_HTTP_PORT" serf_lan="$CONSUL_SERF_LAN_PORT" serf_wan="$CONSUL_SERF_WAN_PORT"
    server="$CONSUL_SERVER_PORT" grpc="$CONSUL_GRPC_PORT"
  else
    read -r http serf_lan serf_wan server grpc <<<"$(free_ports 5)"
  fi
  [ -f "$LOG" ] && mv -f "$LOG" "$LOG.prev"
  CHECKPOINT_DISABLE=1 setsid "$bin" agent -dev \
      -bind 127.0.0.1 -client 127.0.0.1 -node consul-dev \
      -http-port "$http" -dns-port -1 -serf-lan-port "$serf_lan" -serf-wan-port "$serf_wan" \
      -server-port "$server" -grpc-port "$grpc" \
      -hcl 'disable_update_check = true' \
      -hcl 'limits { http_max_conns_per_client = 4096 }' \
      </dev/null >"$LOG" 2>&1 &
  p=$!
  echo "$p" >"$PIDF"
  cat >"$ENVF" <<ENV
CONSUL_HTTP_ADDR=127.0.0.1:$http
CONSUL_PID=$p
CONSUL_HTTP_PORT=$http
CONSUL_SERF_LAN_PORT=$serf_lan
CONSUL_SERF_WAN_PORT=$serf_wan
CONSUL_SERVER_PORT=$server
CONSUL_GRPC_PORT=$grpc
ENV
  local deadline=$((SECONDS + START_TIMEOUT)) leader=""
  while :; do
    if ! kill -0 "$p" 2>/dev/null; then
      rm -f "$PIDF"
      # A port picked by free_ports was taken before consul bound it: the
      # caller picks new ones (a first start) or gives up (a restart).
      if grep -q 'address already in use' "$LOG"; then return 3; fi
      tail -n 30 "$LOG" >&2
      die "consul exited during startup (log: $LOG)"
    fi
    leader="$(curl -sf --max-time 2 "http://127.0.0.1:$http/v1/status/leader" 2>/dev/null || true)"
    case "$leader" in ''|'""') ;; *) break ;; esac
    if [ $SECONDS -ge $deadline ]; then
      tail -n 30 "$LOG" >&2
      do_stop
      die "consul had no leader after ${START_TIMEOUT}s (log: $LOG)"
    fi
    sleep 0.2
  done
  echo "127.0.0.1:$http"
}

command -v curl >/dev/null 2>&1 || die "curl not found (apt-get install -y curl)"
# Consul 1.8.7 cannot listen on port 0 and report the port, so its five
# ports are picked by free_ports: free when picked, but another process may
# take one before consul binds it. A first start then runs again on new
# ports; a restart must keep its ports and fails.
start_fresh() {
  local attempt rc
  for attempt in 1 2 3 4 5; do
    rc=0; do_start || rc=$?
    [ "$rc" = 3 ] || return "$rc"
    echo "[consul-dev] a port was taken (attempt $attempt); new ports" >&2
  done
  die "consul lost a port in five attempts (log: $LOG)"
}
start_again() {
  local rc=0
  do_start reuse-ports || rc=$?
  [ "$rc" = 3 ] || return "$rc"
  tail -n 30 "$LOG" >&2
  die "a port of consul was taken while it was down (log: $LOG)"
}

case "$cmd" in
  start)   start_fresh ;;
  stop)    do_stop ;;
  restart) do_stop; start_again ;;
  *)       usage ;;
esac
