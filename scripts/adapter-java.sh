#!/usr/bin/env bash
# The Java adapter (adapters/java): its JUnit tests, then the conformance kit
# against its conformance server, directly over gRPC (--target) and through
# the registration lifecycle (--backend-cmd).
#
#   scripts/adapter-java.sh           tests and the kit
#   scripts/adapter-java.sh --bench   CPU per small Send request: adapter vs raw contract
#   scripts/adapter-java.sh --install-only   toolchain, compiled classes (tests not run) and
#                                            target/classpath.txt (scripts/adapter-overhead.sh)
#
# Idempotent and cached: Java and Maven come from Debian's packages only when
# missing; Maven's dependencies (grpc-java, protobuf, protoc and the grpc
# plugin, JUnit) come from Maven Central into ~/.m2 once, so a re-run does
# not fetch again. Exits non-zero when a test or a conformance case fails.
# The kit's summary lines are written to target/adapter-java-conformance.txt
# (under adapters/java).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ADAPTER="$REPO/adapters/java"
step() { printf '\n==> %s\n' "$*"; }
export CARGO_TERM_COLOR=never

step "java toolchain"
if ! command -v javac >/dev/null || ! command -v mvn >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven >/dev/null
fi
java -version 2>&1 | sed -n 1p
mvn -v 2>/dev/null | sed -n 1p

MVN=(mvn -B --no-transfer-progress -f "$ADAPTER/pom.xml")

if [ "${1:-}" = "--install-only" ] && [ -f "$ADAPTER/target/classpath.txt" ] \
  && [ -z "$(find "$ADAPTER/src" "$ADAPTER/pom.xml" -newer "$ADAPTER/target/classpath.txt" -print -quit)" ]; then
  echo "classes and classpath up to date"
  exit 0
fi

if [ "${1:-}" = "--install-only" ]; then
  step "adapters/java: compile (tests not run), classpath"
  "${MVN[@]}" -q -DskipTests test-compile
else
  step "adapters/java: mvn test (JUnit 5), jar"
  "${MVN[@]}" package
fi
"${MVN[@]}" -q dependency:build-classpath -Dmdep.includeScope=test \
  -Dmdep.outputFile="$ADAPTER/target/classpath.txt" >/dev/null
CP="$ADAPTER/target/classes:$ADAPTER/target/test-classes:$(cat "$ADAPTER/target/classpath.txt")"
SERVER=(java -cp "$CP" dev.forwarding.gateway.conformance.ConformanceServer)
[ "${1:-}" = "--install-only" ] && exit 0

if [ "${1:-}" = "--bench" ]; then
  # Server CPU (user+sys from /proc) per request, for the same small answer served through the
  # adapter and on the generated base directly; the client is another JVM, requests one at a
  # time, after a warm-up that lets the JIT compile both paths.
  N="${BENCH_REQUESTS:-50000}"
  cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  for mode in raw adapter raw adapter; do
    BOUT="$ADAPTER/target/bench-$mode.out"
    java -cp "$CP" dev.forwarding.gateway.bench.Hello "$mode" >"$BOUT" 2>/dev/null &
    BPID=$!
    for _ in $(seq 1 300); do grep -q '^READY ' "$BOUT" 2>/dev/null && break; sleep 0.1; done
    BADDR="$(awk '/^READY /{print $2; exit}' "$BOUT")"
    java -cp "$CP" dev.forwarding.gateway.bench.Load "$BADDR" 20000
    before="$(cpu_ticks "$BPID")"
    java -cp "$CP" dev.forwarding.gateway.bench.Load "$BADDR" "$N"
    after="$(cpu_ticks "$BPID")"
    kill "$BPID"; wait "$BPID" 2>/dev/null || true
    hz="$(getconf CLK_TCK)"
    awk -v t=$((after - before)) -v hz="$hz" -v n="$N" -v m="$mode" \
      'BEGIN { printf "bench: %-7s %.1f us of server CPU per request (%d requests)\n", m, t * 1e6 / hz / n, n }'
  done
  exit 0
fi

step "conformance kit"
cargo build --locked -p conformance --bin gateway-conformance
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
KIT="$TARGET_DIR/debug/gateway-conformance"

step "conformance server (Java) on a free port"
OUT="$ADAPTER/target/adapter-java-run"
rm -rf "$OUT" && mkdir -p "$OUT"
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
"${SERVER[@]}" --listen 127.0.0.1:0 >"$OUT/stdout" 2>"$OUT/stderr" &
PID=$!
ADDR=""
for _ in $(seq 1 300); do # up to 30 s for the JVM to start
  ADDR="$(awk '/^READY /{print $2; exit}' "$OUT/stdout" 2>/dev/null || true)"
  [ -n "$ADDR" ] && break
  if ! kill -0 "$PID" 2>/dev/null; then
    cat "$OUT/stderr" >&2
    echo "adapter-java: the conformance server exited before READY" >&2
    exit 1
  fi
  sleep 0.1
done
[ -n "$ADDR" ] || { cat "$OUT/stderr" >&2; echo "adapter-java: no READY within 30 s" >&2; exit 1; }

step "gateway-conformance --target grpc://$ADDR"
RESULTS="$ADAPTER/target/adapter-java-conformance.txt"
STATUS=0
"$KIT" --target "grpc://$ADDR" | tee "$OUT/target.txt" || STATUS=1
kill "$PID" && wait "$PID" 2>/dev/null || true
PID=""

step "gateway-conformance --backend-cmd (register, renew, re-register, drain)"
"$KIT" --backend-cmd "$(printf '%q ' "${SERVER[@]}")--gateway {registry}" \
  2>"$OUT/lifecycle.stderr" | tee "$OUT/lifecycle.txt" || {
  STATUS=1
  tail -n 40 "$OUT/lifecycle.stderr" >&2
}

{
  echo "target: $(tail -n 1 "$OUT/target.txt")"
  echo "lifecycle: $(tail -n 1 "$OUT/lifecycle.txt")"
} | tee "$RESULTS"
exit "$STATUS"
