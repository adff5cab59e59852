#!/usr/bin/env bash
# Discovery and replication figures against a real Consul and a real Kafka
# (started here on free loopback ports, stopped at exit):
#   - Consul: registration accepted -> routable, check critical -> unrouted
#     (p50/p99 over --trials), gateway memory with --instances registered;
#   - replicas: registration on one replica -> routable on another (p50/p99),
#     time for a late replica to become ready with --instances registrations.
#
#   scripts/figures.sh [--quick] [--trials N] [--instances N]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
TRIALS=50 INSTANCES=10000
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) TRIALS=10 INSTANCES=500 ;;
    --trials) TRIALS="$2"; shift ;;
    --instances) INSTANCES="$2"; shift ;;
    *) echo "usage: $0 [--quick] [--trials N] [--instances N]" >&2; exit 2 ;;
  esac
  shift
done
scripts/install-deps.sh consul kafka >/dev/null
cargo build --release -q --locked -p gateway-bin -p bench
WORK="$(mktemp -d)"
cleanup() {
  scripts/consul-dev.sh stop "$WORK/consul" >/dev/null 2>&1 || true
  scripts/kafka-dev.sh stop "$WORK/kafka" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
consul="http://$(scripts/consul-dev.sh start "$WORK/consul" | tail -1)"
kafka="$(scripts/kafka-dev.sh start "$WORK/kafka" | tail -1)"
F=(target/release/figures --trials "$TRIALS")
echo "== Consul ($consul), $TRIALS trials, $INSTANCES instances"
"${F[@]}" consul --consul "$consul" --instances "$INSTANCES"
# A fresh agent for the replica figures, so the memory run's instances do
# not slow the second run's blocking queries.
scripts/consul-dev.sh restart "$WORK/consul" >/dev/null
consul="http://$(sed -n 's/^CONSUL_HTTP_ADDR=//p' "$WORK/consul/consul.env")"
echo "== Replicas over Kafka ($kafka)"
"${F[@]}" replicas --consul "$consul" --kafka "$kafka" --instances "$INSTANCES"
