package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// criticalBlob is the payload of each image the critical scenarios build:
// small, so that the small disk and the test stay small.
const criticalBlob = 8 << 20

// grantHeader is the header reclaim's deletes carry their grant in
// (guard.GrantHeader).
const grantHeader = "X-Prune-Guard-Grant"

// seedState writes reclaim's state file with each image first seen that
// long ago.
func seedState(t testing.TB, path string, ages map[string]time.Duration) {
	t.Helper()
	now := time.Now()
	records := map[string]any{}
	for id, d := range ages {
		records[id] = map[string]string{"first_seen": now.Add(-d).UTC().Format(time.RFC3339Nano)}
	}
	b, err := json.Marshal(map[string]any{"version": 1, "since": now.UTC().Format(time.RFC3339Nano), "images": records})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// unixHTTP sends one request to a unix socket and returns the status and
// body.
func unixHTTP(t testing.TB, sock, method, uri string, headers map[string]string, body []byte) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	req, err := http.NewRequest(method, "http://docker"+uri, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s on %s: %v", method, uri, sock, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// rootGrant asks the control socket for a grant, as root may: the test
// process plays the reclaimer, to try what another client could do with a
// grant's token.
func rootGrant(t *testing.T, control string, images ...string) string {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"images": images, "critical": 95, "usage": map[string]any{"data_root": "/x", "percent": 99}})
	status, ans := unixHTTP(t, control, "POST", "/reclaim/grants", map[string]string{"Content-Type": "application/json"}, body)
	var a struct{ Token string }
	if status != http.StatusOK || json.Unmarshal([]byte(ans), &a) != nil || a.Token == "" {
		t.Fatalf("POST /reclaim/grants as root = %d %s", status, ans)
	}
	return a.Token
}

// grantClientEnv makes this test binary a grant client (TestMain calls
// askForGrant instead of running the tests), so that asAnotherUser can run
// it as another user.
const grantClientEnv = "PG_E2E_GRANT_CLIENT_SOCKET"

// askForGrant asks the control socket at sock for a grant and prints the
// answer, for asAnotherUser.
func askForGrant(sock string) int {
	body := `{"images":["sha256:` + strings.Repeat("e", 64) + `"],"critical":95,"usage":{"percent":99}}`
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Post("http://prune-guard/reclaim/grants", "application/json", strings.NewReader(body))
	if err != nil {
		fmt.Printf("RESULT: %v\n", err)
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Printf("RESULT: %d %s\n", resp.StatusCode, b)
	return 0
}

// asAnotherUser asks control for a grant from a process of user nobody
// (uid 65534), and returns what it got.
func asAnotherUser(t *testing.T, control string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pgnobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The test binary sits in a root-only build directory.
	self := filepath.Join(dir, "e2e.test")
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(self, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), grantClientEnv+"="+control)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, _ := cmd.CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if r, ok := strings.CutPrefix(l, "RESULT: "); ok {
			return r
		}
	}
	t.Fatalf("the helper printed no result:\n%s", out)
	return ""
}

// criticalHost is a guarded engine on a small disk with a job running
// throughout, a job in its teardown grace, four old images (one tagged
// twice), an image pushed to and pulled from a registry during the run, and
// two new images for the imitation cases.
type criticalHost struct {
	g                                       guard
	disk                                    *enginetest.SmallDisk
	reg                                     *enginetest.Registry
	r                                       reclaimer
	old                                     []string
	jobImg, graceImg, pulled, victim, other string
	// u is the usage the marks are set from; unit one image's share.
	u, unit float64
}

func newCriticalHost(t *testing.T) *criticalHost {
	t.Helper()
	h := &criticalHost{disk: enginetest.NewSmallDisk(t, 352<<20)}
	e, p := enginetest.StartGuarded(t, enginetest.Options{ExtraArgs: h.disk.Args(), PluginArgs: []string{"--run-grace", "10m"}})
	h.g, h.reg = guard{Engine: e, plugin: p}, enginetest.StartRegistry(t)
	build := func(tag string) string {
		return h.g.BuildImage(t, tag, map[string]string{"blob": randomBlob(t, criticalBlob)}, nil)
	}
	for i := 1; i <= 4; i++ {
		h.old = append(h.old, build(fmt.Sprintf("pg-crit-old%d:1", i)))
	}
	// Tagged twice: its extra name goes first, by a grant bound to it.
	h.g.mustAllow(t, "tag", "pg-crit-old2:1", "pg-crit-alias/old2:1")
	h.jobImg, h.graceImg = build("pg-crit-job:1"), build("pg-crit-grace:1")
	pulledRef := h.reg.Addr + "/pg/crit-pulled:1"
	h.pulled = build(pulledRef)
	h.g.mustAllow(t, "push", pulledRef)
	h.victim, h.other = build("pg-crit-victim:1"), build("pg-crit-other:1")

	dir := t.TempDir()
	h.r = reclaimer{bin: enginetest.BuildBinary(t), host: h.g.Host(), state: filepath.Join(dir, "state.json"), audit: filepath.Join(dir, "reclaim.jsonl")}
	// Hours-old images; the victim and the other one are new, so that
	// --min-age keeps them for the imitation cases.
	ages := map[string]time.Duration{h.jobImg: 9 * time.Hour, h.graceImg: 9 * time.Hour, h.pulled: 8 * time.Hour}
	for i, id := range h.old {
		ages[id] = time.Duration(7-i) * time.Hour
	}
	seedState(t, h.r.state, ages)

	// The job, and a job that ended a moment ago (in its grace).
	h.g.mustAllow(t, "run", "-d", "--label", runLabel+"=job-1", "--name", "pg-crit-job", "pg-crit-job:1")
	h.g.mustAllow(t, "run", "--rm", "--label", runLabel+"=job-0", "--name", "pg-crit-gone", "pg-crit-grace:1", "busybox", "true")
	h.g.mustAllow(t, "pull", pulledRef) // during the run: a use
	// The containerd image store may name the pulled manifest, not the
	// one the build made.
	h.pulled = strings.TrimSpace(h.g.mustAllow(t, "image", "inspect", "--format", "{{.Id}}", pulledRef))

	total, _ := h.disk.Usage(t)
	perImage := int64(criticalBlob)
	if h.g.Identity().ContainerdStore {
		perImage *= 2
	}
	h.u, h.unit = h.disk.Percent(t), 100*float64(perImage)/float64(total)
	return h
}

// args are reclaim's arguments with this critical mark; low is three and
// a half images below the usage, high one percent.
func (h *criticalHost) args(critical float64) []string {
	return []string{"--high", pct(h.u - 1), "--low", pct(h.u - 3.6*h.unit), "--critical", pct(critical), "--min-age", "1h",
		"--run-grace", "10m", "--control-socket", h.g.plugin.ControlSocket()}
}

// printed is a mark as reclaim prints it: what pct writes, read back.
func printed(f float64) string {
	v, _ := strconv.ParseFloat(pct(f), 64)
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// A CI job runs throughout. Between --high and --critical reclaim waits for
// it and says so; at or above --critical it frees to --low during the job,
// keeping the job's image, the image of a job in its teardown grace and an
// image pulled from the registry during the run (--min-age), and each of
// its deletes passes the plugin by a grant that the audit log explains. A
// plain "docker rmi" stays refused, and nothing else gets through by
// imitating the reclaimer: a made-up token, a grant for another image, a
// used grant, a process that is not root.
func TestReclaimAboveCriticalDuringARunAndNoOneElsePasses(t *testing.T) {
	t.Parallel()
	h := newCriticalHost(t)
	g := h.g
	t.Run("a plain docker rmi is refused during the job", func(t *testing.T) {
		g.mustDeny(t, []string{"rmi", h.old[0]}, "(rule no-delete-during-run)", "job-1")
	})
	t.Run("a client imitating the reclaimer with a made-up token is refused", func(t *testing.T) {
		status, body := g.HTTP(t, "DELETE", "/images/"+h.old[0], map[string]string{grantHeader: "pgg_0123456789abcdef0123456789abcdef"}, nil)
		if status != http.StatusForbidden || !strings.Contains(body, "(rule no-delete-during-run)") {
			t.Errorf("DELETE with a made-up grant = %d %s; want the run's denial", status, body)
		}
	})
	t.Run("between high and critical it waits for the job and says so", func(t *testing.T) {
		out := h.r.mustRun(t, h.args(h.u+1)...)
		if want := "% used is below --critical " + printed(h.u+1) + "%"; !strings.Contains(out, want) || !strings.Contains(out, "so reclaim waits for the jobs") {
			t.Errorf("output does not say it waits below critical (%q):\n%s", want, out)
		}
		requireImages(t, g, h.old...)
	})
	t.Run("a dry run at critical keeps the jobs' images and what the run pulled", func(t *testing.T) {
		out := h.r.mustRun(t, append(h.args(h.u-0.5), "--dry-run")...)
		for _, want := range []string{
			"acting during them, sparing their images",
			"pg-crit-job:1 (" + shortID(h.jobImg) + "): used by container pg-crit-job (running)",
			"pg-crit-grace:1 (" + shortID(h.graceImg) + "): image of prune-guard run job-0, container pg-crit-gone, in its teardown grace until",
			h.reg.Addr + "/pg/crit-pulled:1 (" + shortID(h.pulled) + "): last used",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("plan lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("at critical it frees to low during the job, each delete by a grant", h.freesToLowByGrants)
	t.Run("a grant for another image, a used grant and a non-root process get nothing", h.imitationsGetNothing)
}

func (h *criticalHost) freesToLowByGrants(t *testing.T) {
	g := h.g
	since, pluginMark := h.r.mark(t), auditMark(t, g)
	before := h.disk.Percent(t)
	h.r.mustRun(t, h.args(h.u-0.5)...)
	after := h.disk.Percent(t)
	if low := h.u - 3.6*h.unit; after > low {
		t.Errorf("usage after reclaim %.2f%%; want at most --low %.2f%%", after, low)
	}
	evs := h.r.events(t, since)
	var removed []string
	for _, l := range withMsg(evs, "reclaim removed image") {
		removed = append(removed, fmt.Sprint(l["image"]))
		if l["granted"] != true {
			t.Errorf("removal without a grant: %v", l)
		}
	}
	if !slices.Equal(removed, h.old) {
		t.Errorf("removed %v; want the four old images, oldest first %v", removed, h.old)
	}
	requireImages(t, g, h.jobImg, h.graceImg, h.pulled, h.victim, h.other)
	auditLine(t, g, pluginMark, map[string]string{"decision": "allow", "operation": "image-delete", "target": "pg-crit-alias/old2:1", "rule": "reclaim-grant"})
	for _, id := range h.old {
		l := auditLine(t, g, pluginMark, map[string]string{"decision": "allow", "operation": "image-delete", "target": id, "rule": "reclaim-grant"})
		if reason := fmt.Sprint(l["reason"]); !strings.Contains(reason, "at or above the critical mark "+printed(h.u-0.5)+"%") || !strings.Contains(reason, "reclaim spares the jobs' images") {
			t.Errorf("the plugin's audit does not say why the delete passed during the job: %q", reason)
		}
		if !anyContains(auditRuns(t, l), "prune-guard run job-1") {
			t.Errorf("the plugin's audit does not name the job: %v", l["runs"])
		}
	}
	pass := withMsg(evs, "reclaim pass")
	if len(pass) != 1 || pass[0]["critical_pass"] != true {
		t.Fatalf("pass lines %v", pass)
	}
	total, _ := h.disk.Usage(t)
	t.Logf("FIGURE: critical pass during a job freed %.1f MiB in %vms: %.1f%% -> %.1f%% of %d MiB (critical %.1f%%, low %.1f%%)",
		pass[0]["freed_bytes"].(float64)/(1<<20), pass[0]["duration_ms"], before, after, total>>20, h.u-0.5, h.u-3.6*h.unit)
}

func (h *criticalHost) imitationsGetNothing(t *testing.T) {
	g, control := h.g, h.g.plugin.ControlSocket()
	token := rootGrant(t, control, h.victim)
	for _, c := range []struct {
		name, target string
		status       int
	}{
		{"another image", h.other, http.StatusForbidden},
		{"the granted image", h.victim, http.StatusOK},
		{"the granted image again: used", h.victim, http.StatusForbidden},
	} {
		if status, body := g.HTTP(t, "DELETE", "/images/"+c.target, map[string]string{grantHeader: token}, nil); status != c.status {
			t.Errorf("%s: DELETE with the grant = %d %s; want %d", c.name, status, body, c.status)
		}
	}
	requireImages(t, g, h.other)
	if got := asAnotherUser(t, control); !strings.Contains(got, "permission denied") {
		t.Errorf("nobody asking the control socket for a grant: %s; want the connection refused", got)
	}
	for _, l := range g.plugin.AuditLines(t) {
		if b, _ := json.Marshal(l); strings.Contains(string(b), strings.TrimPrefix(token, "pgg_")) {
			t.Errorf("the plugin's audit log holds a grant token: %s", b)
		}
	}
}
