package main

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
)

// Comparison is a target's figures divided by another target's (To), each
// the median over rounds of the ratio within a round, as for the baseline:
// pairing cancels whatever slowed the whole round.
type Comparison struct {
	To string `json:"to"`
	// RPS and MBps are throughput ratios (above 1: faster than To).
	RPS      float64   `json:"rps"`
	RoundRPS []float64 `json:"round_rps"`
	MBps     float64   `json:"mb_per_s"`
	// P50 and P99 are latency ratios of each round's own percentiles
	// (above 1: slower than To).
	P50      float64   `json:"p50"`
	P99      float64   `json:"p99"`
	RoundP99 []float64 `json:"round_p99"`
	// CPU is the ratio of CPU time per request of the target's processes
	// (--cpu-pids); 0 when either is not known.
	CPU float64 `json:"cpu_per_request,omitempty"`
}

// compareAll gives every target its comparisons to the targets labelled
// in labels (a target is not compared to itself).
func compareAll(rep *Report, labels []string) {
	for _, l := range labels {
		i := slices.IndexFunc(rep.Targets, func(t TargetReport) bool { return t.Label == l })
		if i < 0 {
			continue
		}
		to := rep.Targets[i]
		for j := range rep.Targets {
			t := &rep.Targets[j]
			if t.Label == to.Label {
				continue
			}
			t.Compared = append(t.Compared, compareTo(*t, to))
		}
	}
}

func compareTo(t, to TargetReport) Comparison {
	c := Comparison{
		To:       to.Label,
		RoundRPS: pairedRatios(t.RoundRPS, to.RoundRPS),
		RoundP99: pairedRatios(t.RoundP99, to.RoundP99),
	}
	c.RPS = median(c.RoundRPS)
	c.MBps = median(pairedRatios(t.RoundMBps, to.RoundMBps))
	c.P50 = median(pairedRatios(t.RoundP50, to.RoundP50))
	c.P99 = median(c.RoundP99)
	c.CPU = median(pairedRatios(t.RoundCPUPerRequest, to.RoundCPUPerRequest))
	return c
}

// printComparisons prints a table per --compare target.
func printComparisons(w io.Writer, rep Report, withMBps bool) error {
	for _, label := range comparedTo(rep) {
		fmt.Fprintf(w, "\nvs %s (median of per-round ratios; req/s and MB/s above 1 and latency below 1 are better):\n\n", label)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprint(tw, "target\treq/s\tper-round range\t")
		if withMBps {
			fmt.Fprint(tw, "MB/s\t")
		}
		fmt.Fprint(tw, "p50\tp99\tp99 per-round range\tcpu/req\t\n")
		for _, t := range rep.Targets {
			i := slices.IndexFunc(t.Compared, func(c Comparison) bool { return c.To == label })
			if i < 0 {
				continue
			}
			c := t.Compared[i]
			fmt.Fprintf(tw, "%s\t%s\t%s\t", t.Label, ratio(c.RPS), spread(c.RoundRPS))
			if withMBps {
				fmt.Fprintf(tw, "%s\t", ratio(c.MBps))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", ratio(c.P50), ratio(c.P99), spread(c.RoundP99), ratio(c.CPU))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// comparedTo lists the labels some target was compared to, in order.
func comparedTo(rep Report) []string {
	var labels []string
	for _, t := range rep.Targets {
		for _, c := range t.Compared {
			if !slices.Contains(labels, c.To) {
				labels = append(labels, c.To)
			}
		}
	}
	return labels
}
