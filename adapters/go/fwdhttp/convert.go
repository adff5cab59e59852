package fwdhttp

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/textproto"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	pb "github.com/forwarding-gateway/adapters/go/forwardingpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// invalid is the one way bad input leaves the adapter: a gRPC
// INVALID_ARGUMENT with a message naming what was wrong, never a panic.
func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// isToken reports whether s is an RFC 9110 token (methods, field names).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// checkFields rejects field names that are not lower-case tokens (the
// contract promises lower case) and values with CR, LF or NUL, which no
// HTTP message can carry and which would let a header smuggle another.
func checkFields(fields []*pb.Header, what string) error {
	for _, f := range fields {
		if !isToken(f.GetName()) || f.GetName() != strings.ToLower(f.GetName()) {
			return invalid("%s %q: invalid field name", what, f.GetName())
		}
		if bytes.ContainsAny(f.GetValue(), "\r\n\x00") {
			return invalid("%s %q: control characters in the value", what, f.GetName())
		}
	}
	return nil
}

// maxDeadlineMs is the largest deadline a time.Duration can hold; a larger
// one (a negative number sent as uint64, for instance) is not a deadline.
const maxDeadlineMs = uint64(math.MaxInt64 / int64(time.Millisecond))

// checkRequest validates what the gateway promises, so a handler never sees
// a request net/http itself could not have produced.
func checkRequest(req *pb.ForwardingReq) error {
	if !isToken(req.GetMethod()) {
		return invalid("invalid method %q", req.GetMethod())
	}
	if !strings.HasPrefix(req.GetPath(), "/") || strings.ContainsAny(req.GetPath(), " \r\n#?\x00") {
		return invalid("invalid path %q", req.GetPath())
	}
	if strings.ContainsAny(req.GetQuery(), " \r\n#\x00") {
		return invalid("invalid query %q", req.GetQuery())
	}
	if err := checkFields(req.GetHeaders(), "header"); err != nil {
		return err
	}
	if err := checkFields(req.GetTrailers(), "trailer"); err != nil {
		return err
	}
	if d := req.GetContext().GetDeadlineMs(); d > maxDeadlineMs {
		return invalid("context.deadline_ms %d is out of range (a negative number?)", d)
	}
	return nil
}

type contextKey struct{}

// RequestContext returns the gateway's facts about the request r (request
// id, client addresses, trace context, deadline, matched route), or nil
// when r did not come through the adapter.
func RequestContext(r *http.Request) *pb.RequestContext {
	c, _ := r.Context().Value(contextKey{}).(*pb.RequestContext)
	return c
}

// toHeader turns contract fields into an http.Header. net/http keeps
// headers in a map, so fields of different names lose their interleaving;
// same-name fields keep their order, which is all the contract promises.
func toHeader(fields []*pb.Header) http.Header {
	h := make(http.Header, len(fields))
	for _, f := range fields {
		k := textproto.CanonicalMIMEHeaderKey(f.GetName())
		h[k] = append(h[k], string(f.GetValue()))
	}
	return h
}

// fromHeader turns an http.Header into contract fields: names in lower
// case, sorted (a map has no order; sorting makes answers reproducible),
// same-name values in order. skip, if non-nil, names keys to leave out.
func fromHeader(h http.Header, skip func(key string) bool) []*pb.Header {
	keys := make([]string, 0, len(h))
	for k := range h {
		if skip == nil || !skip(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out []*pb.Header
	for _, k := range keys {
		name := strings.ToLower(k)
		for _, v := range h[k] {
			out = append(out, &pb.Header{Name: name, Value: []byte(v)})
		}
	}
	return out
}

var protos = map[pb.HttpVersion]struct {
	proto        string
	major, minor int
}{
	pb.HttpVersion_HTTP_VERSION_HTTP_0_9: {"HTTP/0.9", 0, 9},
	pb.HttpVersion_HTTP_VERSION_HTTP_1_0: {"HTTP/1.0", 1, 0},
	pb.HttpVersion_HTTP_VERSION_HTTP_1_1: {"HTTP/1.1", 1, 1},
	pb.HttpVersion_HTTP_VERSION_HTTP_2:   {"HTTP/2.0", 2, 0},
	pb.HttpVersion_HTTP_VERSION_HTTP_3:   {"HTTP/3.0", 3, 0},
}

// newRequest builds the *http.Request a net/http server would have built
// for req (already checked by checkRequest), reading its body from body.
// The returned cancel releases the deadline's timer. errBadTarget: a target
// net/http could not parse either (answer badTarget()).
func newRequest(ctx context.Context, req *pb.ForwardingReq, body io.ReadCloser, contentLength int64) (*http.Request, context.CancelFunc, error) {
	rc := req.GetContext()
	if rc == nil {
		rc = &pb.RequestContext{}
	}
	cancel := context.CancelFunc(func() {})
	// deadline_ms is the gateway's budget as a number; grpc-timeout already
	// bounds ctx, but a direct caller may send only one of the two.
	if d := rc.GetDeadlineMs(); d > 0 {
		ctx, cancel = context.WithTimeout(ctx, time.Duration(d)*time.Millisecond)
	}
	ctx = context.WithValue(ctx, contextKey{}, rc)

	target := req.GetPath()
	// A query without has_query is inconsistent; keep the query rather
	// than lose it (the gateway always sets both).
	if req.GetHasQuery() || req.GetQuery() != "" {
		target += "?" + req.GetQuery()
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		// A raw path net/url refuses (a bad %-escape): net/http's server
		// answers 400 without calling the handler; so does the adapter.
		cancel()
		return nil, nil, errBadTarget
	}
	header := toHeader(req.GetHeaders())
	// As net/http's server does: Host lives in r.Host, not in r.Header.
	host := req.GetAuthority()
	if hs := header.Values("Host"); len(hs) > 0 {
		if host == "" {
			host = hs[0]
		}
		header.Del("Host")
	}
	p, ok := protos[req.GetVersion()]
	if !ok {
		p = protos[pb.HttpVersion_HTTP_VERSION_HTTP_1_1]
	}
	r := &http.Request{
		Method:        req.GetMethod(),
		URL:           u,
		Proto:         p.proto,
		ProtoMajor:    p.major,
		ProtoMinor:    p.minor,
		Header:        header,
		Body:          body,
		ContentLength: contentLength,
		Host:          host,
		RequestURI:    target,
	}
	if addrs := rc.GetClientAddresses(); len(addrs) > 0 {
		r.RemoteAddr = addrs[len(addrs)-1]
	}
	if req.GetScheme() == "https" {
		// Handlers test r.TLS != nil for "the client used https"; the TLS
		// itself ended at the gateway, so the state is empty.
		r.TLS = &tls.ConnectionState{}
	}
	return r.WithContext(ctx), cancel, nil
}

var errBadTarget = errors.New("invalid request target")

// badTarget is net/http's own answer to a target it cannot parse.
func badTarget() *pb.ForwardingResp {
	return &pb.ForwardingResp{
		Status:  http.StatusBadRequest,
		Headers: []*pb.Header{{Name: "content-type", Value: []byte("text/plain; charset=utf-8")}},
		Body:    []byte("400 Bad Request: invalid request target"),
	}
}

// streamContentLength is the request's Content-Length header when it has
// a valid one, -1 (unknown) otherwise, as net/http reports a chunked body.
func streamContentLength(h http.Header) int64 {
	if v := h.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			return n
		}
	}
	return -1
}

// errAborted is what a failed call says when the handler aborted it
// (panic(http.ErrAbortHandler), net/http's way to cut a response short).
var errAborted = status.Error(codes.Internal, "the handler aborted the response")

// serve runs h, turning a panic into an error, as net/http does: a panic
// kills the exchange, never the process.
func serve(h http.Handler, w http.ResponseWriter, r *http.Request) (err error) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				err = errAborted
				return
			}
			err = status.Errorf(codes.Internal, "the handler panicked: %v", p)
			logger().Error("Handler panicked.", "method", r.Method, "path", r.URL.EscapedPath(), "panic", fmt.Sprint(p))
		}
	}()
	h.ServeHTTP(w, r)
	return nil
}
