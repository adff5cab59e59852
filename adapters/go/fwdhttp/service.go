// Package fwdhttp serves a net/http Handler behind the forwarding gateway:
// it implements forwarding.v1.ForwardingService (Send and Stream) by turning
// each ForwardingReq into an *http.Request and what the handler writes into
// the ForwardingResp, and it runs the lifecycle a backend needs (register,
// renew, grpc.health.v1, deregister and drain on SIGTERM).
//
//	fwdhttp.Run(mux, fwdhttp.Config{Service: "hello", Gateway: "http://127.0.0.1:8090"})
package fwdhttp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"

	pb "github.com/forwarding-gateway/adapters/go/forwardingpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// forwarding implements the contract's ForwardingService on an http.Handler.
type forwarding struct {
	// Embedded so an RPC added to the contract later answers UNIMPLEMENTED.
	pb.UnimplementedForwardingServiceServer
	handler http.Handler
}

// NewForwardingServer returns the ForwardingService serving h, for a
// program that runs its own grpc.Server (Run and Server.Serve use it too).
func NewForwardingServer(h http.Handler) pb.ForwardingServiceServer {
	return &forwarding{handler: h}
}

// Send: one message in, one out. The handler reads the body from the
// message (no copy) and its answer is buffered whole.
func (f *forwarding) Send(ctx context.Context, req *pb.ForwardingReq) (*pb.ForwardingResp, error) {
	if err := checkRequest(req); err != nil {
		return nil, err
	}
	body := io.NopCloser(bytes.NewReader(req.GetBody()))
	if len(req.GetBody()) == 0 {
		body = http.NoBody
	}
	r, cancel, err := newRequest(ctx, req, body, int64(len(req.GetBody())))
	if err != nil {
		return badTarget(), nil
	}
	defer cancel()
	// The body is whole already, so its trailers are known before the
	// handler runs (net/http fills r.Trailer at EOF; here EOF is at hand).
	if len(req.GetTrailers()) > 0 {
		r.Trailer = toHeader(req.GetTrailers())
	}
	w := sendResponse{newResponse()}
	if err := serve(f.handler, w, r); err != nil {
		return nil, err
	}
	if err := r.Context().Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	return w.message(), nil
}

// Stream: the request body flows in as the handler reads it, the answer
// flows out at each Flush.
func (f *forwarding) Stream(stream pb.ForwardingService_StreamServer) error {
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return invalid("malformed Stream: no `head` frame before the half-close")
	}
	if err != nil {
		return err
	}
	head := first.GetHead()
	if head == nil {
		return invalid("malformed Stream: the first frame must be `head`, got `%s`", frameName(first))
	}
	if err := checkRequest(head); err != nil {
		return err
	}
	if len(head.GetTrailers()) > 0 {
		return invalid("malformed Stream: trailers in `head` (they belong in `end`)")
	}
	if head.GetUpgrade() != "" {
		// WebSocket is not supported yet (README): refuse the upgrade with
		// an answer, which the contract allows, instead of failing the call.
		return stream.Send(&pb.StreamResponse{Frame: &pb.StreamResponse_Head{Head: &pb.ForwardingResp{
			Status:  http.StatusNotImplemented,
			Headers: []*pb.Header{{Name: "content-type", Value: []byte("application/json")}},
			Body:    []byte(`{"error":"websocket_unsupported"}`),
		}}})
	}
	body := &streamBody{stream: stream, buf: head.GetBody(), trailer: http.Header{}}
	header := toHeader(head.GetHeaders())
	r, cancel, err := newRequest(stream.Context(), head, body, streamContentLength(header))
	if err != nil {
		bad := badTarget()
		if err := stream.Send(&pb.StreamResponse{Frame: &pb.StreamResponse_Head{Head: bad}}); err != nil {
			return err
		}
		return stream.Send(&pb.StreamResponse{Frame: &pb.StreamResponse_End{End: &pb.StreamEnd{}}})
	}
	defer cancel()
	r.Trailer = body.trailer
	w := &streamResponse{response: newResponse(), stream: stream}
	herr := serve(f.handler, w, r)
	switch {
	case body.malformed != nil:
		return body.malformed
	case herr != nil:
		return herr
	case r.Context().Err() != nil:
		return status.FromContextError(r.Context().Err()).Err()
	case w.err != nil:
		return status.Convert(w.err).Err()
	}
	if err := w.finish(); err != nil {
		if s, ok := status.FromError(err); ok {
			return s.Err()
		}
		return status.Error(codes.Unavailable, err.Error())
	}
	return nil
}
