package fwdhttp

import (
	"context"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	pb "github.com/forwarding-gateway/adapters/go/forwardingpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func hdr(pairs ...string) []*pb.Header {
	var out []*pb.Header
	for i := 0; i < len(pairs); i += 2 {
		out = append(out, &pb.Header{Name: pairs[i], Value: []byte(pairs[i+1])})
	}
	return out
}

func TestCheckRequestRejectsWhatHTTPCannotCarry(t *testing.T) {
	ok := &pb.ForwardingReq{Method: "GET", Path: "/a"}
	if err := checkRequest(ok); err != nil {
		t.Fatalf("valid request refused: %v", err)
	}
	bad := map[string]*pb.ForwardingReq{
		"method not a token":  {Method: "GE T", Path: "/a"},
		"empty method":        {Method: "", Path: "/a"},
		"header not a token":  {Method: "GET", Path: "/a", Headers: hdr("x a", "1")},
		"header upper case":   {Method: "GET", Path: "/a", Headers: hdr("X-A", "1")},
		"CR LF in a value":    {Method: "GET", Path: "/a", Headers: hdr("x-a", "1\r\nx-b: 2")},
		"trailer not a token": {Method: "GET", Path: "/a", Trailers: hdr("x:a", "1")},
		"path not absolute":   {Method: "GET", Path: "a"},
		"path with a space":   {Method: "GET", Path: "/a b"},
		// uint64 on the wire: a negative deadline arrives as a huge number.
		"negative deadline": {Method: "GET", Path: "/a", Context: &pb.RequestContext{DeadlineMs: uint64(1<<64 - 1)}},
	}
	for name, req := range bad {
		err := checkRequest(req)
		if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() == "" {
			t.Errorf("%s: expected INVALID_ARGUMENT with a message, got %v", name, err)
		}
	}
}

func TestNewRequestKeepsRawTargetHeadersAndContext(t *testing.T) {
	req := &pb.ForwardingReq{
		Method: "PURGE", Scheme: "https", Authority: "example.com", Path: "/a%2Fb//./c",
		Query: "x=1&x=%20", HasQuery: true, Version: pb.HttpVersion_HTTP_VERSION_HTTP_2,
		Headers: hdr("x-a", "1", "x-b", "\xff", "x-a", "2"),
		Context: &pb.RequestContext{RequestId: "r-1", ClientAddresses: []string{"10.0.0.1", "10.0.0.2:5"}, DeadlineMs: 1000},
	}
	r, cancel, _ := newRequest(context.Background(), req, http.NoBody, 0)
	defer cancel()
	if r.Method != "PURGE" || r.Host != "example.com" || r.Proto != "HTTP/2.0" || r.TLS == nil {
		t.Errorf("method/host/proto/tls: %s %s %s %v", r.Method, r.Host, r.Proto, r.TLS)
	}
	if got := r.URL.EscapedPath(); got != "/a%2Fb//./c" {
		t.Errorf("raw path: expected /a%%2Fb//./c, got %s", got)
	}
	if r.URL.RawQuery != "x=1&x=%20" || r.RequestURI != "/a%2Fb//./c?x=1&x=%20" {
		t.Errorf("query: %q, request URI %q", r.URL.RawQuery, r.RequestURI)
	}
	if got := r.Header["X-A"]; !reflect.DeepEqual(got, []string{"1", "2"}) {
		t.Errorf("duplicates: expected [1 2], got %v", got)
	}
	if r.Header.Get("x-b") != "\xff" {
		t.Errorf("obs-text: got %q", r.Header.Get("x-b"))
	}
	if r.RemoteAddr != "10.0.0.2:5" || RequestContext(r).GetRequestId() != "r-1" {
		t.Errorf("remote %q, context %v", r.RemoteAddr, RequestContext(r))
	}
	if _, ok := r.Context().Deadline(); !ok {
		t.Error("deadline_ms did not become a context deadline")
	}
}

func TestEmptyQueryIsNotNoQuery(t *testing.T) {
	for _, hasQuery := range []bool{false, true} {
		r, cancel, _ := newRequest(context.Background(), &pb.ForwardingReq{Method: "GET", Path: "/a", HasQuery: hasQuery}, http.NoBody, 0)
		cancel()
		if r.URL.ForceQuery != hasQuery {
			t.Errorf("has_query %v: ForceQuery %v", hasQuery, r.URL.ForceQuery)
		}
	}
}

func TestHostHeaderMovesToRequestHost(t *testing.T) {
	r, cancel, _ := newRequest(context.Background(), &pb.ForwardingReq{Method: "GET", Path: "/", Headers: hdr("host", "h:1")}, http.NoBody, 0)
	defer cancel()
	if r.Host != "h:1" || r.Header.Get("Host") != "" {
		t.Errorf("host %q, header %v", r.Host, r.Header)
	}
}

func TestResponseHeadAndBothKindsOfTrailers(t *testing.T) {
	w := sendResponse{newResponse()}
	w.Header().Set("Trailer", "X-Sum")
	w.Header().Add("Set-Cookie", "a=1")
	w.Header().Add("Set-Cookie", "b=2")
	w.WriteHeader(201)
	w.Header().Set("X-Late", "ignored") // after WriteHeader: not sent
	_, _ = io.WriteString(w, "hello")
	w.Header().Set("X-Sum", "abc")
	w.Header().Set(http.TrailerPrefix+"X-Other", "def")
	m := w.message()
	if m.Status != 201 || string(m.Body) != "hello" {
		t.Fatalf("status %d body %q", m.Status, m.Body)
	}
	var heads, trailers []string
	for _, h := range m.Headers {
		heads = append(heads, h.Name+"="+string(h.Value))
	}
	for _, h := range m.Trailers {
		trailers = append(trailers, h.Name+"="+string(h.Value))
	}
	if got := strings.Join(heads, ","); got != "set-cookie=a=1,set-cookie=b=2,trailer=X-Sum" {
		t.Errorf("headers: %s", got)
	}
	if got := strings.Join(trailers, ","); got != "x-other=def,x-sum=abc" {
		t.Errorf("trailers: %s", got)
	}
}

func TestNoContentTypeSniffingAndDefaultStatus(t *testing.T) {
	w := sendResponse{newResponse()}
	_, _ = io.WriteString(w, "<html>")
	m := w.message()
	if m.Status != 200 || len(m.Headers) != 0 {
		t.Errorf("expected 200 and no headers, got %d %v", m.Status, m.Headers)
	}
}

func TestUnparseableTargetIsA400AsInNetHTTP(t *testing.T) {
	_, _, err := newRequest(context.Background(), &pb.ForwardingReq{Method: "GET", Path: "/%zz"}, http.NoBody, 0)
	if err != errBadTarget || badTarget().Status != 400 {
		t.Errorf("expected errBadTarget, got %v", err)
	}
}
