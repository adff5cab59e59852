package fwdhttp

import (
	"bytes"
	"net/http"
	"strings"

	pb "github.com/forwarding-gateway/adapters/go/forwardingpb"
)

// response is the http.ResponseWriter part both RPCs share: net/http's
// rules for status, headers and trailers, with the body in a buffer.
//
// Unlike net/http's server it adds nothing: no Content-Type sniffing, no
// Date, no Content-Length (the gateway computes the framing). A handler
// that wants a content type sets it.
type response struct {
	header http.Header
	// sent is the header as it was at WriteHeader: later changes do not
	// reach the client, except trailers (net/http's rule).
	sent   http.Header
	status int
	body   bytes.Buffer
}

func newResponse() *response { return &response{header: make(http.Header)} }

func (w *response) Header() http.Header { return w.header }

func (w *response) WriteHeader(code int) {
	if w.sent != nil {
		return // net/http logs "superfluous WriteHeader"; the first one wins
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		return // informational answers are not forwarded (forwarding.proto)
	}
	if code < 100 || code > 599 {
		code = http.StatusInternalServerError
	}
	w.status = code
	w.sent = w.header.Clone()
}

func (w *response) Write(p []byte) (int, error) {
	if w.sent == nil {
		w.WriteHeader(http.StatusOK)
	}
	return w.body.Write(p)
}

// declaredTrailers are the names the head announced in `Trailer`.
func (w *response) declaredTrailers() map[string]bool {
	d := map[string]bool{}
	for _, v := range w.sent.Values("Trailer") {
		for _, n := range strings.Split(v, ",") {
			if n = strings.TrimSpace(n); n != "" {
				d[http.CanonicalHeaderKey(n)] = true
			}
		}
	}
	return d
}

// head is the response head: status and the header as sent, without the
// trailers net/http would have held back.
func (w *response) head() *pb.ForwardingResp {
	if w.sent == nil {
		w.WriteHeader(http.StatusOK)
	}
	declared := w.declaredTrailers()
	return &pb.ForwardingResp{
		Status: uint32(w.status),
		Headers: fromHeader(w.sent, func(k string) bool {
			return declared[k] || strings.HasPrefix(k, http.TrailerPrefix)
		}),
	}
}

// trailers are net/http's two kinds: keys announced in `Trailer` before the
// head, and keys set with the http.TrailerPrefix at any time.
func (w *response) trailers() []*pb.Header {
	declared := w.declaredTrailers()
	t := http.Header{}
	for k, vs := range w.header {
		switch {
		case declared[k]:
			t[k] = vs
		case strings.HasPrefix(k, http.TrailerPrefix):
			name := strings.TrimPrefix(k, http.TrailerPrefix)
			t[name] = append(t[name], vs...)
		}
	}
	return fromHeader(t, nil)
}

// sendResponse answers Send: the whole response in one message. Flush is a
// no-op, so streaming handlers (SSE) still work, buffered.
type sendResponse struct{ *response }

func (sendResponse) Flush() {}

func (w sendResponse) message() *pb.ForwardingResp {
	m := w.head()
	m.Body = w.body.Bytes()
	m.Trailers = w.trailers()
	return m
}
