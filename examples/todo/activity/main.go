// Command activity is the TODO demo's third service (examples/todo/README.md),
// in Go on the repository's net/http adapter (adapters/go, package fwdhttp).
//
// It keeps each user's recent activity: the todos service posts an entry
// when a todo changes, through the gateway and with the user's own token,
// and a client reads its own feed. Like todos, it learns who the user is from
// the x-auth-subject header alone, which the gateway sets from a token it
// verified (its [[auth]] covers /activity); it never parses a token.
//
//	GET  /activity       the caller's last 50 entries, newest first
//	POST /activity       {"action","todo_id","title"} appends one (201)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/forwarding-gateway/adapters/go/fwdhttp"
)

const keep = 50

type entry struct {
	Action string `json:"action"`
	TodoID int64  `json:"todo_id"`
	Title  string `json:"title"`
	At     int64  `json:"at"`
}

type feeds struct {
	mu     sync.Mutex
	byUser map[string][]entry
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("content-type", "application/json")
	w.Header().Set("cache-control", "private, no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// fail answers in the gateway's error shape, so a client handles one format.
func fail(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": message}})
}

func (f *feeds) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/activity" {
		fail(w, http.StatusNotFound, "not_found", "no such route")
		return
	}
	user := r.Header.Get("x-auth-subject")
	if user == "" {
		// Only reachable when the gateway's [[auth]] does not cover /activity.
		fail(w, http.StatusUnauthorized, "unauthorized", "no verified user (x-auth-subject)")
		return
	}
	switch r.Method {
	case http.MethodGet:
		f.mu.Lock()
		list := f.byUser[user]
		out := make([]entry, 0, len(list))
		for i := len(list) - 1; i >= 0; i-- {
			out = append(out, list[i])
		}
		f.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{"activity": out})
	case http.MethodPost:
		var e entry
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<10))
		if err := dec.Decode(&e); err != nil || e.Action == "" || len(e.Action) > 32 || len(e.Title) > 500 {
			fail(w, http.StatusBadRequest, "invalid_request", "body: {\"action\" (1-32 chars), \"todo_id\", \"title\"}")
			return
		}
		e.At = time.Now().Unix()
		f.mu.Lock()
		list := append(f.byUser[user], e)
		if len(list) > keep {
			list = list[len(list)-keep:]
		}
		f.byUser[user] = list
		f.mu.Unlock()
		writeJSON(w, http.StatusCreated, e)
	default:
		w.Header().Set("allow", "GET, POST")
		fail(w, http.StatusMethodNotAllowed, "method_not_allowed", "GET or POST")
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve ForwardingService on")
	advertise := flag.String("advertise", "", "host:port the gateway dials (default: the bound address)")
	gateway := flag.String("gateway", "http://127.0.0.1:8090", "gateway registration API; empty: do not register")
	flag.Parse()
	cfg := fwdhttp.Config{
		Service:   "activity",
		Gateway:   *gateway,
		Listen:    *listen,
		Advertise: *advertise,
		Routes:    []fwdhttp.Route{{PathPrefix: "/activity"}},
		// Small JSON answers: unary Send is enough.
		Unary: true,
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	// The same "READY host:port" line as the Rust and Python examples, for
	// scripts and tests (registration follows in the background).
	fmt.Printf("READY %s\n", lis.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err = fwdhttp.New(&feeds{byUser: map[string][]entry{}}, cfg).Serve(ctx, lis)
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		log.Fatal(err)
	}
}
