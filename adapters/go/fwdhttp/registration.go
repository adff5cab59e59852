package fwdhttp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// registration keeps one instance registered through the gateway's HTTP
// JSON registration API (openapi/registry.v1.yaml): register (retrying
// while the gateway is down), renew every third of the lease, register
// again when a renewal answers 404 (the gateway restarted or the lease
// ran out), deregister on shutdown. The same loop as service-sdk's.
type registration struct {
	base   string
	token  string
	body   []byte
	client *http.Client

	// instanceID is the id the gateway answered; written by run, read by
	// deregister after run returned.
	instanceID string
	service    string
}

type registerRequest struct {
	Service    string  `json:"service"`
	InstanceID string  `json:"instance_id,omitempty"`
	Address    string  `json:"address"`
	Routes     []Route `json:"routes,omitempty"`
	Streaming  bool    `json:"streaming"`
	LeaseMs    uint64  `json:"lease_ms,omitempty"`
}

type registerResponse struct {
	InstanceID string `json:"instance_id"`
	LeaseMs    uint64 `json:"lease_ms"`
}

// errForgotten is a renewal's 404: register again.
var errForgotten = errors.New("the gateway does not know this instance")

func newRegistration(cfg Config, listenAddr string) (*registration, error) {
	if cfg.Service == "" {
		return nil, errors.New("fwdhttp: Config.Service is required to register with Config.Gateway")
	}
	if _, err := url.Parse(cfg.Gateway); err != nil {
		return nil, fmt.Errorf("fwdhttp: Config.Gateway: %w", err)
	}
	addr := cfg.Advertise
	if addr == "" {
		addr = listenAddr
	}
	routes := cfg.Routes
	if len(routes) == 0 {
		// Explicit, as the Rust SDK does, so the route streams by default.
		routes = []Route{{PathPrefix: "/" + cfg.Service, Stream: !cfg.Unary}}
	}
	body, err := json.Marshal(registerRequest{
		Service: cfg.Service, InstanceID: cfg.InstanceID, Address: addr,
		Routes: routes, Streaming: !cfg.Unary, LeaseMs: cfg.LeaseMs,
	})
	if err != nil {
		return nil, err
	}
	return &registration{
		base: strings.TrimRight(cfg.Gateway, "/"), token: cfg.Token, body: body,
		client: &http.Client{Timeout: 5 * time.Second}, service: cfg.Service,
	}, nil
}

func (g *registration) call(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, g.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("content-type", "application/json")
	if g.token != "" {
		req.Header.Set("authorization", "Bearer "+g.token)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, data, err
}

func (g *registration) register(ctx context.Context) (registerResponse, error) {
	var r registerResponse
	code, data, err := g.call(ctx, http.MethodPut, "/v1/registrations", g.body)
	if err != nil {
		return r, err
	}
	if code != http.StatusOK && code != http.StatusCreated {
		return r, fmt.Errorf("register: HTTP %d: %s", code, data)
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("register: %w", err)
	}
	return r, nil
}

func (g *registration) instancePath() string {
	return "/v1/registrations/" + url.PathEscape(g.service) + "/" + url.PathEscape(g.instanceID)
}

func (g *registration) renew(ctx context.Context) error {
	code, data, err := g.call(ctx, http.MethodPost, g.instancePath()+"/renew", nil)
	switch {
	case err != nil:
		return err
	case code == http.StatusNotFound:
		return errForgotten
	case code != http.StatusOK:
		return fmt.Errorf("renew: HTTP %d: %s", code, data)
	}
	return nil
}

func (g *registration) deregister(ctx context.Context) error {
	if g.instanceID == "" {
		return nil // never registered
	}
	code, data, err := g.call(ctx, http.MethodDelete, g.instancePath(), nil)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("deregister: HTTP %d: %s", code, data)
	}
	return nil
}

// sleep waits d or until ctx is done; false when ctx is done.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// run registers, then renews until ctx is done.
func (g *registration) run(ctx context.Context, log *slog.Logger) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		r, err := g.register(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("Registering failed; retrying.", "error", err, "in", backoff)
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		g.instanceID = r.InstanceID
		lease := max(time.Duration(r.LeaseMs)*time.Millisecond, 300*time.Millisecond)
		log.Info("Registered.", "service", g.service, "instance", r.InstanceID, "lease", lease)
		for sleep(ctx, lease/3) {
			err := g.renew(ctx)
			if err == nil {
				continue
			}
			if ctx.Err() != nil {
				return
			}
			// Forgotten (404) or unreachable (restarting): register again
			// as soon as it answers; registering is idempotent.
			log.Info("Renewal failed; registering again.", "error", err)
			break
		}
	}
}
