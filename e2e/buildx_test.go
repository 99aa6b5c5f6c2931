package e2e

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// A docker CLI with buildx (enginetest.Options.Buildx; no other test asks
// for it) runs "docker builder prune" as "docker buildx prune", which
// speaks BuildKit's control API in gRPC inside POST /grpc (an h2c upgrade:
// buildx's docker driver) instead of sending REST POST /build/prune. The
// plugin classifies the REST request (build-cache prune, --all refused) and
// sees the gRPC one only as a BuildKit stream, so the suite keeps buildx
// away from every other test's CLI. dockerd with --debug names each request
// its router serves; on plain engines (no plugin) the prune must show as
// POST /grpc with buildx, and as POST /build/prune with the CLI every other
// test gets. The CLI hands "docker builder" to buildx by itself from 23.0
// (docker/cli cmd/docker/builder.go); 20.10's does so only after "docker
// buildx install" has written the alias into its config, so with the 20.10
// CLI "docker builder prune" stays REST and "docker buildx prune" is gRPC.
func TestBuildxTurnsBuilderPruneIntoPOSTGrpc(t *testing.T) {
	t.Parallel()
	debug := []string{"--debug"}
	bx := enginetest.Start(t, enginetest.Options{Buildx: true, ExtraArgs: debug})
	version := strings.TrimSpace(bx.MustDocker(t, "buildx", "version"))
	if !strings.Contains(version, "buildx") {
		t.Fatalf("docker buildx version printed %q; want buildx's version", version)
	}
	cli := strings.TrimSpace(bx.MustDocker(t, "version", "--format", "{{.Client.Version}}"))
	t.Logf("%s; CLI %s; %s", bx.Identity(), cli, version)

	want, wantNot := "POST /grpc", "POST /build/prune"
	if major, _, _ := strings.Cut(cli, "."); major == "20" || major == "19" {
		want, wantNot = wantNot, want
	}
	calls := pruneCalls(t, bx, "builder")
	if !slices.Contains(calls, want) || slices.Contains(calls, wantNot) {
		t.Errorf("docker builder prune with buildx (CLI %s): dockerd served %v; want %s and no %s\n%s", cli, calls, want, wantNot, bx.LogTail())
	}
	calls = pruneCalls(t, bx, "buildx")
	if !slices.Contains(calls, "POST /grpc") || slices.Contains(calls, "POST /build/prune") {
		t.Errorf("docker buildx prune: dockerd served %v; want POST /grpc and no POST /build/prune\n%s", calls, bx.LogTail())
	}

	// The default CLI: no buildx in its configuration (a host that has
	// buildx in a system plugin folder shows it anyway), and BuildKit off,
	// which keeps "docker builder" from buildx even then.
	def := enginetest.Start(t, enginetest.Options{ExtraArgs: debug})
	if out, stderr, err := def.Docker(t, "buildx", "version"); err == nil {
		t.Logf("without Options.Buildx the CLI still finds buildx (a system plugin folder): %s", strings.TrimSpace(out))
	} else {
		t.Logf("without Options.Buildx: %s", strings.TrimSpace(stderr))
	}
	calls = pruneCalls(t, def, "builder")
	if !slices.Contains(calls, "POST /build/prune") || slices.Contains(calls, "POST /grpc") {
		t.Errorf("docker builder prune without buildx: dockerd served %v; want POST /build/prune and no POST /grpc\n%s", calls, def.LogTail())
	}
}

// pruneCalls runs "docker CMD prune -f" on e (started with --debug) and
// returns the requests dockerd's router served meanwhile.
func pruneCalls(t testing.TB, e *enginetest.Engine, cmd string) []string {
	t.Helper()
	mark := len(e.Log(t))
	out := e.MustDocker(t, cmd, "prune", "-f")
	calls := routerCalls(e.Log(t)[mark:])
	t.Logf("docker %s prune -f printed %q; dockerd served %s", cmd, strings.TrimSpace(out), strings.Join(calls, ", "))
	return calls
}

// The line dockerd --debug logs for each request its router serves:
// 'msg="Calling POST /v1.41/grpc"' up to 20.10, 'msg="handling POST
// request" method=POST module=api request-url=/grpc' from 23.0.
var (
	callingRE  = regexp.MustCompile(`msg="Calling ([A-Z]+) (/[^"\s?]*)`)
	handlingRE = regexp.MustCompile(`msg="handling [A-Z]+ request" .*\bmethod=([A-Z]+) .*\brequest-url="?(/[^"\s?]*)`)
)

// routerCalls returns the requests in a dockerd --debug log, as "METHOD
// PATH" without the API version prefix or the query.
func routerCalls(log string) []string {
	var calls []string
	for _, line := range strings.Split(log, "\n") {
		m := callingRE.FindStringSubmatch(line)
		if m == nil {
			m = handlingRE.FindStringSubmatch(line)
		}
		if m != nil {
			calls = append(calls, m[1]+" "+stripAPIVersion(m[2]))
		}
	}
	return calls
}

// apiVersionRE matches a path's API version prefix, "/v1.51".
var apiVersionRE = regexp.MustCompile(`^/v[0-9]+\.[0-9]+/`)

func stripAPIVersion(path string) string {
	if loc := apiVersionRE.FindStringIndex(path); loc != nil {
		return path[loc[1]-1:]
	}
	return path
}
