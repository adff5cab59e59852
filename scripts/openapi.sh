#!/usr/bin/env bash
# The registration API's OpenAPI document (openapi/registry.v1.yaml, the one
# source: the gateway compiles it in for /openapi.yaml and Swagger UI at /docs)
# against the API itself.
#
#   scripts/openapi.sh validate      openapi-spec-validator on the document
#   scripts/openapi.sh schemathesis  schemathesis against a live registration
#                                    listener of the real `gateway` binary
#   scripts/openapi.sh               both
#
# Installs openapi-spec-validator and schemathesis (pinned, from PyPI) into a
# venv under .deps/openapi-venv, once (idempotent). The gateway runs on free
# 127.0.0.1 ports with a registration token and is stopped on exit. Exits
# non-zero when the document is invalid or schemathesis finds a failure.
#
# Environment: GATEWAY_BIN (default: cargo build, then target/debug/gateway),
# SCHEMATHESIS_MAX_EXAMPLES (default 50), SCHEMATHESIS_SEED (default 1, so a
# failure can be run again; set it empty for a random seed).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# Resolved: a venv records its own path in its scripts, so one made through
# a symlinked .deps (a git worktree) must not be taken for this one.
DEPS="$(realpath -m "${DEPS_DIR:-$REPO/.deps}")"
VENV="$DEPS/openapi-venv"
SPEC="$REPO/openapi/registry.v1.yaml"
SCHEMATHESIS_VERSION=4.32.5
VALIDATOR_VERSION=0.9.0
say() { printf '[openapi] %s\n' "$*"; }

install() {
  mkdir -p "$DEPS"
  exec 8>"$DEPS/.openapi-venv.lock"
  flock 8
  local want="schemathesis==$SCHEMATHESIS_VERSION openapi-spec-validator==$VALIDATOR_VERSION in $VENV"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.installed" 2>/dev/null)" = "$want" ]; then
    return
  fi
  say "installing $want into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q ${want% in *}
  echo "$want" >"$VENV/.installed"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

validate() {
  say "openapi-spec-validator $SPEC"
  "$VENV/bin/openapi-spec-validator" "$SPEC"
}

run_schemathesis() {
  local bin="${GATEWAY_BIN:-}"
  if [ -z "$bin" ]; then
    cargo build -q --locked -p gateway-bin
    bin="$REPO/target/debug/gateway"
  fi
  local pub int reg adm token=schemathesis-token log tmp
  pub="$(free_port)"; int="$(free_port)"; reg="$(free_port)"; adm="$(free_port)"
  tmp="$(mktemp -d)"
  log="$tmp/gateway.log"
  # A CA for [upstream_tls]: without one the gateway refuses `tls: true`
  # (400, as the document says), a schema-valid registration that
  # schemathesis would count as wrongly rejected.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=schemathesis-ca -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>/dev/null
  "$bin" --upstream-tls-ca "$tmp/ca.pem" --public "127.0.0.1:$pub" --internal "127.0.0.1:$int" \
    --registration "127.0.0.1:$reg" --admin "127.0.0.1:$adm" \
    --registration-token "$token" >"$log" 2>&1 &
  local gw=$!
  # shellcheck disable=SC2064
  trap "kill -TERM $gw 2>/dev/null || true; wait $gw 2>/dev/null || true; rm -rf '$tmp'" EXIT
  local ok=0
  for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$reg/openapi.yaml" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.1
  done
  [ "$ok" = 1 ] || { cat "$log"; say "gateway did not start"; exit 1; }
  say "schemathesis against http://127.0.0.1:$reg (the live document at /openapi.yaml)"
  local seed=()
  [ -n "${SCHEMATHESIS_SEED-1}" ] && seed=(--seed "${SCHEMATHESIS_SEED-1}")
  "$VENV/bin/schemathesis" run "http://127.0.0.1:$reg/openapi.yaml" \
    --url "http://127.0.0.1:$reg" \
    -H "Authorization: Bearer $token" \
    --checks all \
    --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-50}" \
    "${seed[@]}" \
    --workers 1 \
    --no-color
}

install
case "${1:-all}" in
  validate) validate ;;
  schemathesis) run_schemathesis ;;
  all) validate; run_schemathesis ;;
  *) echo "usage: $0 [validate|schemathesis]" >&2; exit 2 ;;
esac
