#!/usr/bin/env bash
# The TODO app of seed 001 on this gateway (examples/todo/README.md): the
# gateway with examples/todo/gateway.toml and three services, each in its own
# language, all on 127.0.0.1:
#
#   auth      Rust (service-sdk)       users, logins, EdDSA tokens, JWKS
#   todos     Python (adapters/python) a user's todos; public /todos/stats
#   activity  Go (adapters/go)         a user's recent changes
#
#   scripts/todo-demo.sh up     [--dir DIR] [--release]   build, start, print the URLs
#   scripts/todo-demo.sh status [--dir DIR]
#   scripts/todo-demo.sh down   [--dir DIR]
#   scripts/todo-demo.sh test                            the end-to-end test (cargo test)
#
# `up` installs what is missing (scripts/install-deps.sh python: grpcio for
# the Python adapter; Go and Rust must be installed), builds the gateway and
# the auth service (cargo, debug unless --release) and the activity service
# (go build), starts whatever is not already running and waits - polling with
# deadlines - until all three services are routable. Running it again starts
# only what is missing. `down` stops the services (they deregister), then the
# gateway. `test` runs gateway-bin/tests/todo_demo.rs, which starts its own
# gateway and services on free ports (it needs no `up`).
#
# Ports: the gateway's defaults, as in examples/todo/gateway.toml - public
# 8080, internal 8081, registration 8090, admin 8091. The services pick free
# ports. DIR (default $REPO/.todo-demo) holds pid files, the activity binary
# and logs/*.log.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="$REPO/examples/todo/gateway.toml"
PUBLIC=127.0.0.1:8080 INTERNAL=127.0.0.1:8081 REG=127.0.0.1:8090 ADMIN=127.0.0.1:8091
SERVICES=(auth todos activity)

say() { printf '[todo-demo] %s\n' "$*"; }
die() { printf '[todo-demo] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
CMD="$1"; shift
case "$CMD" in up|down|status|test) ;; *) usage ;; esac
DIR="$REPO/.todo-demo" PROFILE=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) [ $# -ge 2 ] || usage; DIR="$2"; shift 2 ;;
    --release) PROFILE=release; shift ;;
    -h|--help) usage ;;
    *) echo "unknown option: $1" >&2; usage ;;
  esac
done

if [ "$CMD" = test ]; then
  command -v go >/dev/null || die "the test builds the Go activity service: install Go 1.26+"
  "$REPO/scripts/install-deps.sh" python
  cd "$REPO"
  cargo build -p todo-auth
  exec cargo test -p gateway-bin --test todo_demo -- --nocapture
fi

mkdir -p "$DIR/logs" "$DIR/bin"
DIR="$(cd "$DIR" && pwd)"
LOGS="$DIR/logs"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE"
# One up/down at a time per DIR; started processes get fd 8 closed.
exec 8>"$DIR/.lock"
flock -n 8 || die "another scripts/todo-demo.sh is running on $DIR"

is_running() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
# pid_of NAME: the recorded pid while that process is alive and still runs
# the recorded command (not a recycled pid); else empty.
pid_of() {
  local p sig
  [ -f "$DIR/$1.pid" ] || return 0
  p="$(cat "$DIR/$1.pid")"; sig="$(cat "$DIR/$1.sig" 2>/dev/null || true)"
  is_running "$p" || return 0
  tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$sig" || return 0
  echo "$p"
}
start_bg() {   # start_bg NAME SIGNATURE CMD...
  local name="$1" sig="$2"; shift 2
  [ -f "$LOGS/$name.log" ] && mv -f "$LOGS/$name.log" "$LOGS/$name.log.prev"
  NO_COLOR=1 setsid "$@" </dev/null >"$LOGS/$name.log" 2>&1 8>&- &
  echo $! >"$DIR/$name.pid"
  printf '%s\n' "$sig" >"$DIR/$name.sig"
}
wait_for() {   # wait_for WHAT TIMEOUT_S NAME CMD... : poll until CMD succeeds
  local what="$1" timeout="$2" name="$3"; shift 3
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [ -z "$(pid_of "$name")" ]; then
      tail -n 20 "$LOGS/$name.log" >&2 || true
      die "$name exited while waiting for $what (log: $LOGS/$name.log)"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 20 "$LOGS/$name.log" >&2 || true; die "timed out waiting for $what"; }
    sleep 0.2
  done
}
routable() {   # routable SERVICE: the admin view lists a routable instance
  curl -fsS --max-time 2 "http://$ADMIN/admin/services?service=$1&instances=false" \
    | python3 -c 'import json,sys; s=[x for x in json.load(sys.stdin)["services"] if x["name"]==sys.argv[1]]; sys.exit(0 if s and s[0]["routable_instances"]>0 else 1)' "$1"
}
port_busy() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }

cmd_up() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (rustup)"
  command -v go >/dev/null || die "go not found: the activity service needs Go 1.26+ (https://go.dev/dl)"
  "$REPO/scripts/install-deps.sh" python
  local flags=(); [ "$PROFILE" = release ] && flags=(--release)
  say "building: cargo build ${flags[*]} -p gateway-bin -p todo-auth; go build (activity)"
  (cd "$REPO" && cargo build "${flags[@]}" -q -p gateway-bin -p todo-auth) || die "cargo build failed"
  (cd "$REPO/examples/todo/activity" && go build -o "$DIR/bin/activity" .) || die "go build failed"

  if [ -z "$(pid_of gateway)" ]; then
    local a
    for a in $PUBLIC $INTERNAL $REG $ADMIN; do
      port_busy "$a" && die "$a is in use by another process (scripts/demo.sh? ss -ltnp)"
    done
    say "gateway: $TARGET/gateway --config examples/todo/gateway.toml"
    start_bg gateway "--config $CONFIG" "$TARGET/gateway" --config "$CONFIG"
    wait_for "gateway /readyz" 30 gateway curl -fsS --max-time 2 "http://$ADMIN/readyz"
  else
    say "gateway: already running (pid $(pid_of gateway))"
  fi
  if [ -z "$(pid_of auth)" ]; then
    start_bg auth "todo-auth" "$TARGET/todo-auth" --gateway "http://$REG"
  fi
  if [ -z "$(pid_of todos)" ]; then
    start_bg todos "examples/todo/todos/app.py" python3 "$REPO/examples/todo/todos/app.py" \
      --gateway "http://$REG" --activity-via "http://$INTERNAL"
  fi
  if [ -z "$(pid_of activity)" ]; then
    start_bg activity "$DIR/bin/activity" "$DIR/bin/activity" --gateway "http://$REG"
  fi
  local s
  for s in "${SERVICES[@]}"; do wait_for "$s routable" 30 "$s" routable "$s"; done
  say "all up"
  cat <<TXT

  public      http://$PUBLIC        (auth, todos, activity)
  internal    http://$INTERNAL        (todos reaches activity here)
  admin       http://$ADMIN/        (UI; services: http://$ADMIN/admin/services)
  logs        $LOGS

  Try it:
    curl -s -X POST http://$PUBLIC/auth/register -d '{"username":"ada","password":"correct horse"}'
    TOKEN=\$(curl -s -X POST http://$PUBLIC/auth/login -d '{"username":"ada","password":"correct horse"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    curl -s -X POST http://$PUBLIC/todos -H "authorization: Bearer \$TOKEN" -d '{"title":"write the demo"}'
    curl -s http://$PUBLIC/todos -H "authorization: Bearer \$TOKEN"
    curl -s http://$PUBLIC/todos                     # 401 unauthorized
    curl -si http://$PUBLIC/todos/stats | grep -i x-cache   # MISS, then HIT
    curl -s http://$PUBLIC/activity -H "authorization: Bearer \$TOKEN"

  scripts/todo-demo.sh status | down
TXT
}

cmd_status() {
  local name p rc=0
  for name in gateway "${SERVICES[@]}"; do
    p="$(pid_of "$name")"
    if [ -z "$p" ]; then printf '  %-9s stopped\n' "$name"; rc=1
    elif [ "$name" = gateway ] || routable "$name"; then printf '  %-9s %-7s up\n' "$name" "$p"
    else printf '  %-9s %-7s not routable\n' "$name" "$p"; rc=1; fi
  done
  return "$rc"
}

cmd_down() {
  local name p
  # Services first, while the gateway runs: they deregister on SIGTERM.
  for name in "${SERVICES[@]}" gateway; do
    p="$(pid_of "$name")"
    if [ -n "$p" ]; then
      kill -TERM "$p" 2>/dev/null || true
      local deadline=$(( $(date +%s) + 15 ))
      while is_running "$p" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
      is_running "$p" && { say "$name did not stop: SIGKILL"; kill -KILL "$p" 2>/dev/null || true; }
      say "$name stopped"
    fi
    rm -f "$DIR/$name.pid" "$DIR/$name.sig"
  done
}

case "$CMD" in
  up) cmd_up ;;
  status) cmd_status ;;
  down) cmd_down ;;
esac
