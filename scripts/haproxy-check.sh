#!/usr/bin/env bash
# Check that haproxy is installed and runs (scripts/install-deps.sh haproxy),
# and that a config file, if given, is valid:  scripts/haproxy-check.sh [haproxy.cfg]...
set -euo pipefail
command -v haproxy >/dev/null 2>&1 || { echo "[haproxy-check] ERROR: haproxy not on PATH: run scripts/install-deps.sh haproxy" >&2; exit 1; }
out="$(haproxy -v 2>&1)" || { printf '%s\n' "$out" >&2; echo "[haproxy-check] ERROR: 'haproxy -v' failed" >&2; exit 1; }
for cfg in "$@"; do
  out="$(haproxy -c -q -f "$cfg" 2>&1)" || { printf '%s\n' "$out" >&2; echo "[haproxy-check] ERROR: invalid haproxy config: $cfg" >&2; exit 1; }
done
