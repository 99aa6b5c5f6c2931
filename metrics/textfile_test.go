package metrics

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/prune-guard/prune-guard/internal/promtool"
)

// sizedGatherer gathers n series, n changing with every gather, and a last
// series whose value is n: a file cut short lacks it or disagrees with it.
type sizedGatherer struct{ n atomic.Int64 }

func (g *sizedGatherer) Gather() ([]*dto.MetricFamily, error) {
	n := g.n.Add(1)%400 + 1
	reg := prometheus.NewRegistry()
	v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "prune_guard_test_series", Help: "A series of a test."}, []string{"i"})
	for i := range n {
		v.WithLabelValues(strings.Repeat("x", int(i%50)) + string(rune('a'+i%26))).Set(float64(i))
	}
	last := prometheus.NewGauge(prometheus.GaugeOpts{Name: "prune_guard_test_written", Help: "How many series were written."})
	last.Set(float64(n))
	reg.MustRegister(v, last)
	return reg.Gather()
}

// A reader racing the writer sees a whole file every time: the previous
// one or the next, never a part of one, and never the temporary file under
// a name node_exporter reads.
func TestTextfileIsNeverSeenHalfWritten(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "prune_guard_reclaim.prom")
	g := &sizedGatherer{}
	if err := WriteTextfile(path, g); err != nil {
		t.Fatal(err)
	}
	const writes = 300
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(done)
		for range writes {
			if err := WriteTextfile(path, g); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	reads := 0
	for {
		select {
		case <-done:
			wg.Wait()
			if reads < 10 {
				t.Errorf("only %d reads raced %d writes", reads, writes)
			}
			checkNoTemporary(t, dir)
			return
		default:
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("read %d: %v", reads, err)
		}
		checkWhole(t, data)
		reads++
	}
}

// checkWhole parses data and checks that it holds as many series as it
// says it wrote.
func checkWhole(t *testing.T, data []byte) {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("a reader saw a broken file (%v):\n%s", err, data)
	}
	written, series := mfs["prune_guard_test_written"], mfs["prune_guard_test_series"]
	if written == nil || series == nil {
		t.Fatalf("a reader saw a partial file:\n%s", data)
	}
	if want := int(written.GetMetric()[0].GetGauge().GetValue()); len(series.GetMetric()) != want {
		t.Fatalf("a reader saw %d series of %d", len(series.GetMetric()), want)
	}
}

func checkNoTemporary(t *testing.T, dir string) {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 {
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		t.Errorf("the directory holds %v; want the textfile alone", names)
	}
	fi, err := os.Stat(filepath.Join(dir, "prune_guard_reclaim.prom"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("textfile mode %v, want 0644 (node_exporter runs as another user)", fi.Mode().Perm())
	}
}

// A temporary file is never a name node_exporter's textfile collector
// reads (*.prom).
func TestTextfileTemporaryIsNotReadByNodeExporter(t *testing.T) {
	dir := t.TempDir()
	// A directory in the textfile's place makes the rename fail after the
	// temporary file was written.
	path := filepath.Join(dir, "x.prom")
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(path, "keep"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteTextfile(path, &sizedGatherer{}); err == nil {
		t.Fatal("the rename over a directory succeeded")
	}
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		if e.Name() != "x.prom" {
			t.Errorf("a failed write left %s behind", e.Name())
		}
	}
}

// What the registry serves (process, Go runtime, build info) passes
// promtool's linter.
func TestRegistryPassesPromtool(t *testing.T) {
	reg := NewRegistry()
	var buf bytes.Buffer
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"prune_guard_build_info{goversion=", "process_cpu_seconds_total", "go_goroutines"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("registry lacks %s", want)
		}
	}
	promtool.CheckMetrics(t, buf.Bytes())
}
