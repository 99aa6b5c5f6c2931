package plugin

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/docker/go-plugins-helpers/sdk"
)

// maxCallSize bounds one AuthZReq call, from the largest dockerd can send:
// a 4 MiB request body (29.3.1 and later; 1 MiB before) is 5.33 MiB of
// base64, and the URI and headers, which dockerd's server reads at most
// 1 MiB + 4 KiB of, grow at most sixfold as JSON strings (\u0026, \ufffd):
// 11.4 MiB in all. A longer call did not come from dockerd and is refused,
// read past without being kept (DECISIONS.md).
const maxCallSize = 12 << 20

// Handler returns the plugin protocol's HTTP handler for g, plus GET
// /status and GET /metrics for "prune-guard status" and scrapers that can
// reach the socket.
//
// It speaks the protocol with go-plugins-helpers' wire types, but decodes
// calls itself (decode.go): the helper's handler answers a call it cannot
// decode with 400 and then still asks the plugin about an empty request,
// while prune-guard answers such a call with an explicit deny that says why.
// Serve answers the two authorization calls on a lean connection loop of
// its own (conn.go) and everything else through this handler.
func Handler(g *Guard) http.Handler {
	h := &protocolHandler{g: g, mux: http.NewServeMux()}
	h.decoders.New = func() any { return &pooledDecoder{br: bufio.NewReaderSize(nil, readBufSize)} }
	h.mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(g.Status(r.Context()))
	})
	h.mux.Handle("GET /metrics", MetricsHandler(g))
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

// protocolHandler is the handler Handler returns; Serve recognises it.
type protocolHandler struct {
	g        *Guard
	mux      *http.ServeMux
	decoders sync.Pool // of *pooledDecoder
}

type pooledDecoder struct {
	dec decoder
	br  *bufio.Reader
}

func (h *protocolHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// authZReq decides an AuthZReq call that came through net/http (a chunked
// or 100-continue call, or a test): the same decoder, over the body.
func (h *protocolHandler) authZReq(w http.ResponseWriter, r *http.Request) {
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

// Listen opens the plugin's unix socket at path with mode 0660 (group gid
// when gid >= 0), replacing a stale socket file but refusing to take over one
// that still answers.
func Listen(path string, gid int) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s is already served by another process; stop it first", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// The socket must never exist with wider permissions, not even between
	// creation and chmod. Listen runs at startup, before other goroutines
	// create files, so the process-wide umask change is safe.
	old := syscall.Umask(0o117)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("chown socket: %w", err)
		}
	}
	return l, nil
}

// ServeOptions tunes Serve.
type ServeOptions struct {
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
}

// callReadTimeout bounds reading one call's body. It is set per call, not
// as the server's ReadTimeout, because the server must never close an idle
// kept connection itself: dockerd could be sending its next call on it at
// that moment, and would then retry that call empty (see ServeOptions).
const callReadTimeout = 30 * time.Second

// Serve answers plugin calls on l until ctx ends, then stops accepting and
// lets calls in flight finish (bounded by o.Drain).
//
// For the protocol handler (Handler), the two authorization calls are
// answered on the lean connection loop (conn.go) and every other request
// through h; any other handler is served by net/http alone.
func Serve(ctx context.Context, l net.Listener, h http.Handler, o ServeOptions) error {
	if ph, ok := h.(*protocolHandler); ok {
		return serveLean(ctx, l, ph, o)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		// No ReadTimeout or IdleTimeout: either would make the server close
		// idle connections dockerd may be about to reuse.
	}
	if o.ConnPerCall {
		srv.SetKeepAlivesEnabled(false)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), o.Drain)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("drain in-flight calls: %w", err)
	}
	return nil
}
