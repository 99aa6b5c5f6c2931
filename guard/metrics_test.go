package guard

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// The metrics' names, help, types and label order are an interface that
// dashboards and alerts depend on: any change to them shows here.
func TestMetricsMatchTheGoldenFile(t *testing.T) {
	pulls := map[string]map[string]int64{
		"docker.io":             {"hit": 9, "miss": 3},
		"registry.example:5000": {"miss": 1, "unknown": 2},
	}
	authz := Status{Transport: Transport{Mode: ModeAuthz}, Stats: snapshot(pulls)}
	proxy := Status{Transport: Transport{Mode: ModeProxy}, Stats: snapshot(pulls)}
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

// snapshot is a fixed set of counters.
func snapshot(pulls map[string]map[string]int64) Snapshot {
	return Snapshot{
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
		Pulls:         pulls,
	}
}

func checkGolden(t *testing.T, name string, s Status) {
	t.Helper()
	var got bytes.Buffer
	WriteMetrics(&got, s)
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
}
