package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/docker/go-plugins-helpers/sdk"
)

// maxCallSize bounds one plugin call. dockerd forwards request bodies under
// 1 MiB (base64 in the call) and headers; anything near this limit did not
// come from dockerd.
const maxCallSize = 16 << 20

// Handler returns the plugin protocol's HTTP handler for g, plus GET
// /status and GET /metrics for "prune-guard status" and scrapers that can
// reach the socket.
//
// It speaks the protocol with go-plugins-helpers' wire types, but decodes
// calls itself: the helper's handler answers a call it cannot decode with
// 400 and then still asks the plugin about an empty request, while
// prune-guard answers such a call with an explicit deny that says why.
func Handler(g *Guard) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(g.Status(r.Context()))
	})
	mux.Handle("GET /metrics", MetricsHandler(g))
	mux.HandleFunc("POST /Plugin.Activate", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, struct{ Implements []string }{[]string{authorization.AuthZApiImplements}})
	})
	mux.HandleFunc("POST /"+authorization.AuthZApiRequest, func(w http.ResponseWriter, r *http.Request) {
		req, err := decodeCall(w, r)
		if err != nil {
			writeJSON(w, authorization.Response{Allow: false,
				Msg: "prune-guard: malformed authorization call refused: " + err.Error()})
			return
		}
		writeJSON(w, g.AuthZReq(r.Context(), req))
	})
	mux.HandleFunc("POST /"+authorization.AuthZApiResponse, func(w http.ResponseWriter, r *http.Request) {
		// The response phase cannot stop anything, so a call that does not
		// decode is still allowed rather than hiding the daemon's answer.
		req, _ := decodeCall(w, r)
		writeJSON(w, g.AuthZRes(r.Context(), req))
	})
	return mux
}

// call is the part of authorization.Request prune-guard reads. Peer
// certificates stay raw: the helper's PeerCertificate decoder dereferences a
// nil PEM block on malformed input, and no decision here uses them.
type call struct {
	User             string            `json:"User"`
	UserAuthNMethod  string            `json:"UserAuthNMethod"`
	RequestMethod    string            `json:"RequestMethod"`
	RequestURI       string            `json:"RequestUri"`
	RequestBody      []byte            `json:"RequestBody"`
	RequestHeaders   map[string]string `json:"RequestHeaders"`
	RequestPeerCerts json.RawMessage   `json:"RequestPeerCertificates"`
}

func decodeCall(w http.ResponseWriter, r *http.Request) (authorization.Request, error) {
	var c call
	// A slow body cannot hold a goroutine forever; the error, if any, is
	// only that the writer does not support deadlines (tests).
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(callReadTimeout))
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxCallSize))
	if err := dec.Decode(&c); err != nil {
		return authorization.Request{}, fmt.Errorf("decode call: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return authorization.Request{}, errors.New("decode call: trailing data after the request object")
	}
	return authorization.Request{
		User:            c.User,
		UserAuthNMethod: c.UserAuthNMethod,
		RequestMethod:   c.RequestMethod,
		RequestURI:      c.RequestURI,
		RequestBody:     c.RequestBody,
		RequestHeaders:  c.RequestHeaders,
	}, nil
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
func Serve(ctx context.Context, l net.Listener, h http.Handler, o ServeOptions) error {
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
