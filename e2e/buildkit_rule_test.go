package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// docs/threat-model.md's optional rule: appended to the built-in rules, it
// refuses BuildKit's connection takeovers (/session and /grpc), inside
// which a build-cache prune would be invisible to prune-guard, and leaves
// the classic builder, BuildKit builds that need no session, and every
// other rule working.
func TestNoBuildkitStreamRuleRefusesSessionsAndKeepsTheRest(t *testing.T) {
	t.Parallel()
	bin := enginetest.BuildBinary(t)
	def, err := exec.Command(bin, "policy", "default").Output()
	if err != nil {
		t.Fatalf("prune-guard policy default: %v", err)
	}
	policy := string(def) + "  - name: no-buildkit-stream\n    match: [buildkit-stream]\n    action: deny\n" +
		"    message: \"BuildKit sessions can prune the build cache unseen; use the classic builder (DOCKER_BUILDKIT=0)\"\n"
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "check", path).CombinedOutput(); err != nil {
		t.Fatalf("prune-guard check: %v\n%s", err, out)
	}
	e, p := enginetest.StartGuarded(t, enginetest.Options{PluginArgs: []string{"--policy", path}})
	g := guard{Engine: e, plugin: p}

	for _, r := range []wireReq{
		post("/v1.41/session", "Upgrade: h2c", "Connection: Upgrade", "X-Docker-Expose-Session-Uuid: pg"),
		post("/grpc", "Upgrade: h2c", "Connection: Upgrade"),
	} {
		rs := send(t, g.Engine, r)
		if msg, denied := denialOf(rs[0]); !denied || !strings.Contains(msg, "(rule no-buildkit-stream)") {
			t.Errorf("%s %s = %d %q; want no-buildkit-stream's denial", r.method, r.target, rs[0].status, rs[0].body)
		}
	}

	// The classic builder works (the docker CLI with DOCKER_BUILDKIT=0).
	g.BuildImage(t, "pg-classic:1", map[string]string{"f": "classic"}, nil)
	// A BuildKit build with its context in the request body needs no
	// session, so the rule lets it run. On Docker 29.5 and later any
	// authorization plugin breaks such builds: the build route asks for
	// full-duplex HTTP to read the context while it answers (moby commit
	// 70ac493e97, daemon/server/router/build/build_routes.go), the authz
	// middleware's response writer (pkg/authorization/response.go) does not
	// offer it, and Go's server closes the body at the first response
	// byte. The request still passes prune-guard; the daemon fails it.
	a := newAPI(t, g.Engine)
	ctx := tarOf(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY f /f\n", "f": enginetest.Nonce(t)})
	out := a.must("POST", "/build?version=2&t=pg-bk-nosession:1", "application/x-tar", ctx)
	built := []string{"pg-classic:1"}
	if id := g.Identity(); id.AtLeastDocker29(5) {
		if !strings.Contains(string(out), "invalid Read on closed Body") {
			t.Errorf("%s: BuildKit build with its context in the body under an authz plugin = %s; want dockerd's own failure to read the context", id, out)
		}
	} else {
		if strings.Contains(string(out), `"error"`) {
			t.Errorf("BuildKit build without a session failed: %s", out)
		}
		built = append(built, "pg-bk-nosession:1")
	}
	// The other rules still hold: builder prune -a is refused, builder
	// prune passes.
	g.mustDeny(t, []string{"builder", "prune", "-af"}, "(rule no-build-prune-all)")
	g.mustAllow(t, "builder", "prune", "-f")
	requireImages(t, g, built...)
}
