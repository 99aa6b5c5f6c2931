package auditlog

import (
	"fmt"
	"io"
	"runtime"
	"testing"

	"github.com/prune-guard/prune-guard/audit"
)

// generatedLog produces an audit log of n decision lines on demand, so the
// test holds none of it, and samples the heap as it goes.
type generatedLog struct {
	n, i     int
	line     []byte
	rest     []byte
	produced int64
	peakHeap uint64
}

func (g *generatedLog) Read(p []byte) (int, error) {
	for len(g.rest) == 0 {
		if g.i == g.n {
			return 0, io.EOF
		}
		if g.i%2000 == 0 {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			g.peakHeap = max(g.peakHeap, m.HeapAlloc)
		}
		decision, rule := "allow", ""
		if g.i%3 == 0 {
			decision, rule = "deny", "no-delete-during-run"
		}
		g.line = fmt.Appendf(g.line[:0], `{"decision":%q,"duration_us":%d,"level":"info","method":"DELETE","msg":"request","operation":"image-delete",`+
			`"reason":"prune-guard: image delete of \"registry.example/team/app-%d:build-%d\" is blocked while a CI run is active (rule no-delete-during-run): active run prune-guard.run=job (container c); retry after the run ends",`+
			`"rule":%q,"runs":["prune-guard.run=job (container c)"],"target":"registry.example/team/app-%d:build-%d","time":"2026-11-26T09:%02d:%02d.123456789Z","uri":"/v1.43/images/registry.example/team/app-%d:build-%d","user":"ci-%d"}`+"\n",
			decision, g.i%5000, g.i%50, g.i, rule, g.i%50, g.i%20, (g.i/60)%60, g.i%60, g.i%50, g.i%20, g.i%7)
		g.rest = g.line
		g.i++
	}
	n := copy(p, g.rest)
	g.rest = g.rest[n:]
	g.produced += int64(n)
	return n, nil
}

func TestLargeLogsAreStreamedInBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams a 40 MiB log")
	}
	if raceDetector {
		t.Skip("the race detector's bookkeeping makes this slow, and it tests no concurrency")
	}
	const lines = 75_000
	runtime.GC()

	t.Run("report", func(t *testing.T) {
		g := &generatedLog{n: lines}
		s, err := Report(g, io.Discard, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if s.Matched != lines || s.Skipped != 0 || s.Decisions.Deny != lines/3 {
			t.Errorf("Matched=%d Skipped=%d Deny=%d, want %d, 0, %d", s.Matched, s.Skipped, s.Decisions.Deny, lines, lines/3)
		}
		checkBounded(t, g)
	})
	t.Run("replay", func(t *testing.T) {
		cfg := writePolicy(t, "rules: []\n")
		g := &generatedLog{n: lines}
		r, err := Replay(g, io.Discard, cfg.Policy, ReplayOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Decisions != lines || r.Changes[transition(audit.Deny, audit.Allow)] != lines/3 {
			t.Errorf("Decisions=%d changes=%v, want %d and %d deny->allow", r.Decisions, r.Changes, lines, lines/3)
		}
		checkBounded(t, g)
	})
}

// checkBounded fails when the heap grew with the input: a reader that held
// the log, or its lines, would need more than the whole input.
func checkBounded(t *testing.T, g *generatedLog) {
	t.Helper()
	const limit = 8 << 20
	if g.produced < 4*limit {
		t.Fatalf("generated only %d bytes; the test needs an input far larger than the limit", g.produced)
	}
	if g.peakHeap > limit {
		t.Errorf("heap reached %d MiB while streaming a %d MiB log, want under %d MiB", g.peakHeap>>20, g.produced>>20, limit>>20)
	}
	t.Logf("streamed %d MiB with a peak heap of %.1f MiB", g.produced>>20, float64(g.peakHeap)/(1<<20))
}
