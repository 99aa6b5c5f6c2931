package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// restartable is a private engine whose prune-guard the test stops and
// starts again on the same socket (e2e/procs_test.go's servedPlugin). The
// plugin reaches the engine through a forwarding socket, because dockerd
// will not start before its authorization plugin answers and the plugin
// must be told the engine's address first.
type restartable struct {
	*enginetest.Engine
	p     *servedPlugin
	audit string
}

func startRestartable(t *testing.T, args ...string) restartable {
	t.Helper()
	fake := startFakeEngine(t)
	audit := filepath.Join(t.TempDir(), "audit.jsonl")
	p := newServedPlugin(t, false, append([]string{"--docker-host", fake.host(), "--audit-log", audit}, args...)...)
	p.start()
	e := enginetest.Start(t, enginetest.Options{ExtraArgs: []string{"--authorization-plugin=" + p.name}})
	fake.upstream.Store(e.Socket())
	return restartable{Engine: e, p: p, audit: audit}
}

// restart stops the plugin (SIGTERM, as systemctl restart does) and starts
// a new process on the same socket; the new one knows only what the engine
// tells it.
func (r restartable) restart(t *testing.T) {
	t.Helper()
	old := r.p.pid()
	r.p.kill(syscall.SIGTERM)
	r.p.start()
	t.Logf("prune-guard restarted: pid %d -> %d", old, r.p.pid())
}

// deny runs the docker CLI and requires a prune-guard denial; it returns
// the denial.
func (r restartable) deny(t *testing.T, args ...string) string {
	t.Helper()
	_, stderr, err := r.Docker(t, args...)
	prefix := "authorization denied by plugin " + r.p.name + ": prune-guard: "
	if err == nil || !strings.Contains(stderr, prefix) {
		t.Fatalf("docker %s: %v %s; want a prune-guard denial", strings.Join(args, " "), err, stderr)
	}
	return strings.TrimSpace(stderr)
}

// denyCaughtUp is deny once the restarted plugin has read the engine's
// replay: until then every grace operation is refused as blind since now
// ("has not yet received the engine's events"), which says nothing about
// what the replay covers.
func (r restartable) denyCaughtUp(t *testing.T, args ...string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		d := r.deny(t, args...)
		if !strings.Contains(d, "has not yet received the engine's events") {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted plugin has not caught up with the engine's events within 15 s:\n%s", d)
		}
		time.Sleep(100 * time.Millisecond) // the replay takes as long as the engine takes to send it
	}
}

// lastAuditRuns returns the runs field of the last audit line with every
// field in want.
func (r restartable) lastAuditRuns(t *testing.T, want map[string]string) []string {
	t.Helper()
	deadline := time.Now().Add(auditTimeout)
	for {
		b, err := os.ReadFile(r.audit)
		if err != nil {
			t.Fatal(err)
		}
		var found map[string]any
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && matches(m, want) {
				found = m
			}
		}
		if found != nil {
			return auditRuns(t, found)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no audit line with %v in %s", want, r.audit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A prune-guard restarted within a job's teardown grace must not forget the
// job: it learns the end again from dockerd's replay of its last 256 events.
// When more than 256 events have happened since, the replay cannot reach
// back to the start of the grace window: the denial then says prune-guard
// cannot tell whether a job ended, and the audit record lists the unseen
// stretch.
func TestRestartedPruneGuardHoldsAnEndedJobFromTheReplayOrSaysItCannotTell(t *testing.T) {
	t.Parallel()
	r := startRestartable(t, "--run-grace", "2m")
	r.BuildImage(t, "pg-restart-base:1", nil, nil)
	victim := "pg-restart-victim:1"
	r.BuildImage(t, victim, map[string]string{"victim": "1"}, nil)
	n := enginetest.Nonce(t)
	name := "runner-t3stt0k3-project-42-concurrent-0-" + n + "-build"
	r.MustDocker(t, "run", "-d", "--name", name, "--label", "com.gitlab.gitlab-runner.job.id=4711",
		"--label", gitlabManaged, "--label", "com.gitlab.gitlab-runner.type=build", "pg-restart-base:1")
	t.Cleanup(func() { r.Docker(t, "rm", "-f", name) })
	job := "GitLab job 4711, container " + name
	r.MustDocker(t, "rm", "-f", name)
	t.Logf("before the restart: %s", r.deny(t, "rmi", victim))

	t.Run("after a restart the replay still shows the ended job", func(t *testing.T) {
		r.restart(t)
		d := r.denyCaughtUp(t, "rmi", victim)
		t.Logf("after the restart: %s", d)
		for _, w := range graceDenial(job) {
			if !strings.Contains(d, w) {
				t.Errorf("denial after the restart does not mention %q:\n%s", w, d)
			}
		}
		if strings.Contains(d, "cannot tell") {
			t.Errorf("denial after the restart is blind although the replay covered the window:\n%s", d)
		}
		if runs := r.lastAuditRuns(t, map[string]string{"decision": "deny", "operation": "image-delete"}); !anyContains(runs, job+" (ended ") {
			t.Errorf("audit runs after the restart = %q; want %q as ended", runs, job)
		}
		if !r.ImageExists(t, victim) {
			t.Errorf("%s is gone", victim)
		}
	})

	t.Run("past 256 events the restarted plugin says it cannot tell", func(t *testing.T) {
		// 320 events since the job ended: a volume create and remove
		// each (cheap: a directory), through the plugin, which allows
		// both.
		for i := range 160 {
			v := fmt.Sprintf("pg-ev-%s-%d", n, i)
			if st, body := r.HTTP(t, "POST", "/volumes/create", map[string]string{"Content-Type": "application/json"}, []byte(`{"Name":"`+v+`"}`)); st != 201 {
				t.Fatalf("volume create = %d %s", st, body)
			}
			if st, body := r.HTTP(t, "DELETE", "/volumes/"+v, nil, nil); st != 204 {
				t.Fatalf("volume remove = %d %s", st, body)
			}
		}
		r.restart(t)
		d := r.denyCaughtUp(t, "rmi", victim)
		t.Logf("after 320 events and a restart: %s", d)
		for _, w := range []string{"is blocked during a CI job's teardown grace (rule no-delete-during-run)",
			"prune-guard cannot tell whether a CI job ended before ",
			"the engine keeps only its last 256 events and prune-guard missed those before ",
			"image deletes and image prunes resume at "} {
			if !strings.Contains(d, w) {
				t.Errorf("denial does not mention %q:\n%s", w, d)
			}
		}
		runs := r.lastAuditRuns(t, map[string]string{"decision": "deny", "operation": "image-delete"})
		if !anyContains(runs, "unseen: whether a job ended before ") || !anyContains(runs, "counted as active until ") {
			t.Errorf("audit runs = %q; want the unseen stretch", runs)
		}
		t.Logf("audit runs: %q", runs)
		r.deny(t, "image", "prune", "-f")
		// Blindness holds images only: the next job's scoped prunes pass.
		r.MustDocker(t, "network", "prune", "-f", "--filter", "label=com.gitlab.gitlab-runner.job.id=4711")
		r.MustDocker(t, "container", "prune", "-f")
		if !r.ImageExists(t, victim) {
			t.Errorf("%s is gone", victim)
		}
	})
}
