package authz

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/docker/go-plugins-helpers/sdk"
	"github.com/sirupsen/logrus"
)

// maxCallSize bounds one AuthZReq call, from the largest dockerd can send:
// a 4 MiB request body (29.3.1 and later; 1 MiB before) is 5.33 MiB of
// base64, and the URI and headers, which dockerd's server reads at most
// 1 MiB + 4 KiB of, grow at most sixfold as JSON strings (\u0026, \ufffd):
// 11.4 MiB in all. A longer call did not come from dockerd and is refused,
// read past without being kept (DECISIONS.md).
const maxCallSize = 12 << 20

// Request is what an AuthZReq call says about an API request, as far as a
// decision reads it.
type Request struct {
	// User is the user dockerd authenticated (TLS client certificates),
	// "" on a unix socket.
	User string
	// Method and URI are the request's, as dockerd received them: the URI
	// raw (not decoded, query included).
	Method, URI string
	// Headers holds the request headers Options.Headers names, the last
	// value of each (dockerd flattens repeated headers); nil when none was
	// sent.
	Headers map[string]string
	// BodyForwarded reports that dockerd forwarded the request body, which
	// it does only for an application/json body under its size bound. The
	// body itself is checked and dropped: no decision reads it.
	BodyForwarded bool
}

// Decider decides AuthZReq calls. It must be safe for concurrent use, must
// not panic, and must answer a deny with a message for the client.
type Decider interface {
	Decide(ctx context.Context, r Request) authorization.Response
}

// Handler returns the protocol as a net/http handler, for a server of the
// caller's own: the same decoding and answers as Serve, without Serve's
// lean connection loop. Only o.Headers is read.
func Handler(d Decider, extra http.Handler, o Options) http.Handler {
	return newHandler(d, extra, o.Headers)
}

// handler is the net/http side of the protocol: calls the lean loop does
// not take (chunked, 100-continue, tests), Plugin.Activate, and every other
// path through extra.
type handler struct {
	d        Decider
	headers  []string
	mux      *http.ServeMux
	decoders sync.Pool // of *pooledDecoder
}

func newHandler(d Decider, extra http.Handler, headers []string) *handler {
	h := &handler{d: d, headers: headers, mux: http.NewServeMux()}
	h.decoders.New = func() any {
		return &pooledDecoder{dec: decoder{keep: headers}, br: bufio.NewReaderSize(nil, readBufSize)}
	}
	if extra != nil {
		h.mux.Handle("/", extra)
	}
	h.mux.HandleFunc("POST /Plugin.Activate", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, struct{ Implements []string }{[]string{authorization.AuthZApiImplements}})
	})
	h.mux.HandleFunc("POST /"+authorization.AuthZApiRequest, h.authZReq)
	h.mux.HandleFunc("POST /"+authorization.AuthZApiResponse, func(w http.ResponseWriter, r *http.Request) {
		// The response phase cannot stop anything, so it is allowed
		// unread, whatever the call holds.
		_, _ = io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, maxCallSize))
		writeBody(w, allowBody)
	})
	return h
}

type pooledDecoder struct {
	dec decoder
	br  *bufio.Reader
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// authZReq decides an AuthZReq call that came through net/http (a chunked
// or 100-continue call, or a test): the same decoder, over the body.
func (h *handler) authZReq(w http.ResponseWriter, r *http.Request) {
	// A slow body cannot hold a goroutine forever; the error, if any, is
	// only that the writer does not support deadlines (tests).
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(callReadTimeout))
	pd := h.decoders.Get().(*pooledDecoder)
	pd.br.Reset(http.MaxBytesReader(w, r.Body, maxCallSize))
	req, err := pd.dec.decode(pd.br, -1)
	pd.br.Reset(nil)
	h.decoders.Put(pd)
	if err != nil {
		writeBody(w, denyBody(fmt.Errorf("decode call: %w", err)))
		return
	}
	writeBody(w, h.respond(r.Context(), req))
}

func writeBody(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", sdk.DefaultContentTypeV1_1)
	_, _ = w.Write(body) // the daemon treats a broken answer as a deny
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", sdk.DefaultContentTypeV1_1)
	_ = json.NewEncoder(w).Encode(v) // the daemon treats a broken answer as a deny
}

// Options tunes Serve.
type Options struct {
	// Headers names the request headers the Decider reads; the decoder
	// keeps those (matched case-insensitively, by the name dockerd sent)
	// and skips the rest unread.
	Headers []string
	// Drain bounds how long calls in flight may finish after ctx ends.
	Drain time.Duration
	// ConnPerCall answers every call with "Connection: close".
	//
	// dockerd's plugin client keeps connections alive and, when a kept one
	// breaks (prune-guard restarted or crashed under it), retries the call
	// with a body it has already drained; that empty call must be refused,
	// so the docker command racing the restart fails once. One connection
	// per call removes that race, at a measured cost of about 20% of
	// dockerd's throughput on every API call (bench/overhead), which is why
	// it is off by default.
	ConnPerCall bool
	// Log receives what the protocol code itself could not handle (a
	// panic that cost a connection).
	Log logrus.FieldLogger
}

// callReadTimeout bounds reading one call's body. It is set per call, not
// as the server's ReadTimeout, because the server must never close an idle
// kept connection itself: dockerd could be sending its next call on it at
// that moment, and would then retry that call empty (see Options).
const callReadTimeout = 30 * time.Second

// Serve answers plugin calls on l with d's decisions until ctx ends, then
// stops accepting and lets calls in flight finish (bounded by o.Drain).
// Requests for any other path (GET /status, GET /metrics) go to extra; nil
// answers them 404.
//
// The two authorization calls dockerd makes on every API call are answered
// on a lean connection loop of its own (conn.go); everything else through
// net/http.
func Serve(ctx context.Context, l net.Listener, d Decider, extra http.Handler, o Options) error {
	if o.Log == nil {
		o.Log = logrus.StandardLogger()
	}
	return serveLean(ctx, l, newHandler(d, extra, o.Headers), o)
}
