package guard

import (
	"bytes"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/promtool"
	"github.com/prune-guard/prune-guard/rules"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// The metrics' names, help, types and labels are an interface that
// dashboards and alerts depend on: any change to them shows here.
func TestMetricsMatchTheGoldenFile(t *testing.T) {
	authz := fixedStatus()
	proxy := fixedStatus()
	proxy.Transport.Mode = ModeProxy
	proxy.Stats.PullLayersReused, proxy.Stats.PullLayersDownloaded, proxy.Stats.PullBytes = 27, 8, 123456789
	for _, tt := range []struct {
		golden string
		s      Status
	}{
		{"metrics.golden", authz},
		{"metrics-proxy.golden", proxy},
	} {
		t.Run(tt.golden, func(t *testing.T) { checkGolden(t, tt.golden, tt.s) })
	}
}

// fixedStatus is a Status with every series the guard writes in authz mode.
func fixedStatus() Status {
	return Status{
		Transport: Transport{Mode: ModeAuthz},
		Policy: PolicyStatus{Hash: "5d1c0f3a9b2e7c44d0a1b2c3d4e5f60718293a4b5c6d7e8f9012345678901234",
			Detectors: []string{"gitlab", "github-actions", "prune-guard"}},
		Runs: RunsStatus{RunsView: RunsView{
			Active: []ActiveRun{
				{Run: "GitLab job 4711, container build", Detector: "gitlab", Job: "GitLab job 4711"},
				{Run: "GitLab job 4711, container postgres", Detector: "gitlab", Job: "GitLab job 4711"},
				{Run: "GitLab job 4712, container build", Detector: "gitlab", Job: "GitLab job 4712"},
			},
			Ended: []EndedRun{{Run: "prune-guard run 9, container c", Detector: "prune-guard", Job: "prune-guard run 9"}},
		}},
		Stats: Snapshot{
			Started: time.Unix(1764806400, 0),
			Reads:   1234,
			Decisions: map[string]map[string]int64{
				"no-prune-all":        {"deny": 3},
				"no-prune-during-run": {"deny": 1, "would-deny": 2},
				"(none)":              {"allow": 7},
			},
			EngineErrors:  1,
			Reloads:       2,
			Rejections:    1,
			LatencyCounts: []int64{4, 5, 1, 0, 0, 0, 0, 0, 0},
			LatencySum:    3 * time.Millisecond,
			LatencyN:      10,
			Pulls: map[string]map[string]int64{
				"docker.io":             {"hit": 9, "miss": 3},
				"registry.example:5000": {"miss": 1, "unknown": 2},
			},
		},
		AuditWriteFailures: 0,
	}
}

// An unknown run state is a 0, and no job counts are written.
func TestMetricsOfAnUnknownRunStateCountNoJobs(t *testing.T) {
	s := fixedStatus()
	s.Runs = RunsStatus{RunsView: RunsView{Error: "engine down"}}
	var got bytes.Buffer
	if err := WriteMetrics(&got, s); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"prune_guard_run_state_known 0\n"} {
		if !bytes.Contains(got.Bytes(), []byte(want)) {
			t.Errorf("metrics lack %q:\n%s", want, got.String())
		}
	}
	for _, absent := range []string{"prune_guard_active_jobs", "prune_guard_jobs_in_grace"} {
		if bytes.Contains(got.Bytes(), []byte(absent)) {
			t.Errorf("metrics of an unknown run state have %s:\n%s", absent, got.String())
		}
	}
}

func checkGolden(t *testing.T, name string, s Status) {
	t.Helper()
	var got bytes.Buffer
	if err := WriteMetrics(&got, s); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (go test ./guard -run TestMetricsMatchTheGoldenFile -update writes it)", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("metrics differ from %s (rerun with -update after checking the change):\n%s", golden, got.String())
	}
	promtool.CheckMetrics(t, got.Bytes())
}

// What a scrape of a running guard gets (its series with the process and
// Go runtime metrics and the build info) passes promtool's linter, and
// names the policy in force.
func TestMetricsHandlerPassesPromtool(t *testing.T) {
	g, _ := newTestGuard(&fakeRuns{runs: []rules.Run{liveJob}})
	rec := httptest.NewRecorder()
	g.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d\n%s", rec.Code, rec.Body)
	}
	body := rec.Body.Bytes()
	for _, want := range []string{
		`prune_guard_policy_info{sha256="` + g.Config().Hash + `"} 1`,
		`prune_guard_active_jobs{detector="gitlab"} 1`,
		"prune_guard_build_info{", "process_resident_memory_bytes", "go_goroutines",
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	promtool.CheckMetrics(t, body)
}
