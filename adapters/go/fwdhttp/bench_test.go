package fwdhttp

import (
	"context"
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
func benchSend(b *testing.B, srv pb.ForwardingServiceServer) {
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
	if _, err := c.Send(ctx, req); err != nil { // connect outside the timing
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := cpu()
	for i := 0; i < b.N; i++ {
		if _, err := c.Send(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpu()-start)/float64(b.N), "cpu-ns/op")
}

func BenchmarkSendRaw(b *testing.B) { benchSend(b, raw{}) }

func BenchmarkSendAdapter(b *testing.B) {
	benchSend(b, NewForwardingServer(http.HandlerFunc(hello)))
}
