package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// The load test drives a mixed workload through two dockerds that differ
// only in their authorization plugin: prune-guard, and the do-nothing floor
// plugin (bench/overhead/noopplugin), whose cost is the authz protocol's
// own. Mostly reads; some destructive requests whose right decision is
// known; and CI runs starting and stopping (a labelled container created
// and removed) between phases, with labelled and unlabelled containers
// churning inside them. Every decision is checked: zero wrong decisions and
// zero plugin errors, then req/s and latency against the floor.
//
// CI runs 10 000 requests per daemon at concurrency 32. PG_LOAD=1 runs
// 100 000 at concurrency 64 for local measurement; PG_LOAD_REQUESTS and
// PG_LOAD_CONCURRENCY set the figures.

// loadKind is what a request of the mix is, and so how it must be decided.
type loadKind int

const (
	loadRead            loadKind = iota // must pass, 2xx
	loadAlwaysDenied                    // denied with or without a run
	loadDeniedDuringRun                 // denied during a run, passes otherwise
	loadChurn                           // container create/remove: must pass
)

type loadReq struct {
	kind           loadKind
	method, target string
	body           string
}

// loadTarget is one daemon under load.
type loadTarget struct {
	name    string
	e       *enginetest.Engine
	a       *api
	client  *http.Client
	checked bool // decisions are checked (prune-guard), not just timed

	mu        sync.Mutex
	latencies []time.Duration // every request
	reads     []time.Duration // reads only
	elapsed   time.Duration
	wrong     []string
	errors    []string
	requests  int
}

func TestLoadMixedRequestsDecideCorrectlyAgainstTheFloorPlugin(t *testing.T) {
	// Not parallel: Go runs it before the parallel tests, alone on the
	// machine, so the figures are not other tests' noise.
	total, concurrency := 10_000, 32
	if os.Getenv("PG_LOAD") == "1" {
		total, concurrency = 100_000, 64
	}
	if v, err := strconv.Atoi(os.Getenv("PG_LOAD_REQUESTS")); err == nil && v > 0 {
		total = v
	}
	if v, err := strconv.Atoi(os.Getenv("PG_LOAD_CONCURRENCY")); err == nil && v > 0 {
		concurrency = v
	}
	const phases = 10
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	guarded, plugin := enginetest.StartGuarded(t, enginetest.Options{})
	floor := startFloorEngine(t)
	targets := []*loadTarget{
		{name: "prune-guard", e: guarded, checked: true},
		{name: "floor (noopplugin)", e: floor},
	}
	for _, lt := range targets {
		lt.a = newAPI(t, lt.e)
		lt.client = &http.Client{Timeout: time.Minute, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", lt.e.Socket())
			},
			MaxIdleConnsPerHost: concurrency,
		}}
		lt.a.importImage("pg-load-base:1")
		// Something for the list calls to encode.
		for i := range 5 {
			lt.a.must("POST", fmt.Sprintf("/v1.41/containers/create?name=pg-load-fixture-%d", i), "application/json",
				mustJSONBytes(t, map[string]any{"Image": "pg-load-base:1", "Cmd": []string{"/none"}, "Labels": map[string]string{"pg.load": "fixture"}}))
		}
	}

	// Phases alternate: no run, run, no run, ... The run is started and
	// stopped between phases, when no request is in flight, so that every
	// request's right decision is known.
	perPhase := total / phases
	for ph := range phases {
		running := ph%2 == 1
		reqs := loadMix(perPhase, ph, running)
		for _, lt := range targets {
			if running {
				lt.a.must("POST", "/v1.41/containers/create?name=pg-load-run", "application/json",
					mustJSONBytes(t, map[string]any{"Image": "pg-load-base:1", "Cmd": []string{"/none"}, "Labels": map[string]string{runLabel: fmt.Sprint("load-", ph)}}))
			}
			lt.runPhase(ctx, t, reqs, concurrency, running)
			if running {
				lt.a.do("DELETE", "/v1.41/containers/pg-load-run?force=1", "", nil)
			}
			if ctx.Err() != nil {
				t.Fatalf("the load did not finish within its bound")
			}
		}
	}

	// Zero plugin errors: nothing at error level in prune-guard's log.
	for _, line := range strings.Split(plugin.LogTail(), "\n") {
		if strings.Contains(line, "level=error") || strings.Contains(line, "panic") {
			t.Errorf("plugin error during the load: %s", line)
		}
	}
	var report strings.Builder
	fmt.Fprintf(&report, "\n%d requests per daemon in %d phases (every other one with a CI run active), concurrency %d, on %d cores:\n", total, phases, concurrency, runtime.NumCPU())
	fmt.Fprintf(&report, "| plugin | requests | req/s | p50 | p99 | reads p50 | reads p99 | wrong decisions | errors |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, lt := range targets {
		fmt.Fprintf(&report, "| %s | %d | %.0f | %v | %v | %v | %v | %d | %d |\n", lt.name, lt.requests,
			float64(lt.requests)/lt.elapsed.Seconds(), percentile(lt.latencies, 50), percentile(lt.latencies, 99), percentile(lt.reads, 50), percentile(lt.reads, 99), len(lt.wrong), len(lt.errors))
		for _, w := range lt.wrong[:min(len(lt.wrong), 10)] {
			t.Errorf("%s: wrong decision: %s", lt.name, w)
		}
		for _, e := range lt.errors[:min(len(lt.errors), 10)] {
			t.Errorf("%s: error: %s", lt.name, e)
		}
	}
	g, f := targets[0], targets[1]
	fmt.Fprintf(&report, "prune-guard vs floor: %.3f× the req/s, p99 %.2f×, reads p99 %.2f×",
		(float64(g.requests)/g.elapsed.Seconds())/(float64(f.requests)/f.elapsed.Seconds()),
		float64(percentile(g.latencies, 99))/float64(percentile(f.latencies, 99)), float64(percentile(g.reads, 99))/float64(percentile(f.reads, 99)))
	t.Log(report.String())
}

// loadMix returns n requests for one phase: 89% reads, 10% destructive with
// known decisions, 1% container churn (labelled containers during a run, so
// the run stays active while its containers change; unlabelled ones
// otherwise). Churn is kept small: creating and removing a container costs
// the engine a hundred reads' worth of work.
func loadMix(n, phase int, running bool) []loadReq {
	rng := rand.New(rand.NewPCG(uint64(phase), 42))
	reads := []string{"/v1.41/containers/json?all=1", "/v1.41/images/json", "/_ping", "/v1.41/version", "/v1.41/containers/json?" + qf(`{"label":["pg.load"]}`)}
	var out []loadReq
	for i := range n {
		switch r := rng.IntN(1000); {
		case r < 890:
			out = append(out, loadReq{kind: loadRead, method: "GET", target: reads[rng.IntN(len(reads))]})
		case r < 920:
			out = append(out, loadReq{kind: loadAlwaysDenied, method: "POST", target: "/v1.41/images/prune?" + pruneAll})
		case r < 930:
			out = append(out, loadReq{kind: loadAlwaysDenied, method: "POST", target: "/v1.41/build/prune?all=1"})
		case r < 940:
			out = append(out, loadReq{kind: loadAlwaysDenied, method: "POST", target: "/v1.41/volumes/prune"})
		case r < 970:
			out = append(out, loadReq{kind: loadDeniedDuringRun, method: "DELETE", target: fmt.Sprintf("/v1.41/images/pg-load-absent-%d:%d", phase, i)})
		case r < 980:
			out = append(out, loadReq{kind: loadDeniedDuringRun, method: "POST", target: "/v1.41/images/prune?" + pruneDangling})
		case r < 990:
			out = append(out, loadReq{kind: loadDeniedDuringRun, method: "POST", target: "/v1.41/networks/prune"})
		default:
			labels := `{"pg.load":"churn"}`
			if running {
				labels = fmt.Sprintf(`{%q:"churn-%d"}`, runLabel, phase)
			}
			out = append(out, loadReq{kind: loadChurn, method: "POST", target: fmt.Sprintf("/v1.41/containers/create?name=pg-load-churn-%d-%d", phase, i),
				body: `{"Image":"pg-load-base:1","Cmd":["/none"],"Labels":` + labels + `}`})
		}
	}
	return out
}

// runPhase sends reqs with the given concurrency and checks each answer.
// A churn container is removed again by the same worker right after.
func (lt *loadTarget) runPhase(ctx context.Context, t *testing.T, reqs []loadReq, concurrency int, running bool) {
	jobs := make(chan loadReq)
	var wg sync.WaitGroup
	start := time.Now()
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range jobs {
				lt.one(ctx, r, running)
				if r.kind == loadChurn {
					name := strings.TrimPrefix(r.target, "/v1.41/containers/create?name=")
					lt.one(ctx, loadReq{kind: loadChurn, method: "DELETE", target: "/v1.41/containers/" + name + "?force=1"}, running)
				}
			}
		}()
	}
	for _, r := range reqs {
		select {
		case jobs <- r:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	lt.mu.Lock()
	lt.elapsed += time.Since(start)
	lt.mu.Unlock()
}

func (lt *loadTarget) one(ctx context.Context, r loadReq, running bool) {
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	req, _ := http.NewRequestWithContext(ctx, r.method, "http://docker"+r.target, body)
	if r.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	start := time.Now()
	resp, err := lt.client.Do(req)
	var b []byte
	if err == nil {
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	took := time.Since(start)

	lt.mu.Lock()
	defer lt.mu.Unlock()
	lt.requests++
	lt.latencies = append(lt.latencies, took)
	if r.kind == loadRead {
		lt.reads = append(lt.reads, took)
	}
	if err != nil {
		lt.errors = append(lt.errors, fmt.Sprintf("%s %s: %v", r.method, r.target, err))
		return
	}
	if resp.StatusCode >= 500 {
		lt.errors = append(lt.errors, fmt.Sprintf("%s %s: %d %s", r.method, r.target, resp.StatusCode, strings.TrimSpace(string(b))))
		return
	}
	denied := resp.StatusCode == http.StatusForbidden && strings.Contains(string(b), "prune-guard: ")
	if !lt.checked {
		return
	}
	var want bool
	switch r.kind {
	case loadAlwaysDenied:
		want = true
	case loadDeniedDuringRun:
		want = running
	}
	if denied != want {
		lt.wrong = append(lt.wrong, fmt.Sprintf("%s %s (run active: %v): %d %s; want denied=%v", r.method, r.target, running, resp.StatusCode, strings.TrimSpace(string(b)), want))
	}
	if !denied && (r.kind == loadRead || r.kind == loadChurn) && resp.StatusCode/100 != 2 {
		lt.errors = append(lt.errors, fmt.Sprintf("%s %s: %d %s", r.method, r.target, resp.StatusCode, strings.TrimSpace(string(b))))
	}
}

// percentile is the p-th percentile of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)].Round(10 * time.Microsecond)
}

// startFloorEngine builds and starts the floor plugin (bench/overhead's
// noopplugin: allows everything unread) and a private engine using it.
func startFloorEngine(t *testing.T) *enginetest.Engine {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "noopplugin")
	build := exec.Command("go", "build", "-o", bin, "./bench/overhead/noopplugin")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the floor plugin: %v\n%s", err, out)
	}
	name := testPluginName()
	sock := filepath.Join(pluginDir, name+".sock")
	cmd := exec.Command(bin, "--socket", sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logPath := filepath.Join(t.TempDir(), "floor.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	// Registered before the engine's, so it runs after the engine stopped.
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		os.Remove(sock)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for activate(ctx, sock) != nil {
		select {
		case <-exited:
			t.Fatalf("the floor plugin exited:\n%s", tailFile(logPath, 20))
		case <-ctx.Done():
			t.Fatalf("the floor plugin is not answering on %s", sock)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return enginetest.Start(t, enginetest.Options{ExtraArgs: []string{"--authorization-plugin=" + name}})
}
