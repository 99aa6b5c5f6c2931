package enginetest

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// reloadTimeout bounds dockerd applying daemon.json after SIGHUP.
const reloadTimeout = 15 * time.Second

// reloadedMark is what dockerd 20.10 logs once a SIGHUP reload has been
// applied, after it has swapped the authorization plugins.
var reloadedMark = []byte("Reloaded configuration")

// Prepare makes an engine's directory without starting dockerd, so that
// its socket path is known to what must exist first (a container that
// serves its plugin); Run starts it. Start does both.
func Prepare(t testing.TB) *Engine {
	t.Helper()
	return newEngine(t)
}

// Run starts an engine made by Prepare and waits until it answers /_ping.
func (e *Engine) Run(t testing.TB, opts Options) {
	t.Helper()
	e.start(t, opts)
}

// Dir is the engine's directory, holding its socket.
func (e *Engine) Dir() string { return e.root }

// Env is the environment in which the docker CLI talks to this engine, and
// only to it: for scripts that run docker themselves.
func (e *Engine) Env() []string { return e.cliEnv(e.withBuildx) }

// ConfigPath is the engine's daemon.json (its --config-file).
func (e *Engine) ConfigPath() string { return filepath.Join(e.root, "daemon.json") }

// Reload replaces the engine's daemon.json with settings and sends dockerd
// SIGHUP, as an operator reloads a running daemon, then waits until dockerd
// reports the configuration applied. It fails t if dockerd does not, or if
// it exits instead, which dockerd does when the new configuration names an
// authorization plugin that is missing or disabled.
func (e *Engine) Reload(t testing.TB, settings map[string]any) {
	t.Helper()
	e = e.daemon()
	select {
	case <-e.exited:
		t.Fatalf("enginetest: reload: dockerd has exited: %v", e.err)
	default:
	}
	// The engine's own settings (the image store) stay: they make the
	// engine, and a reload must not change what the test runs on.
	merged := map[string]any{}
	if err := json.Unmarshal(e.daemonJSON, &merged); err != nil {
		t.Fatalf("enginetest: reload: the engine's daemon.json: %v", err)
	}
	for k, v := range settings {
		merged[k] = v
	}
	b, err := json.Marshal(merged)
	if err != nil {
		t.Fatalf("enginetest: reload: encoding daemon.json: %v", err)
	}
	before := e.countInLog(t, reloadedMark)
	// Written whole and renamed into place: dockerd must never read half a
	// file.
	tmp := e.ConfigPath() + ".new"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		t.Fatalf("enginetest: reload: %v", err)
	}
	if err := os.Rename(tmp, e.ConfigPath()); err != nil {
		t.Fatalf("enginetest: reload: %v", err)
	}
	if err := e.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("enginetest: reload: SIGHUP dockerd: %v", err)
	}
	deadline := time.NewTimer(reloadTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for e.countInLog(t, reloadedMark) == before {
		select {
		case <-e.exited:
			t.Fatalf("enginetest: dockerd exited on reload with %s: %v\n%s", b, e.err, e.LogTail())
		case <-deadline.C:
			t.Fatalf("enginetest: dockerd did not apply %s within %v of SIGHUP\n%s", b, reloadTimeout, e.LogTail())
		case <-tick.C:
		}
	}
	t.Logf("enginetest: dockerd reloaded daemon.json: %s", b)
}

// countInLog counts the occurrences of s in dockerd's log.
func (e *Engine) countInLog(t testing.TB, s []byte) int {
	t.Helper()
	b, err := os.ReadFile(e.log)
	if err != nil {
		t.Fatalf("enginetest: reading dockerd log: %v", err)
	}
	return bytes.Count(b, s)
}
