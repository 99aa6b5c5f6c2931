package enginetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cliTimeout bounds one docker CLI invocation.
const cliTimeout = 2 * time.Minute

// Docker runs the docker CLI against the engine and returns what it printed.
// The CLI sees only DOCKER_HOST and a private, empty DOCKER_CONFIG, so the
// host's daemon and the user's configuration are never involved. err is
// non-nil when the CLI exits non-zero; its text names the command.
func (e *Engine) Docker(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	return e.runDocker(t, e.withBuildx, args...)
}

// DockerCmd returns the docker CLI command "docker args..." with the
// environment Docker gives it, unstarted, for a test that feeds it stdin
// or reads its output as it comes (docker run -i, logs -f, events). ctx
// kills it.
func (e *Engine) DockerCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, e.docker, args...)
	cmd.Env = e.cliEnv(e.withBuildx)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// runDocker is Docker, with BuildKit on or off for the CLI (cliEnv).
func (e *Engine) runDocker(t testing.TB, buildkit bool, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	// Not t.Context(): Docker is also called from cleanups, when that
	// context is already canceled.
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.docker, args...)
	cmd.Env = e.cliEnv(buildkit)
	cmd.WaitDelay = 5 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	began := time.Now()
	err = cmd.Run()
	took := time.Since(began).Round(time.Millisecond)
	switch {
	case ctx.Err() != nil:
		err = fmt.Errorf("docker %s: no answer within %v: %w", strings.Join(args, " "), cliTimeout, ctx.Err())
	case err != nil:
		err = fmt.Errorf("docker %s: %w", strings.Join(args, " "), err)
	}
	t.Logf("$ docker %s => %s (%v)", strings.Join(args, " "), exitText(err), took)
	return out.String(), errb.String(), err
}

func exitText(err error) string {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &ee):
		return "exit " + strconv.Itoa(ee.ExitCode())
	default:
		return err.Error()
	}
}

// MustDocker is Docker for commands that must succeed; it fails t with the
// CLI's stderr otherwise, and returns stdout.
func (e *Engine) MustDocker(t testing.TB, args ...string) string {
	t.Helper()
	stdout, stderr, err := e.Docker(t, args...)
	if err != nil {
		t.Fatalf("%v\nstderr: %s\nstdout: %s", err, stderr, stdout)
	}
	return stdout
}

// cliEnv is the docker CLI's environment: ours without DOCKER_* settings,
// then the engine, a private config directory, and BuildKit off (the
// classic builder: the daemon is 20.10 and buildx may not be installed;
// BuildImage must not depend on either) unless buildkit. With BuildKit off
// the CLI never hands "docker build" or "docker builder" to buildx, even if
// it has it; with it on (Options.Buildx) it always does, and fails if
// buildx is missing rather than fall back to the REST requests unnoticed.
func (e *Engine) cliEnv(buildkit bool) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOCKER_") {
			env = append(env, kv)
		}
	}
	bk := "DOCKER_BUILDKIT=0"
	if buildkit {
		bk = "DOCKER_BUILDKIT=1"
	}
	return append(env,
		"DOCKER_HOST="+e.Host(),
		"DOCKER_CONFIG="+e.config,
		bk,
		"DOCKER_CLI_HINTS=false",
	)
}

// BuildImage builds a tiny image offline and tags it tag (untagged if tag is
// ""): FROM scratch, a static busybox as /bin/busybox, one layer per extra
// file (path inside the image => content), the labels, and
// CMD ["busybox", "sleep", "3600"]. It returns the image ID.
func (e *Engine) BuildImage(t testing.TB, tag string, extraFiles, labels map[string]string) string {
	t.Helper()
	bb, err := findBusybox()
	if err != nil {
		t.Fatalf("enginetest: BuildImage needs a static busybox: %v", err)
	}
	dir := t.TempDir()
	if err := copyFile(filepath.Join(dir, "busybox"), bb); err != nil {
		t.Fatalf("enginetest: copying busybox into build context: %v", err)
	}
	var df strings.Builder
	df.WriteString("FROM scratch\nCOPY busybox /bin/busybox\n")
	names := sortedKeys(extraFiles)
	for i, name := range names {
		if !filepath.IsLocal(name) {
			t.Fatalf("enginetest: extra file %q must be a relative path inside the image", name)
		}
		// Stored under a generated name: the context path need not be the
		// image path, and a file named Dockerfile must not clash.
		src := fmt.Sprintf("extra-%d", i)
		if err := os.WriteFile(filepath.Join(dir, src), []byte(extraFiles[name]), 0o644); err != nil {
			t.Fatalf("enginetest: writing build context: %v", err)
		}
		fmt.Fprintf(&df, "COPY [%q, %q]\n", src, "/"+filepath.ToSlash(name))
	}
	df.WriteString("CMD [\"busybox\", \"sleep\", \"3600\"]\n")
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df.String()), 0o644); err != nil {
		t.Fatalf("enginetest: writing Dockerfile: %v", err)
	}

	args := []string{"build", "--quiet"}
	if tag != "" {
		args = append(args, "--tag", tag)
	}
	for _, k := range sortedKeys(labels) {
		args = append(args, "--label", k+"="+labels[k])
	}
	// The classic builder, even for a CLI with buildx (Options.Buildx).
	args = append(args, dir)
	out, stderr, err := e.runDocker(t, false, args...)
	if err != nil {
		t.Fatalf("%v\nstderr: %s\nstdout: %s", err, stderr, out)
	}
	id := strings.TrimSpace(out)
	if !strings.HasPrefix(id, "sha256:") {
		t.Fatalf("enginetest: docker build printed %q, want an image ID", out)
	}
	return id
}

// MakeDangling builds an image, then builds a different one under the same
// tag, so that the first is left untagged and unused: dangling. It returns
// the dangling image's ID.
func (e *Engine) MakeDangling(t testing.TB) string {
	t.Helper()
	tag := "pg-dangling-" + Nonce(t)
	first := e.BuildImage(t, tag, map[string]string{"nonce": Nonce(t)}, nil)
	second := e.BuildImage(t, tag, map[string]string{"nonce": Nonce(t)}, nil)
	if first == second {
		t.Fatalf("enginetest: MakeDangling: both builds produced %s", first)
	}
	tags := strings.TrimSpace(e.MustDocker(t, "image", "inspect", "--format", "{{len .RepoTags}}", first))
	if tags != "0" {
		t.Fatalf("enginetest: MakeDangling: %s still has %s tags", first, tags)
	}
	return first
}

// ImageIDs returns the sorted IDs of the engine's top-level images (those
// "docker images" lists, dangling ones included, without intermediate
// layers of the classic builder).
func (e *Engine) ImageIDs(t testing.TB) []string {
	t.Helper()
	out := e.MustDocker(t, "image", "ls", "--quiet", "--no-trunc")
	seen := map[string]bool{}
	var ids []string
	for _, id := range strings.Fields(out) {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// ImageExists reports whether ref (a tag or an ID) names an image. Any
// failure other than "no such image", an authorization denial included,
// fails t rather than reading as "gone".
func (e *Engine) ImageExists(t testing.TB, ref string) bool {
	t.Helper()
	_, stderr, err := e.Docker(t, "image", "inspect", "--format", "{{.Id}}", ref)
	if err == nil {
		return true
	}
	if strings.Contains(strings.ToLower(stderr), "no such image") {
		return false
	}
	t.Fatalf("enginetest: inspecting image %s: %v\n%s", ref, err, stderr)
	return false
}

// SwarmInit makes the engine a single-node swarm manager and leaves the
// swarm in a t.Cleanup. The swarm listens on free loopback ports, not the
// default 2377 and 4789, which another engine on the host may hold. (The
// gossip port 7946 cannot be moved in 20.10; if it is taken, dockerd logs an
// agentInit error and the swarm still works for services without tasks on
// overlay networks.)
func (e *Engine) SwarmInit(t testing.TB) {
	t.Helper()
	port, err := freeTCPPort()
	if err != nil {
		t.Fatalf("enginetest: SwarmInit: %v", err)
	}
	dataPort, err := freeUDPPort()
	if err != nil {
		t.Fatalf("enginetest: SwarmInit: %v", err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	e.MustDocker(t, "swarm", "init",
		"--advertise-addr", addr,
		"--listen-addr", addr,
		"--data-path-port", strconv.Itoa(dataPort))
	t.Cleanup(func() {
		t.Helper()
		if _, stderr, err := e.Docker(t, "swarm", "leave", "--force"); err != nil {
			t.Errorf("enginetest: leaving swarm: %v\n%s", err, stderr)
		}
	})
}

// findBusybox returns the path of a busybox binary to copy into images. It
// must be static: the image has no libc.
func findBusybox() (string, error) {
	for _, p := range []string{"/usr/bin/busybox", "/bin/busybox"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", errors.New("neither /usr/bin/busybox nor /bin/busybox exists (Debian: apt-get install busybox-static)")
}

func copyFile(dst, src string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Nonce returns a short random hex string, for names and contents that must
// not clash between tests sharing an engine.
func Nonce(t testing.TB) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("enginetest: reading random bytes: %v", err)
	}
	return hex.EncodeToString(b[:])
}

func freeTCPPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free TCP port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// freeUDPPort finds a free UDP port in the range swarm accepts for its data
// path (1024-49151), which the kernel's ephemeral range may exceed.
func freeUDPPort() (int, error) {
	var b [2]byte
	for range 50 {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("finding a free UDP port: %w", err)
		}
		port := 20000 + (int(b[0])<<8|int(b[1]))%20000
		c, err := net.ListenPacket("udp", ":"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		c.Close()
		return port, nil
	}
	return 0, errors.New("finding a free UDP port: none free in 50 tries")
}
