package enginetest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Bounds on everything that waits for the engine.
const (
	startTimeout = 60 * time.Second // dockerd answering /_ping
	stopTimeout  = 30 * time.Second // dockerd exiting after SIGTERM (it stops containers first)
	killTimeout  = 10 * time.Second // any process exiting after SIGKILL
	apiTimeout   = 30 * time.Second // one cleanup API call
	pollInterval = 50 * time.Millisecond
)

// Options configures a private engine.
type Options struct {
	// ExtraArgs are appended to dockerd's command line, for example
	// "--authorization-plugin=NAME".
	ExtraArgs []string

	// PluginArgs are appended to "prune-guard serve" by StartGuarded, for
	// example "--run-label", "ci.run". Start ignores them.
	PluginArgs []string

	// Buildx gives the engine's docker CLI the buildx plugin, with BuildKit
	// on (DOCKER_BUILDKIT=1), as a user's CLI with buildx installed:
	// "docker buildx ..." works and, with a CLI from 23.0 on (not 20.10's),
	// "docker builder ..." runs as "docker buildx ...", so "docker builder
	// prune" sends BuildKit's gRPC inside POST /grpc, not POST
	// /build/prune. Off (the default), the CLI has no buildx and BuildKit
	// off (DOCKER_BUILDKIT=0), which the tests of build-cache prunes rely
	// on. BuildImage uses the classic builder either way. The engine is not
	// started, and the test is skipped (failed under CI), when there is no
	// buildx plugin (BuildxPath).
	Buildx bool
}

// Engine is a private dockerd started by Start, or such an engine as the
// clients of a prune-guard proxy in front of it reach it (Proxy.Client).
type Engine struct {
	root   string  // short temporary directory holding everything below
	sock   string  // dockerd's API socket
	client string  // the socket clients use when it is not sock (a proxy's); "" otherwise
	owner  *Engine // the engine that owns the dockerd process, for a client's view; nil for the owner
	config string  // DOCKER_CONFIG for the CLI, so the user's config is never read
	log    string  // dockerd's stdout and stderr
	docker string  // docker CLI binary

	name       string // PG_ENGINE, or "system"
	binDir     string // goes first on dockerd's PATH; "" for the system engine
	daemonJSON []byte // what the engine's daemon.json starts from
	compose    string // docker compose v2 plugin, or ""
	buildx     string // docker buildx plugin, or ""
	withBuildx bool   // Options.Buildx: the CLI has buildx, BuildKit on
	id         Identity
	cli        cliAPI

	cmd     *exec.Cmd
	exited  chan struct{} // closed when dockerd has exited
	err     error         // dockerd's exit status, valid once exited is closed
	stopped bool          // dockerd was stopped on purpose (Restart) and has not come back
}

// Start starts a private dockerd with opts and waits until it answers
// /_ping. A t.Cleanup stops it, kills anything it left running, and removes
// its directory. Start skips t (or fails it under CI) if this machine cannot
// run an engine.
func Start(t testing.TB, opts Options) *Engine {
	t.Helper()
	e := newEngine(t)
	e.start(t, opts)
	return e
}

// newEngine checks the machine and prepares the engine's directory, so that
// its socket path is known before dockerd starts (a plugin needs it first).
func newEngine(t testing.TB) *Engine {
	t.Helper()
	tools := requireEngine(t)
	// Unix socket paths are limited to 108 bytes and dockerd nests
	// containerd's sockets under its exec root, so the root must be short:
	// not t.TempDir(), whose path contains the test's name.
	root, err := os.MkdirTemp("/tmp", "pg")
	if err != nil {
		t.Fatalf("enginetest: creating engine directory: %v", err)
	}
	e := &Engine{
		root:   root,
		sock:   filepath.Join(root, "d.sock"),
		config: filepath.Join(root, "cli"),
		log:    filepath.Join(root, "dockerd.log"),
		docker: tools.docker,
		exited: make(chan struct{}),

		name:       tools.name,
		binDir:     tools.binDir,
		daemonJSON: tools.daemonJSON,
		compose:    tools.compose,
		buildx:     tools.buildx,
	}
	// Registered first, so it runs last: after the engine and any plugin
	// started for it have stopped.
	t.Cleanup(func() {
		t.Helper()
		e.removeRoot(t)
	})
	if err := os.Mkdir(e.config, 0o700); err != nil {
		t.Fatalf("enginetest: creating CLI config directory: %v", err)
	}
	// The engine's own daemon.json (empty but for what makes the engine,
	// such as the containerd image store), so that the host's
	// /etc/docker/daemon.json is never read.
	if err := os.WriteFile(filepath.Join(root, "daemon.json"), e.daemonJSON, 0o600); err != nil {
		t.Fatalf("enginetest: writing daemon.json: %v", err)
	}
	// The CLI finds compose v2 as a plugin in its config directory, so
	// neither the host's plugins nor its absence matter.
	if e.compose != "" {
		plugins := filepath.Join(e.config, "cli-plugins")
		if err := os.Mkdir(plugins, 0o700); err != nil {
			t.Fatalf("enginetest: creating CLI plugin directory: %v", err)
		}
		if err := os.Symlink(e.compose, filepath.Join(plugins, "docker-compose")); err != nil {
			t.Fatalf("enginetest: linking docker compose: %v", err)
		}
	}
	e.cmd = exec.Command(tools.dockerd) // arguments are set by start
	return e
}

// start runs dockerd and waits until it answers /_ping.
func (e *Engine) start(t testing.TB, opts Options) {
	t.Helper()
	if opts.Buildx {
		e.addBuildx(t)
	}
	ns := "pg-" + filepath.Base(e.root)
	args := []string{
		"--host", "unix://" + e.sock,
		"--data-root", filepath.Join(e.root, "data"),
		"--exec-root", filepath.Join(e.root, "exec"),
		"--pidfile", filepath.Join(e.root, "d.pid"),
		"--config-file", filepath.Join(e.root, "daemon.json"),
		// If the host runs a system containerd, dockerd 20.10 uses it
		// instead of supervising its own; private namespaces keep this
		// engine's objects apart from the host's engine even then.
		"--containerd-namespace", ns,
		"--containerd-plugins-namespace", ns + "-plugins",
		"--iptables=false",
		"--ip-forward=false",
		"--bridge=none",
		// User networks' subnets come from pools the whole host shares
		// (every engine's bridges are routes in its one network
		// namespace). The defaults hold 31 networks, which parallel tests
		// on several engines exhaust ("could not find an available,
		// non-overlapping IPv4 address pool"); /24s out of 172.16.0.0/12
		// are 4096, and each engine skips the ones another one's routes
		// already take.
		"--default-address-pool", "base=172.16.0.0/12,size=24",
	}
	args = append(args, opts.ExtraArgs...)
	e.cmd.Args = append([]string{e.cmd.Path}, args...)
	e.cmd.Env = daemonEnv(e.binDir)
	began := time.Now()
	e.launch(t)
	t.Cleanup(func() {
		t.Helper()
		e.stop(t)
	})

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := e.waitReady(ctx); err != nil {
		t.Fatalf("enginetest: dockerd %s: %v\n%s", strings.Join(args, " "), err, tail(e.log, "dockerd log"))
	}
	id, err := e.identify(ctx)
	if err != nil {
		t.Fatalf("enginetest: dockerd at %s: %v", e.Host(), err)
	}
	e.id = id
	t.Logf("enginetest: dockerd at %s ready in %v (%s); CLI %s", e.Host(), time.Since(began).Round(time.Millisecond), id, e.docker)
}

// launch starts e.cmd (its path, arguments and environment set), its
// output appended to dockerd's log, and notes its exit.
func (e *Engine) launch(t testing.TB) {
	t.Helper()
	// If the test binary dies without running its cleanups, dockerd still
	// gets a chance to stop its containers and containerd.
	e.cmd.SysProcAttr = deathSignal(syscall.SIGTERM)
	logf, err := os.OpenFile(e.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("enginetest: opening dockerd log: %v", err)
	}
	defer logf.Close() // dockerd has its own descriptor once started
	e.cmd.Stdout = logf
	e.cmd.Stderr = logf
	if err := e.cmd.Start(); err != nil {
		t.Fatalf("enginetest: starting %s: %v", e.cmd.Path, err)
	}
	cmd, exited := e.cmd, make(chan struct{})
	e.exited = exited
	go func() {
		e.err = cmd.Wait()
		close(exited)
	}()
}

// Restart stops dockerd as an operator does (SIGTERM, then waiting for it to
// exit: its containers stop with it), calls down while it is stopped, then
// starts it again with the same arguments, data root and socket, and waits
// until it answers /_ping. Whatever is in front of the engine (a plugin, a
// proxy) is left alone. On a client's view (Proxy.Client) it restarts the
// engine behind the view.
func (e *Engine) Restart(t testing.TB, down func()) {
	t.Helper()
	e = e.daemon()
	select {
	case <-e.exited:
		t.Fatalf("enginetest: restart: dockerd has exited: %v", e.err)
	default:
	}
	e.stopped = true
	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("enginetest: restart: SIGTERM dockerd: %v", err)
	}
	if !waitClosed(e.exited, stopTimeout) {
		_ = e.cmd.Process.Kill()
		waitClosed(e.exited, killTimeout)
		t.Fatalf("enginetest: restart: dockerd still running %v after SIGTERM; killed it", stopTimeout)
	}
	t.Logf("enginetest: dockerd at %s stopped for a restart (%v)", e.Host(), exitText(e.err))
	down()
	prev := e.cmd
	e.cmd = exec.Command(prev.Path, prev.Args[1:]...)
	e.cmd.Env = prev.Env
	began := time.Now()
	e.launch(t)
	e.stopped = false
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := e.waitReady(ctx); err != nil {
		t.Fatalf("enginetest: dockerd restarted: %v\n%s", err, tail(e.log, "dockerd log"))
	}
	t.Logf("enginetest: dockerd at %s ready again in %v", e.Host(), time.Since(began).Round(time.Millisecond))
}

// daemon is the engine that owns the dockerd process: e itself, or for a
// client's view the engine behind it.
func (e *Engine) daemon() *Engine {
	if e.owner != nil {
		return e.owner
	}
	return e
}

// addBuildx links the buildx plugin into the CLI's config directory, beside
// compose, and turns BuildKit on for the CLI (Options.Buildx). It is never
// there by default: with it, "docker builder prune" is no longer the REST
// request the tests of build-cache prunes send.
func (e *Engine) addBuildx(t testing.TB) {
	t.Helper()
	bx := e.BuildxPath(t)
	plugins := filepath.Join(e.config, "cli-plugins")
	if err := os.MkdirAll(plugins, 0o700); err != nil {
		t.Fatalf("enginetest: creating CLI plugin directory: %v", err)
	}
	if err := os.Symlink(bx, filepath.Join(plugins, "docker-buildx")); err != nil {
		t.Fatalf("enginetest: linking docker buildx: %v", err)
	}
	e.withBuildx = true
}

// waitReady polls /_ping until it answers 200, dockerd exits, or ctx ends.
func (e *Engine) waitReady(ctx context.Context) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var last error
	for {
		last = e.ping(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-e.exited:
			return fmt.Errorf("exited before answering /_ping: %v", e.err)
		case <-ctx.Done():
			return fmt.Errorf("not answering /_ping after %v: %v", startTimeout, last)
		case <-tick.C:
		}
	}
}

func (e *Engine) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := e.api(ctx, http.MethodGet, "/_ping")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/_ping: %s", resp.Status)
	}
	return nil
}

// Host is the engine's address for DOCKER_HOST or --docker-host: its own
// socket, or for a client's view (Proxy.Client) the proxy's.
func (e *Engine) Host() string { return "unix://" + e.Socket() }

// Socket is the path of the engine's API socket, or for a client's view
// (Proxy.Client) the path of the proxy's.
func (e *Engine) Socket() string {
	if e.client != "" {
		return e.client
	}
	return e.sock
}

// LogTail returns the end of dockerd's log, for failure messages.
func (e *Engine) LogTail() string { return tail(e.log, "dockerd log") }

// Log returns dockerd's whole log so far. Started with --debug (in
// Options.ExtraArgs), dockerd logs every request its router serves, as
// "Calling POST /v1.51/grpc".
func (e *Engine) Log(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(e.log)
	if err != nil {
		t.Fatalf("enginetest: reading dockerd log: %v", err)
	}
	return string(b)
}

// api sends one request through the engine's socket, for the harness's own
// bookkeeping. Tests that need exact bytes on the wire use HTTP or RawHTTP.
func (e *Engine) api(ctx context.Context, method, path string) (*http.Response, error) {
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", e.sock)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, method, "http://docker"+path, nil)
	if err != nil {
		return nil, err
	}
	return c.Do(req)
}

// stop removes the engine's containers, leaves any swarm, and stops dockerd:
// SIGTERM, then SIGKILL after stopTimeout. Whatever still runs from the
// engine's directory or in its containers' cgroups afterwards is killed, and
// its mounts are detached.
func (e *Engine) stop(t testing.TB) {
	t.Helper()
	began := time.Now()
	ids := e.removeContainers(t)
	t.Logf("enginetest: removed %d containers in %v", len(ids), time.Since(began).Round(time.Millisecond))
	select {
	case <-e.exited:
		if !e.stopped {
			t.Errorf("enginetest: dockerd exited during the test: %v", e.err)
		}
	default:
		e.removeNetworks(t)
		e.leaveSwarm(t)
		e.removeNetworks(t) // docker_gwbridge, once the swarm is left
		if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Logf("enginetest: SIGTERM dockerd: %v", err)
		}
		if !waitClosed(e.exited, stopTimeout) {
			t.Errorf("enginetest: dockerd still running %v after SIGTERM; killing it", stopTimeout)
			_ = e.cmd.Process.Kill()
			if !waitClosed(e.exited, killTimeout) {
				t.Errorf("enginetest: dockerd (pid %d) survived SIGKILL", e.cmd.Process.Pid)
			}
		}
	}
	t.Logf("enginetest: dockerd stopped in %v", time.Since(began).Round(time.Millisecond))
	for _, p := range killLeftovers(e.root, ids) {
		t.Errorf("enginetest: killed leftover process of the engine: %s", p)
	}
	for _, err := range unmountUnder(e.root) {
		t.Errorf("enginetest: %v", err)
	}
	if t.Failed() {
		t.Logf("%s", tail(e.log, "dockerd log"))
	}
}

// removeContainers force-removes every container, so that dockerd's
// shutdown does not wait out stop timeouts and no container survives it. It
// returns the IDs it saw, to find their processes should any be left.
func (e *Engine) removeContainers(t testing.TB) []string {
	t.Helper()
	select {
	case <-e.exited:
		return nil
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	resp, err := e.api(ctx, http.MethodGet, "/containers/json?all=1")
	if err != nil {
		t.Logf("enginetest: listing containers for cleanup: %v", err)
		return nil
	}
	var list []struct{ ID string }
	err = decodeJSON(resp, &list)
	if err != nil {
		t.Logf("enginetest: listing containers for cleanup: %v", err)
		return nil
	}
	var ids []string
	for _, c := range list {
		ids = append(ids, c.ID)
		resp, err := e.api(ctx, http.MethodDelete, "/containers/"+c.ID+"?force=1&v=1")
		if err != nil {
			t.Logf("enginetest: removing container %.12s: %v", c.ID, err)
			continue
		}
		resp.Body.Close()
	}
	return ids
}

// removeNetworks removes the engine's own local networks. dockerd keeps a
// network's bridge interface on the host when it stops (networks outlive a
// restart), and its data root is deleted afterwards, so a network a test
// left behind would leave a bridge nobody removes; once the private address
// pools are all taken by such bridges, no engine on the host can create a
// network ("all predefined address pools have been fully subnetted").
func (e *Engine) removeNetworks(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	resp, err := e.api(ctx, http.MethodGet, "/networks")
	if err != nil {
		t.Logf("enginetest: listing networks for cleanup: %v", err)
		return
	}
	var list []struct{ ID, Name, Scope string }
	if err := decodeJSON(resp, &list); err != nil {
		t.Logf("enginetest: listing networks for cleanup: %v", err)
		return
	}
	for _, n := range list {
		if n.Scope != "local" || n.Name == "bridge" || n.Name == "host" || n.Name == "none" {
			continue
		}
		resp, err := e.api(ctx, http.MethodDelete, "/networks/"+n.ID)
		if err != nil {
			t.Logf("enginetest: removing network %s: %v", n.Name, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusNotFound {
			t.Logf("enginetest: removing network %s: %s", n.Name, resp.Status)
		}
	}
}

// leaveSwarm leaves the swarm if the engine is in one; 503 means it is not.
func (e *Engine) leaveSwarm(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	resp, err := e.api(ctx, http.MethodPost, "/swarm/leave?force=1")
	if err != nil {
		t.Logf("enginetest: leaving swarm: %v", err)
		return
	}
	resp.Body.Close()
}

// removeRoot deletes the engine's directory once nothing uses it.
func (e *Engine) removeRoot(t testing.TB) {
	t.Helper()
	for _, err := range unmountUnder(e.root) {
		t.Errorf("enginetest: %v", err)
	}
	if err := os.RemoveAll(e.root); err != nil {
		t.Errorf("enginetest: removing engine directory: %v", err)
	}
}

// tools are the binaries an engine needs, and what makes the engine.
type tools struct {
	name            string
	dockerd, docker string
	binDir          string // "" for the system engine
	daemonJSON      []byte
	compose         string
	buildx          string // only for tests that opt in (Options.Buildx)
}

// requireEngine returns the binaries an engine needs, or skips t (fails it
// under CI) with the reason they cannot be used.
func requireEngine(t testing.TB) tools {
	t.Helper()
	if runtime.GOOS != "linux" {
		Unavailable(t, "a private dockerd needs Linux, not %s", runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		Unavailable(t, "a private dockerd needs root (euid is %d)", os.Geteuid())
	}
	if name := selectedEngine(); name != "" {
		tl, err := provisionedTools(name)
		if err != nil {
			Unavailable(t, "%s=%s: %v", EngineEnv, name, err)
		}
		return tl
	}
	tl := tools{name: "system", daemonJSON: []byte("{}\n"), compose: composeFor(""), buildx: buildxFor("")}
	for _, b := range []struct {
		name string
		path *string
	}{
		{"dockerd", &tl.dockerd},
		{"containerd", nil},
		{"containerd-shim-runc-v2", nil},
		{"runc", nil},
		{"docker", &tl.docker},
	} {
		p, err := lookPath(b.name)
		if err != nil {
			Unavailable(t, "%s not found: %v", b.name, err)
		}
		if b.path != nil {
			*b.path = p
		}
	}
	return tl
}

// Unavailable skips t with reason, or fails it when CI=true: in CI a missing
// engine, tool or kernel feature is a broken machine, not a reason to pass.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	reason := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("enginetest: %s (CI=true: end-to-end tests must run, not skip)", reason)
	}
	t.Skipf("enginetest: %s", reason)
}

// sbinPath are directories dockerd and its helpers live in, which a
// non-login PATH may lack.
var sbinPath = []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// lookPath finds name on PATH or in the system binary directories.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range sbinPath {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("not on PATH nor in %s", strings.Join(sbinPath, ":"))
}

// daemonEnv is the environment for dockerd: ours without DOCKER_* settings
// (DOCKER_HOST and friends are for clients, DOCKER_TMPDIR would move the
// daemon's files), with the engine's own binaries (binDir, if any) first on
// PATH and then the system directories, for containerd, its shim, runc and
// docker-init: dockerd and containerd find them all by name.
func daemonEnv(binDir string) []string {
	var env []string
	path := ""
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "DOCKER_"):
		case strings.HasPrefix(kv, "PATH="):
			path = strings.TrimPrefix(kv, "PATH=")
		default:
			env = append(env, kv)
		}
	}
	dirs := filepath.SplitList(path)
	if binDir != "" {
		dirs = append([]string{binDir}, dirs...)
	}
	for _, d := range sbinPath {
		if !contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return append(env, "PATH="+strings.Join(dirs, string(filepath.ListSeparator)))
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// waitClosed reports whether ch closes within d.
func waitClosed(ch <-chan struct{}, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ch:
		return true
	case <-timer.C:
		return false
	}
}

// tail returns the last lines of the file at path, labelled, for failure
// messages.
func tail(path, label string) string {
	const maxBytes, maxLines = 16 << 10, 40
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("--- %s: %v", label, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > maxBytes {
		if _, err := f.Seek(-maxBytes, io.SeekEnd); err != nil {
			return fmt.Sprintf("--- %s: %v", label, err)
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("--- %s: %v", label, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return fmt.Sprintf("--- last lines of %s (%s):\n%s\n--- end of %s", label, path, strings.Join(lines, "\n"), label)
}

// decodeJSON decodes a successful response's body into v and closes it.
func decodeJSON(resp *http.Response, v any) error {
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("decoding response: %w", err)
	}
	return nil
}
