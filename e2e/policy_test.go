package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// startGuardWithPolicy starts a guarded engine whose plugin reads the policy
// file at path (written before start when content is not empty).
func startGuardWithPolicy(t *testing.T, path, content string, args ...string) guard {
	t.Helper()
	if content != "" {
		writePolicy(t, path, content)
	}
	e, p := enginetest.StartGuarded(t, enginetest.Options{PluginArgs: append([]string{"--policy", path}, args...)})
	return guard{Engine: e, plugin: p}
}

func writePolicy(t *testing.T, path, content string) {
	t.Helper()
	// Write then rename, as an editor or config management would, so the
	// plugin never reads half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestProtectedImagesCannotBeDeletedByTagIDOrDigest(t *testing.T) {
	t.Parallel()
	reg := enginetest.StartRegistry(t)
	policy := `protect:
  images: ["` + reg.Addr + `/base/*"]
  labels: [prune-guard.keep=true]
`
	g := startGuardWithPolicy(t, filepath.Join(t.TempDir(), "policy.yaml"), policy)

	base := reg.Addr + "/base/tool:1"
	g.BuildImage(t, base, map[string]string{"base": "1"}, nil)
	g.mustAllow(t, "push", base)
	digestRef := strings.TrimSpace(g.mustAllow(t, "image", "inspect", "--format", "{{index .RepoDigests 0}}", base))
	id := strings.TrimSpace(g.mustAllow(t, "image", "inspect", "--format", "{{.ID}}", base))
	kept := "pg-kept:1"
	g.BuildImage(t, kept, map[string]string{"kept": "1"}, map[string]string{"prune-guard.keep": "true"})
	other := "pg-other:1"
	g.BuildImage(t, other, map[string]string{"other": "1"}, nil)

	for _, ref := range []string{base, digestRef, id, strings.TrimPrefix(id, "sha256:")[:12], kept} {
		t.Run("rmi "+ref, func(t *testing.T) {
			g.mustDeny(t, []string{"rmi", "-f", ref}, "(rule keep-protected)")
		})
	}
	requireImages(t, g, base, digestRef, kept)
	g.mustAllow(t, "rmi", other)
	requireGone(t, g, other)
}

func TestWarnModeLetsPruneThroughAndRecordsWouldDeny(t *testing.T) {
	t.Parallel()
	g := startGuardWithPolicy(t, filepath.Join(t.TempDir(), "policy.yaml"), "mode: warn\n")
	victim := buildVictim(t, g)
	mark := auditMark(t, g)
	g.mustAllow(t, "image", "prune", "-af")
	requireGone(t, g, victim)
	l := auditLine(t, g, mark, map[string]string{"decision": "would-deny", "rule": "no-prune-all", "operation": "image-prune-all"})
	requireAuditFields(t, l)
}

func TestPolicyReloadsOnChangeAndKeepsTheOldOneWhenInvalid(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	// No file yet: --policy-optional starts on the built-in policy.
	g := startGuardWithPolicy(t, path, "", "--policy-optional", "--policy-poll", "100ms")
	g.mustDeny(t, []string{"image", "prune", "-af"}, "(rule no-prune-all)")

	mark := auditMark(t, g)
	writePolicy(t, path, "mode: warn\n")
	auditLine(t, g, mark, map[string]string{"msg": "policy loaded"})
	victim := buildVictim(t, g)
	g.mustAllow(t, "image", "prune", "-af")
	requireGone(t, g, victim)

	mark = auditMark(t, g)
	writePolicy(t, path, "mode: warn\nrules: [\n")
	auditLine(t, g, mark, map[string]string{"msg": "policy rejected"})
	victim = buildVictim(t, g)
	g.mustAllow(t, "image", "prune", "-af") // still the warn policy
	requireGone(t, g, victim)
}

func TestSIGHUPReloadsThePolicy(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	// Poll too slowly to matter: only SIGHUP can bring the change in time.
	g := startGuardWithPolicy(t, path, "mode: warn\n", "--policy-poll", "1h")
	victim := buildVictim(t, g)
	g.mustAllow(t, "image", "prune", "-af")
	requireGone(t, g, victim)

	writePolicy(t, path, "mode: enforce\n")
	mark := auditMark(t, g)
	g.plugin.Signal(t, syscall.SIGHUP)
	l := auditLine(t, g, mark, map[string]string{"msg": "policy loaded"})
	if l["policy"] == nil {
		t.Errorf("a reload must be audited with the policy's hash: %v", l)
	}
	victim = buildVictim(t, g)
	g.mustDeny(t, []string{"image", "prune", "-af"}, "(rule no-prune-all)")
	requireImages(t, g, victim)
}

func TestStatusShowsRunsPolicyAndCounters(t *testing.T) {
	t.Parallel()
	g := startGuard(t)
	img := buildVictim(t, g)
	g.mustAllow(t, "run", "-d", "--name", "job-web", "--label", runLabel+"=job-77", img)
	g.mustDeny(t, []string{"image", "prune", "-af"})

	deadline := time.Now().Add(10 * time.Second)
	var out []byte
	var err error
	for time.Now().Before(deadline) {
		cmd := exec.Command(enginetest.BuildBinary(t), "status", "--socket", g.plugin.Socket(), "--docker-host", g.Host())
		if out, err = cmd.CombinedOutput(); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	for _, want := range []string{"active: prune-guard run job-77, container job-web (detector prune-guard: run labels prune-guard.run)", "Policy: built-in default", "no-prune-all", "denied 1"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}
