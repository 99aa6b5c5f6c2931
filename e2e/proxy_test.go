package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// prune-guard proxy (issue 17) in front of a private dockerd that has no
// authorization plugin, driven by the real docker CLI, compose, buildx and
// testcontainers-go through the proxy's socket (enginetest.StartProxied;
// the guard's Engine is the engine as the proxy's clients reach it). What
// the tests check against the engine itself (a save to compare, the build
// cache) they ask on the engine's own socket (enginetest.Proxy.Engine).

// streamTimeout bounds a docker command that streams (run -i, logs -f,
// events): a proxy that loses a half-close or holds a stream back makes it
// hang, and the test must fail, not wait for ever.
const streamTimeout = time.Minute

// dockerStdin runs "docker args..." through g with stdin and returns its
// stdout, failing t if it fails or does not end within streamTimeout.
func dockerStdin(t testing.TB, g guard, stdin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), streamTimeout)
	defer cancel()
	cmd := g.DockerCmd(ctx, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	t.Logf("$ echo %q | docker %s => %s", stdin, strings.Join(args, " "), errText(err))
	if ctx.Err() != nil {
		t.Fatalf("docker %s did not end within %v (stdin's end did not reach the container?); it printed %q\n%s", strings.Join(args, " "), streamTimeout, out, stderr.String())
	}
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// stream is a docker command whose output is read line by line as it
// comes.
type stream struct {
	args   string
	lines  chan string
	exited chan struct{} // closed once the output ended and the command exited
	err    error         // the command's exit, valid once exited is closed
}

// startStream starts "docker args..." through g. It is killed when the test
// ends, if it has not ended by then.
func startStream(t testing.TB, g guard, args ...string) *stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), streamTimeout)
	cmd := g.DockerCmd(ctx, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("docker %s: %v", strings.Join(args, " "), err)
	}
	s := &stream{args: strings.Join(args, " "), lines: make(chan string, 1024), exited: make(chan struct{})}
	go func() {
		defer close(s.exited)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
		if err := cmd.Wait(); err != nil {
			s.err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		}
	}()
	t.Cleanup(func() {
		cancel()
		for range s.lines {
		}
		<-s.exited
	})
	t.Logf("$ docker %s &", s.args)
	return s
}

// waitLine reads lines until one equals want, failing t when the output
// ends or streamTimeout passes first.
func (s *stream) waitLine(t testing.TB, want string) {
	t.Helper()
	timer := time.NewTimer(streamTimeout)
	defer timer.Stop()
	var seen []string
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				<-s.exited
				t.Fatalf("docker %s ended (%v) before printing %q; it printed %q", s.args, s.err, want, seen)
			}
			seen = append(seen, line)
			if line == want {
				return
			}
		case <-timer.C:
			t.Fatalf("docker %s printed no %q within %v; it printed %q", s.args, want, streamTimeout, seen)
		}
	}
}

// wait waits for the command to end by itself and requires its success.
func (s *stream) wait(t testing.TB) {
	t.Helper()
	for range s.lines {
	}
	<-s.exited
	if s.err != nil {
		t.Fatalf("docker %s: %v", s.args, s.err)
	}
}

// The docker CLI's streams through the proxy: attach and exec with stdin
// (its end must reach the container, or cat never ends), logs -f and events
// passed on as the engine writes them, and an image saved through the
// proxy that is the engine's own archive, loaded back through it whole.
func TestProxyPassesTheDockerCLIsStreamsAndImagesWhole(t *testing.T) {
	t.Parallel()
	g := startProxyGuard(t, enginetest.Options{})
	e := g.proxy.Engine()
	img := "pg-px-io:1"
	blob := randomBlob(t, 4<<20)
	id := g.BuildImage(t, img, map[string]string{"blob": blob}, nil) // a 5 MiB context, uploaded through the proxy

	t.Run("docker run -i gets stdin and its end to the container", func(t *testing.T) {
		out := dockerStdin(t, g, "x\n", "run", "-i", "--rm", img, "busybox", "sh", "-c", "busybox cat; echo done")
		if out != "x\ndone\n" {
			t.Errorf("docker run -i printed %q; want %q", out, "x\ndone\n")
		}
	})

	t.Run("docker exec -i gets stdin and its end to the process", func(t *testing.T) {
		name := "pg-px-exec-" + enginetest.Nonce(t)
		g.mustAllow(t, "run", "-d", "--name", name, img)
		t.Cleanup(func() { g.Docker(t, "rm", "-f", name) })
		out := dockerStdin(t, g, "y\n", "exec", "-i", name, "busybox", "sh", "-c", "busybox cat; echo done")
		if out != "y\ndone\n" {
			t.Errorf("docker exec -i printed %q; want %q", out, "y\ndone\n")
		}
		if out := g.mustAllow(t, "exec", name, "busybox", "echo", "exec"); out != "exec\n" {
			t.Errorf("docker exec printed %q; want %q", out, "exec\n")
		}
	})

	t.Run("docker logs -f passes each line on as the container writes it", func(t *testing.T) {
		// The container writes its second line only once the test has
		// seen the first through the proxy and told it to go on. It
		// lives a second longer: when a container's main process exits,
		// the engine kills what still runs in it, and on 26.1 that can
		// be the exec that told it to go on (exit 137).
		name := "pg-px-logs-" + enginetest.Nonce(t)
		g.mustAllow(t, "run", "-d", "--name", name, img, "busybox", "sh", "-c",
			"echo first; while ! busybox test -e /go; do busybox sleep 0.1; done; echo second; busybox sleep 1")
		t.Cleanup(func() { g.Docker(t, "rm", "-f", name) })
		logs := startStream(t, g, "logs", "-f", name)
		logs.waitLine(t, "first")
		g.mustAllow(t, "exec", name, "busybox", "touch", "/go")
		logs.waitLine(t, "second")
		logs.wait(t) // the container exited: logs -f ends
	})

	t.Run("docker events passes each event on as it happens", func(t *testing.T) {
		name := "pg-px-events-" + enginetest.Nonce(t)
		// --since replays what happened since, so the subscription cannot
		// miss the start; the destroy happens after the stream has shown
		// events, so it comes live.
		since := fmt.Sprint(time.Now().Add(-time.Second).Unix())
		events := startStream(t, g, "events", "--since", since, "--filter", "container="+name, "--format", "{{.Action}}")
		g.mustAllow(t, "run", "--name", name, img, "busybox", "true")
		events.waitLine(t, "die")
		g.mustAllow(t, "rm", name)
		events.waitLine(t, "destroy")
	})

	t.Run("docker save through the proxy is the engine's archive and docker load takes it back", func(t *testing.T) {
		dir := t.TempDir()
		viaProxy, direct := filepath.Join(dir, "proxy.tar"), filepath.Join(dir, "direct.tar")
		g.mustAllow(t, "save", "-o", viaProxy, img)
		e.MustDocker(t, "save", "-o", direct, img)
		sameArchive(t, viaProxy, direct)

		g.mustAllow(t, "rmi", img)
		requireGone(t, g, img)
		g.mustAllow(t, "load", "-i", viaProxy)
		if got := strings.TrimSpace(g.mustAllow(t, "image", "inspect", "--format", "{{.Id}}", img)); got != id {
			t.Errorf("the image loaded through the proxy is %s; want %s", got, id)
		}
		sum := sha256.Sum256([]byte(blob))
		out := g.mustAllow(t, "run", "--rm", img, "busybox", "sha256sum", "/blob")
		if got, _, _ := strings.Cut(out, " "); got != hex.EncodeToString(sum[:]) {
			t.Errorf("the loaded image's /blob has SHA-256 %s; want %x", got, sum)
		}
	})
}

// sameArchive requires two docker save archives of one image to hold the
// same entries in the same order, each with the same name, type, mode, size
// and bytes. The archives themselves may differ in modification times:
// engines before the containerd image store stamp some entries with the
// time of the save (measured on 26.1), so two saves a second apart differ
// there and nowhere else.
func sameArchive(t testing.TB, a, b string) {
	t.Helper()
	ab, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(ab, bb) {
		t.Logf("the archives are identical: %d bytes", len(ab))
		return
	}
	ea, eb := archiveEntries(t, ab), archiveEntries(t, bb)
	if len(ea) != len(eb) {
		t.Fatalf("the archive saved through the proxy has %d entries, the engine's %d:\n%s\n%s", len(ea), len(eb), strings.Join(ea, "\n"), strings.Join(eb, "\n"))
	}
	for i := range ea {
		if ea[i] != eb[i] {
			t.Errorf("entry %d saved through the proxy is %s; the engine's is %s", i, ea[i], eb[i])
		}
	}
	t.Logf("the archives (%d and %d bytes) differ in modification times only", len(ab), len(bb))
}

// archiveEntries describes each entry of a tar archive but for its
// modification times.
func archiveEntries(t testing.TB, b []byte) []string {
	t.Helper()
	var out []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("reading a saved archive: %v", err)
		}
		sum := sha256.New()
		if _, err := io.Copy(sum, tr); err != nil {
			t.Fatalf("reading a saved archive: %v", err)
		}
		out = append(out, fmt.Sprintf("%s type %c mode %o size %d sha256 %x link %q", h.Name, h.Typeflag, h.Mode, h.Size, sum.Sum(nil), h.Linkname))
	}
}

// A CI job's container seen through the proxy holds image deletes while it
// lives and through its teardown grace, and status on the proxy's control
// socket says the mode and names the job; after the grace the delete
// passes.
func TestProxyHoldsImageDeletesWhileAJobRunsAndThroughItsTeardownGrace(t *testing.T) {
	t.Parallel()
	g := startProxyGuard(t, enginetest.Options{PluginArgs: []string{"--run-grace=" + shortGrace.String()}})
	base := "pg-px-base:1"
	g.BuildImage(t, base, nil, nil)
	victim := buildVictim(t, g)
	j := builtinJobs(enginetest.Nonce(t))[0] // prune-guard.run=job-N
	if j.detector != "prune-guard" {
		t.Fatalf("the first built-in job is %s's; want prune-guard's label", j.detector)
	}

	remove := startJob(t, g, j, base)
	g.mustDeny(t, []string{"rmi", victim}, "while a CI job is active (rule no-delete-during-run)", "active "+j.job)
	g.mustDeny(t, []string{"image", "prune", "-f"}, "(rule no-prune-during-run)", "active "+j.job)
	status := pgStatus(t, g)
	for _, want := range []string{"Mode: proxy (clients use " + g.proxy.Socket(), "active: " + j.job + " (detector prune-guard: "} {
		if !strings.Contains(status, want) {
			t.Errorf("prune-guard status --socket %s does not say %q:\n%s", g.proxy.ControlSocket(), want, status)
		}
	}

	remove()
	mark := auditMark(t, g)
	g.mustDeny(t, []string{"rmi", victim}, graceDenial(j.job)...)
	line := auditLine(t, g, mark, map[string]string{"decision": "deny", "rule": "no-delete-during-run", "operation": "image-delete"})
	if runs := auditRuns(t, line); !anyContains(runs, j.job+" (ended ") {
		t.Errorf("audit runs = %q; want %q listed as ended", runs, j.job)
	}
	waited := g.waitDeleteResumes(t, victim, j.job, graceBound(shortGrace))
	t.Logf("image delete refused for %v after the job ended (grace %v)", waited.Round(100*time.Millisecond), shortGrace)
	requireGone(t, g, victim)
	requireImages(t, g, base)
}

// The engine stops and comes back while the proxy runs on: every request
// meanwhile gets the proxy's answer saying that the engine does not answer
// (HEAD /_ping, the CLI's first request, included), a destructive one is
// refused with its run state unknown, a client connection kept across the
// outage is served again, and the same proxy process serves everything
// after, destructive decisions included.
func TestProxyAnswersWhileTheEngineIsDownAndServesAgainOnceItIsBack(t *testing.T) {
	t.Parallel()
	g := startProxyGuard(t, enginetest.Options{})
	pid := g.proxy.PID()
	dangling := g.MakeDangling(t)
	kept := dialKept(t, g.proxy.Socket())
	if status, body := kept.get(t, "/_ping"); status != http.StatusOK {
		t.Fatalf("GET /_ping on a kept connection = %d %s", status, body)
	}
	g.mustAllow(t, "ps")

	g.proxy.Engine().Restart(t, func() {
		_, stderr, err := g.Docker(t, "ps")
		if err == nil || !strings.Contains(stderr, "does not answer") {
			t.Errorf("docker ps while the engine is down: %v; want the proxy's error saying the engine does not answer\n%s", err, stderr)
		}
		t.Logf("  %s", strings.TrimSpace(stderr))
		if status, body := kept.get(t, "/_ping"); status != http.StatusBadGateway || !strings.Contains(body, "does not answer") {
			t.Errorf("GET /_ping on the kept connection while the engine is down = %d %s; want 502 saying the engine does not answer", status, body)
		}
		// The CLI sends nothing once its ping fails; raw HTTP reaches the
		// guard, which cannot tell whether a job runs.
		g.denyHTTP(t, "POST", "/images/prune", "run state is unknown")
	})

	if status, body := kept.get(t, "/_ping"); status != http.StatusOK {
		t.Errorf("GET /_ping on the kept connection after the engine came back = %d %s; want 200", status, body)
	}
	g.mustAllow(t, "ps")
	g.mustAllow(t, "image", "prune", "-f")
	requireGone(t, g, dangling)
	if g.proxy.Exited() || g.proxy.PID() != pid {
		t.Errorf("the proxy did not serve on as process %d", pid)
	}
}

// keptConn is one client connection to the proxy, kept alive between
// requests.
type keptConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialKept(t testing.TB, sock string) *keptConn {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, wireTimeout)
	if err != nil {
		t.Fatalf("connecting to %s: %v", sock, err)
	}
	t.Cleanup(func() { c.Close() })
	return &keptConn{c: c, br: bufio.NewReader(c)}
}

// get sends GET path on the kept connection and reads the whole answer.
func (k *keptConn) get(t testing.TB, path string) (int, string) {
	t.Helper()
	if err := k.c.SetDeadline(time.Now().Add(wireTimeout)); err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintf(k.c, "GET %s HTTP/1.1\r\nHost: docker\r\n\r\n", path); err != nil {
		t.Fatalf("GET %s on a kept connection: %v", path, err)
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		t.Fatalf("GET %s on a kept connection: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s on a kept connection: reading the body: %v", path, err)
	}
	if resp.Close {
		t.Errorf("GET %s on a kept connection: the proxy closes the connection after answering %s", path, resp.Status)
	}
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// openFDs counts the open file descriptors of process pid.
func openFDs(t testing.TB, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("reading the proxy's descriptors: %v", err)
	}
	return len(ents)
}

// waitFDsBack waits until process pid holds at most want descriptors.
func waitFDsBack(t testing.TB, pid, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n := openFDs(t, pid)
		if n <= want {
			t.Logf("the proxy holds %d descriptors again (%d before)", n, want)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy still holds %d descriptors 20 s after its clients left; it held %d before", n, want)
		}
		time.Sleep(100 * time.Millisecond) // polling another process's descriptor table
	}
}

// A thousand clients that made a request and keep their connections open
// are held, each with its engine connection, while other clients are
// served; once they close, the proxy holds as many descriptors as before.
func TestProxyHoldsAThousandIdleConnectionsAndReleasesEveryOne(t *testing.T) {
	t.Parallel()
	const idle = 1000
	g := startProxyGuard(t, enginetest.Options{})
	pid := g.proxy.PID()
	g.mustAllow(t, "ps")
	before := openFDs(t, pid)

	conns := make([]*keptConn, 0, idle)
	for range idle {
		k := dialKept(t, g.proxy.Socket())
		if status, body := k.get(t, "/_ping"); status != http.StatusOK {
			t.Fatalf("GET /_ping on idle connection %d = %d %s", len(conns)+1, status, body)
		}
		conns = append(conns, k)
	}
	held := openFDs(t, pid)
	t.Logf("the proxy holds %d descriptors with %d idle clients (%d before)", held, idle, before)
	if held < before+idle {
		t.Errorf("the proxy holds %d descriptors with %d idle clients; want at least %d", held, idle, before+idle)
	}
	g.mustAllow(t, "ps")
	if status, _ := g.HTTP(t, "GET", "/version", nil, nil); status != http.StatusOK {
		t.Errorf("GET /version with %d idle clients = %d", idle, status)
	}

	for _, k := range conns {
		k.c.Close()
	}
	waitFDsBack(t, pid, before)
}

// A client that asks for a chatty container's logs and stops reading holds
// only its own connection: other clients list containers and read the
// same logs whole meanwhile, and once it leaves, the proxy lets go of the
// stream.
func TestProxyClientThatStopsReadingALogStreamHoldsUpNoOther(t *testing.T) {
	t.Parallel()
	const chatter = 16 << 20 // far more than the socket buffers and the proxy's own
	g := startProxyGuard(t, enginetest.Options{})
	pid := g.proxy.PID()
	img := "pg-px-chatty:1"
	g.BuildImage(t, img, nil, nil)
	name := "pg-px-chatty-" + enginetest.Nonce(t)
	g.mustAllow(t, "run", "-d", "--name", name, img, "busybox", "sh", "-c",
		fmt.Sprintf("busybox head -c %d /dev/zero | busybox tr '\\000' a | busybox fold -w 1023; echo; echo END", chatter))
	t.Cleanup(func() { g.Docker(t, "rm", "-f", name) })
	if code := strings.TrimSpace(g.mustAllow(t, "wait", name)); code != "0" {
		t.Fatalf("the chatty container exited with %s", code)
	}
	g.mustAllow(t, "ps")
	before := openFDs(t, pid)

	// The stuck client reads the answer's head and nothing more.
	stuck := dialKept(t, g.proxy.Socket())
	if _, err := fmt.Fprintf(stuck.c, "GET /containers/%s/logs?follow=1&stdout=1 HTTP/1.1\r\nHost: docker\r\n\r\n", name); err != nil {
		t.Fatal(err)
	}
	if err := stuck.c.SetReadDeadline(time.Now().Add(wireTimeout)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(stuck.br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("logs -f for the stuck client: %v %v", resp, err)
	}

	g.mustAllow(t, "ps")
	logs := g.mustAllow(t, "logs", name)
	if n := strings.Count(logs, "a"); n != chatter || !strings.HasSuffix(logs, "\nEND\n") {
		t.Errorf("docker logs beside the stuck client printed %d bytes with %d a's; want all %d and END", len(logs), n, chatter)
	}
	follow := startStream(t, g, "logs", "-f", "--tail", "1", name)
	follow.waitLine(t, "END")
	follow.wait(t)

	stuck.c.Close()
	waitFDsBack(t, pid, before)
}

// docker compose through the proxy: the same project and the same
// expectations as TestComposeDownRmiAllLeavesTheJobProjectsImagesForTheRedeploy.
func TestProxyComposeDownRmiAllLeavesTheJobProjectsImagesForTheRedeploy(t *testing.T) {
	t.Parallel()
	g := startProxyGuard(t, enginetest.Options{PluginArgs: composePluginArgs})
	composeDownRmiAll(t, g)
}

// testcontainers-go through the proxy: the same session and the same
// expectations as TestTestcontainersGoSessionHoldsImageDeletesThroughItsTeardown.
func TestProxyTestcontainersGoSessionHoldsImageDeletesThroughItsTeardown(t *testing.T) {
	t.Parallel()
	g := startProxyGuard(t, enginetest.Options{PluginArgs: testcontainersPluginArgs})
	testcontainersSession(t, g)
}
