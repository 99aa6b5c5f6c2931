package metrics

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/testpki"
	"golang.org/x/crypto/bcrypt"
)

// serveTest serves a registry's metrics through Serve with webConfig on a
// loopback port, and returns its address.
func serveTest(t *testing.T, webConfig string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, Handler(NewRegistry()), webConfig, time.Second, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

// A real client over TLS, verifying the server against the test CA: no
// credentials or wrong ones get 401, the right ones 200 and the metrics;
// plain HTTP and a client that does not trust the CA get nothing.
func TestScrapeNeedsTLSAndBasicAuth(t *testing.T) {
	p := testpki.New(t)
	cfg := p.WebConfig(t, "prometheus", "s3cret pass")
	if err := CheckWebConfig(cfg, true); err != nil {
		t.Fatalf("CheckWebConfig: %v", err)
	}
	addr := serveTest(t, cfg)
	url := "https://" + addr + "/metrics"
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.Pool}}}
	for _, tt := range []struct {
		name, user, password string
		want                 int
	}{
		{"no credentials", "", "", http.StatusUnauthorized},
		{"a wrong password", "prometheus", "guess", http.StatusUnauthorized},
		{"an unknown user", "root", "s3cret pass", http.StatusUnauthorized},
		{"the user's password", "prometheus", "s3cret pass", http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", url, nil)
			if tt.user != "" {
				req.SetBasicAuth(tt.user, tt.password)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.want)
			}
			if tt.want == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
				t.Error("a 401 without WWW-Authenticate")
			}
			if got := strings.Contains(string(body), "prune_guard_build_info"); got != (tt.want == http.StatusOK) {
				t.Errorf("metrics in the body: %v; want them only with credentials:\n%.300s", got, body)
			}
		})
	}
	t.Run("plain HTTP", func(t *testing.T) {
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/metrics")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), "prune_guard_build_info") {
				t.Fatalf("plain HTTP got the metrics (status %d)", resp.StatusCode)
			}
		}
	})
	t.Run("a client that does not trust the CA", func(t *testing.T) {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.OtherPool}}}
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			t.Fatalf("the handshake succeeded (status %d)", resp.StatusCode)
		}
	})
}

// A non-loopback address needs TLS and a client authentication in the web
// configuration; a loopback one takes any valid file.
func TestCheckWebConfigForRemoteAddresses(t *testing.T) {
	p := testpki.New(t)
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	tlsOnly := fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\n", p.CertFile, p.KeyFile)
	tests := []struct {
		name, cfg     string
		local, remote string // "" for accepted, else a part of the error
	}{
		{"TLS and basic auth", tlsOnly + fmt.Sprintf("basic_auth_users:\n  prometheus: %s\n", hash), "", ""},
		{"TLS and verified client certificates", tlsOnly + fmt.Sprintf("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: %s\n", p.CAFile), "", ""},
		{"TLS alone", tlsOnly, "", "needs clients to authenticate"},
		{"basic auth without TLS", fmt.Sprintf("basic_auth_users:\n  prometheus: %s\n", hash), "", "needs TLS"},
		{"a password that is not a bcrypt hash", tlsOnly + "basic_auth_users:\n  prometheus: plaintext\n", "hash", "hash"},
		{"an unknown key", "tls_server_config:\n  certfile: x\n", "certfile", "certfile"},
		{"a missing key file", fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\n", p.CertFile, filepath.Join(p.Dir, "nope")), "nope", "nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "web.yml")
			if err := os.WriteFile(path, []byte(tt.cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				remote bool
				want   string
			}{{false, tt.local}, {true, tt.remote}} {
				err := CheckWebConfig(path, c.remote)
				switch {
				case c.want == "" && err != nil:
					t.Errorf("remote=%v: %v", c.remote, err)
				case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
					t.Errorf("remote=%v: error %v, want one with %q", c.remote, err, c.want)
				}
			}
		})
	}
}

// A remote listener's web configuration is checked again when it changes:
// a file whose users were deleted refuses scrapes instead of serving them
// to anyone, and serves again once fixed.
func TestRemoteListenerRefusesScrapesOnceTheFileStopsAuthenticating(t *testing.T) {
	p := testpki.New(t)
	cfg := p.WebConfig(t, "prometheus", "s3cret pass")
	good, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var noUsers []string
	for _, l := range strings.SplitAfter(string(good), "\n") {
		if strings.HasPrefix(l, "basic_auth_users") {
			break
		}
		noUsers = append(noUsers, l)
	}
	h := &stillAuthenticated{next: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "metrics") }), path: cfg, errLog: io.Discard}
	status := func() int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Code
	}
	write := func(text string, mtime time.Time) {
		if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(cfg, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	for i, step := range []struct {
		name, text string
		want       int
	}{
		{"users and TLS", string(good), http.StatusOK},
		{"the users deleted", strings.Join(noUsers, ""), http.StatusInternalServerError},
		{"the users back", string(good), http.StatusOK},
	} {
		write(step.text, now.Add(time.Duration(i)*time.Second))
		if got := status(); got != step.want {
			t.Errorf("%s: status %d, want %d", step.name, got, step.want)
		}
	}
	for _, tt := range []struct {
		addr string
		want bool
	}{{"127.0.0.1:9709", false}, {"[::1]:9709", false}, {"0.0.0.0:9709", true}, {"192.0.2.7:9709", true}} {
		a, _ := net.ResolveTCPAddr("tcp", tt.addr)
		if got := reachableFromOtherHosts(a); got != tt.want {
			t.Errorf("reachableFromOtherHosts(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
	if reachableFromOtherHosts(&net.UnixAddr{Name: "/run/m.sock", Net: "unix"}) {
		t.Error("a unix socket counts as reachable from other hosts")
	}
}
