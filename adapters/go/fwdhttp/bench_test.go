//go:build unix

package fwdhttp

import (
	"context"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	pb "github.com/forwarding-gateway/adapters/go/forwardingpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// raw is the same small answer written on the raw contract, the baseline
// the adapter's overhead is measured against.
type raw struct {
	pb.UnimplementedForwardingServiceServer
}

func (raw) Send(_ context.Context, req *pb.ForwardingReq) (*pb.ForwardingResp, error) {
	return &pb.ForwardingResp{
		Status:  200,
		Headers: []*pb.Header{{Name: "content-type", Value: []byte("text/plain")}},
		Body:    []byte("hello " + req.GetPath()),
	}, nil
}

func (raw) Stream(s pb.ForwardingService_StreamServer) error {
	first, err := s.Recv()
	if err != nil {
		return err
	}
	for { // to the half-close after `end`
		if _, err := s.Recv(); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
	}
	head := &pb.ForwardingResp{Status: 200, Headers: []*pb.Header{{Name: "content-type", Value: []byte("text/plain")}}}
	if err := s.Send(&pb.StreamResponse{Frame: &pb.StreamResponse_Head{Head: head}}); err != nil {
		return err
	}
	body := []byte("hello " + first.GetHead().GetPath())
	if err := s.Send(&pb.StreamResponse{Frame: &pb.StreamResponse_Body{Body: &pb.BodyChunk{Data: body}}}); err != nil {
		return err
	}
	return s.Send(&pb.StreamResponse{Frame: &pb.StreamResponse_End{End: &pb.StreamEnd{}}})
}

func hello(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte("hello " + r.URL.EscapedPath()))
}

func cpu() time.Duration {
	var u syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &u)
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}

// benchSend measures one small Send (a GET with the headers a gateway
// adds) over loopback gRPC, client and server in this process; cpu-ns/op
// is the process's CPU time per request, so the difference between the
// two benchmarks is the adapter's own cost.
func benchSend(b *testing.B, srv pb.ForwardingServiceServer) { bench(b, srv, false) }

// bench measures Send, or with stream the same exchange on Stream (head,
// end, half-close; head, one body frame, end).
func bench(b *testing.B, srv pb.ForwardingServiceServer, stream bool) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer()
	pb.RegisterForwardingServiceServer(g, srv)
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	c := pb.NewForwardingServiceClient(conn)
	req := &pb.ForwardingReq{
		ProtocolVersion: 1, Method: "GET", Scheme: "http", Authority: "example.com", Path: "/hello/world",
		Version: pb.HttpVersion_HTTP_VERSION_HTTP_1_1,
		Headers: hdr("accept", "*/*", "user-agent", "curl/8", "x-forwarded-for", "127.0.0.1",
			"x-forwarded-proto", "http", "x-forwarded-host", "example.com", "x-request-id", "r-1"),
		Context: &pb.RequestContext{RequestId: "r-1", ClientAddresses: []string{"127.0.0.1:5000"}, DeadlineMs: 30000},
	}
	ctx := context.Background()
	call := func() error {
		if !stream {
			_, err := c.Send(ctx, req)
			return err
		}
		s, err := c.Stream(ctx)
		if err != nil {
			return err
		}
		_ = s.Send(&pb.StreamRequest{Frame: &pb.StreamRequest_Head{Head: req}})
		_ = s.Send(&pb.StreamRequest{Frame: &pb.StreamRequest_End{End: &pb.StreamEnd{}}})
		_ = s.CloseSend()
		for {
			if _, err := s.Recv(); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
		}
	}
	if err := call(); err != nil { // connect outside the timing
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := cpu()
	for i := 0; i < b.N; i++ {
		if err := call(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpu()-start)/float64(b.N), "cpu-ns/op")
}

func BenchmarkSendRaw(b *testing.B) { benchSend(b, raw{}) }

func BenchmarkSendAdapter(b *testing.B) {
	benchSend(b, NewForwardingServer(http.HandlerFunc(hello)))
}

func BenchmarkStreamRaw(b *testing.B) { bench(b, raw{}, true) }

func BenchmarkStreamAdapter(b *testing.B) {
	bench(b, NewForwardingServer(http.HandlerFunc(hello)), true)
}
