// Command hello-bench is the smallest backend two ways, for
// `gateway-conformance --bench`: "raw" answers on the contract directly (a
// ForwardingService written by hand on grpc-go, the baseline), "adapter" is
// the same answer as a net/http handler served by fwdhttp. Both answer every
// Send with 200, content-type text/plain, "hello".
//
//	go run ./cmd/hello-bench raw|adapter [--listen 127.0.0.1:0]
//	# READY 127.0.0.1:43117
//
// Prints one line to stdout, `READY <host:port>`, once listening. Stops on
// SIGTERM / SIGINT. A benchmark backend: do not deploy it.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/forwarding-gateway/adapters/go/forwardingpb"
	"github.com/forwarding-gateway/adapters/go/fwdhttp"
	"google.golang.org/grpc"
)

type raw struct {
	forwardingpb.UnimplementedForwardingServiceServer
}

func (raw) Send(context.Context, *forwardingpb.ForwardingReq) (*forwardingpb.ForwardingResp, error) {
	return &forwardingpb.ForwardingResp{
		Status:  200,
		Headers: []*forwardingpb.Header{{Name: "content-type", Value: []byte("text/plain")}},
		Body:    []byte("hello"),
	}, nil
}

func hello(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte("hello"))
}

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "raw" && os.Args[1] != "adapter") {
		fmt.Fprintln(os.Stderr, "usage: hello-bench raw|adapter [--listen 127.0.0.1:0]")
		os.Exit(2)
	}
	kind := os.Args[1]
	flags := flag.NewFlagSet("hello-bench", flag.ExitOnError)
	listen := flags.String("listen", "127.0.0.1:0", "address to serve gRPC on")
	_ = flags.Parse(os.Args[2:])

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	fmt.Printf("READY %s\n", lis.Addr())
	if kind == "raw" {
		g := grpc.NewServer()
		forwardingpb.RegisterForwardingServiceServer(g, raw{})
		go func() { <-ctx.Done(); g.GracefulStop() }()
		err = g.Serve(lis)
	} else {
		err = fwdhttp.New(http.HandlerFunc(hello), fwdhttp.Config{Service: "hello"}).Serve(ctx, lis)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
