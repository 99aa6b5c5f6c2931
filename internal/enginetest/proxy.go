package enginetest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// ProxyName is how a prune-guard proxy names itself in refusals
// ("authorization denied by plugin prune-guard: …").
const ProxyName = "prune-guard"

// Proxy is a "prune-guard proxy" process started by StartProxy in front of
// an engine that has no authorization plugin: clients use its socket, and
// it forwards what it allows to the engine's own.
type Proxy struct {
	engine  *Engine // reached directly
	client  *Engine // reached through the proxy
	sock    string  // --listen
	control string  // --control-socket
	audit   string
	log     string

	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited
	err    error         // its exit status, valid once exited is closed
}

// proxySeq numbers proxies within this test process.
var proxySeq atomic.Int64

// StartProxy starts "bin proxy --listen S --docker-host E --control-socket
// C --audit-log A args..." in front of e (started without an authorization
// plugin) and waits until it answers on its control socket and forwards
// /_ping. The sockets are in e's short directory (a unix socket path is
// limited to 108 bytes), the audit log and the process's output in the
// test's temporary directory. Unless args set --run-grace it is 0s
// (WithoutGrace). A t.Cleanup stops it before e stops.
func StartProxy(t testing.TB, bin string, e *Engine, args ...string) *Proxy {
	t.Helper()
	requireEngine(t)
	e = e.daemon()
	dir := t.TempDir()
	n := proxySeq.Add(1)
	p := &Proxy{
		engine:  e,
		sock:    filepath.Join(e.root, fmt.Sprintf("px%d.sock", n)),
		control: filepath.Join(e.root, fmt.Sprintf("px%d-ctl.sock", n)),
		audit:   filepath.Join(dir, "audit.jsonl"),
		log:     filepath.Join(dir, "proxy.log"),
		exited:  make(chan struct{}),
	}
	p.client = e.via(p.sock)

	argv := append([]string{"proxy", "--listen", p.sock, "--docker-host", e.Host(),
		"--control-socket", p.control, "--audit-log", p.audit}, WithoutGrace(args)...)
	p.cmd = exec.Command(bin, argv...)
	p.cmd.SysProcAttr = deathSignal(syscall.SIGKILL)
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatalf("enginetest: creating proxy log: %v", err)
	}
	defer logf.Close()
	p.cmd.Stdout = logf
	p.cmd.Stderr = logf
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("enginetest: starting %s: %v", bin, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		t.Helper()
		p.stop(t)
	})

	ctx, cancel := context.WithTimeout(context.Background(), pluginStartTimeout)
	defer cancel()
	if err := p.waitServing(ctx); err != nil {
		t.Fatalf("enginetest: proxy %s %v: %v\n%s", bin, argv, err, p.LogTail())
	}
	return p
}

// StartProxied starts a private engine with no authorization plugin and a
// prune-guard proxy (built by BuildBinary, with opts.PluginArgs: the flags
// serve and proxy share) in front of it. It returns the engine, reached
// directly, and the proxy; Proxy.Client is the engine reached through it.
func StartProxied(t testing.TB, opts Options) (*Engine, *Proxy) {
	t.Helper()
	requireEngine(t) // skip before spending a build on a machine without an engine
	bin := BuildBinary(t)
	e := Start(t, opts)
	return e, StartProxy(t, bin, e, opts.PluginArgs...)
}

// via returns a view of e whose clients (docker CLI, compose, buildx, raw
// HTTP, Env) use sock instead of e's own socket. The view shares e's
// dockerd, directory and CLI configuration; it starts and stops nothing.
func (e *Engine) via(sock string) *Engine {
	return &Engine{
		root: e.root, sock: e.sock, client: sock, owner: e,
		config: e.config, log: e.log, docker: e.docker,
		name: e.name, binDir: e.binDir, daemonJSON: e.daemonJSON,
		compose: e.compose, buildx: e.buildx, withBuildx: e.withBuildx,
		id: e.id,
	}
}

// Client is the engine as the proxy's clients reach it: an Engine whose
// Host, Socket, Env, docker CLI (compose and buildx included) and raw HTTP
// go through the proxy. Its Identity is the engine's.
func (p *Proxy) Client() *Engine { return p.client }

// Engine is the engine behind the proxy, reached directly on its own
// socket.
func (p *Proxy) Engine() *Engine { return p.engine }

// Name is how the proxy's refusals name it, as dockerd names a plugin.
func (p *Proxy) Name() string { return ProxyName }

// Socket is the path of the socket clients use (--listen).
func (p *Proxy) Socket() string { return p.sock }

// Host is Socket as DOCKER_HOST.
func (p *Proxy) Host() string { return "unix://" + p.sock }

// ControlSocket is the proxy's --control-socket, which "prune-guard status
// --socket" reads.
func (p *Proxy) ControlSocket() string { return p.control }

// AuditPath is the proxy's --audit-log file.
func (p *Proxy) AuditPath() string { return p.audit }

// AuditLines returns the audit log's JSON lines decoded, as
// Plugin.AuditLines does.
func (p *Proxy) AuditLines(t testing.TB) []map[string]any {
	t.Helper()
	return auditLines(t, p.audit)
}

// LogTail returns the end of the proxy's own output, for failure messages.
func (p *Proxy) LogTail() string { return tail(p.log, "proxy log") }

// PID is the proxy process's ID, for reading its /proc entries.
func (p *Proxy) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the proxy process has exited.
func (p *Proxy) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// waitServing polls the control socket's GET /status and the client
// socket's GET /_ping until both answer 200, the proxy exits, or ctx ends.
func (p *Proxy) waitServing(ctx context.Context) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		err := get(ctx, p.control, "/status")
		if err == nil {
			err = get(ctx, p.sock, "/_ping")
		}
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("exited before serving: %v", p.err)
		case <-ctx.Done():
			return fmt.Errorf("not serving after %v: %v", pluginStartTimeout, err)
		case <-tick.C:
		}
	}
}

// get sends GET path to the unix socket sock and requires a 200.
func get(ctx context.Context, sock, path string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s on %s: %s", path, sock, resp.Status)
	}
	return nil
}

// stop ends the proxy: SIGTERM (it drains, then exits), then SIGKILL after
// pluginStopTimeout. The proxy removes its sockets itself; what it left is
// removed with the engine's directory.
func (p *Proxy) stop(t testing.TB) {
	t.Helper()
	select {
	case <-p.exited:
		t.Errorf("enginetest: proxy on %s exited during the test: %v", p.sock, p.err)
	default:
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Logf("enginetest: SIGTERM proxy: %v", err)
		}
		if !waitClosed(p.exited, pluginStopTimeout) {
			t.Errorf("enginetest: proxy on %s still running %v after SIGTERM; killing it", p.sock, pluginStopTimeout)
			_ = p.cmd.Process.Kill()
			if !waitClosed(p.exited, killTimeout) {
				t.Errorf("enginetest: proxy (pid %d) survived SIGKILL", p.cmd.Process.Pid)
			}
		}
	}
	// A proxy that stopped on SIGTERM removes its sockets.
	if p.Exited() && p.err == nil {
		for _, s := range []string{p.sock, p.control} {
			if _, err := os.Stat(s); err == nil {
				t.Errorf("enginetest: the proxy exited and left its socket %s behind", s)
			}
		}
	}
	if t.Failed() {
		t.Logf("%s", p.LogTail())
	}
}
