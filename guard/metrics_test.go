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
	s := Status{
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
		},
		AuditWriteFailures: 0,
	}
	var got bytes.Buffer
	WriteMetrics(&got, s)
	golden := filepath.Join("testdata", "metrics.golden")
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
