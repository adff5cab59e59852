#!/usr/bin/env sh
# Regenerates src/forwarding_adapter/_pb/ from proto/proto/forwarding/v1/forwarding.proto
# with grpcio-tools (pip install grpcio-tools). The output is committed, so
# installing the package needs no protoc; tests/test_generated.py fails when
# it is stale. The absolute import protoc writes into the _grpc module is made
# package-relative, so the code lives inside forwarding_adapter.
set -eu
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PY" -m grpc_tools.protoc -I../../proto/proto --python_out="$tmp" --grpc_python_out="$tmp" forwarding/v1/forwarding.proto
out="${1:-src/forwarding_adapter/_pb}"
mkdir -p "$out"
cp "$tmp/forwarding/v1/forwarding_pb2.py" "$out/forwarding_pb2.py"
sed 's/^from forwarding\.v1 import forwarding_pb2 as/from . import forwarding_pb2 as/' \
  "$tmp/forwarding/v1/forwarding_pb2_grpc.py" > "$out/forwarding_pb2_grpc.py"
