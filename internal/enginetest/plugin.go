package enginetest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	// pluginDir is where dockerd looks up a plugin socket by plugin name.
	pluginDir = "/run/docker/plugins"
	// pluginStartTimeout bounds the plugin answering Plugin.Activate.
	pluginStartTimeout = 30 * time.Second
	// pluginStopTimeout bounds the plugin exiting after SIGTERM.
	pluginStopTimeout = 10 * time.Second
	// buildTimeout bounds "go build" of the plugin binary.
	buildTimeout = 5 * time.Minute
)

// Plugin is a "prune-guard serve" process started by StartPlugin.
type Plugin struct {
	name  string
	sock  string
	audit string
	log   string

	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited
	err    error         // its exit status, valid once exited is closed
}

// pluginSeq numbers plugins within this test process.
var pluginSeq atomic.Int64

// StartPlugin starts "bin serve --socket S --audit-log A args..." under a
// unique plugin name (pgtest-PID-N, socket /run/docker/plugins/NAME.sock) and
// waits until it answers Plugin.Activate as an authz plugin. A t.Cleanup
// stops it and removes its socket. Start the plugin before the engine that
// uses it: dockerd refuses to start while its authorization plugin does not
// answer.
func StartPlugin(t testing.TB, bin string, args ...string) *Plugin {
	t.Helper()
	requireEngine(t)
	dir := t.TempDir()
	p := &Plugin{
		name:   fmt.Sprintf("pgtest-%d-%d", os.Getpid(), pluginSeq.Add(1)),
		audit:  filepath.Join(dir, "audit.jsonl"),
		log:    filepath.Join(dir, "plugin.log"),
		exited: make(chan struct{}),
	}
	p.sock = filepath.Join(pluginDir, p.name+".sock")
	if err := os.MkdirAll(pluginDir, 0o755); err != nil {
		t.Fatalf("enginetest: creating %s: %v", pluginDir, err)
	}
	removeDeadSockets()
	// A socket left by an earlier process with our PID would answer for a
	// dead plugin.
	if err := os.Remove(p.sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("enginetest: removing stale plugin socket: %v", err)
	}

	argv := append([]string{"serve", "--socket", p.sock, "--audit-log", p.audit}, WithoutGrace(args)...)
	p.cmd = exec.Command(bin, argv...)
	p.cmd.SysProcAttr = deathSignal(syscall.SIGKILL)
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatalf("enginetest: creating plugin log: %v", err)
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
	if err := p.waitActive(ctx); err != nil {
		t.Fatalf("enginetest: plugin %s %v: %v\n%s", bin, argv, err, tail(p.log, "plugin log"))
	}
	return p
}

// WithoutGrace adds --run-grace 0s to the arguments of a prune-guard serve
// or reclaim unless they set the grace: a test that is not about the
// teardown grace deletes an image right after its job's container is gone,
// and must not be held for two minutes (nor, on a fake engine that streams
// no events, for ever). Tests of the grace give --run-grace themselves.
func WithoutGrace(args []string) []string {
	for _, a := range args {
		if a == "--run-grace" || strings.HasPrefix(a, "--run-grace=") {
			return args
		}
	}
	return append([]string{"--run-grace", "0s"}, args...)
}

// StartGuarded starts a prune-guard plugin (built by BuildBinary, with
// opts.PluginArgs) and then a private engine with it as its authorization
// plugin. The plugin is told the engine's address before the engine exists;
// it connects lazily.
func StartGuarded(t testing.TB, opts Options) (*Engine, *Plugin) {
	t.Helper()
	requireEngine(t) // skip before spending a build on a machine without an engine
	bin := BuildBinary(t)
	e := newEngine(t)
	p := StartPlugin(t, bin, append([]string{"--docker-host", e.Host()}, opts.PluginArgs...)...)
	opts.ExtraArgs = append(slices.Clone(opts.ExtraArgs), "--authorization-plugin="+p.Name())
	e.start(t, opts)
	return e, p
}

// Name is the plugin's name, as given to --authorization-plugin and as
// dockerd quotes it in denials.
func (p *Plugin) Name() string { return p.name }

// Socket is the path of the plugin's socket.
func (p *Plugin) Socket() string { return p.sock }

// AuditPath is the plugin's --audit-log file.
func (p *Plugin) AuditPath() string { return p.audit }

// LogTail returns the end of the plugin's own output, for failure messages.
func (p *Plugin) LogTail() string { return tail(p.log, "plugin log") }

// AuditLines returns the audit log's JSON lines decoded, in order; none if
// the plugin has not written the file yet. A line that is not a JSON object
// fails t.
func (p *Plugin) AuditLines(t testing.TB) []map[string]any {
	t.Helper()
	return auditLines(t, p.audit)
}

// auditLines reads the audit log at path (see Plugin.AuditLines).
func auditLines(t testing.TB, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatalf("enginetest: reading audit log: %v", err)
	}
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("enginetest: audit log line %d is not a JSON object: %v\n%s", n, err, sc.Text())
		}
		lines = append(lines, m)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("enginetest: reading audit log: %v", err)
	}
	return lines
}

// waitActive polls Plugin.Activate until the plugin says it implements
// authz, exits, or ctx ends.
func (p *Plugin) waitActive(ctx context.Context) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		err := p.activate(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("exited before answering Plugin.Activate: %v", p.err)
		case <-ctx.Done():
			return fmt.Errorf("not answering Plugin.Activate after %v: %v", pluginStartTimeout, err)
		case <-tick.C:
		}
	}
}

// activate performs dockerd's handshake once.
func (p *Plugin) activate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p.sock)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://plugin/Plugin.Activate", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/vnd.docker.plugins.v1.2+json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	var m struct{ Implements []string }
	if err := decodeJSON(resp, &m); err != nil {
		return fmt.Errorf("Plugin.Activate: %w", err)
	}
	if !slices.Contains(m.Implements, "authz") {
		return fmt.Errorf("Plugin.Activate: implements %q, want authz", m.Implements)
	}
	return nil
}

// stop ends the plugin (SIGTERM, then SIGKILL after pluginStopTimeout) and
// removes its socket.
func (p *Plugin) stop(t testing.TB) {
	t.Helper()
	select {
	case <-p.exited:
		t.Errorf("enginetest: plugin %s exited during the test: %v", p.name, p.err)
	default:
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Logf("enginetest: SIGTERM plugin: %v", err)
		}
		if !waitClosed(p.exited, pluginStopTimeout) {
			t.Errorf("enginetest: plugin %s still running %v after SIGTERM; killing it", p.name, pluginStopTimeout)
			_ = p.cmd.Process.Kill()
			if !waitClosed(p.exited, killTimeout) {
				t.Errorf("enginetest: plugin (pid %d) survived SIGKILL", p.cmd.Process.Pid)
			}
		}
	}
	if err := os.Remove(p.sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("enginetest: removing plugin socket: %v", err)
	}
	if t.Failed() {
		t.Logf("%s", tail(p.log, "plugin log"))
	}
}

// build is the one prune-guard binary of this test process.
var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// BuildBinary builds the prune-guard binary (the module's ./cmd/prune-guard)
// once per test process and returns its path. Packages using it should call
// Main from TestMain, which removes it afterwards.
func BuildBinary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() { build.dir, build.bin, build.err = buildBinary() })
	if build.err != nil {
		t.Fatalf("enginetest: building prune-guard: %v", build.err)
	}
	return build.bin
}

func buildBinary() (dir, bin string, err error) {
	root, err := moduleRoot()
	if err != nil {
		return "", "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", "", fmt.Errorf("finding the go command: %w", err)
	}
	dir, err = os.MkdirTemp("", "prune-guard-e2e-")
	if err != nil {
		return "", "", err
	}
	bin = filepath.Join(dir, "prune-guard")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "./cmd/prune-guard")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", "", fmt.Errorf("go build -o %s ./cmd/prune-guard in %s: %w\n%s", bin, root, err, out)
	}
	return dir, bin, nil
}

// moduleRoot walks up from the working directory (a test runs in its
// package's directory) to the directory holding go.mod.
func moduleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("no go.mod in %s or any parent", wd)
		}
	}
}

// Main runs the tests of a package that uses BuildBinary and then removes
// the binary. Call it from TestMain: os.Exit(enginetest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if build.dir != "" {
		if err := os.RemoveAll(build.dir); err != nil {
			fmt.Fprintf(os.Stderr, "enginetest: removing %s: %v\n", build.dir, err)
		}
	}
	return code
}

// deadSocketsOnce limits the sweep to once per test process.
var deadSocketsOnce sync.Once

// removeDeadSockets removes pgtest-PID-N.sock files whose test process is
// gone (a test binary that was killed cannot clean up). dockerd probes every
// socket in the plugin directory when it looks for a volume driver, and a
// dead one costs each such call about 15 s.
func removeDeadSockets() {
	deadSocketsOnce.Do(func() {
		socks, _ := filepath.Glob(filepath.Join(pluginDir, "pgtest-*-*.sock"))
		for _, s := range socks {
			var pid, n int
			if _, err := fmt.Sscanf(filepath.Base(s), "pgtest-%d-%d.sock", &pid, &n); err != nil {
				continue
			}
			if syscall.Kill(pid, 0) == syscall.ESRCH {
				_ = os.Remove(s)
			}
		}
	})
}
