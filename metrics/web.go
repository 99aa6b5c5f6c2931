package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/exporter-toolkit/web"
	"go.yaml.in/yaml/v2"
)

// CheckWebConfig validates a web configuration file in the Prometheus
// exporter-toolkit format (tls_server_config, basic_auth_users with bcrypt
// hashes, http_server_config) as exporter-toolkit will read it: the YAML,
// every hash, and the certificate and key. For an address other hosts can
// reach (remote), it also requires TLS and a client authentication: basic
// auth users, or client_auth_type RequireAndVerifyClientCert with a
// client CA. Metrics name rules, jobs and users, and prune-guard runs as
// root: they are never served in the clear, or to anyone, off the host.
func CheckWebConfig(path string, remote bool) error {
	if err := web.Validate(path); err != nil {
		return fmt.Errorf("--web-config %s: %w", path, err)
	}
	if !remote {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--web-config: %w", err)
	}
	var c web.Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return fmt.Errorf("--web-config %s: %w", path, err)
	}
	t := c.TLSConfig
	if t.TLSCertPath == "" && t.TLSCert == "" {
		return fmt.Errorf("--web-config %s: a non-loopback --metrics-addr needs TLS (tls_server_config with cert_file and key_file)", path)
	}
	verified := t.ClientAuth == "RequireAndVerifyClientCert" && (t.ClientCAs != "" || t.ClientCAsText != "")
	if len(c.Users) == 0 && !verified {
		return fmt.Errorf("--web-config %s: a non-loopback --metrics-addr needs clients to authenticate: basic_auth_users (bcrypt hashes), or client_auth_type RequireAndVerifyClientCert with a client_ca_file", path)
	}
	return nil
}

// Serve serves h on l until ctx ends, then lets scrapes in flight finish
// within drain. With a webConfig it serves through exporter-toolkit, which
// reads the file on every connection and request: certificates and users
// change without a restart. errLog receives exporter-toolkit's warnings and
// errors (a configuration that no longer loads).
//
// On an address other hosts can reach, every request checks again (when the
// file changed) that the file still asks for TLS and client authentication:
// exporter-toolkit would otherwise serve a file whose users were deleted to
// anyone.
func Serve(ctx context.Context, l net.Listener, h http.Handler, webConfig string, drain time.Duration, errLog io.Writer) error {
	if webConfig != "" && reachableFromOtherHosts(l.Addr()) {
		h = &stillAuthenticated{next: h, path: webConfig, errLog: errLog}
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(errLog, "metrics listener: ", 0)}
	errc := make(chan error, 1)
	go func() {
		if webConfig == "" {
			errc <- srv.Serve(l)
			return
		}
		logger := slog.New(slog.NewTextHandler(errLog, &slog.HandlerOptions{Level: slog.LevelWarn}))
		errc <- web.Serve(l, srv, &web.FlagConfig{WebConfigFile: &webConfig}, logger)
	}()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	err := srv.Shutdown(sctx)
	// Serve closes the listener (unlinking a unix socket) when it returns,
	// which may be after Shutdown did; the caller may reuse the path.
	<-errc
	return err
}

// reachableFromOtherHosts: a TCP address that is not loopback (the
// unspecified address included).
func reachableFromOtherHosts(a net.Addr) bool {
	t, ok := a.(*net.TCPAddr)
	return ok && !t.IP.IsLoopback()
}

// stillAuthenticated refuses every request (500) while the web
// configuration no longer requires TLS and client authentication for a
// remote listener. It checks the file again when its size or modification
// time changed.
type stillAuthenticated struct {
	next   http.Handler
	path   string
	errLog io.Writer

	mu      sync.Mutex
	checked os.FileInfo
	err     error
}

func (s *stillAuthenticated) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := s.check(); err != nil {
		http.Error(w, "prune-guard: metrics refused: "+err.Error(), http.StatusInternalServerError)
		return
	}
	s.next.ServeHTTP(w, r)
}

func (s *stillAuthenticated) check() error {
	fi, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("--web-config: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.checked != nil && fi.Size() == s.checked.Size() && fi.ModTime().Equal(s.checked.ModTime()) {
		return s.err
	}
	s.checked, s.err = fi, CheckWebConfig(s.path, true)
	if s.err != nil {
		fmt.Fprintf(s.errLog, "metrics listener: %v; scrapes are refused until it is fixed\n", s.err)
	}
	return s.err
}
