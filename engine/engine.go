// Package engine opens prune-guard's connection to a Docker Engine: the
// official moby client, built once per command and shared by everything that
// asks the engine a question (run tracking, name resolution, the reclaimer,
// the engine version check). Those packages take narrow interfaces of the
// client, so each can be tested with a fake, and one client option is set in
// one place.
//
// It must never send a request itself: what is asked, and how long it may
// take, is the asking package's business.
package engine

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/moby/moby/client"

	"github.com/prune-guard/prune-guard/redact"
)

// Client is the engine API client the packages share.
type Client = client.Client

// Open returns a client for the engine at host, a DOCKER_HOST URL
// (unix:///var/run/docker.sock, tcp://host:2376). For a tcp host, TLS is
// configured from DOCKER_CERT_PATH and DOCKER_TLS_VERIFY as the docker CLI
// does. The client negotiates the API version with the engine on first use.
func Open(host string) (*Client, error) {
	// TLS first: it replaces the HTTP client, which the host option then
	// configures for the host's transport.
	c, err := client.New(client.WithTLSClientConfigFromEnv(), client.WithHost(host), client.WithHTTPRequestHook(contextHeaders))
	if err != nil {
		return nil, fmt.Errorf("engine client for %s: %w", redact.String(host), err)
	}
	return c, nil
}

// Pinger is the part of the client that negotiates the API version.
type Pinger interface {
	Ping(ctx context.Context, options client.PingOptions) (client.PingResult, error)
}

// Negotiate settles the client's API version within timeout. Call it before
// a request made with a long-lived context, such as an event stream: the
// client negotiates on its first request while holding a lock, with that
// request's context, so a stream opened against an engine that hangs would
// hold the lock for as long as the engine hangs, and every other call on the
// client, a decision's bounded question included, would wait on it.
// Once negotiated, later calls take no lock.
func Negotiate(ctx context.Context, c Pinger, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return fmt.Errorf("negotiate the engine's API version: %w", err)
	}
	return nil
}

// headerKey carries headers in a request's context (WithHeader).
type headerKey struct{}

// WithHeader returns a context whose requests, through a client from Open,
// carry the header name: value (reclaim's grant on the deletes it is
// granted). The value never leaves the request: nothing here logs it.
func WithHeader(ctx context.Context, name, value string) context.Context {
	h, _ := ctx.Value(headerKey{}).(http.Header)
	h = h.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set(name, value)
	return context.WithValue(ctx, headerKey{}, h)
}

// contextHeaders is the client's request hook that adds WithHeader's
// headers.
func contextHeaders(r *http.Request) error {
	if h, ok := r.Context().Value(headerKey{}).(http.Header); ok {
		for k, vs := range h {
			r.Header[k] = vs
		}
	}
	return nil
}
