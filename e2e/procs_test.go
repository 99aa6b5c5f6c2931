package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// This file holds the fault and load tests' own process handling: a
// prune-guard serve process the test can kill and start again (optionally
// on a socket the test holds, as systemd socket activation passes it), and
// a fake engine socket that forwards to the real engine, hangs, or hangs up.

// pluginDir is where dockerd looks a plugin's socket up by name.
const pluginDir = "/run/docker/plugins"

var procSeq atomic.Int64

// testPluginName names a plugin socket this test process owns. It follows
// enginetest's pgtest-PID-N pattern, so that enginetest's sweep removes the
// socket should this process die without cleaning up (dockerd probes every
// socket in the plugin directory, and a dead one costs it seconds), with N
// from a range of its own so that it never names one of enginetest's.
func testPluginName() string {
	return fmt.Sprintf("pgtest-%d-%d", os.Getpid(), 1_000_000+procSeq.Add(1))
}

// servedPlugin is a "prune-guard serve" the test controls.
type servedPlugin struct {
	t    testing.TB
	bin  string
	name string
	sock string
	log  string
	args []string
	// listener, when set, is the socket the test holds and passes to each
	// process as fd 3 with LISTEN_PID/LISTEN_FDS (socket activation).
	listener *net.UnixListener

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// newServedPlugin prepares a plugin under a fresh name, with args after
// "serve --socket S". With activated, the test creates and holds the socket.
// Nothing runs until start.
func newServedPlugin(t testing.TB, activated bool, args ...string) *servedPlugin {
	t.Helper()
	p := &servedPlugin{
		t:    t,
		bin:  enginetest.BuildBinary(t),
		name: testPluginName(),
		log:  filepath.Join(t.TempDir(), "plugin.log"),
	}
	p.sock = filepath.Join(pluginDir, p.name+".sock")
	p.args = append([]string{"serve", "--socket", p.sock}, enginetest.WithControlSocket(t, args)...)
	if err := os.MkdirAll(pluginDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if activated {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: p.sock, Net: "unix"})
		if err != nil {
			t.Fatalf("listening on %s: %v", p.sock, err)
		}
		p.listener = l
	}
	t.Cleanup(func() {
		p.kill(syscall.SIGTERM)
		if p.listener != nil {
			p.listener.Close() // unlinks the socket
		}
		os.Remove(p.sock)
		if t.Failed() {
			t.Logf("--- plugin log %s:\n%s", p.log, tailFile(p.log, 40))
		}
	})
	return p
}

// start runs a new serve process and waits until it answers the handshake.
func (p *servedPlugin) start() {
	p.t.Helper()
	logf, err := os.OpenFile(p.log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	defer logf.Close()
	var cmd *exec.Cmd
	if p.listener != nil {
		// LISTEN_PID must be the serving process's own PID: the shell
		// sets it to $$ and then becomes prune-guard, keeping that PID.
		cmd = exec.Command("sh", append([]string{"-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, p.bin}, p.args...)...)
		f, err := p.listener.File()
		if err != nil {
			p.t.Fatal(err)
		}
		defer f.Close() // the child has its own copy
		cmd.ExtraFiles = []*os.File{f}
	} else {
		cmd = exec.Command(p.bin, p.args...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	p.mu.Lock()
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if err := activate(ctx, p.sock); err == nil {
			return
		}
		select {
		case <-exited:
			p.t.Fatalf("plugin exited before answering:\n%s", tailFile(p.log, 20))
		case <-ctx.Done():
			p.t.Fatalf("plugin not answering on %s:\n%s", p.sock, tailFile(p.log, 20))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// kill signals the running process and waits for it to exit (SIGKILL after
// 10 s).
func (p *servedPlugin) kill(sig syscall.Signal) {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// pid is the running process's PID.
func (p *servedPlugin) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// alive reports whether the running process has not exited.
func (p *servedPlugin) alive() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// activate performs dockerd's plugin handshake once.
func activate(ctx context.Context, sock string) error {
	c := unixClient(sock, 2*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://plugin/Plugin.Activate", nil)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(b), "authz") {
		return fmt.Errorf("Plugin.Activate answered %s", b)
	}
	return nil
}

// unixClient is an HTTP client for a unix socket, without keep-alive.
func unixClient(sock string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}}
}

// fakeEngine is a unix socket the plugin takes for its engine: it forwards
// to the real engine, or hangs, or hangs up, as the test says.
type fakeEngine struct {
	sock     string
	l        net.Listener
	mode     atomic.Value // "proxy", "hang" or "close"
	upstream atomic.Value // the real engine's socket path

	mu    sync.Mutex
	conns map[net.Conn]bool
}

func startFakeEngine(t testing.TB) *fakeEngine {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgfake")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeEngine{sock: filepath.Join(dir, "engine.sock"), conns: map[net.Conn]bool{}}
	f.mode.Store("proxy")
	f.upstream.Store("")
	if f.l, err = net.Listen("unix", f.sock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.l.Close()
		f.dropAll()
		os.RemoveAll(dir)
	})
	go f.serve()
	return f
}

// host is the fake engine's address for --docker-host.
func (f *fakeEngine) host() string { return "unix://" + f.sock }

// set changes the mode and drops every open connection, so that none made
// under the old mode lingers (a pooled keep-alive connection would keep
// proxying).
func (f *fakeEngine) set(mode string) {
	f.mode.Store(mode)
	f.dropAll()
}

func (f *fakeEngine) dropAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
	clear(f.conns)
}

func (f *fakeEngine) track(c net.Conn) {
	f.mu.Lock()
	f.conns[c] = true
	f.mu.Unlock()
}

func (f *fakeEngine) serve() {
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		switch f.mode.Load().(string) {
		case "close":
			c.Close()
		case "hang":
			// Read and never answer, until the test drops the connection.
			f.track(c)
			go io.Copy(io.Discard, c)
		default:
			up, err := net.Dial("unix", f.upstream.Load().(string))
			if err != nil {
				c.Close()
				continue
			}
			f.track(c)
			f.track(up)
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}
}

// tailFile returns the last n lines of a file, for failure messages.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// procStatus reads the kB figures VmRSS and VmHWM (peak RSS) of a process.
func procStatus(t testing.TB, pid int) (rssKB, peakKB int) {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading the plugin's memory: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, _ := strconv.Atoi(fields[0])
		switch k {
		case "VmRSS":
			rssKB = n
		case "VmHWM":
			peakKB = n
		}
	}
	return rssKB, peakKB
}

// netErrText renders a transport error for a report line.
func netErrText(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return err.Error()
}
