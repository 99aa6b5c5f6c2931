package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// runLabel is the plugin's default run label.
const runLabel = "prune-guard.run"

// guard is a private engine guarded by prune-guard (default policy): in
// its authorization chain (plugin), or in front of it (proxy), in which
// case the Engine is the engine as the proxy's clients reach it
// (enginetest.Proxy.Client).
type guard struct {
	*enginetest.Engine
	plugin *enginetest.Plugin
	proxy  *enginetest.Proxy
}

func startGuard(t *testing.T) guard {
	t.Helper()
	e, p := enginetest.StartGuarded(t, enginetest.Options{})
	return guard{Engine: e, plugin: p}
}

// startProxyGuard starts a private engine with no authorization plugin and
// prune-guard proxy in front of it, with opts.PluginArgs; every client of
// the guard goes through the proxy.
func startProxyGuard(t *testing.T, opts enginetest.Options) guard {
	t.Helper()
	_, p := enginetest.StartProxied(t, opts)
	return guard{Engine: p.Client(), proxy: p}
}

// name is how denials name prune-guard: the plugin's name, or the proxy's.
func (g guard) name() string {
	if g.proxy != nil {
		return g.proxy.Name()
	}
	return g.plugin.Name()
}

// auditLines is the audit log of the plugin or the proxy.
func (g guard) auditLines(t testing.TB) []map[string]any {
	t.Helper()
	if g.proxy != nil {
		return g.proxy.AuditLines(t)
	}
	return g.plugin.AuditLines(t)
}

func (g guard) auditPath() string {
	if g.proxy != nil {
		return g.proxy.AuditPath()
	}
	return g.plugin.AuditPath()
}

// statusSocket is where "prune-guard status" asks: the plugin's socket, or
// the proxy's control socket.
func (g guard) statusSocket() string {
	if g.proxy != nil {
		return g.proxy.ControlSocket()
	}
	return g.plugin.Socket()
}

// denialPrefix is how clients see a denial by prune-guard: dockerd's words
// for a plugin's denial, which the proxy uses too.
func (g guard) denialPrefix() string {
	return "authorization denied by plugin " + g.name() + ": prune-guard: "
}

// mustDeny runs the docker CLI and requires it to fail with a prune-guard
// denial that mentions every string in want.
func (g guard) mustDeny(t testing.TB, args []string, want ...string) {
	t.Helper()
	stdout, stderr, err := g.Docker(t, args...)
	if err == nil {
		t.Fatalf("docker %s succeeded; want it denied by %s\nstdout: %s\nstderr: %s",
			strings.Join(args, " "), g.name(), stdout, stderr)
	}
	if !strings.Contains(stderr, "Error response from daemon: "+g.denialPrefix()) {
		t.Fatalf("docker %s failed without a prune-guard denial: %v\nstderr: %s", strings.Join(args, " "), err, stderr)
	}
	t.Logf("  %s", strings.TrimSpace(stderr))
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("docker %s: denial does not mention %q:\n%s", strings.Join(args, " "), w, stderr)
		}
	}
}

// mustAllow runs the docker CLI and requires it to succeed.
func (g guard) mustAllow(t testing.TB, args ...string) string {
	t.Helper()
	return g.MustDocker(t, args...)
}

// mustDenyHTTP sends a raw request and requires a 403 prune-guard denial.
func (g guard) mustDenyHTTP(t testing.TB, method, uri string) {
	t.Helper()
	status, body := g.HTTP(t, method, uri, nil, nil)
	if status != 403 || !strings.Contains(body, g.denialPrefix()) {
		t.Errorf("%s %s = %d %s; want 403 with %q", method, uri, status, strings.TrimSpace(body), g.denialPrefix())
	}
}

// buildTagged builds distinct tagged images, none used by a container, so
// that any prune of tagged images would remove them all.
func buildTagged(t testing.TB, g guard) []string {
	t.Helper()
	tags := []string{"pg-app:1", "pg-app:2", "pg-tools:latest"}
	for _, tag := range tags {
		g.BuildImage(t, tag, map[string]string{"etc/" + strings.ReplaceAll(tag, ":", "-"): tag}, nil)
	}
	return tags
}

// buildVictim builds a fresh, unused tagged image for one case, so that a
// case that wrongly lets a prune through does not make the next cases fail
// for want of images.
func buildVictim(t testing.TB, g guard) string {
	t.Helper()
	n := enginetest.Nonce(t)
	tag := "pg-victim-" + n + ":1"
	g.BuildImage(t, tag, map[string]string{"victim": n}, nil)
	return tag
}

// requireImages fails t for every ref that no longer names an image.
func requireImages(t testing.TB, g guard, refs ...string) {
	t.Helper()
	for _, ref := range refs {
		if !g.ImageExists(t, ref) {
			t.Errorf("image %s is gone; prune-guard should have kept it", ref)
		}
	}
}

// requireGone fails t if ref still names an image.
func requireGone(t testing.TB, g guard, ref string) {
	t.Helper()
	if g.ImageExists(t, ref) {
		t.Errorf("image %s still exists; the allowed request should have removed it", ref)
	}
}

// auditTimeout bounds waiting for an audit line: the plugin may write it
// after answering dockerd.
const auditTimeout = 5 * time.Second

// auditMark returns the number of audit lines so far, so that a check can
// look only at the lines a later request caused.
func auditMark(t testing.TB, g guard) int {
	t.Helper()
	return len(g.auditLines(t))
}

// auditLine waits for an audit line after the first mark lines with every
// field in want (compared as text) and returns it.
func auditLine(t testing.TB, g guard, mark int, want map[string]string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(auditTimeout)
	for {
		lines := g.auditLines(t)
		for _, l := range lines[min(mark, len(lines)):] {
			if matches(l, want) {
				return l
			}
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, l := range lines {
				fmt.Fprintf(&b, "  %v\n", l)
			}
			t.Fatalf("no audit line with %v after line %d of %s within %v; lines:\n%s", want, mark, g.auditPath(), auditTimeout, b.String())
			return nil
		}
		time.Sleep(50 * time.Millisecond) // polling a file the plugin appends to
	}
}

func matches(line map[string]any, want map[string]string) bool {
	for k, v := range want {
		if fmt.Sprint(line[k]) != v {
			return false
		}
	}
	return true
}

// requireAuditFields fails t for each audit field the contract names that
// line lacks.
func requireAuditFields(t testing.TB, line map[string]any) {
	t.Helper()
	for _, f := range []string{"time", "msg", "decision", "rule", "operation", "method", "uri", "user", "runs", "reason"} {
		if _, ok := line[f]; !ok {
			t.Errorf("audit line lacks %q: %v", f, line)
		}
	}
}

// auditRuns returns an audit line's "runs" field as strings.
func auditRuns(t testing.TB, line map[string]any) []string {
	t.Helper()
	raw, ok := line["runs"].([]any)
	if !ok && line["runs"] != nil {
		t.Errorf("audit field runs is %T, want a list of strings: %v", line["runs"], line)
	}
	var runs []string
	for _, r := range raw {
		s, ok := r.(string)
		if !ok {
			t.Errorf("audit field runs holds %T, want strings: %v", r, line)
		}
		runs = append(runs, s)
	}
	return runs
}

func anyContains(list []string, sub string) bool {
	return slices.ContainsFunc(list, func(s string) bool { return strings.Contains(s, sub) })
}

// namedVolumesPrunedByDefault reports whether the CLI's "docker volume
// prune" removes named volumes on this engine: when the API version the CLI
// speaks is below 1.42, where dockerd's route adds all=true itself (moby
// api/server/router/volume/volume_routes.go, postVolumesPrune).
func namedVolumesPrunedByDefault(t testing.TB, g guard) bool {
	t.Helper()
	return enginetest.CompareAPIVersions(g.CLIAPIVersion(t), "1.42") < 0
}
