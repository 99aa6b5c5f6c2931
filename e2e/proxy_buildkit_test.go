package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// BuildKit through the proxy, where an authorization plugin sees nothing
// or breaks what it sees: buildx's control tunnel (POST /grpc), native gRPC
// on the socket (Docker 29.2+), and builds whose context is the request
// body in full duplex (Docker 29.5+).

// buildPruneAllRefusal is how prune-guard refuses a prune of the whole
// build cache, REST or gRPC.
const buildPruneAllRefusal = "prune-guard: build cache prune --all is blocked (rule no-build-prune-all)"

// grpcRefusal is how a gRPC client (buildx) shows a call prune-guard
// refused.
const grpcRefusal = "code = PermissionDenied desc = prune-guard: "

// mustRefuse runs the docker CLI and requires it to fail with prune-guard's
// refusal in either form a client gets it: dockerd's words for a plugin's
// denial (REST), or PERMISSION_DENIED (gRPC, which buildx speaks), with
// every string in want.
func (g guard) mustRefuse(t testing.TB, args []string, want ...string) string {
	t.Helper()
	stdout, stderr, err := g.Docker(t, args...)
	if err == nil {
		t.Fatalf("docker %s succeeded; want it refused by prune-guard\nstdout: %s\nstderr: %s", strings.Join(args, " "), stdout, stderr)
	}
	if !strings.Contains(stderr, g.denialPrefix()) && !strings.Contains(stderr, grpcRefusal) {
		t.Fatalf("docker %s failed without prune-guard's refusal: %v\nstderr: %s", strings.Join(args, " "), err, stderr)
	}
	t.Logf("  %s", strings.TrimSpace(stderr))
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("docker %s: the refusal does not mention %q:\n%s", strings.Join(args, " "), w, stderr)
		}
	}
	return stderr
}

// A CLI with buildx builds through the proxy (buildx's docker driver: the
// /grpc tunnel and the /session tunnel), and its prunes of the whole build
// cache, which an authorization plugin sees only as POST /grpc, are
// refused with prune-guard's reason: "docker builder prune -af" (gRPC from
// CLI 23.0 on, REST with 20.10's) and "docker buildx prune -af". BuildKit's
// cache, counted on the engine's own socket, is kept. A prune within a
// storage budget passes while no job is active, and is refused while one
// is; so does a prune without --all.
func TestProxyRefusesBuildCachePrunesOfEverythingInsideBuildKitsTunnel(t *testing.T) {
	t.Parallel()
	g := startProxyGuard(t, enginetest.Options{Buildx: true})
	e := g.proxy.Engine()
	base := "pg-px-bxbase:1"
	g.BuildImage(t, base, nil, nil)
	n := enginetest.Nonce(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"Dockerfile": "FROM " + base + "\nCOPY f /f\n", "f": n})
	g.mustAllow(t, "buildx", "build", "--tag", "pg-px-bx:1", dir)
	if out := g.mustAllow(t, "run", "--rm", "pg-px-bx:1", "busybox", "cat", "/f"); out != n {
		t.Errorf("the image buildx built through the proxy has /f = %q; want %q", out, n)
	}
	cache := buildCacheRecords(t, e)
	if cache == 0 {
		t.Fatalf("the buildx build left no build cache (GET /system/df on the engine's own socket)")
	}

	for _, args := range [][]string{
		{"builder", "prune", "-af"},
		{"buildx", "prune", "-af"},
	} {
		t.Run("docker "+strings.Join(args, " "), func(t *testing.T) {
			mark := auditMark(t, g)
			g.mustRefuse(t, args, buildPruneAllRefusal)
			auditLine(t, g, mark, map[string]string{"decision": "deny", "rule": "no-build-prune-all"})
			if after := buildCacheRecords(t, e); after != cache {
				t.Errorf("build cache went %d -> %d records; want it kept", cache, after)
			}
		})
	}

	// buildx 0.29 sends --reserved-space (formerly --keep-storage) as
	// PruneRequest's reservedSpace, the field older BuildKits read as
	// keepBytes.
	budgeted := []string{"buildx", "prune", "-f", "--reserved-space", "1GB"}
	t.Run("a budgeted buildx prune while a job runs", func(t *testing.T) {
		j := builtinJobs(enginetest.Nonce(t))[0]
		remove := startJob(t, g, j, base)
		g.mustRefuse(t, budgeted, "(rule no-prune-during-run)", "active "+j.job)
		remove()
	})
	t.Run("a budgeted buildx prune with no job", func(t *testing.T) {
		mark := auditMark(t, g)
		g.mustAllow(t, budgeted...)
		auditLine(t, g, mark, map[string]string{"decision": "allow", "uri": "/moby.buildkit.v1.Control/Prune"})
		if after := buildCacheRecords(t, e); after != cache {
			t.Errorf("build cache went %d -> %d records; a 1 GB budget should keep every record", cache, after)
		}
	})
	// Without --all BuildKit keeps what images share: the same decision as
	// REST "docker builder prune -f" (DECISIONS.md, 2026-12-04).
	t.Run("docker buildx prune -f with no job", func(t *testing.T) {
		g.mustAllow(t, "buildx", "prune", "-f")
	})
}

// writeFiles writes files (name => content) into dir.
func writeFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A real gRPC client on the proxy's socket (HTTP/2 with prior knowledge, as
// BuildKit's client and buildx's native driver speak): each call is
// decided on its own. Control/Prune with all=true is refused with
// PERMISSION_DENIED on every engine, before it reaches one, and the build
// cache stays. Control/DiskUsage passes: Docker 29.2 and later (API 1.53)
// answer it natively; older engines speak no HTTP/2 on their socket, and
// the client gets the proxy's UNAVAILABLE saying so.
func TestProxyDecidesEachNativeGRPCCallAndRefusesControlPruneAll(t *testing.T) {
	t.Parallel()
	g := startProxyGuard(t, enginetest.Options{})
	e := g.proxy.Engine()
	id := e.Identity()
	ctx := tarOf(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY f /f\n", "f": enginetest.Nonce(t)})
	if out := newAPI(t, e).must("POST", "/build?version=2&t=pg-px-grpc:1", "application/x-tar", ctx); strings.Contains(string(out), `"error"`) {
		t.Fatalf("BuildKit build on the engine's own socket failed: %s", out)
	}
	cache := buildCacheRecords(t, e)
	if cache == 0 {
		t.Fatalf("the BuildKit build left no build cache (GET /system/df)")
	}

	conn := dialGRPC(t, g.Engine)
	records, duErr := grpcDiskUsage(conn)
	mark := auditMark(t, g)
	pruned, pruneErr := grpcPruneAll(conn)
	t.Logf("%s: DiskUsage through the proxy: %d records, %v; Prune all: %d records, %v", id, records, duErr, pruned, pruneErr)

	if status.Code(pruneErr) != codes.PermissionDenied || !strings.Contains(status.Convert(pruneErr).Message(), buildPruneAllRefusal) {
		t.Errorf("Control/Prune all=true through the proxy: %v; want PERMISSION_DENIED with %q", pruneErr, buildPruneAllRefusal)
	}
	auditLine(t, g, mark, map[string]string{"decision": "deny", "rule": "no-build-prune-all", "uri": "/moby.buildkit.v1.Control/Prune"})
	if after := buildCacheRecords(t, e); after != cache || pruned != 0 {
		t.Errorf("build cache went %d -> %d records, %d streamed as pruned; want it kept", cache, after, pruned)
	}

	if id.ServesNativeGRPC() {
		if duErr != nil || records != cache {
			t.Errorf("Control/DiskUsage through the proxy on %s: %d records, %v; want the %d records GET /system/df counts", id.Version, records, duErr, cache)
		}
		return
	}
	if status.Code(duErr) != codes.Unavailable || !strings.Contains(status.Convert(duErr).Message(), "does not answer") {
		t.Errorf("Control/DiskUsage through the proxy on %s (no native gRPC before API 1.53): %v; want the proxy's UNAVAILABLE saying the engine does not answer", id.Version, duErr)
	}
}

// BuildKit builds whose context is the request body (POST /build?version=2,
// as testcontainers-node withBuildkit(), dockerode, bollard and Go SDK
// users send them), with a small and a large context, through the proxy on
// every engine: the build route reads the context while it answers (full
// duplex from Docker 29.5), and the file in each image is the context's,
// byte for byte. Under an authorization plugin the same small build fails
// on Docker 29.5 and later, in dockerd itself.
func TestProxyPassesBuildKitBuildsWithTheirContextInTheBodyWhole(t *testing.T) {
	t.Parallel()
	sizes := []struct {
		name string
		size int
	}{
		{"2 KiB context", 2 << 10},
		{"1 MiB context", 1<<20 + 1},
	}
	t.Run("proxy", func(t *testing.T) {
		g := startProxyGuard(t, enginetest.Options{})
		a := newAPI(t, g.Engine)
		for _, sz := range sizes {
			t.Run(sz.name, func(t *testing.T) {
				content := randomBlob(t, sz.size)
				tag := "pg-px-body:" + enginetest.Nonce(t)
				out := bodyBuild(t, a, tag, content)
				if msg := buildError(out); msg != "" {
					t.Fatalf("BuildKit build of a %d-byte file through the proxy failed: %s", sz.size, msg)
				}
				got := fileInImage(t, newAPI(t, g.proxy.Engine()), tag, "f")
				if !bytes.Equal(got, []byte(content)) {
					t.Errorf("the image's /f is %d bytes and differs from the context's %d", len(got), len(content))
				}
			})
		}
	})
	t.Run("authz plugin", func(t *testing.T) {
		e, _ := enginetest.StartGuarded(t, enginetest.Options{})
		id := e.Identity()
		a := newAPI(t, e)
		content := randomBlob(t, sizes[0].size)
		tag := "pg-authz-body:" + enginetest.Nonce(t)
		msg := buildError(bodyBuild(t, a, tag, content))
		if id.AtLeastDocker29(5) {
			if !strings.Contains(msg, "failed to read downloaded context") && !strings.Contains(msg, "invalid Read on closed Body") {
				t.Errorf("%s: BuildKit build with its context in the body under an authz plugin: %q; want dockerd's failure to read the context", id, msg)
			}
			return
		}
		if msg != "" {
			t.Fatalf("%s: BuildKit build with its context in the body under an authz plugin failed: %s", id, msg)
		}
		if got := fileInImage(t, a, tag, "f"); !bytes.Equal(got, []byte(content)) {
			t.Errorf("the image's /f is %d bytes and differs from the context's %d", len(got), len(content))
		}
	})
}

// bodyBuild sends a BuildKit build of "FROM scratch, COPY f /f" with the
// context in the request body and returns the engine's answer.
func bodyBuild(t testing.TB, a *api, tag, content string) []byte {
	t.Helper()
	ctx := tarOf(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY f /f\n", "f": content})
	status, out := a.do("POST", "/build?version=2&t="+tag, "application/x-tar", ctx)
	if status != 200 {
		t.Fatalf("POST /build?version=2 = %d %s", status, bytes.TrimSpace(out))
	}
	return out
}

// buildError returns the error a build's JSON stream reports, or "".
func buildError(out []byte) string {
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var m struct {
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return ""
			}
			return "unreadable build output: " + err.Error() + ": " + string(out)
		}
		if m.Error != "" {
			return m.Error
		}
		if m.ErrorDetail.Message != "" {
			return m.ErrorDetail.Message
		}
	}
}

// fileInImage returns the content of the file at name (relative to /) in
// image ref, read from "docker save" (GET /images/REF/get) through a: the
// file of the uppermost layer that holds it. Layers may be gzipped (the
// containerd image store keeps what BuildKit made).
func fileInImage(t testing.TB, a *api, ref, name string) []byte {
	t.Helper()
	_, archive := a.do("GET", "/images/"+ref+"/get", "", nil)
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("docker save %s: %v", ref, err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("docker save %s: %v", ref, err)
			}
			files[h.Name] = b
		}
	}
	var manifest []struct{ Layers []string }
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("docker save %s: manifest.json %q: %v", ref, files["manifest.json"], err)
	}
	layers := manifest[0].Layers
	for i := len(layers) - 1; i >= 0; i-- {
		if b, ok := fileInLayer(t, files[layers[i]], name); ok {
			return b
		}
	}
	t.Fatalf("docker save %s: no layer of %d holds %s", ref, len(layers), name)
	return nil
}

// fileInLayer finds name in a layer tar, gzipped or not.
func fileInLayer(t testing.TB, layer []byte, name string) ([]byte, bool) {
	t.Helper()
	var r io.Reader = bytes.NewReader(layer)
	if len(layer) > 2 && layer[0] == 0x1f && layer[1] == 0x8b {
		zr, err := gzip.NewReader(r)
		if err != nil {
			t.Fatalf("a gzipped layer: %v", err)
		}
		r = zr
	}
	tr := tar.NewReader(bufio.NewReader(r))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, false
		}
		if err != nil {
			t.Fatalf("reading a layer: %v", err)
		}
		if path.Clean(strings.TrimPrefix(h.Name, "/")) == name {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("reading %s from a layer: %v", name, err)
			}
			return b, true
		}
	}
}
