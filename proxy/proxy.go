package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
)

// Request is a request as the proxy holds it before forwarding it.
type Request struct {
	// Method and URI are the request's as the engine will receive them:
	// the URI raw (not decoded, query included). For a gRPC call, Method
	// is POST and URI the call's path, /package.Service/Method.
	Method, URI string
	// Headers holds, of the headers Options.Headers names, the first value
	// of each: the one the engine reads. Nil when none was sent.
	Headers map[string]string
	// HTTP2 reports a request that came over HTTP/2.
	HTTP2 bool
	// GRPC is set for a gRPC call.
	GRPC *GRPCCall
}

// GRPCCall is what the proxy read of a gRPC call before deciding it.
type GRPCCall struct {
	// Message is the call's first request message (without gRPC's
	// five-byte prefix, decompressed), read only when Options.ReadsMessage
	// says the decision needs it.
	Message []byte
	// Unread says why the first message could not be read, when it was
	// needed and could not be.
	Unread string
}

// Verdict is a decision.
type Verdict struct {
	Allow bool
	// Message tells the client why its request was refused and what to do
	// instead.
	Message string
	// Observe, when set on an allowed request, is told the engine's
	// response as the proxy relays it.
	Observe Observer
}

// Observer sees the engine's response to one allowed request while the
// proxy relays it, without holding it up: each call comes after the bytes
// it reports were written to the client, from the goroutine relaying the
// response, one at a time. The proxy neither buffers nor delays the
// client's stream for it, so an Observer must return at once, do bounded
// work per byte, never panic and not keep the slices it is passed.
type Observer interface {
	// Response is told the final response's status code (not a 1xx
	// interim one), before any of its body.
	Response(status int)
	// Body is told the response body's content, in order and in pieces
	// of any size: the bytes the client received, without the chunked
	// framing. The body of a connection switched to another protocol
	// (101) is not reported.
	Body(p []byte)
	// Done is called exactly once, when the exchange ends: with nil once
	// the response was relayed whole, otherwise with why it was not (the
	// engine did not answer, or either side broke off).
	Done(err error)
}

// Decider decides requests. It must be safe for concurrent use, must not
// panic, and must answer quickly: every request waits for it.
type Decider interface {
	Decide(ctx context.Context, r Request) Verdict
}

// Options configures a Server.
type Options struct {
	// Engine is the path of the engine's own unix socket.
	Engine string
	// Name is how refusals name the guard, as dockerd names an
	// authorization plugin ("authorization denied by plugin NAME: …").
	Name string
	// Headers names the request headers the Decider reads.
	Headers []string
	// ReadsMessage reports whether deciding a gRPC call to method needs
	// its first request message; nil reads none.
	ReadsMessage func(method string) bool
	// Drain bounds how long requests in flight may finish after Serve's
	// context ends.
	Drain time.Duration
	// DialTimeout bounds connecting to the engine.
	DialTimeout time.Duration
	// Log receives what the proxy could not hand to a client: a panic that
	// cost a connection, an engine that broke off a response.
	Log logrus.FieldLogger
}

// Server is a proxy in front of one engine.
type Server struct {
	d Decider
	o Options

	shutting atomic.Bool
	mu       sync.Mutex
	conns    map[*conn]bool // value: idle
	wg       sync.WaitGroup

	// Counters for status and tests.
	accepted atomic.Int64
	refused  atomic.Int64
}

// New returns a proxy that forwards to o.Engine what d allows.
func New(d Decider, o Options) *Server {
	if o.Log == nil {
		o.Log = logrus.StandardLogger()
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.Name == "" {
		o.Name = "prune-guard"
	}
	return &Server{d: d, o: o, conns: map[*conn]bool{}}
}

// Serve accepts connections on l until ctx ends, then stops accepting,
// closes idle connections and lets requests in flight finish within
// Options.Drain before closing the rest.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- s.accept(l) }()
	select {
	case err := <-errc:
		s.closeAll()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	l.Close()
	<-errc
	return s.drain()
}

// accept runs the accept loop until l fails for good, retrying on
// temporary errors (out of file descriptors) as net/http does.
func (s *Server) accept(l net.Listener) error {
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.shutting.Load() || errors.Is(err, net.ErrClosed) {
				return err
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.o.Log.WithError(err).Warn("accept failed; retrying")
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s.accepted.Add(1)
		c := newConn(s, nc)
		if !s.track(c) {
			nc.Close()
			continue
		}
		go c.serve()
	}
}

// track registers a new connection, unless the server is shutting down.
func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting.Load() {
		return false
	}
	s.conns[c] = true
	s.wg.Add(1)
	return true
}

// setIdle records whether c waits for a request; it returns false when the
// server is shutting down and c should close instead of waiting.
func (s *Server) setIdle(c *conn, idle bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if idle && s.shutting.Load() {
		return false
	}
	s.conns[c] = idle
	return true
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// drain closes idle connections and waits for the rest within the drain
// bound.
func (s *Server) drain() error {
	s.mu.Lock()
	s.shutting.Store(true)
	for c, idle := range s.conns {
		if idle {
			c.closeClient()
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(s.o.Drain):
		s.closeAll()
		<-done
		return fmt.Errorf("drain: requests still in flight after %s were cut off", s.o.Drain)
	}
}

// closeAll cuts every connection off, the engine's side too: an exchange
// waiting on the engine (a stream with nothing to send, an attach) must end
// as well.
func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.cutOff()
	}
}

// Connections reports how many client connections are open now.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}
