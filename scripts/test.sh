#!/usr/bin/env bash
# Every test of the project, from a fresh machine: installs what the tests
# need (idempotent), then formatting, lints, unit/property/integration tests
# (real Consul and Kafka among them, and the end-to-end scenarios on the
# replicated topology behind HAProxy: gateway-bin/tests/haproxy.rs), the
# Python example's tests, the admin UI in headless Chromium
# (scripts/admin-ui-test.sh), the README walkthrough, a benchmark smoke, a quick
# run of the discovery figures and of the reliability scenarios
# (scripts/reliability.sh: faults injected under load).
#
#   scripts/test.sh            everything (CI runs this through .ci/run)
#   scripts/test.sh --fast     skip the release build, demo, benchmark, figures and reliability
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
FAST=0
[ "${1:-}" = "--fast" ] && FAST=1
step() { printf '\n==> %s\n' "$*"; }
export CARGO_TERM_COLOR=never RUST_BACKTRACE=1
# A one-shot run gains nothing from incremental caches, which take gigabytes.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "dependencies"
scripts/install-deps.sh python haproxy consul kafka compose otelcol prometheus chromium redis

step "rustfmt"
cargo fmt --all -- --check

step "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "gateway-core without its consul and kafka features (what an embedder may build)"
cargo clippy -p gateway-core --no-default-features --all-targets --locked -- -D warnings
cargo test -p gateway-core --no-default-features --lib --locked

step "gateway-core's API documentation builds without warnings"
RUSTDOCFLAGS="-D warnings" cargo doc -p gateway-core --no-deps --locked

step "build examples used by the tests"
# todo-auth: gateway-bin/tests/todo_demo.rs (which also runs `go build` for the demo's Go service)
cargo build --locked -p order-service -p todo-auth

step "cargo test (unit, property, integration)"
cargo test --workspace --locked

step "OpenAPI document: validator, and schemathesis against the live registration listener"
GATEWAY_BIN="$REPO/target/debug/gateway" scripts/openapi.sh

step "admin UI in headless Chromium (installs chromium and playwright-core when missing)"
scripts/admin-ui-test.sh

step "python example"
python3 -m pytest -q examples/product-service-py

# Backends in other languages: each script installs its toolchain's
# dependencies from the registry (cached), runs the language's own tests and
# the conformance kit (gateway-conformance) against the adapter.
step "Python adapter (pytest, conformance kit)"
scripts/adapter-python.sh

step "Go adapter (go test, conformance kit)"
scripts/adapter-go.sh

step "Node adapter (node --test, conformance kit)"
scripts/adapter-node.sh

step "Java adapter (JUnit, conformance kit)"
scripts/adapter-java.sh

step "shipped HAProxy and compose configurations are valid"
scripts/haproxy-check.sh haproxy/haproxy.cfg haproxy/haproxy.compose.cfg
.deps/bin/docker-compose -f docker-compose.yml config -q

if [ "$FAST" = 0 ]; then
  step "README: the gateway command starts and becomes ready"
  cargo build --release --locked -p gateway-bin
  log="$(mktemp)"
  cargo run --release --locked -q -p gateway-bin >"$log" 2>&1 &
  gw=$!
  ok=0
  for _ in $(seq 1 300); do
    if curl -fsS http://127.0.0.1:8091/readyz >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.1
  done
  kill -TERM "$gw" 2>/dev/null || true
  wait "$gw" 2>/dev/null || true
  [ "$ok" = 1 ] || { cat "$log"; echo "gateway did not become ready"; exit 1; }

  step "README walkthrough"
  scripts/demo.sh --check

  step "README: the TODO demo starts, answers through the gateway, stops"
  todo_check() {
    scripts/todo-demo.sh up
    curl -fsS http://127.0.0.1:8080/todos/stats >/dev/null
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/todos)" = 401 ]
  }
  if ! todo_check; then scripts/todo-demo.sh down || true; echo "the TODO demo failed"; exit 1; fi
  scripts/todo-demo.sh down

  step "benchmark smoke"
  scripts/bench.sh --quick

  step "discovery and replication figures, quick"
  scripts/figures.sh --quick

  step "reliability scenarios 4, 6, 8, 13, 14, 15, quick (RELIABILITY.md)"
  scripts/reliability.sh --quick --no-build
fi
step "all tests passed"
