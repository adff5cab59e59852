package fwdhttp

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/forwarding-gateway/adapters/go/forwardingpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// app is ordinary net/http code: a mux with a plain answer, an SSE feed
// that flushes each event, an upload counter and a handler that panics.
func app() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "hello %s", r.URL.Query().Get("name"))
	})
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		fmt.Fprintf(w, "%d %s", n, r.Trailer.Get("X-Sum"))
	})
	mux.HandleFunc("/panic", func(http.ResponseWriter, *http.Request) { panic("boom") })
	return mux
}

// registry is a fake registration API recording the calls it gets.
type registry struct {
	mu    sync.Mutex
	calls []string
	body  map[string]any
}

func (g *registry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, r.Method+" "+r.URL.Path)
	if r.Method == http.MethodPut {
		_ = json.NewDecoder(r.Body).Decode(&g.body)
		w.WriteHeader(201)
		fmt.Fprint(w, `{"instance_id":"i-1","lease_ms":300,"created":true}`)
		return
	}
	fmt.Fprint(w, `{}`)
}

func (g *registry) seen() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.calls...)
}

func start(t *testing.T, cfg Config) (pb.ForwardingServiceClient, *grpc.ClientConn, context.CancelFunc, chan error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(app(), cfg).Serve(ctx, lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stop(); conn.Close() })
	return pb.NewForwardingServiceClient(conn), conn, stop, done
}

func TestSendThroughAMux(t *testing.T) {
	c, _, _, _ := start(t, Config{})
	resp, err := c.Send(context.Background(), &pb.ForwardingReq{Method: "GET", Path: "/hello", Query: "name=go", HasQuery: true})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 200 || string(resp.Body) != "hello go" {
		t.Errorf("got %d %q", resp.Status, resp.Body)
	}
	resp, err = c.Send(context.Background(), &pb.ForwardingReq{Method: "GET", Path: "/nope"})
	if err != nil || resp.Status != 404 {
		t.Errorf("a 404 of the handler is gRPC OK: %v %v", resp, err)
	}
}

func TestBadInputIsInvalidArgumentAndPanicsAreInternal(t *testing.T) {
	c, _, _, _ := start(t, Config{})
	_, err := c.Send(context.Background(), &pb.ForwardingReq{Method: "GET", Path: "/hello", Headers: hdr("bad name", "x")})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "bad name") {
		t.Errorf("bad header name: %v", err)
	}
	_, err = c.Send(context.Background(), &pb.ForwardingReq{Method: "GET", Path: "/panic"})
	if status.Code(err) != codes.Internal {
		t.Errorf("panic: expected INTERNAL, got %v", err)
	}
	// Still serving after both.
	if _, err := c.Send(context.Background(), &pb.ForwardingReq{Method: "GET", Path: "/hello"}); err != nil {
		t.Errorf("after bad input: %v", err)
	}
}

func recvAll(t *testing.T, s pb.ForwardingService_StreamClient) ([]*pb.StreamResponse, error) {
	t.Helper()
	var out []*pb.StreamResponse
	for {
		f, err := s.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, f)
	}
}

func TestStreamEachFlushIsOneBodyFrame(t *testing.T) {
	c, _, _, _ := start(t, Config{})
	s, err := c.Stream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Send(&pb.StreamRequest{Frame: &pb.StreamRequest_Head{Head: &pb.ForwardingReq{Method: "GET", Path: "/events"}}})
	_ = s.Send(&pb.StreamRequest{Frame: &pb.StreamRequest_End{End: &pb.StreamEnd{}}})
	_ = s.CloseSend()
	frames, err := recvAll(t, s)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, f := range frames {
		switch f := f.Frame.(type) {
		case *pb.StreamResponse_Head:
			kinds = append(kinds, fmt.Sprintf("head %d", f.Head.Status))
		case *pb.StreamResponse_Body:
			kinds = append(kinds, fmt.Sprintf("body %q", f.Body.Data))
		case *pb.StreamResponse_End:
			kinds = append(kinds, "end")
		}
	}
	want := `head 200|body "data: 0\n\n"|body "data: 1\n\n"|body "data: 2\n\n"|end`
	if got := strings.Join(kinds, "|"); got != want {
		t.Errorf("frames:\n got %s\nwant %s", got, want)
	}
}

func TestStreamUploadInFramesWithTrailers(t *testing.T) {
	c, _, _, _ := start(t, Config{})
	s, _ := c.Stream(context.Background())
	_ = s.Send(&pb.StreamRequest{Frame: &pb.StreamRequest_Head{Head: &pb.ForwardingReq{Method: "POST", Path: "/upload"}}})
	for i := 0; i < 10; i++ {
		_ = s.Send(&pb.StreamRequest{Frame: &pb.StreamRequest_Body{Body: &pb.BodyChunk{Data: make([]byte, 1000)}}})
	}
	_ = s.Send(&pb.StreamRequest{Frame: &pb.StreamRequest_End{End: &pb.StreamEnd{Trailers: hdr("x-sum", "42")}}})
	_ = s.CloseSend()
	frames, err := recvAll(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if len(frames) != 3 || string(frames[1].GetBody().GetData()) != "10000 42" {
		t.Errorf("frames: %v", frames)
	}
}

func TestStreamFramesOutOfOrderAreInvalidArgument(t *testing.T) {
	c, _, _, _ := start(t, Config{})
	head := &pb.StreamRequest{Frame: &pb.StreamRequest_Head{Head: &pb.ForwardingReq{Method: "POST", Path: "/upload"}}}
	body := &pb.StreamRequest{Frame: &pb.StreamRequest_Body{Body: &pb.BodyChunk{Data: []byte("x")}}}
	end := &pb.StreamRequest{Frame: &pb.StreamRequest_End{End: &pb.StreamEnd{}}}
	for name, frames := range map[string][]*pb.StreamRequest{
		"body first":     {body, head, end},
		"two heads":      {head, head, end},
		"body after end": {head, end, body},
		"no end":         {head, body},
	} {
		s, _ := c.Stream(context.Background())
		for _, f := range frames {
			_ = s.Send(f)
		}
		_ = s.CloseSend()
		_, err := recvAll(t, s)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: expected INVALID_ARGUMENT, got %v", name, err)
		}
	}
}

func TestLifecycleRegistersRenewsAndDeregistersThenDrains(t *testing.T) {
	reg := &registry{}
	gw := httptest.NewServer(reg)
	defer gw.Close()
	_, conn, stop, done := start(t, Config{Service: "svc", Gateway: gw.URL, Drain: 300 * time.Millisecond})
	health := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(strings.Join(reg.seen(), ","), "renew") {
		if time.Now().After(deadline) {
			t.Fatalf("no renewal within 5 s: %v", reg.seen())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if h, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health: %v %v", h, err)
	}
	reg.mu.Lock()
	if reg.body["address"] == "" || reg.body["streaming"] != true || reg.body["service"] != "svc" {
		t.Errorf("registration body: %v", reg.body)
	}
	reg.mu.Unlock()

	stop()
	for !strings.Contains(strings.Join(reg.seen(), ","), "DELETE /v1/registrations/svc/i-1") {
		if time.Now().After(deadline) {
			t.Fatalf("no deregistration: %v", reg.seen())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Deregistered, and still answering for the drain.
	if _, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("right after deregistering: expected an answer (drain), got %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Serve did not return after the drain")
	}
}
