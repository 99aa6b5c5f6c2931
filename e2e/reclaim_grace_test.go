package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// The reclaimer honours the teardown grace as a delete does: right after a
// CI job's container is removed, "prune-guard reclaim" (a one-shot run,
// which learns the end from dockerd's replay of its recent events, without
// the plugin's watch) refuses, naming the job in its grace and when deletes
// resume, and removes nothing; after the grace the same run removes the
// stale image. --max-unused with --min-age 0s makes it act without disk
// pressure (reclaim/plan.go refuses only when something is due), so no
// small disk is needed.
func TestReclaimRefusesWhileAJobIsInItsTeardownGraceAndActsAfter(t *testing.T) {
	t.Parallel()
	g := startGraceGuard(t, shortGrace)
	dir := t.TempDir()
	base := "pg-rcg-base:1"
	g.BuildImage(t, base, nil, nil)
	stale := g.BuildImage(t, "pg-rcg-stale:1", map[string]string{"stale": enginetest.Nonce(t)}, nil)

	// The stale image has been on the host, unused, for three hours.
	seed, err := json.Marshal(map[string]any{"version": 1, "since": time.Now().UTC().Format(time.RFC3339Nano),
		"images": map[string]any{stale: map[string]string{"first_seen": time.Now().Add(-3 * time.Hour).UTC().Format(time.RFC3339Nano)}}})
	if err != nil {
		t.Fatal(err)
	}
	r := reclaimer{bin: enginetest.BuildBinary(t), host: g.Host(), state: filepath.Join(dir, "state.json"), audit: filepath.Join(dir, "reclaim.jsonl")}
	if err := os.WriteFile(r.state, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--high", "99", "--low", "98", "--max-unused", "1h", "--min-age", "0s", "--run-grace", shortGrace.String()}

	n := enginetest.Nonce(t)
	j := ciJob{detector: "gitlab", name: "runner-t3stt0k3-project-42-concurrent-0-" + n + "-build", running: true,
		labels: []string{"com.gitlab.gitlab-runner.job.id=4711", gitlabManaged, "com.gitlab.gitlab-runner.type=build"},
		job:    "GitLab job 4711, container runner-t3stt0k3-project-42-concurrent-0-" + n + "-build"}
	remove := startJob(t, g, j, base)
	out := r.mustRun(t, args...)
	if want := "refused: a CI job holds image deletes: active " + j.job; !strings.Contains(out, want) {
		t.Errorf("while the job runs: output lacks %q", want)
	}
	remove()

	out = r.mustRun(t, args...)
	for _, want := range []string{"refused: a CI job holds image deletes: in its teardown grace: " + j.job + " ended at ",
		"image deletes and image prunes resume at ", "nothing is removed until it ends"} {
		if !strings.Contains(out, want) {
			t.Errorf("right after the job ended: output lacks %q", want)
		}
	}
	refused := withMsg(r.events(t, 0), "reclaim refused")
	if len(refused) != 2 || !strings.Contains(fmt.Sprint(refused[1]["reason"]), "in its teardown grace: "+j.job) {
		t.Errorf("audit: want two 'reclaim refused' lines, the second naming the job in its grace; have %v", refused)
	}
	if !g.ImageExists(t, stale) {
		t.Fatalf("the stale image is gone while a job was in its grace")
	}

	deadline := time.Now().Add(graceBound(shortGrace))
	for g.ImageExists(t, stale) {
		if time.Now().After(deadline) {
			t.Fatalf("reclaim still had not removed the stale image %v after the job ended", graceBound(shortGrace))
		}
		time.Sleep(time.Second) // each run costs a process and a replay
		out = r.mustRun(t, args...)
		if strings.Contains(out, "refused: ") && !strings.Contains(out, "in its teardown grace: "+j.job) {
			t.Fatalf("reclaim refused for another reason:\n%s", out)
		}
	}
	if removed := withMsg(r.events(t, 0), "reclaim removed image"); len(removed) != 1 || removed[0]["image"] != stale {
		t.Errorf("audit: want one 'reclaim removed image' line for the stale image; have %v", removed)
	}
	requireImages(t, g, base)
}
