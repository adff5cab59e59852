#!/usr/bin/env bash
# Each adapter's overhead over the raw contract (issue 13): backend CPU per
# small request, every language in ONE run of `gateway-conformance --bench`
# on this machine, interleaved so the machine's noise falls on all alike.
#
#   scripts/adapter-overhead.sh            all languages
#   LANGS="rust go" scripts/adapter-overhead.sh
#   BENCH_REQUESTS=20000 BENCH_WARMUP=20000 scripts/adapter-overhead.sh
#
# For each language a pair (more for Python and Node) of "hello" backends
# giving the same answer (200, text/plain, `hello`) to the same request
# (GET /hello, six headers, no body):
#   raw      a ForwardingService written by hand on the language's gRPC
#            library (the baseline);
#   adapter  the same answer as an ordinary handler through the adapter
#            (Rust: the service SDK with an axum route).
# The backends: conformance/src/bin/bench-hello.rs, adapters/go/cmd/hello-bench,
# adapters/python/bench/hello_apps.py (+ flask_hello.py),
# adapters/node/bench/overhead.js --server, adapters/java/.../bench/Hello.java.
#
# Installs what it needs through the adapter scripts' --install-only (cached,
# idempotent: a re-run only measures) and builds the Rust side in release.
# Prints the kit's lines, then a table: language, raw us, adapter us, ratio.
# A benchmark: not part of scripts/test.sh (the kit's tests/bench.rs keeps the
# mode working). Takes about two minutes on 2 cores.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LANGS="${LANGS:-rust go python node java}"
REQUESTS="${BENCH_REQUESTS:-10000}"
WARMUP="${BENCH_WARMUP:-20000}"
CONCURRENCY="${BENCH_CONCURRENCY:-4}"
ROUNDS="${BENCH_ROUNDS:-5}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO/$TARGET_DIR" ;; esac
step() { printf '\n==> %s\n' "$*" >&2; }
has() { [[ " $LANGS " == *" $1 "* ]]; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

step "the kit and the Rust pair (release)"
(cd "$REPO" && cargo build --locked --release -q -p conformance --bin gateway-conformance --bin bench-hello)
KIT="$TARGET_DIR/release/gateway-conformance"

ARGS=()
pair() { # LABEL CMD [baseline]
  ARGS+=(--backend-cmd "$2" --label "$1")
  [ "${3:-}" = baseline ] && ARGS+=(--baseline)
  return 0
}
q() { printf '%q' "$1"; }

if has rust; then
  HELLO="$TARGET_DIR/release/bench-hello"
  pair rust/raw "exec $(q "$HELLO") raw" baseline
  pair rust/sdk "exec $(q "$HELLO") sdk"
fi

if has go; then
  step "Go: modules, hello-bench"
  "$REPO/scripts/adapter-go.sh" --install-only >&2
  (cd "$REPO/adapters/go" && go build -o "$WORK/hello-bench" ./cmd/hello-bench)
  pair go/raw "exec $(q "$WORK/hello-bench") raw" baseline
  pair go/adapter "exec $(q "$WORK/hello-bench") adapter"
fi

if has python; then
  step "Python: virtualenv"
  "$REPO/scripts/adapter-python.sh" --install-only >&2
  PY="${PY_ADAPTER_VENV:-$REPO/.deps/py-adapter-venv}/bin/python"
  BENCH="$REPO/adapters/python/bench"
  pair python/raw "cd $(q "$BENCH") && exec $(q "$PY") hello_apps.py raw" baseline
  pair python/asgi "cd $(q "$BENCH") && exec $(q "$PY") -m forwarding_adapter hello_apps:asgi_hello"
  pair python/flask "cd $(q "$BENCH") && exec $(q "$PY") -m forwarding_adapter flask_hello:app"
fi

if has node; then
  step "Node: npm dependencies"
  "$REPO/scripts/adapter-node.sh" --install-only >&2
  NODE_BENCH="$REPO/adapters/node/bench/overhead.js"
  pair node/raw "exec node $(q "$NODE_BENCH") --server raw" baseline
  pair node/adapter "exec node $(q "$NODE_BENCH") --server adapter"
  pair node/express "exec node $(q "$NODE_BENCH") --server express"
fi

if has java; then
  step "Java: toolchain, classes, classpath"
  "$REPO/scripts/adapter-java.sh" --install-only >&2
  J="$REPO/adapters/java"
  CP="$J/target/classes:$J/target/test-classes:$(cat "$J/target/classpath.txt")"
  pair java/raw "exec java -cp $(q "$CP") dev.forwarding.gateway.bench.Hello raw" baseline
  pair java/adapter "exec java -cp $(q "$CP") dev.forwarding.gateway.bench.Hello adapter"
fi

step "gateway-conformance --bench ($LANGS)"
load="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "+ gateway-conformance --bench --requests $REQUESTS --warmup $WARMUP --concurrency $CONCURRENCY --rounds $ROUNDS ..." >&2
started=$SECONDS
"$KIT" --bench --requests "$REQUESTS" --warmup "$WARMUP" --concurrency "$CONCURRENCY" \
  --rounds "$ROUNDS" "${ARGS[@]}" | tee "$WORK/bench.out"
echo "(the kit's run: $((SECONDS - started)) s; load average before it: $load)"

# The table: one row per backend compared with a baseline.
echo
awk '
  / us\/request / {
    label = $1; us[label] = $2
    split(label, p, "/")
    if ($5 == "baseline") { base[p[1]] = label; next }
    rows[++n] = label
  }
  END {
    printf "| language | adapter | raw contract, us/request | adapter, us/request | ratio |\n"
    printf "|---|---|---:|---:|---:|\n"
    for (i = 1; i <= n; i++) {
      split(rows[i], p, "/"); b = base[p[1]]
      printf "| %s | %s | %.1f | %.1f | x%.2f |\n", p[1], p[2], us[b], us[rows[i]], us[rows[i]] / us[b]
    }
  }' "$WORK/bench.out"
