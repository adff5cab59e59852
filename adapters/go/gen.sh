#!/usr/bin/env bash
# Regenerates forwardingpb/*.pb.go from proto/proto/forwarding/v1/forwarding.proto.
#
# Needs protoc (scripts/install-deps.sh protoc: Debian protobuf-compiler) and
# the two Go plugins at the versions below, installed from the Go module proxy
# into $REPO/.deps/go/bin (scripts/adapter-go.sh does it). Run through
# `go generate ./...` or directly; the output is committed, so users of the
# module never need protoc.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
GOBIN="${GOBIN:-$REPO/.deps/go/bin}"
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
if [ ! -x "$GOBIN/protoc-gen-go" ] || [ ! -x "$GOBIN/protoc-gen-go-grpc" ]; then
  GOBIN="$GOBIN" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
  GOBIN="$GOBIN" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi
PKG=github.com/forwarding-gateway/adapters/go/forwardingpb
PATH="$GOBIN:$PATH" protoc -I "$REPO/proto/proto" \
  --go_out="$HERE/forwardingpb" --go_opt=paths=source_relative \
  --go_opt="Mforwarding/v1/forwarding.proto=$PKG" \
  --go-grpc_out="$HERE/forwardingpb" --go-grpc_opt=paths=source_relative \
  --go-grpc_opt="Mforwarding/v1/forwarding.proto=$PKG" \
  forwarding/v1/forwarding.proto
# source_relative keeps the proto's folders; flatten them into the package.
mv "$HERE/forwardingpb/forwarding/v1/"*.go "$HERE/forwardingpb/"
rm -r "$HERE/forwardingpb/forwarding"
