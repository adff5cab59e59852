// Command conformance-server is the conformance behaviour
// (proto/proto/forwarding/v1/CONFORMANCE.md) written as an ordinary
// net/http handler and served through fwdhttp, so gateway-conformance
// checks the adapter the way a user's code meets it.
//
//	go run ./cmd/conformance-server --listen 127.0.0.1:0
//	# READY 127.0.0.1:43117
//	gateway-conformance --target grpc://127.0.0.1:43117
//
// With --gateway it registers (the kit's --backend-cmd lifecycle checks).
// Prints one line to stdout, `READY <host:port>`, once listening; logs go
// to stderr. Stops on SIGTERM / SIGINT. A test backend: do not deploy it.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/forwarding-gateway/adapters/go/fwdhttp"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve gRPC on")
	gateway := flag.String("gateway", "", "registration API of a gateway (http://HOST:PORT); empty: do not register")
	service := flag.String("service", "conformance-go", "service name to register")
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	srv := fwdhttp.New(newConformance(), fwdhttp.Config{
		Service: *service,
		Gateway: *gateway,
		Routes:  []fwdhttp.Route{{PathPrefix: "/conformance", Stream: true}},
	})
	fmt.Printf("READY %s\n", lis.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := srv.Serve(ctx, lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

var (
	token   = regexp.MustCompile("^[!#$%&'*+\\-.^_`|~0-9A-Za-z]+$")
	validID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
)

const maxCalls = 10000

type record struct {
	State string `json:"state"`
	Sent  int64  `json:"body_bytes_sent"`
}

// calls are the fates of calls made with x-conformance-id.
type calls struct {
	mu    sync.Mutex
	m     map[string]*record
	order []string
}

func (c *calls) start(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.order) >= maxCalls {
		delete(c.m, c.order[0])
		c.order = c.order[1:]
	}
	c.m[id] = &record{State: "running"}
	c.order = append(c.order, id)
}

func (c *calls) update(id, state string, sent int64) {
	if id == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.m[id]; r != nil {
		r.Sent += sent
		if state != "" {
			r.State = state
		}
	}
}

func (c *calls) get(id string) (record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.m[id]
	if r == nil {
		return record{}, false
	}
	return *r, true
}

type conformance struct{ calls *calls }

func newConformance() http.Handler {
	return &conformance{calls: &calls{m: map[string]*record{}}}
}

type field struct{ name, value string }

type controls struct {
	status, chunks    int
	bodySize          int64 // -1: the echo
	delay, chunkDelay time.Duration
	id                string
	abort             bool
	headers, trailers []field
}

func number(h http.Header, name string) (int64, bool, error) {
	v := h.Values(name)
	if len(v) == 0 {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v[0]), 10, 64)
	if err != nil || n < 0 {
		return 0, false, fmt.Errorf("%s: not a number", name)
	}
	return n, true, nil
}

func fieldArgs(h http.Header, name string) ([]field, error) {
	var out []field
	for _, raw := range h.Values(name) {
		n, v, ok := strings.Cut(raw, ":")
		if !ok || !token.MatchString(n) {
			return nil, fmt.Errorf("%s: expected 'name: value'", name)
		}
		out = append(out, field{strings.ToLower(n), strings.TrimLeft(v, " \t")})
	}
	return out, nil
}

func parseControls(h http.Header) (c controls, err error) {
	c.status, c.chunks, c.bodySize = 200, 1, -1
	if n, ok, err := number(h, "x-conformance-status"); err != nil {
		return c, err
	} else if ok {
		if n < 200 || n > 599 {
			return c, fmt.Errorf("x-conformance-status: not 200-599")
		}
		c.status = int(n)
	}
	if n, ok, err := number(h, "x-conformance-chunks"); err != nil {
		return c, err
	} else if ok {
		if n < 1 || n > 65536 {
			return c, fmt.Errorf("x-conformance-chunks: not 1-65536")
		}
		c.chunks = int(n)
	}
	if n, ok, err := number(h, "x-conformance-body-size"); err != nil {
		return c, err
	} else if ok {
		c.bodySize = n
	}
	n, _, err := number(h, "x-conformance-delay-ms")
	if err != nil {
		return c, err
	}
	c.delay = time.Duration(n) * time.Millisecond
	n, _, err = number(h, "x-conformance-chunk-delay-ms")
	if err != nil {
		return c, err
	}
	c.chunkDelay = time.Duration(n) * time.Millisecond
	if ids := h.Values("x-conformance-id"); len(ids) > 0 {
		if !validID.MatchString(ids[0]) {
			return c, fmt.Errorf("x-conformance-id: not 1-64 of [A-Za-z0-9._-]")
		}
		c.id = ids[0]
	}
	c.abort = h.Get("x-conformance-abort") == "1"
	if c.headers, err = fieldArgs(h, "x-conformance-header"); err != nil {
		return c, err
	}
	c.trailers, err = fieldArgs(h, "x-conformance-trailer")
	return c, err
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

type hexField struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// fields lists a header map as the echo shows it: names in lower case
// (sorted: net/http keeps no order between names), values in order.
func fields(h http.Header) []hexField {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := []hexField{}
	for _, k := range keys {
		for _, v := range h[k] {
			out = append(out, hexField{strings.ToLower(k), hex.EncodeToString([]byte(v))})
		}
	}
	return out
}

func pattern(start, n int64) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((start + int64(i)) % 251)
	}
	return b
}

// wait sleeps d; false when the request ended first (cancelled, deadline).
func wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *conformance) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.EscapedPath()
	if !strings.HasPrefix(path, "/conformance") {
		writeJSON(w, 404, map[string]string{"error": "not found"})
		return
	}
	if id, ok := strings.CutPrefix(path, "/conformance/calls/"); ok && r.Method == http.MethodGet {
		rec, found := s.calls.get(id)
		if !found {
			writeJSON(w, 404, map[string]any{"id": id, "state": "unknown", "body_bytes_sent": 0})
			return
		}
		writeJSON(w, 200, map[string]any{"id": id, "state": rec.State, "body_bytes_sent": rec.Sent})
		return
	}
	c, err := parseControls(r.Header)
	if err != nil {
		writeJSON(w, 400, map[string]string{"error": err.Error()})
		return
	}
	if c.id != "" {
		s.calls.start(c.id)
	}
	ctx := r.Context()
	cancelled := func() { s.calls.update(c.id, "cancelled", 0) }

	// 1. The whole body, hashed as it comes; trailers are known at EOF.
	hash := sha256.New()
	n, err := io.Copy(hash, r.Body)
	if err != nil {
		cancelled()
		return
	}
	// 2. The delay, stopped by cancellation or the deadline.
	if !wait(ctx, c.delay) {
		cancelled()
		return
	}
	// 3. The answer.
	var content []byte
	size := c.bodySize
	if size < 0 {
		var deadline uint64
		var requestID string
		if rc := fwdhttp.RequestContext(r); rc != nil {
			deadline, requestID = rc.GetDeadlineMs(), rc.GetRequestId()
		}
		content, _ = json.Marshal(map[string]any{
			"method": r.Method, "path": path, "query": r.URL.RawQuery,
			"has_query": r.URL.ForceQuery || r.URL.RawQuery != "",
			"headers":   fields(r.Header), "trailers": fields(r.Trailer),
			"body_length": n, "body_sha256": hex.EncodeToString(hash.Sum(nil)),
			"deadline_ms": deadline, "request_id": requestID,
		})
		size = int64(len(content))
		w.Header().Set("Content-Type", "application/json")
	}
	for _, f := range c.headers {
		w.Header()[f.name] = append(w.Header()[f.name], f.value)
	}
	w.WriteHeader(c.status)
	rc := http.NewResponseController(w)
	k := int64(c.chunks)
	for i := int64(0); i < k; i++ {
		if i > 0 && !wait(ctx, c.chunkDelay) {
			cancelled()
			return
		}
		from, to := i*size/k, (i+1)*size/k
		// Written in pieces, so a large part feels backpressure as it goes.
		for from < to {
			end := min(to, from+64<<10)
			var part []byte
			if content != nil {
				part = content[from:end]
			} else {
				part = pattern(from, end-from)
			}
			if _, err := w.Write(part); err != nil {
				cancelled()
				return
			}
			s.calls.update(c.id, "", int64(len(part)))
			from = end
		}
		// One Flush per part: on Stream each part is its own body frame.
		if err := rc.Flush(); err != nil || ctx.Err() != nil {
			cancelled()
			return
		}
	}
	if c.abort {
		s.calls.update(c.id, "aborted", 0)
		panic(http.ErrAbortHandler)
	}
	for _, f := range c.trailers {
		k := http.TrailerPrefix + f.name
		w.Header()[k] = append(w.Header()[k], f.value)
	}
	s.calls.update(c.id, "completed", 0)
}
