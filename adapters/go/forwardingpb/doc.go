// Package forwardingpb is the generated Go code of the forwarding contract,
// proto/proto/forwarding/v1/forwarding.proto (messages and the
// ForwardingService client and server). Generated files are committed;
// regenerate with `go generate ./...` from adapters/go.
package forwardingpb

//go:generate bash ../gen.sh
