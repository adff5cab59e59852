package fwdhttp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	pb "github.com/forwarding-gateway/adapters/go/forwardingpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Route is one registered route (openapi/registry.v1.yaml, `routes[]`).
type Route struct {
	// PathPrefix the gateway routes to this backend, e.g. "/hello".
	PathPrefix string `json:"path_prefix"`
	// Stream registers the route with `stream = true`: its answers stream
	// (SSE, downloads), so the gateway always calls Stream for it.
	Stream bool `json:"stream"`
	// TimeoutMs for the response head; 0 = the gateway's default.
	TimeoutMs uint64 `json:"timeout_ms,omitempty"`
	// MaxDurationMs bounds a whole streamed exchange; 0 = the gateway's default.
	MaxDurationMs uint64 `json:"max_duration_ms,omitempty"`
	// Hosts limits the route to these request hosts; empty = any host.
	Hosts []string `json:"hosts,omitempty"`
}

// Config of a backend. The zero value serves on 127.0.0.1:0 without
// registering.
type Config struct {
	// Service is the name registered with the gateway (required with Gateway).
	Service string
	// Gateway is the base URL of the gateway's registration API
	// (openapi/registry.v1.yaml), e.g. "http://127.0.0.1:8090". Empty: serve
	// without registering (tests, a static gateway configuration).
	Gateway string
	// Token, when the gateway requires one: sent as `authorization: Bearer`.
	Token string
	// Listen is the address Run binds; default "127.0.0.1:0".
	Listen string
	// Advertise is the address registered; default the listener's address.
	Advertise string
	// InstanceID to register; empty lets the gateway choose one.
	InstanceID string
	// Routes to register; empty registers "/<Service>" (streaming).
	Routes []Route
	// Unary registers `streaming = false`: the gateway then only calls Send
	// and buffers every body. By default the backend declares streaming.
	Unary bool
	// LeaseMs asked for; 0 = the gateway's default. Renewed every third.
	LeaseMs uint64
	// Drain is how long to keep serving after deregistering on shutdown, so
	// every gateway replica stops routing here first; default 500ms.
	Drain time.Duration
	// MaxRecvMsgSize bounds one incoming gRPC message (a Send request with
	// its body); default 64 MiB. Bodies over it should use Stream.
	MaxRecvMsgSize int
	// Logger for lifecycle events; default slog.Default().
	Logger *slog.Logger
}

func logger() *slog.Logger { return slog.Default() }

// Server is one backend: the gRPC server with ForwardingService and
// grpc.health.v1, and its registration.
type Server struct {
	cfg    Config
	grpc   *grpc.Server
	health *health.Server
	log    *slog.Logger
}

// New builds a Server for h.
func New(h http.Handler, cfg Config) *Server {
	if cfg.Drain == 0 {
		cfg.Drain = 500 * time.Millisecond
	}
	if cfg.MaxRecvMsgSize == 0 {
		cfg.MaxRecvMsgSize = 64 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{
		cfg:    cfg,
		grpc:   grpc.NewServer(grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize)),
		health: health.NewServer(),
		log:    cfg.Logger,
	}
	pb.RegisterForwardingServiceServer(s.grpc, NewForwardingServer(h))
	healthpb.RegisterHealthServer(s.grpc, s.health)
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(pb.ForwardingService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	return s
}

// Serve serves on lis until ctx is done, then shuts down the way the
// gateway expects: health NOT_SERVING, deregister, keep serving for Drain
// (a replica that has not heard of the deregistration may still route
// here), stop. It registers first when Config.Gateway is set, and keeps
// the registration alive meanwhile.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	served := make(chan error, 1)
	go func() { served <- s.grpc.Serve(lis) }()

	var reg *registration
	regDone := make(chan struct{})
	regCtx, stopReg := context.WithCancel(context.Background())
	defer stopReg()
	if s.cfg.Gateway != "" {
		var err error
		if reg, err = newRegistration(s.cfg, lis.Addr().String()); err != nil {
			s.grpc.Stop()
			return err
		}
		go func() { defer close(regDone); reg.run(regCtx, s.log) }()
	} else {
		close(regDone)
	}

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	s.log.Info("Shutting down: deregistering, then draining.", "drain", s.cfg.Drain)
	s.health.Shutdown() // NOT_SERVING for every service
	stopReg()
	<-regDone
	if reg != nil {
		dctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		if err := reg.deregister(dctx); err != nil {
			s.log.Warn("Deregistering failed; the lease will expire.", "error", err)
		}
		cancel()
	}
	time.Sleep(s.cfg.Drain)
	// Calls still running get the drain's length again, then are cut.
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(s.cfg.Drain):
		s.grpc.Stop()
	}
	return nil
}

// Run binds Config.Listen, serves h until SIGTERM or SIGINT, and shuts
// down as Serve does. It prints nothing; the bound address is logged.
func Run(h http.Handler, cfg Config) error {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	s := New(h, cfg)
	s.log.Info("Serving.", "address", lis.Addr().String(), "service", cfg.Service)
	if err := s.Serve(ctx, lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}
