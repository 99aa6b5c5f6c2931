package main

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"
)

// TestCompareAll checks that comparisons pair rounds, take each round's
// own percentiles, and skip a target's comparison to itself.
func TestCompareAll(t *testing.T) {
	sec, ms := time.Second, time.Millisecond
	none := &target{label: "none", rounds: []round{
		{OK: 1000, Elapsed: sec, Bytes: 100e6, P50: 1 * ms, P99: 4 * ms, CPU: 100 * ms},
		{OK: 500, Elapsed: sec, Bytes: 50e6, P50: 2 * ms, P99: 8 * ms, CPU: 50 * ms},
	}}
	proxy := &target{label: "proxy", rounds: []round{
		{OK: 800, Elapsed: sec, Bytes: 80e6, P50: 1500 * time.Microsecond, P99: 6 * ms, CPU: 120 * ms},
		{OK: 400, Elapsed: sec, Bytes: 40e6, P50: 3 * ms, P99: 12 * ms, CPU: 60 * ms},
	}}
	none.pids, proxy.pids = []int{1}, []int{2}
	rep := report([]*target{none, proxy}, config{baseline: "none", compare: []string{"none", "proxy"}})

	p := rep.Targets[1]
	if len(p.Compared) != 1 || p.Compared[0].To != "none" {
		t.Fatalf("proxy compared to %+v, want none alone", p.Compared)
	}
	c := p.Compared[0]
	for _, tc := range []struct {
		name      string
		got, want float64
	}{
		{"req/s", c.RPS, 0.8},
		{"MB/s", c.MBps, 0.8},
		{"p50", c.P50, 1.5},
		{"p99", c.P99, 1.5},
		{"cpu/req", c.CPU, 1.5}, // 150 µs against 100 µs in both rounds
	} {
		if math.Abs(tc.got-tc.want) > 1e-9 {
			t.Errorf("proxy vs none %s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if len(c.RoundRPS) != 2 {
		t.Errorf("%d paired rounds, want 2", len(c.RoundRPS))
	}
	if n := rep.Targets[0]; len(n.Compared) != 1 || n.Compared[0].To != "proxy" || math.Abs(n.Compared[0].RPS-1.25) > 1e-9 {
		t.Errorf("none compared: %+v, want proxy at 1.25", n.Compared)
	}
	if math.Abs(p.MedianMBps-60) > 1e-9 {
		t.Errorf("proxy median MB/s = %v, want 60", p.MedianMBps)
	}

	var out bytes.Buffer
	if err := printTable(&out, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"vs none (median", "vs proxy (median", "MB/s median"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestValidateCompare(t *testing.T) {
	targets := socketList{{label: "none"}, {label: "proxy"}}
	cfg := config{concurrency: 1, duration: sec, rounds: 1, timeout: sec, path: "/x", compare: []string{"haproxy"}}
	if err := validate(targets, cfg); err == nil {
		t.Error("validate accepted --compare naming no target")
	}
	cfg.compare = []string{"none"}
	if err := validate(targets, cfg); err != nil {
		t.Errorf("validate: %v", err)
	}
}

const sec = time.Second
