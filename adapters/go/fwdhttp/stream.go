package fwdhttp

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/textproto"

	pb "github.com/forwarding-gateway/adapters/go/forwardingpb"
)

// maxFrame bounds the bytes a handler can write before they go out as a
// body frame without a Flush, so a large answer streams (and feels the
// caller's backpressure) instead of piling up in memory.
const maxFrame = 256 << 10

// streamResponse answers Stream. Writes are buffered until Flush (one body
// frame per Flush, the shape SSE handlers expect) or until maxFrame bytes
// wait; Send blocks while the caller's HTTP/2 window is full, so a slow
// reader slows the handler.
type streamResponse struct {
	*response
	stream   pb.ForwardingService_StreamServer
	headSent bool
	err      error // the first failed Send: the call is over
}

func (w *streamResponse) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, _ := w.response.Write(p)
	if w.body.Len() >= maxFrame {
		if err := w.FlushError(); err != nil {
			return n, err
		}
	}
	return n, nil
}

// Flush implements http.Flusher.
func (w *streamResponse) Flush() { _ = w.FlushError() }

// FlushError is what http.ResponseController.Flush calls: it reports a
// caller that went away.
func (w *streamResponse) FlushError() error {
	if w.err != nil {
		return w.err
	}
	if !w.headSent {
		w.headSent = true
		if w.err = w.stream.Send(&pb.StreamResponse{Frame: &pb.StreamResponse_Head{Head: w.head()}}); w.err != nil {
			return w.err
		}
	}
	if w.body.Len() == 0 {
		return nil
	}
	// The frame owns these bytes from here on; a fresh buffer rather than a
	// Reset, so nothing is copied and nothing written later changes them.
	data := w.body.Bytes()
	w.body = bytes.Buffer{}
	w.err = w.stream.Send(&pb.StreamResponse{Frame: &pb.StreamResponse_Body{Body: &pb.BodyChunk{Data: data}}})
	return w.err
}

// finish sends what is left and the trailers; the call then ends OK.
func (w *streamResponse) finish() error {
	if err := w.FlushError(); err != nil {
		return err
	}
	return w.stream.Send(&pb.StreamResponse{Frame: &pb.StreamResponse_End{End: &pb.StreamEnd{Trailers: w.trailers()}}})
}

// streamBody is the request body of a Stream call, read frame by frame as
// the handler reads (so an upload never sits whole in memory), checking
// the frames' order as it goes.
type streamBody struct {
	stream  pb.ForwardingService_StreamServer
	buf     []byte
	trailer http.Header // r.Trailer: filled when `end` arrives, as net/http does at EOF
	done    bool
	err     error // sticky: a transport error, or malformed frames
	// malformed is set when the frames broke the contract: the call then
	// fails with it whatever the handler answers.
	malformed error
}

func (b *streamBody) fail(err error) error {
	b.malformed, b.err = err, err
	return err
}

func (b *streamBody) Read(p []byte) (int, error) {
	for len(b.buf) == 0 {
		if b.err != nil {
			return 0, b.err
		}
		if b.done {
			return 0, io.EOF
		}
		f, err := b.stream.Recv()
		if errors.Is(err, io.EOF) {
			return 0, b.fail(invalid("malformed Stream: the request stream was half-closed before its `end` frame"))
		}
		if err != nil {
			b.err = err // cancelled or deadline: the handler sees a read error
			return 0, err
		}
		switch f := f.GetFrame().(type) {
		case *pb.StreamRequest_Body:
			b.buf = f.Body.GetData()
		case *pb.StreamRequest_End:
			if err := checkFields(f.End.GetTrailers(), "trailer"); err != nil {
				return 0, b.fail(err)
			}
			for _, t := range f.End.GetTrailers() {
				k := textproto.CanonicalMIMEHeaderKey(t.GetName())
				b.trailer[k] = append(b.trailer[k], string(t.GetValue()))
			}
			// The gateway half-closes right after `end`; anything else
			// breaks the order, and is caught here rather than never.
			next, err := b.stream.Recv()
			switch {
			case errors.Is(err, io.EOF):
				b.done = true
			case err != nil:
				b.err = err
				return 0, err
			default:
				return 0, b.fail(invalid("malformed Stream: a `%s` frame after `end`", frameName(next)))
			}
		case *pb.StreamRequest_Head:
			return 0, b.fail(invalid("malformed Stream: a second `head` frame"))
		default:
			return 0, b.fail(invalid("malformed Stream: a `%s` frame in an exchange that is not a WebSocket", frameName(f)))
		}
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	return n, nil
}

func (b *streamBody) Close() error { return nil }

func frameName(f any) string {
	if r, ok := f.(*pb.StreamRequest); ok {
		f = r.GetFrame()
	}
	switch f.(type) {
	case *pb.StreamRequest_Head:
		return "head"
	case *pb.StreamRequest_Body:
		return "body"
	case *pb.StreamRequest_End:
		return "end"
	case *pb.StreamRequest_Message:
		return "message"
	case *pb.StreamRequest_Close:
		return "close"
	default:
		return "empty"
	}
}
