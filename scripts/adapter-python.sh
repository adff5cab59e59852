#!/usr/bin/env bash
# The Python adapter (adapters/python): install, test, and check it with the
# conformance kit.
#
#   scripts/adapter-python.sh
#   scripts/adapter-python.sh --install-only   step 1 only (scripts/adapter-overhead.sh)
#
# 1. A virtualenv at $PY_ADAPTER_VENV (default .deps/py-adapter-venv) with the
#    adapter installed editable plus its test extras, from PyPI. Idempotent:
#    reinstalled only when adapters/python/pyproject.toml or the checkout
#    changes (a stamp holds both), so a re-run costs a second.
# 2. pytest (conversion units, Starlette/FastAPI/Flask end to end, lifecycle).
# 3. `cargo build -p conformance --bin gateway-conformance`.
# 4. The conformance behaviour as a Starlette app (conformance_app.py) and
#    as a Flask app (conformance_flask.py), each on a free 127.0.0.1 port,
#    and `gateway-conformance --target` against each. Starlette must pass
#    every case; Flask every case but the two response-trailer ones (WSGI
#    has no response trailers).
# 5. `gateway-conformance --backend-cmd` for the registration lifecycle.
#
# Exits non-zero when any step fails. The kit's summary lines are printed
# last, prefixed with "[adapter-python] kit:".
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ADAPTER="$REPO/adapters/python"
VENV="${PY_ADAPTER_VENV:-$REPO/.deps/py-adapter-venv}"
PYTHON="${PYTHON:-python3}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"

say() { printf '[adapter-python] %s\n' "$*"; }
die() { printf '[adapter-python] ERROR: %s\n' "$*" >&2; exit 1; }

# --- 1. dependencies --------------------------------------------------------
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$PYTHON is older than 3.10"
mkdir -p "$(dirname "$VENV")"
exec 9>"$(dirname "$VENV")/.py-adapter-venv.lock"
flock 9
# The editable install points at this checkout: its path is part of the stamp.
want="$ADAPTER $(sha256sum "$ADAPTER/pyproject.toml" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [[ "$(cat "$VENV/.adapter-stamp" 2>/dev/null)" != "$want" ]]; then
  say "pip install -e adapters/python[test]"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ADAPTER[test]"
  echo "$want" >"$VENV/.adapter-stamp"
else
  say "virtualenv up to date"
fi
flock -u 9
PY="$VENV/bin/python"
[[ "${1:-}" == "--install-only" ]] && exit 0

# --- 2. the adapter's own tests ----------------------------------------------
say "pytest"
(cd "$ADAPTER" && "$PY" -m pytest -q -p no:cacheprovider)

# --- 3. the kit ---------------------------------------------------------------
say "cargo build -p conformance --bin gateway-conformance"
(cd "$REPO" && cargo build --locked -q -p conformance --bin gateway-conformance)
KIT="$TARGET_DIR/debug/gateway-conformance"

# --- 4. --target against the conformance apps ---------------------------------
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# target APP LABEL: serves APP on a free port, runs the kit against it into
# $WORK/LABEL.out; returns the kit's exit status (1 when the app misbehaves).
target() {
  local app="$1" label="$2" addr="" rc=0
  "$PY" "$ADAPTER/$app" --listen 127.0.0.1:0 >"$WORK/$label.server" 2>"$WORK/$label.err" &
  SERVER_PID=$!
  for _ in $(seq 1 300); do  # up to 30 s for the READY line
    addr="$(awk '/^READY /{print $2; exit}' "$WORK/$label.server")"
    [[ -n "$addr" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/$label.err" >&2; die "$app exited"; }
    sleep 0.1
  done
  [[ -n "$addr" ]] || die "$app printed no READY line within 30 s"
  say "gateway-conformance --target grpc://$addr ($app)"
  "$KIT" --target "grpc://$addr" | tee "$WORK/$label.out" || rc=$?
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" || { say "$app exited non-zero after SIGTERM"; rc=1; }
  SERVER_PID=""
  return "$rc"
}

status=0
# ASGI (Starlette): every case must pass.
target conformance_app.py asgi || status=1
# WSGI (Flask): PEP 3333 has no response trailers (README "Limits"), so
# exactly these cases fail; any other failure fails this script.
wsgi_known=$'FAIL response/trailers [send]\nFAIL response/trailers [stream]'
target conformance_flask.py wsgi || true
wsgi_fails="$(grep '^FAIL ' "$WORK/wsgi.out" || true)"
if [[ "$wsgi_fails" != "$wsgi_known" ]]; then
  say "WSGI: expected only the response-trailer cases to fail, got:"
  printf '%s\n' "$wsgi_fails"
  status=1
fi

# --- 5. the lifecycle ---------------------------------------------------------
say "gateway-conformance --backend-cmd (lifecycle)"
"$KIT" --backend-cmd "$PY $ADAPTER/conformance_app.py --gateway {registry}" | tee "$WORK/lifecycle.out" || status=1

say "kit: --target (ASGI, Starlette): $(tail -n 1 "$WORK/asgi.out")"
say "kit: --target (WSGI, Flask): $(tail -n 1 "$WORK/wsgi.out") (response trailers: not in WSGI)"
say "kit: lifecycle: $(tail -n 1 "$WORK/lifecycle.out")"
exit "$status"
