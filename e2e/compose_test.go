package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prune-guard/prune-guard/internal/enginetest"
	"github.com/prune-guard/prune-guard/rules"
)

// docker compose v2, the real client (Engine.Compose: the engine's CLI with
// its compose plugin), on a project whose services are a CI job's: one
// service carries the prune-guard run label, the other GitLab's job label.
// "down --rmi all" removes the containers and the network, then asks to
// delete every service image (docker/compose pkg/compose/down.go): those
// deletes come after the job's last container is gone, inside the default
// teardown grace, and are refused; the images survive, so a redeploy needs
// no build and no pull (there is no registry here: a pull would fail).
func TestComposeDownRmiAllLeavesTheJobProjectsImagesForTheRedeploy(t *testing.T) {
	t.Parallel()
	e, p := enginetest.StartGuarded(t, enginetest.Options{PluginArgs: composePluginArgs})
	composeDownRmiAll(t, guard{Engine: e, plugin: p})
}

// composePluginArgs give prune-guard the default teardown grace.
var composePluginArgs = []string{"--run-grace", rules.DefaultGrace.String()}

// composeDownRmiAll runs the compose project's cycle on g (a plugin's or a
// proxy's): up, down --rmi all inside the grace, up again.
func composeDownRmiAll(t *testing.T, g guard) {
	t.Helper()
	e := g.Engine
	e.ComposePath(t)
	n := enginetest.Nonce(t)
	web, worker := "pg-compose-web:"+n, "pg-compose-worker:"+n
	g.BuildImage(t, web, map[string]string{"web": n}, nil)
	g.BuildImage(t, worker, map[string]string{"worker": n}, nil)
	project := "pgci" + n
	dir := t.TempDir()
	file := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(file, []byte(`services:
  web:
    image: `+web+`
    labels:
      prune-guard.run: job-`+n+`
    stop_signal: SIGKILL
  worker:
    image: `+worker+`
    labels:
      com.gitlab.gitlab-runner.job.id: "4711"
    stop_signal: SIGKILL
`), 0o644); err != nil {
		t.Fatal(err)
	}
	compose := func(args ...string) (string, error) {
		t.Helper()
		stdout, stderr, err := e.Compose(t, append([]string{"-f", file, "-p", project}, args...)...)
		out := strings.TrimSpace(stdout + "\n" + stderr)
		t.Logf("$ docker compose %s => %s\n%s", strings.Join(args, " "), errText(err), out)
		return out, err
	}
	running := func() []string {
		t.Helper()
		return strings.Fields(g.mustAllow(t, "ps", "-q", "--filter", "label=com.docker.compose.project="+project))
	}
	t.Cleanup(func() { compose("down", "--timeout", "0") })

	if _, err := compose("up", "-d"); err != nil {
		t.Fatalf("compose up: %v", err)
	}
	if c := running(); len(c) != 2 {
		t.Fatalf("compose up started %d containers, want 2", len(c))
	}
	if out := pgStatus(t, g); !strings.Contains(out, "active: prune-guard run job-"+n) || !strings.Contains(out, "active: GitLab job 4711") {
		t.Errorf("status does not name both services' jobs:\n%s", out)
	}

	mark := auditMark(t, g)
	out, err := compose("down", "--rmi", "all")
	// compose's own exit status for a refused image removal differs
	// between versions; what counts is what is left on the engine.
	t.Logf("compose down --rmi all exit: %s", errText(err))
	if c := running(); len(c) != 0 {
		t.Errorf("compose down left %d containers running", len(c))
	}
	if networkExists(t, g, project+"_default") {
		t.Errorf("compose down left the network %s_default", project)
	}
	requireImages(t, g, web, worker)
	if !strings.Contains(out, "during a CI job's teardown grace") {
		t.Errorf("compose's output does not show the grace denial")
	}
	for _, img := range []string{web, worker} {
		line := auditLine(t, g, mark, map[string]string{"decision": "deny", "operation": "image-delete", "target": img})
		if runs := auditRuns(t, line); !anyContains(runs, "prune-guard run job-"+n) || !anyContains(runs, "GitLab job 4711") {
			t.Errorf("audit runs for the delete of %s = %q; want both ended jobs", img, runs)
		}
	}

	// The redeploy: the images are there, nothing is built or pulled.
	out, err = compose("up", "-d")
	if err != nil {
		t.Fatalf("compose up after down --rmi all: %v", err)
	}
	for _, w := range []string{"Pull", "pull", "Build", "build"} {
		if strings.Contains(out, w) {
			t.Errorf("the redeploy's output mentions %q: it should have found both images", w)
		}
	}
	if c := running(); len(c) != 2 {
		t.Errorf("the redeploy started %d containers, want 2", len(c))
	}
}
