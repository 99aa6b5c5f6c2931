package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// Cache accounting on a real engine and Debian's docker-registry: a pull of
// an image the engine lacks is a miss, the same pull again a hit, a second
// image sharing the first's base layer a miss that reuses it; reclaim then
// removes the images and one is pulled again at once ("evicted too
// early"). Each pull is a pull record and a count in the metrics, by
// registry and result; in proxy mode also the layers reused and downloaded
// and the bytes, which must be the layers' sizes in the registry's
// manifests. "prune-guard audit cache" reads the log the test wrote; its
// output is in the test's log.

func TestPullsAreCountedByRegistryAndResultAsAPlugin(t *testing.T) {
	t.Parallel()
	g := startGuard(t)
	s := newPullScenario(t)
	s.run(t, pullTarget{
		pull:       func(t *testing.T, ref string) { g.mustAllow(t, "pull", ref) },
		host:       g.Host(),
		audit:      g.plugin.AuditPath(),
		metrics:    g.plugin.Socket(),
		containerd: g.Identity().ContainerdStore,
	})
}

func TestPullsAreCountedWithLayersAndBytesByTheProxy(t *testing.T) {
	t.Parallel()
	e := enginetest.Start(t, enginetest.Options{})
	px := startPullProxy(t, e)
	s := newPullScenario(t)
	s.run(t, pullTarget{
		pull:       func(t *testing.T, ref string) { px.pull(t, ref) },
		host:       "unix://" + px.sock,
		audit:      px.audit,
		metrics:    px.control,
		proxy:      true,
		containerd: e.Identity().ContainerdStore,
	})
}

// pullTarget is a guarded engine as the scenario uses it.
type pullTarget struct {
	pull    func(t *testing.T, ref string)
	host    string // where clients reach the engine (reclaim too)
	audit   string // the guard's audit log, which reclaim writes to as well
	metrics string // the socket serving GET /metrics
	proxy   bool
	// containerd is set for the containerd image store.
	containerd bool
}

// pullScenario holds two images published to a registry, pulled through
// a registry front that slows blob downloads (slowRegistry).
type pullScenario struct {
	registry   string // host:port the guarded engine pulls from
	app1, app2 string
	// layers are each image's layer sizes, from the registry's manifest.
	layers map[string][]int64
}

func newPullScenario(t *testing.T) *pullScenario {
	t.Helper()
	reg := enginetest.StartRegistry(t)
	builder := enginetest.Start(t, enginetest.Options{})
	s := &pullScenario{registry: slowRegistry(t, reg.Addr), layers: map[string][]int64{}}
	s.app1, s.app2 = s.registry+"/pg/pulled:1", s.registry+"/pg/pulled:2"
	for i, ref := range []string{"pg/pulled:1", "pg/pulled:2"} {
		// Both are busybox and a payload layer of their own: the
		// second pull reuses the first's busybox layer.
		pushed := reg.Addr + "/" + ref
		builder.BuildImage(t, pushed, map[string]string{"payload": randomBlob(t, (2+i)<<20)}, nil)
		builder.MustDocker(t, "push", pushed)
		s.layers[s.registry+"/"+ref] = manifestLayers(t, reg.Addr, ref)
	}
	return s
}

func (s *pullScenario) run(t *testing.T, g pullTarget) {
	t.Helper()
	g.pull(t, s.app1) // a miss: the engine is cold
	g.pull(t, s.app1) // a hit
	g.pull(t, s.app2) // a miss that reuses the busybox layer
	removeWithReclaim(t, g)
	g.pull(t, s.app2) // evicted too early
	recs := pullRecords(t, g.audit, 4)
	a1, a2 := s.layers[s.app1], s.layers[s.app2]
	want := []struct {
		target, result     string
		reused, downloaded int
		bytes              int64
	}{
		{s.app1, "miss", 0, len(a1), sum(a1...)},
		// An image wholly local says nothing per layer, on either store
		// (distribution/pull_v2.go pullSchema2Layers; containerd's
		// hideLayers).
		{s.app1, "hit", 0, 0, 0},
		// The busybox layer is reused: graph drivers say "Already
		// exists"; the containerd store says nothing of a layer it has
		// unpacked (containerd core/unpack/unpacker.go skips fetching
		// it, so moby's handlers never see it).
		{s.app2, "miss", 1, len(a2) - 1, sum(a2[1:]...)},
		{s.app2, "miss", -1, -1, -1}, // what reclaim left of it depends on the store
	}
	for i, w := range want {
		r := recs[i]
		p := r.Pull
		if r.Target != w.target || p.Registry != s.registry || p.Result != w.result || p.Error != "" {
			t.Errorf("pull %d: %s %+v; want %s, registry %s, %s", i+1, r.Target, p, w.target, s.registry, w.result)
		}
		if !g.proxy {
			if p.Progress != nil {
				t.Errorf("pull %d: progress %+v recorded in authz mode", i+1, p.Progress)
			}
			continue
		}
		if p.Progress == nil {
			t.Fatalf("pull %d: no progress recorded by the proxy: %+v", i+1, p)
		}
		if w.reused < 0 {
			continue
		}
		reused, downloaded, bytes := int64(w.reused), int64(w.downloaded), w.bytes
		if g.containerd {
			reused = 0
		}
		if got := *p.Progress; got.LayersReused != reused || got.LayersDownloaded != downloaded || got.BytesDownloaded != bytes {
			t.Errorf("pull %d (%s): progress %+v; want %d reused, %d downloaded, %d bytes (the manifest's layer sizes %v)",
				i+1, w.result, got, reused, downloaded, bytes, s.layers[w.target])
		}
	}
	s.checkMetrics(t, g, recs)
	s.checkCacheReport(t, g)
}

// removeWithReclaim has "prune-guard reclaim" remove the unused images, as
// it does when they have been unused longer than --max-unused (here one
// second, with --min-age 0s: no disk pressure is needed), writing its
// removals to the guard's audit log.
func removeWithReclaim(t *testing.T, g pullTarget) {
	t.Helper()
	r := reclaimer{bin: enginetest.BuildBinary(t), host: g.host, state: filepath.Join(t.TempDir(), "state.json"), audit: g.audit}
	deadline := time.Now().Add(30 * time.Second)
	for {
		// The first run meets the images; a later one finds them
		// unused for longer than a second.
		time.Sleep(1500 * time.Millisecond)
		out := r.mustRun(t, "--high", "99", "--low", "98", "--max-unused", "1s", "--min-age", "0s")
		if strings.Contains(out, "removed ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("reclaim removed nothing within 30s:\n%s", out)
		}
	}
}

func sum(xs ...int64) int64 {
	var n int64
	for _, x := range xs {
		n += x
	}
	return n
}

// pullRecord is the part of an audit line a pull record adds.
type pullRecord struct {
	Decision string `json:"decision"`
	Target   string `json:"target"`
	Pull     *struct {
		Registry string `json:"registry"`
		Result   string `json:"result"`
		Error    string `json:"error"`
		Progress *struct {
			LayersReused     int64 `json:"layers_reused"`
			LayersDownloaded int64 `json:"layers_downloaded"`
			BytesDownloaded  int64 `json:"bytes_downloaded"`
		} `json:"progress"`
	} `json:"pull"`
}

// pullRecords waits for n pull records in the audit log and returns them.
func pullRecords(t *testing.T, path string, n int) []pullRecord {
	t.Helper()
	deadline := time.Now().Add(auditTimeout)
	for {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var recs []pullRecord
		var lines []string
		for _, l := range bytes.Split(data, []byte("\n")) {
			var r pullRecord
			if json.Unmarshal(l, &r) == nil && r.Pull != nil {
				if r.Decision != "" {
					t.Errorf("a pull record carries a decision: %s", l)
				}
				recs = append(recs, r)
				lines = append(lines, string(l))
			}
		}
		if len(recs) >= n {
			t.Logf("pull records:\n%s", strings.Join(lines, "\n"))
			if len(recs) > n {
				t.Errorf("%d pull records, want %d: a pull was counted twice?\n%s", len(recs), n, data)
			}
			return recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pull records of %d in %s after %v:\n%s", len(recs), n, path, auditTimeout, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkMetrics compares the guard's counters with the records.
func (s *pullScenario) checkMetrics(t *testing.T, g pullTarget, recs []pullRecord) {
	t.Helper()
	m := unixGet(t, g.metrics, "/metrics")
	want := []string{
		fmt.Sprintf(`prune_guard_image_pulls_total{registry=%q,result="hit"} 1`, s.registry),
		fmt.Sprintf(`prune_guard_image_pulls_total{registry=%q,result="miss"} 3`, s.registry),
	}
	if g.proxy {
		var reused, downloaded, bytes int64
		for _, r := range recs {
			reused += r.Pull.Progress.LayersReused
			downloaded += r.Pull.Progress.LayersDownloaded
			bytes += r.Pull.Progress.BytesDownloaded
		}
		// The exposition writes values as Go's shortest float (1.5e+06).
		num := func(n int64) string { return strconv.FormatFloat(float64(n), 'g', -1, 64) }
		want = append(want, `prune_guard_pull_layers_total{result="reused"} `+num(reused),
			`prune_guard_pull_layers_total{result="downloaded"} `+num(downloaded),
			`prune_guard_pull_bytes_total `+num(bytes))
	} else if strings.Contains(m, "prune_guard_pull_bytes_total") {
		t.Errorf("authz mode exports the proxy's layer and byte counters:\n%s", m)
	}
	for _, w := range want {
		if !strings.Contains(m, w+"\n") {
			t.Errorf("/metrics lacks %q", w)
		}
	}
	for _, l := range strings.Split(m, "\n") {
		if strings.Contains(l, "pull") {
			t.Logf("metrics: %s", l)
		}
	}
}

// checkCacheReport runs "prune-guard audit cache" on the audit log.
func (s *pullScenario) checkCacheReport(t *testing.T, g pullTarget) {
	t.Helper()
	bin := enginetest.BuildBinary(t)
	text, err := exec.Command(bin, "audit", "cache", g.audit).CombinedOutput()
	if err != nil {
		t.Fatalf("prune-guard audit cache: %v\n%s", err, text)
	}
	t.Logf("$ prune-guard audit cache %s\n%s", filepath.Base(g.audit), text)
	out, err := exec.Command(bin, "audit", "cache", "--json", g.audit).Output()
	if err != nil {
		t.Fatalf("prune-guard audit cache --json: %v", err)
	}
	var j struct {
		Registries []struct {
			Registry  string `json:"registry"`
			Pulls     int64  `json:"pulls"`
			Hit       int64  `json:"hit"`
			Miss      int64  `json:"miss"`
			Relayed   int64  `json:"relayed"`
			Bytes     int64  `json:"bytes_downloaded"`
			Downloads int64  `json:"layers_downloaded"`
		} `json:"registries"`
		Evicted []struct {
			Reference string `json:"reference"`
			LastUsed  string `json:"last_used"`
			Change    struct {
				MinAge string `json:"min_age"`
			} `json:"change"`
		} `json:"evicted_too_early"`
	}
	if err := json.Unmarshal(out, &j); err != nil {
		t.Fatalf("audit cache --json: %v\n%s", err, out)
	}
	if len(j.Registries) != 1 || j.Registries[0].Registry != s.registry || j.Registries[0].Pulls != 4 ||
		j.Registries[0].Hit != 1 || j.Registries[0].Miss != 3 || (j.Registries[0].Relayed == 4) != g.proxy {
		t.Errorf("registries %+v; want %s: 4 pulls, 1 hit, 3 misses", j.Registries, s.registry)
	}
	if len(j.Evicted) != 1 || j.Evicted[0].Reference != s.app2 || j.Evicted[0].LastUsed == "" || j.Evicted[0].Change.MinAge != "1h" {
		t.Errorf("evicted too early: %+v; want %s, pulled again seconds after reclaim removed it (--min-age 1h keeps it)", j.Evicted, s.app2)
	}
}

// manifestLayers asks the registry for the layer sizes of repo:tag's image
// for this platform, in order.
func manifestLayers(t *testing.T, registry, ref string) []int64 {
	t.Helper()
	repo, tag, _ := strings.Cut(ref, ":")
	type manifest struct {
		MediaType string `json:"mediaType"`
		Manifests []struct {
			Digest   string `json:"digest"`
			Platform struct {
				OS, Architecture string
			} `json:"platform"`
		} `json:"manifests"`
		Layers []struct {
			Size int64 `json:"size"`
		} `json:"layers"`
	}
	get := func(what string) manifest {
		req, _ := http.NewRequest("GET", "http://"+registry+"/v2/"+repo+"/manifests/"+what, nil)
		req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, "+
			"application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m manifest
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != 200 {
			t.Fatalf("registry manifest %s:%s: %d %v", repo, what, resp.StatusCode, err)
		}
		return m
	}
	m := get(tag)
	for _, d := range m.Manifests {
		if d.Platform.OS == "linux" && d.Platform.Architecture == runtime.GOARCH {
			m = get(d.Digest)
			break
		}
	}
	if len(m.Layers) == 0 {
		t.Fatalf("registry manifest %s has no layers", ref)
	}
	var sizes []int64
	for _, l := range m.Layers {
		sizes = append(sizes, l.Size)
	}
	return sizes
}

// slowRegistry puts an HTTP proxy on 127.0.0.1 (an insecure registry to
// dockerd by default) in front of the registry at addr, which holds each
// blob download for 400 ms once its first MiB and a little more went
// through. The containerd image store reports a layer's size only when
// one of its 100 ms progress polls finds the layer partly written
// (daemon/containerd/progress.go at v28.5.2 and v2.0.0-beta.24), and
// containerd writes a blob 1 MiB at a time (core/content/helpers.go,
// copyWithBuffer); a local registry is faster than that.
func slowRegistry(t *testing.T, addr string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: addr})
	rp.FlushInterval = -1
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodGet && strings.Contains(resp.Request.URL.Path, "/blobs/") {
			resp.Body = &stallingBody{ReadCloser: resp.Body}
		}
		return nil
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// stallAfter is how much of a blob goes through before it stalls.
const stallAfter = 1<<20 + 8<<10

// stallingBody passes its first stallAfter bytes, waits, then the rest.
type stallingBody struct {
	io.ReadCloser
	read    int
	stalled bool
}

func (b *stallingBody) Read(p []byte) (int, error) {
	switch {
	case b.read < stallAfter && len(p) > stallAfter-b.read:
		p = p[:stallAfter-b.read]
	case b.read >= stallAfter && !b.stalled:
		b.stalled = true
		time.Sleep(400 * time.Millisecond)
	}
	n, err := b.ReadCloser.Read(p)
	b.read += n
	return n, err
}

// pullProxy is "prune-guard proxy" in front of an engine, started by the
// test (with the flags the issue gives: --listen, --docker-host,
// --control-socket, --audit-log).
type pullProxy struct {
	sock, control, audit string
}

func startPullProxy(t *testing.T, e *enginetest.Engine) pullProxy {
	t.Helper()
	bin := enginetest.BuildBinary(t)
	// Not t.TempDir(): a unix socket path holds at most 107 bytes.
	dir, err := os.MkdirTemp("", "pgpull")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	logs := t.TempDir()
	px := pullProxy{sock: filepath.Join(dir, "docker.sock"), control: filepath.Join(dir, "control.sock"), audit: filepath.Join(logs, "audit.jsonl")}
	logf, err := os.Create(filepath.Join(logs, "proxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "proxy", "--listen", px.sock, "--docker-host", e.Host(), "--control-socket", px.control,
		"--audit-log", px.audit, "--run-grace", "0s")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("proxy log:\n%s", b)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !unixAnswers(px.control, "/status") {
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("prune-guard proxy did not serve %s within 30s:\n%s", px.control, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return px
}

// pull pulls ref through the proxy with the engine API client the docker
// CLI is built on, reading the progress stream to its end as the CLI does.
func (px pullProxy) pull(t *testing.T, ref string) {
	t.Helper()
	c, err := client.New(client.WithHost("unix://" + px.sock))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	began := time.Now()
	resp, err := c.ImagePull(ctx, ref, client.ImagePullOptions{})
	if err != nil {
		t.Fatalf("pull %s through the proxy: %v", ref, err)
	}
	var statuses []string
	for m, err := range resp.JSONMessages(ctx) {
		if err != nil {
			t.Fatalf("pull %s through the proxy: %v", ref, err)
		}
		if m.Error != nil {
			t.Fatalf("pull %s through the proxy: %s", ref, m.Error.Message)
		}
		if m.ID != "" && m.Status != "Downloading" && m.Status != "Extracting" && m.Status != "Waiting" {
			statuses = append(statuses, m.ID+": "+m.Status)
		}
	}
	t.Logf("pulled %s through the proxy (%v): %s", ref, time.Since(began).Round(time.Millisecond), strings.Join(statuses, "; "))
}

func unixAnswers(sock, path string) bool {
	resp, err := unixClient(sock, 10*time.Second).Get("http://prune-guard" + path)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func unixGet(t *testing.T, sock, path string) string {
	t.Helper()
	resp, err := unixClient(sock, 10*time.Second).Get("http://prune-guard" + path)
	if err != nil {
		t.Fatalf("GET %s on %s: %v", path, sock, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		b.WriteString(sc.Text() + "\n")
	}
	return b.String()
}
