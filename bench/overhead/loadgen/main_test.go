package main

import (
	"fmt"
	"math"
	"os"
	"slices"
	"testing"
	"time"
)

func TestSocketListSet(t *testing.T) {
	var s socketList
	for _, v := range []string{"none=/a/n.sock,floor=/b/f.sock", " guard=/c/g.sock ", "/tmp/x/d.sock"} {
		if err := s.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	want := "none=/a/n.sock,floor=/b/f.sock,guard=/c/g.sock,x=/tmp/x/d.sock"
	if got := s.String(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, bad := range []string{"none=/dup.sock", "=/p.sock", "l="} {
		if err := s.Set(bad); err == nil {
			t.Errorf("Set(%q) succeeded, want an error", bad)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		in := slices.Clone(tc.in)
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("median reordered its input: %v", tc.in)
		}
	}
}

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 100; i++ {
		s = append(s, time.Duration(i))
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{0, 1}, {50, 50}, {99, 99}, {100, 100}} {
		if got := percentile(s, tc.p); got != tc.want {
			t.Errorf("percentile(1..100, %v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("percentile(nil) = %v, want 0", got)
	}
}

// TestReportPairsRounds checks that the ratio to the baseline is taken
// round by round, so a slow round that hits both targets cancels out.
func TestReportPairsRounds(t *testing.T) {
	sec := time.Second
	floor := &target{label: "floor", rounds: []round{{OK: 1000, Elapsed: sec}, {OK: 100, Elapsed: sec}, {OK: 1000, Elapsed: sec}}}
	guard := &target{label: "guard", rounds: []round{{OK: 950, Elapsed: sec}, {OK: 95, Elapsed: sec}}} // stopped early
	rep := report([]*target{floor, guard}, config{baseline: "floor"})

	g := rep.Targets[1]
	if math.Abs(g.VsBaseline-0.95) > 1e-9 {
		t.Errorf("guard vs floor = %v, want 0.95", g.VsBaseline)
	}
	if len(g.RoundVsBaseline) != 2 {
		t.Errorf("guard has %d paired rounds, want 2", len(g.RoundVsBaseline))
	}
	if rep.Targets[0].VsBaseline != 1 {
		t.Errorf("floor vs itself = %v, want 1", rep.Targets[0].VsBaseline)
	}
	if g.Requests != 1045 {
		t.Errorf("guard requests = %d, want 1045", g.Requests)
	}
}

func TestTurnOrderBalanced(t *testing.T) {
	var got []string
	for r := range 6 {
		got = append(got, fmt.Sprint(turnOrder(3, r)))
	}
	want := []string{"[0 1 2]", "[1 2 0]", "[2 0 1]", "[2 1 0]", "[0 2 1]", "[1 0 2]"}
	if !slices.Equal(got, want) {
		t.Errorf("orders for 3 targets = %v, want %v", got, want)
	}

	for n := 1; n <= 5; n++ {
		// gaps[a][b] counts, by signed distance from a to b, the
		// rounds in which b ran that many turns after a.
		gaps := make(map[[2]int]map[int]int)
		posCount := make(map[[2]int]int)
		for r := range 2 * n {
			order := turnOrder(n, r)
			pos := make([]int, n)
			for p, i := range order {
				pos[i] = p
				posCount[[2]int{i, p}]++
			}
			for a := range n {
				for b := range n {
					if a == b {
						continue
					}
					k := [2]int{a, b}
					if gaps[k] == nil {
						gaps[k] = make(map[int]int)
					}
					gaps[k][pos[b]-pos[a]]++
				}
			}
		}
		for k, c := range posCount {
			if c != 2 {
				t.Errorf("n=%d: target %d at position %d in %d rounds, want 2", n, k[0], k[1], c)
			}
		}
		for k, g := range gaps {
			for d, c := range g {
				if g[-d] != c {
					t.Errorf("n=%d: %d ran %d after %d in %d rounds but %d before in %d", n, k[1], d, k[0], c, d, g[-d])
				}
			}
		}
	}
}

func TestPidFlag(t *testing.T) {
	f := make(pidFlag)
	for _, v := range []string{"floor=10+11", "guard=12,none=13"} {
		if err := f.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	if got, want := f.String(), "floor=10+11,guard=12,none=13"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, bad := range []string{"floor", "floor=", "floor=x", "floor=1+-2", "=3"} {
		if err := make(pidFlag).Set(bad); err == nil {
			t.Errorf("Set(%q) succeeded, want an error", bad)
		}
	}
	targets := []*target{{label: "floor"}, {label: "guard"}}
	if err := (pidFlag{"flor": {1}}).attach(targets); err == nil {
		t.Error("attach accepted a label that names no target")
	}
}

func TestCPUTime(t *testing.T) {
	// Burn some CPU so that there is at least a tick to see.
	start := time.Now()
	for x := 0; time.Since(start) < 50*time.Millisecond; x++ {
		_ = x * x
	}
	got, err := cpuTime([]int{os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	if got <= 0 {
		t.Errorf("cpuTime(self) = %v, want > 0", got)
	}
	if _, err := cpuTime([]int{1 << 30}); err == nil {
		t.Error("cpuTime of a missing process succeeded")
	}
}

func TestMachineBusy(t *testing.T) {
	got, err := machineBusy()
	if err != nil {
		t.Fatal(err)
	}
	if got <= 0 {
		t.Errorf("machineBusy() = %v, want > 0", got)
	}
}
