package metrics

import (
	"bytes"
	"context"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/prune-guard/prune-guard/internal/promtool"
)

// fakeReclaimer hands out totals a test changes.
type fakeReclaimer struct {
	mu sync.Mutex
	t  ReclaimTotals
}

// totals copies the totals, as reclaim.Reclaimer.Totals does.
func (f *fakeReclaimer) totals() ReclaimTotals {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.t
	t.Passes, t.Skipped = maps.Clone(t.Passes), maps.Clone(t.Skipped)
	return t
}

// pass adds a pass as a reclaimer does.
func (f *fakeReclaimer) pass(outcome string, failed bool, freed int64, removed int64, skipped map[string]int64, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.t.Passes == nil {
		f.t.Passes, f.t.Skipped = map[string]int64{"idle": 0, "acted": 0}, map[string]int64{}
	}
	f.t.Passes[outcome]++
	if failed {
		f.t.Failed++
	}
	f.t.FreedBytes += freed
	f.t.ImagesRemoved += removed
	for k, v := range skipped {
		f.t.Skipped[k] += v
	}
	f.t.Last = &ReclaimPass{Started: at, Duration: 1500 * time.Millisecond,
		Before: ReclaimUsage{Percent: 91.2, TotalBytes: 100e9, AvailBytes: 8.8e9, Inodes: 6e6, FreeInodes: 5e6},
		After:  ReclaimUsage{Percent: 79.5, TotalBytes: 100e9, AvailBytes: 20.5e9, Inodes: 6e6, FreeInodes: 5.1e6}}
}

func (f *fakeReclaimer) failBeforeFigures() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t.Failed++
}

func text(t *testing.T, g prometheus.Gatherer) string {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			t.Fatal(err)
		}
	}
	return buf.String()
}

func requireLines(t *testing.T, out string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(out, l+"\n") {
			t.Errorf("metrics lack %q:\n%s", l, out)
		}
	}
}

// What reclaim --watch serves and what its textfile holds pass promtool,
// with every series written.
func TestReclaimMetricsPassPromtool(t *testing.T) {
	f := &fakeReclaimer{}
	at := time.Unix(1764806400, 0)
	f.pass("acted", false, 11e9, 7, map[string]int64{"conflict": 1, "denied": 2}, at)
	e := NewReclaimExporter(f.totals, ReclaimMarks{High: 85, Low: 80, Critical: 95}, 5*time.Minute)
	served := text(t, NewRegistry(e))
	promtool.CheckMetrics(t, []byte(served))
	file := text(t, e.Textfile())
	promtool.CheckMetrics(t, []byte(file))
	requireLines(t, file,
		`prune_guard_reclaim_passes_total{outcome="acted"} 1`,
		`prune_guard_reclaim_passes_total{outcome="idle"} 0`,
		`prune_guard_reclaim_freed_bytes_total 1.1e+10`,
		`prune_guard_reclaim_images_removed_total 7`,
		`prune_guard_reclaim_skipped_total{reason="denied"} 2`,
		`prune_guard_reclaim_pass_failures_total 0`,
		`prune_guard_reclaim_last_pass_success 1`,
		`prune_guard_reclaim_last_pass_timestamp_seconds 1.7648064015e+09`,
		`prune_guard_reclaim_disk_used_ratio{at="end"} 0.795`,
		`prune_guard_reclaim_mark_ratio{mark="critical"} 0.95`,
		`prune_guard_reclaim_watch_interval_seconds 300`)
	for _, absent := range []string{"process_", "go_"} {
		if strings.Contains(file, "\n"+absent) {
			t.Errorf("the textfile has %s* series, which collide with node_exporter's own", absent)
		}
	}
	if !strings.Contains(served, "process_cpu_seconds_total") {
		t.Error("reclaim --watch serves no process metrics")
	}
}

// A pass that fails is a 0 and a failure; one that failed before any
// figure is noticed too; a pass that goes well is a 1 again.
func TestReclaimExporterNoticesEveryPass(t *testing.T) {
	f := &fakeReclaimer{}
	e := NewReclaimExporter(f.totals, ReclaimMarks{High: 85, Low: 80}, 0)
	if e.Observe() {
		t.Fatal("a pass noticed before any")
	}
	out := text(t, e.Textfile())
	if strings.Contains(out, "last_pass") || strings.Contains(out, "watch_interval") || strings.Contains(out, `mark="critical"`) {
		t.Errorf("before any pass, or with critical off, or run once:\n%s", out)
	}
	f.pass("acted", true, 1e9, 1, nil, time.Now())
	if !e.Observe() || e.Observe() {
		t.Fatal("a failed pass with figures was not noticed once")
	}
	requireLines(t, text(t, e.Textfile()), "prune_guard_reclaim_last_pass_success 0", "prune_guard_reclaim_pass_failures_total 1")
	f.failBeforeFigures()
	if !e.Observe() {
		t.Fatal("a pass that failed before its figures was not noticed")
	}
	requireLines(t, text(t, e.Textfile()), "prune_guard_reclaim_last_pass_success 0", "prune_guard_reclaim_pass_failures_total 2")
	e.RecordFailure()
	requireLines(t, text(t, e.Textfile()), "prune_guard_reclaim_pass_failures_total 3")
	f.pass("idle", false, 0, 0, nil, time.Now())
	requireLines(t, text(t, e.Textfile()), "prune_guard_reclaim_last_pass_success 1", `prune_guard_reclaim_passes_total{outcome="idle"} 1`)
}

// A reclaim run once per timer tick counts up from the textfile the run
// before wrote, so increase() sees every pass.
func TestReclaimCountersCarryOverTheTextfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prune_guard_reclaim.prom")
	for run := 1; run <= 3; run++ {
		f := &fakeReclaimer{}
		e := NewReclaimExporter(f.totals, ReclaimMarks{High: 85, Low: 80}, 0)
		if err := e.LoadBase(path); err != nil {
			t.Fatal(err)
		}
		f.pass("acted", false, 2e9, 2, map[string]int64{"gone": 1}, time.Now())
		e.Observe()
		if err := WriteTextfile(path, e.Textfile()); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	requireLines(t, string(data),
		`prune_guard_reclaim_passes_total{outcome="acted"} 3`,
		`prune_guard_reclaim_passes_total{outcome="idle"} 0`,
		`prune_guard_reclaim_freed_bytes_total 6e+09`,
		`prune_guard_reclaim_images_removed_total 6`,
		`prune_guard_reclaim_skipped_total{reason="gone"} 3`)
	promtool.CheckMetrics(t, data)

	// A file that does not parse: counting starts again, which is a reset.
	if err := os.WriteFile(path, []byte("not { metrics\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := NewReclaimExporter((&fakeReclaimer{}).totals, ReclaimMarks{High: 85, Low: 80}, 0)
	if err := e.LoadBase(path); err == nil {
		t.Error("a broken textfile loaded")
	}
	requireLines(t, text(t, e.Textfile()), "prune_guard_reclaim_freed_bytes_total 0")
}

// --watch with --metrics-textfile: the file is written after a pass, within
// the poll, and once more when the reclaimer stops.
func TestReclaimTextfileFollowsPasses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prune_guard_reclaim.prom")
	f := &fakeReclaimer{}
	e := NewReclaimExporter(f.totals, ReclaimMarks{High: 85, Low: 80}, time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.FollowPasses(ctx, path, 10*time.Millisecond, os.Stderr)
	}()
	waitFor := func(line string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if data, err := os.ReadFile(path); err == nil && strings.Contains(string(data), line+"\n") {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		data, _ := os.ReadFile(path)
		t.Fatalf("the textfile never had %q:\n%s", line, data)
	}
	waitFor(`prune_guard_reclaim_mark_ratio{mark="high"} 0.85`)
	f.pass("acted", false, 3e9, 3, nil, time.Now())
	waitFor("prune_guard_reclaim_images_removed_total 3")
	// A scrape that notices the pass first does not keep it from the file.
	_ = text(t, NewRegistry(e))
	f.pass("acted", false, 1e9, 1, nil, time.Now())
	_ = text(t, NewRegistry(e))
	waitFor("prune_guard_reclaim_images_removed_total 4")
	cancel()
	<-done
}
