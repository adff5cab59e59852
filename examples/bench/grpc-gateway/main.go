// grpc-gateway peer for scripts/bench.sh: the same bytes as bench-backend,
// through github.com/grpc-ecosystem/grpc-gateway/v2.
//
//	bench-grpc-gateway -mode backend -grpc 127.0.0.1:0 -body-bytes 64
//	    gRPC server of benchgw.v1.Bench/Get answering a google.api.HttpBody
//	    (content type text/plain, the same body as bench-backend);
//	    prints "READY grpc=ADDR".
//	bench-grpc-gateway -mode proxy -http 127.0.0.1:0 -backend ADDR
//	    grpc-gateway's runtime.ServeMux with the generated handler for
//	    GET /bench/{name} (bench.yaml), one gRPC client connection to the
//	    backend; prints "READY http=ADDR".
//
// Two processes, like the gateway and bench-backend, so the proxy's CPU and
// memory can be measured on their own. GOMAXPROCS is left to the caller
// (scripts/bench.sh sets 1, like HAProxy's nbthread 1).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/api/httpbody"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"forwarding-gateway/examples/bench/grpc-gateway/benchpb"
)

type server struct {
	benchpb.UnimplementedBenchServer
	body []byte
}

func (s *server) Get(ctx context.Context, req *benchpb.GetRequest) (*httpbody.HttpBody, error) {
	return &httpbody.HttpBody{ContentType: "text/plain", Data: s.body}, nil
}

// The same bytes as bench-backend's body(): a..z repeated, the last one '\n'.
func body(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	if n > 0 {
		b[n-1] = '\n'
	}
	return b
}

func main() {
	mode := flag.String("mode", "", "backend or proxy")
	grpcAddr := flag.String("grpc", "127.0.0.1:0", "backend: gRPC listen address")
	httpAddr := flag.String("http", "127.0.0.1:0", "proxy: HTTP listen address")
	backend := flag.String("backend", "", "proxy: the backend's gRPC address")
	bodyBytes := flag.Int("body-bytes", 64, "backend: response body size")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	switch *mode {
	case "backend":
		lis, err := net.Listen("tcp", *grpcAddr)
		if err != nil {
			log.Fatal(err)
		}
		s := grpc.NewServer()
		benchpb.RegisterBenchServer(s, &server{body: body(*bodyBytes)})
		fmt.Printf("READY grpc=%s\n", lis.Addr())
		go func() { <-ctx.Done(); s.Stop() }()
		if err := s.Serve(lis); err != nil {
			log.Fatal(err)
		}
	case "proxy":
		if *backend == "" {
			log.Fatal("-backend is required")
		}
		mux := runtime.NewServeMux()
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if err := benchpb.RegisterBenchHandlerFromEndpoint(ctx, mux, *backend, opts); err != nil {
			log.Fatal(err)
		}
		lis, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			log.Fatal(err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
		fmt.Printf("READY http=%s\n", lis.Addr())
		go func() {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		if err := srv.Serve(lis); err != nil && err != http.ErrServerClosed {
			log.Fatal(err)
		}
	default:
		fmt.Fprintln(os.Stderr, "usage: bench-grpc-gateway -mode backend|proxy ...")
		os.Exit(2)
	}
}
