package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/prune-guard/prune-guard/listener"
)

// lookupGroup returns the numeric group ID for a name or number, -1 for "".
func lookupGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	if id, err := strconv.Atoi(name); err == nil {
		return id, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w", name, err)
	}
	return strconv.Atoi(g.Gid)
}

// listenMetrics listens on a loopback TCP address or a unix socket: metrics
// name rules and users, and prune-guard runs as root, so it never listens on
// a routable address.
func listenMetrics(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		l, err := listener.Unix(path, -1)
		if err != nil {
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
		return l, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %q: want HOST:PORT on loopback or unix:PATH: %w", addr, err)
	}
	ip := net.ParseIP(host)
	if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("--metrics-addr %q: only loopback addresses or unix sockets are allowed", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	return l, nil
}

// serveHTTP serves h on l until ctx ends, then lets requests in flight
// finish within drain.
func serveHTTP(ctx context.Context, l net.Listener, h http.Handler, drain time.Duration) error {
	return serveServer(ctx, l, &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, drain)
}

// serveServer is serveHTTP with the caller's server.
func serveServer(ctx context.Context, l net.Listener, srv *http.Server, drain time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	return srv.Shutdown(sctx)
}
