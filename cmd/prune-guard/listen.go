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
	"github.com/prune-guard/prune-guard/metrics"
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

// listenMetrics listens for scrapes on addr: a unix socket (unix:PATH), a
// loopback TCP address, or, only together with a web configuration file
// (--web-config) that turns on TLS and client authentication, any other
// TCP address. Metrics name rules, jobs and users, and prune-guard runs as
// root: they never leave the host in the clear, or to anyone who asks.
// With webConfig set, the file is checked here, so a bad one stops
// prune-guard at start rather than failing every scrape.
func listenMetrics(addr, webConfig string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if webConfig != "" {
			if err := metrics.CheckWebConfig(webConfig, false); err != nil {
				return nil, err
			}
		}
		l, err := listener.Unix(path, -1)
		if err != nil {
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
		return l, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %q: want HOST:PORT or unix:PATH: %w", addr, err)
	}
	ip := net.ParseIP(host)
	remote := host != "localhost" && (ip == nil || !ip.IsLoopback())
	switch {
	case remote && webConfig == "":
		return nil, fmt.Errorf("--metrics-addr %q: an address other hosts can reach needs --web-config FILE (TLS and basic auth or client certificates, in the Prometheus exporter-toolkit format); without one, only loopback addresses or unix sockets are allowed", addr)
	case webConfig != "":
		if err := metrics.CheckWebConfig(webConfig, remote); err != nil {
			return nil, err
		}
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	return l, nil
}

// serveServer serves srv on l until ctx ends, then lets requests in flight
// finish within drain.
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
	err := srv.Shutdown(sctx)
	// Serve closes the listener (and so unlinks a unix socket's path) when
	// it returns, which may be after Shutdown did: a caller that reuses the
	// path must not have it unlinked under it.
	<-errc
	return err
}

// The example address for --metrics-addr: not dockerd's own 9323, nor
// node_exporter's 9100, which share a CI host with prune-guard.
const (
	exampleMetricsPort = "9709"
	exampleMetricsAddr = "127.0.0.1:" + exampleMetricsPort
)

// webConfigUsage is --web-config's help, for serve, proxy and reclaim.
const webConfigUsage = "web configuration file for the --metrics-addr listener, in the Prometheus exporter-toolkit format: TLS (tls_server_config), basic auth (basic_auth_users, bcrypt hashes) or client certificates; read again on every connection; required for a non-loopback --metrics-addr, which also needs TLS and client authentication in it"
