#!/usr/bin/env bash
# Regenerates benchpb/ from proto/ and bench.yaml. The generated code is
# committed so that scripts/bench.sh (and CI) need only the Go toolchain and
# the Go module proxy, not protoc and three plugins; run this after changing
# bench.proto or bench.yaml, or after upgrading the modules in go.mod.
#
# protoc: Debian's protobuf-compiler (scripts/install-deps.sh protoc). The
# plugins are installed with `go install` at the versions go.mod requires, into
# .deps/go-bin of the repository, so the generated code matches the runtime.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
"$REPO/scripts/install-deps.sh" protoc
cd "$HERE"
ver() { go list -m -f '{{.Version}}' "$1"; }
export GOBIN="$REPO/.deps/go-bin"
mkdir -p "$GOBIN"
go install "google.golang.org/protobuf/cmd/protoc-gen-go@$(ver google.golang.org/protobuf)"
go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@${PROTOC_GEN_GO_GRPC_VERSION:-v1.6.2}"
go install "github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway@$(ver github.com/grpc-ecosystem/grpc-gateway/v2)"
rm -rf benchpb.new && mkdir -p benchpb.new
PATH="$GOBIN:$PATH" protoc -I proto -I /usr/include \
  --go_out=benchpb.new --go_opt=paths=source_relative \
  --go-grpc_out=benchpb.new --go-grpc_opt=paths=source_relative \
  --grpc-gateway_out=benchpb.new --grpc-gateway_opt=paths=source_relative \
  --grpc-gateway_opt=grpc_api_configuration=bench.yaml \
  proto/benchgw/v1/bench.proto
rm -rf benchpb && mv benchpb.new/benchgw/v1 benchpb && rm -rf benchpb.new
gofmt -l benchpb || true
echo "regenerated $HERE/benchpb"
