package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
	"github.com/prune-guard/prune-guard/rules"
)

// testcontainers-go, the real client, lives in its own module
// (e2e/testcontainers) so that it and its dependencies stay out of
// prune-guard's go.mod. This test starts the guarded engine and runs that
// module's test against it: go test fetches the module through the Go
// module proxy on first use. The reaper (Ryuk) is disabled: its image
// cannot be pulled here; the nested test terminates its container itself,
// as the reaper would at the session's end.
func TestTestcontainersGoSessionHoldsImageDeletesThroughItsTeardown(t *testing.T) {
	t.Parallel()
	e, p := enginetest.StartGuarded(t, enginetest.Options{PluginArgs: testcontainersPluginArgs})
	testcontainersSession(t, guard{Engine: e, plugin: p})
}

// testcontainersPluginArgs give prune-guard the default teardown grace.
var testcontainersPluginArgs = []string{"--run-grace", rules.DefaultGrace.String()}

// testcontainersSession runs the nested module's testcontainers-go session
// against g (a plugin's or a proxy's: DOCKER_HOST is g's), then checks that
// the session is held in its teardown grace.
func testcontainersSession(t *testing.T, g guard) {
	t.Helper()
	e := g.Engine
	n := enginetest.Nonce(t)
	image, victim := "pg-tc-app:"+n, "pg-tc-victim:"+n
	g.BuildImage(t, image, map[string]string{"app": n}, nil)
	g.BuildImage(t, victim, map[string]string{"victim": n}, nil)
	outFile := filepath.Join(t.TempDir(), "session")

	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "test", "-count=1", "-v", "-run", "TestSessionContainerCarriesItsSessionLabel", ".")
	cmd.Dir = "testcontainers"
	cmd.Env = append(os.Environ(),
		"DOCKER_HOST="+e.Host(),
		"PG_TC_DOCKER_HOST="+e.Host(),
		"PG_TC_IMAGE="+image,
		"PG_TC_VICTIM="+victim,
		"PG_TC_OUT="+outFile,
		"TESTCONTAINERS_RYUK_DISABLED=true",
	)
	out, err := cmd.CombinedOutput()
	t.Logf("$ (cd e2e/testcontainers && go test -run TestSessionContainerCarriesItsSessionLabel .) => %s\n%s", errText(err), out)
	if err != nil {
		t.Fatalf("the testcontainers-go test failed")
	}
	if strings.Contains(string(out), "SKIP") {
		t.Fatalf("the testcontainers-go test skipped")
	}
	b, err := os.ReadFile(outFile)
	if err != nil {
		t.Fatalf("the nested test wrote no session id: %v", err)
	}
	session, container, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	job := "Testcontainers session " + session + ", container " + container

	// After the session's container went: status and a delete name the
	// session in its teardown grace, and the images are all there.
	if st := pgStatus(t, g); !strings.Contains(st, "in teardown grace: "+job+" (ended ") {
		t.Errorf("status does not list %q in its teardown grace:\n%s", job, st)
	}
	g.mustDeny(t, []string{"rmi", victim}, graceDenial(job)...)
	mark := 0
	line := auditLine(t, g, mark, map[string]string{"decision": "deny", "operation": "image-delete", "target": victim})
	if runs := auditRuns(t, line); !anyContains(runs, "Testcontainers session "+session) {
		t.Errorf("audit runs = %q; want the session", runs)
	}
	requireImages(t, g, image, victim)
}
