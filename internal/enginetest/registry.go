package enginetest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Signal sends sig to the plugin process, e.g. SIGHUP to reload its policy.
func (p *Plugin) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("enginetest: signal plugin %s: %v", p.name, err)
	}
}

// Registry is a private Debian docker-registry on 127.0.0.1, started by
// StartRegistry. dockerd treats 127.0.0.0/8 registries as insecure by
// default, so plain HTTP works without configuring the daemon.
type Registry struct {
	// Addr is host:port, the prefix of image names pushed to it.
	Addr string
	log  string
	cmd  *exec.Cmd
}

// StartRegistry starts docker-registry with filesystem storage and request
// logging, and waits until it answers /v2/. A t.Cleanup stops it.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		Unavailable(t, "docker-registry not found (Debian package docker-registry): %v", err)
	}
	port, err := freeTCPPort()
	if err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	dir := t.TempDir()
	r := &Registry{Addr: fmt.Sprintf("127.0.0.1:%d", port), log: filepath.Join(dir, "registry.log")}
	config := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(dir, "data"), r.Addr)), 0o644); err != nil {
		t.Fatalf("enginetest: registry config: %v", err)
	}
	logf, err := os.Create(r.log)
	if err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	r.cmd = exec.Command(bin, "serve", config)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	r.cmd.SysProcAttr = deathSignal(syscall.SIGKILL)
	if err := r.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("enginetest: start docker-registry: %v", err)
	}
	t.Cleanup(func() {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
		logf.Close()
		if t.Failed() {
			t.Logf("%s", tail(r.log, "registry log"))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+r.Addr+"/v2/", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			return r
		}
		select {
		case <-ctx.Done():
			t.Fatalf("enginetest: docker-registry on %s did not answer: %v\n%s", r.Addr, ctx.Err(), tail(r.log, "registry log"))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// BlobGets counts the blob downloads (GET /v2/.../blobs/...) the registry
// has served so far, from its access log.
func (r *Registry) BlobGets(t testing.TB) int {
	t.Helper()
	return len(r.BlobDownloads(t))
}
