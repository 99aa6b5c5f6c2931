package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// --metrics-addr: loopback and unix sockets alone, or any address with a
// web configuration that turns on TLS and client authentication.
func TestMetricsAddressNeedsAWebConfigOffLoopback(t *testing.T) {
	dir := t.TempDir()
	tlsNoAuth := filepath.Join(dir, "tls-no-auth.yml")
	// A configuration without TLS is valid for exporter-toolkit (plain
	// HTTP); off loopback prune-guard refuses it.
	if err := os.WriteFile(tlsNoAuth, []byte("http_server_config:\n  http2: false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr, webConfig, want string // want: "" to listen, else part of the error
	}{
		{"127.0.0.1:0", "", ""},
		{"[::1]:0", "", ""},
		{"localhost:0", "", ""},
		{"unix:" + filepath.Join(dir, "m.sock"), "", ""},
		{"0.0.0.0:0", "", "needs --web-config"},
		{":0", "", "needs --web-config"},
		{"[::]:0", "", "needs --web-config"},
		{"metrics.example:0", "", "needs --web-config"},
		{"0.0.0.0:0", tlsNoAuth, "needs TLS"},
		{"127.0.0.1:0", tlsNoAuth, ""},
		{"0.0.0.0:0", filepath.Join(dir, "missing.yml"), "missing.yml"},
		{"127.0.0.1", "", "want HOST:PORT"},
	}
	for _, tt := range tests {
		t.Run(tt.addr+" "+filepath.Base(tt.webConfig), func(t *testing.T) {
			l, err := listenMetrics(tt.addr, tt.webConfig)
			if l != nil {
				l.Close()
			}
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("listenMetrics: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("listenMetrics: %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// Every example of --metrics-addr names the example port, never dockerd's
// own 9323.
func TestMetricsAddressExampleIsNotDockerds(t *testing.T) {
	for _, cmd := range []string{"serve", "proxy"} {
		root := newRootCmd()
		c, _, err := root.Find([]string{cmd})
		if err != nil {
			t.Fatal(err)
		}
		usage := c.Flags().Lookup("metrics-addr").Usage
		if strings.Contains(usage, "9323") || !strings.Contains(usage, exampleMetricsPort) {
			t.Errorf("%s --metrics-addr help: %q", cmd, usage)
		}
	}
}
