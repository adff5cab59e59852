package fwdhttp

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/textproto"
	"testing"

	pb "github.com/forwarding-gateway/adapters/go/forwardingpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FuzzConversion: any ForwardingReq is either refused with INVALID_ARGUMENT
// or becomes an *http.Request that keeps method, raw path, raw query,
// header values (same-name order) and body; and a handler echoing it back
// produces the same fields. It never panics. `go test` runs the seeds;
// `go test -fuzz FuzzConversion ./fwdhttp` explores.
func FuzzConversion(f *testing.F) {
	f.Add("GET", "/a", "", false, "x-a", []byte("1"), []byte("2"), []byte(""), uint64(0))
	f.Add("PURGE", "/a%2Fb//./..", "x=%20&x", true, "set-cookie", []byte("a=1"), []byte("\xff\x80"), []byte("body"), uint64(1500))
	f.Add("GE T", "/a", "", true, "X-A", []byte("\r\n"), []byte(""), []byte{0, 1}, ^uint64(0))
	f.Add("GET", "/%zz", "q", true, "host", []byte("h"), []byte("i"), []byte(""), uint64(1))
	f.Fuzz(func(t *testing.T, method, path, query string, hasQuery bool, name string, v1, v2, body []byte, deadline uint64) {
		req := &pb.ForwardingReq{
			Method: method, Path: path, Query: query, HasQuery: hasQuery,
			Headers: []*pb.Header{{Name: name, Value: v1}, {Name: "x-other", Value: []byte("o")}, {Name: name, Value: v2}},
			Body:    body, Context: &pb.RequestContext{DeadlineMs: deadline},
		}
		if err := checkRequest(req); err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("refused with %v, expected INVALID_ARGUMENT", err)
			}
			return
		}
		var got *pb.ForwardingResp
		echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// r.RequestURI is the raw target; r.URL.EscapedPath() is net/url's
			// view of it (characters like `|` or `"` come back %-encoded, as
			// with net/http's own server).
			target := path
			if hasQuery || query != "" {
				target += "?" + query
			}
			if r.Method != method || r.RequestURI != target || r.URL.RawQuery != query {
				t.Errorf("target: %s %s (raw query %s)", r.Method, r.RequestURI, r.URL.RawQuery)
			}
			for k, vs := range r.Header {
				w.Header()[k] = vs
			}
			_, _ = io.Copy(w, r.Body)
		})
		r, cancel, err := newRequest(context.Background(), req, io.NopCloser(bytes.NewReader(body)), int64(len(body)))
		if err != nil {
			return // a target net/http cannot parse: answered 400, as net/http does
		}
		defer cancel()
		w := sendResponse{newResponse()}
		if err := serve(echo, w, r); err != nil {
			t.Fatal(err)
		}
		got = w.message()
		if string(got.Body) != string(body) {
			t.Errorf("body: %q, expected %q", got.Body, body)
		}
		var vals []string
		for _, h := range got.Headers {
			if h.Name == name {
				vals = append(vals, string(h.Value))
			}
		}
		want := []string{string(v1), string(v2)}
		if name == "host" {
			want = nil // moved to r.Host, as net/http does
		}
		if textproto.CanonicalMIMEHeaderKey(name) == "X-Other" {
			want = []string{string(v1), "o", string(v2)}
		}
		if len(vals) != len(want) || (len(want) > 0 && (vals[0] != want[0] || vals[len(vals)-1] != want[len(want)-1])) {
			t.Errorf("header %q: %q, expected %q", name, vals, want)
		}
	})
}
