package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// managedName is the managed plugin's name as operators install it;
// dockerd reports it with its tag in denials.
const managedName = "prune-guard"

// buildPluginTimeout bounds scripts/build-plugin.sh: a static go build
// (compiling every dependency once when the build cache is cold), a
// FROM scratch image and docker plugin create.
const buildPluginTimeout = 5 * time.Minute

// The managed (v2) plugin, built by scripts/build-plugin.sh from config.json
// and the Dockerfile, on an engine that starts with no authorization plugin
// and is pointed at it the way an operator would: plugin set, plugin enable,
// then "authorization-plugins" in daemon.json and SIGHUP, with no restart.
func TestManagedPluginGuardsARunningEngineAfterReload(t *testing.T) {
	t.Parallel()
	e := enginetest.Start(t, enginetest.Options{})
	auditDir, configDir := t.TempDir(), t.TempDir()

	buildManagedPlugin(t, e)
	t.Cleanup(func() {
		// Runs after the engine is unguarded (cleanups run last first),
		// so that dockerd lets the plugin go.
		if _, stderr, err := e.Docker(t, "plugin", "rm", "--force", managedName); err != nil {
			t.Errorf("removing the managed plugin: %v\n%s", err, stderr)
		}
	})
	// The mounts config.json declares settable, pointed at this engine's
	// socket and at test directories instead of the host's.
	e.MustDocker(t, "plugin", "set", managedName,
		"engine.source="+e.Socket(),
		"audit.source="+auditDir,
		"config.source="+configDir,
		// A short teardown grace, to see it hold a delete and then end.
		"PRUNE_GUARD_RUN_GRACE=3s")
	e.MustDocker(t, "plugin", "enable", managedName)

	n := enginetest.Nonce(t)
	base := "pg-base:" + n
	e.BuildImage(t, base, nil, nil)
	spare := "pg-spare:" + n
	e.BuildImage(t, spare, map[string]string{"spare": n}, nil)
	dangling := e.MakeDangling(t)

	e.Reload(t, map[string]any{"authorization-plugins": []string{managedName}})
	t.Cleanup(func() { e.Reload(t, map[string]any{}) })

	runID, run := "ci-"+n, "pg-run-"+n
	e.MustDocker(t, "run", "--detach", "--label", runLabel+"="+runID, "--name", run, base)

	t.Run("docker rmi of an unused image names the run it found through the mounted engine socket", func(t *testing.T) {
		mustDenyManaged(t, e, []string{"rmi", spare}, "(rule no-delete-during-run)", runID, run)
	})
	t.Run("docker image prune -f names the run", func(t *testing.T) {
		mustDenyManaged(t, e, []string{"image", "prune", "--force"}, "(rule no-prune-during-run)", runID)
	})
	t.Run("docker image prune -af is denied", func(t *testing.T) {
		mustDenyManaged(t, e, []string{"image", "prune", "--all", "--force"}, "(rule no-prune-all)")
	})
	t.Run("docker plugin disable prune-guard is denied", func(t *testing.T) {
		mustDenyManaged(t, e, []string{"plugin", "disable", managedName}, "(rule protect-self)")
		if out := e.MustDocker(t, "plugin", "inspect", "--format", "{{.Enabled}}", managedName); strings.TrimSpace(out) != "true" {
			t.Errorf("plugin enabled = %s after a denied disable; want true", out)
		}
	})
	for _, ref := range []string{base, spare, dangling} {
		if !e.ImageExists(t, ref) {
			t.Errorf("image %s is gone; the managed plugin should have kept it", ref)
		}
	}

	t.Run("the audit log reaches the host through the audit mount", func(t *testing.T) {
		line := waitAuditLine(t, filepath.Join(auditDir, "audit.jsonl"), map[string]string{
			"decision": "deny", "rule": "no-delete-during-run", "operation": "image-delete",
		})
		if runs := auditRuns(t, line); !anyContains(runs, runID) {
			t.Errorf("audit runs = %q, want the active run %s", runs, runID)
		}
	})

	t.Run("once the run ends docker rmi waits out the teardown grace, then works", func(t *testing.T) {
		e.MustDocker(t, "rm", "--force", run)
		if _, stderr, err := e.Docker(t, "rmi", spare); err == nil || !strings.Contains(stderr, "teardown grace") {
			t.Errorf("docker rmi right after the run ended: err %v, stderr %q; want it held by the teardown grace", err, stderr)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, stderr, err := e.Docker(t, "rmi", spare)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("docker rmi still refused 30s after the run ended with a 3s grace: %s", stderr)
			}
			time.Sleep(500 * time.Millisecond)
		}
		if e.ImageExists(t, spare) {
			t.Errorf("image %s still exists after an allowed docker rmi", spare)
		}
	})
}

// buildManagedPlugin runs scripts/build-plugin.sh against e, which leaves
// the plugin created and disabled.
func buildManagedPlugin(t *testing.T, e *enginetest.Engine) {
	t.Helper()
	script, err := filepath.Abs(filepath.Join("..", "scripts", "build-plugin.sh"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildPluginTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script, managedName)
	cmd.Env = e.Env()
	cmd.WaitDelay = 5 * time.Second
	began := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v (after %v)\n%s", script, err, time.Since(began).Round(time.Millisecond), out)
	}
	t.Logf("$ %s => ok (%v)", script, time.Since(began).Round(time.Millisecond))
	if out := e.MustDocker(t, "plugin", "inspect", "--format", "{{.Enabled}} {{.Config.Interface.Types}}", managedName); strings.TrimSpace(out) != "false [docker.authz/1.0]" {
		t.Fatalf("after build-plugin.sh the plugin is %q; want created, disabled, docker.authz/1.0", out)
	}
}

// mustDenyManaged runs the docker CLI and requires a denial by the managed
// plugin that mentions every string in want.
func mustDenyManaged(t *testing.T, e *enginetest.Engine, args []string, want ...string) {
	t.Helper()
	// dockerd names a managed plugin with its tag.
	prefix := "Error response from daemon: authorization denied by plugin " + managedName + ":latest: prune-guard: "
	stdout, stderr, err := e.Docker(t, args...)
	if err == nil {
		t.Fatalf("docker %s succeeded; want it denied by the managed plugin\nstdout: %s\nstderr: %s", strings.Join(args, " "), stdout, stderr)
	}
	if !strings.Contains(stderr, prefix) {
		t.Fatalf("docker %s failed without a denial by the managed plugin: %v\nstderr: %s", strings.Join(args, " "), err, stderr)
	}
	t.Logf("  %s", strings.TrimSpace(stderr))
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("docker %s: denial does not mention %q:\n%s", strings.Join(args, " "), w, stderr)
		}
	}
}

// waitAuditLine waits for a line of the audit file at path with every field
// in want and returns it.
func waitAuditLine(t *testing.T, path string, want map[string]string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(auditTimeout)
	for {
		b, err := os.ReadFile(path)
		if err != nil && !os.IsNotExist(err) {
			t.Fatalf("reading audit log: %v", err)
		}
		for _, raw := range bytes.Split(b, []byte("\n")) {
			var line map[string]any
			if json.Unmarshal(raw, &line) == nil && matches(line, want) {
				return line
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line with %v in %s within %v:\n%s", want, path, auditTimeout, b)
		}
		time.Sleep(50 * time.Millisecond) // polling a file the plugin appends to
	}
}
