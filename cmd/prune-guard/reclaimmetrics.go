package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/prune-guard/prune-guard/metrics"
	"github.com/prune-guard/prune-guard/reclaim"
)

// reclaimMetrics are reclaim's metrics flags: a listener for --watch and a
// textfile for node_exporter, written after every pass.
type reclaimMetrics struct {
	addr, webConfig, textfile string
}

var reclaimMetricsEnv = []envVar{
	{name: "PRUNE_GUARD_RECLAIM_METRICS_ADDR", flag: "metrics-addr"},
	{name: "PRUNE_GUARD_RECLAIM_METRICS_TEXTFILE", flag: "metrics-textfile"},
	{name: "PRUNE_GUARD_WEB_CONFIG", flag: "web-config"},
}

func (m *reclaimMetrics) register(f *pflag.FlagSet) {
	f.StringVar(&m.addr, "metrics-addr", "", "with --watch, serve reclaim's Prometheus metrics at /metrics on a loopback address (127.0.0.1:9710), a unix socket (unix:/run/prune-guard/reclaim-metrics.sock), or, with --web-config, any address; off by default")
	f.StringVar(&m.webConfig, "web-config", "", webConfigUsage)
	f.StringVar(&m.textfile, "metrics-textfile", "", "write reclaim's metrics to PATH after every pass, atomically and 0644, for node_exporter's textfile collector (e.g. /var/lib/prometheus/node-exporter/prune_guard_reclaim.prom); its counters go on from the file an earlier run wrote")
}

// validate refuses combinations that would serve nothing.
func (m reclaimMetrics) validate(watch time.Duration) error {
	switch {
	case m.addr != "" && watch == 0:
		return fmt.Errorf("--metrics-addr %q serves the metrics of a long-running reclaim: give --watch INTERVAL too, or --metrics-textfile PATH for a run once", m.addr)
	case m.webConfig != "" && m.addr == "":
		return errors.New("--web-config configures the --metrics-addr listener: give --metrics-addr too")
	}
	return nil
}

// exporter is the reclaimer's metrics exporter, its counters carried over
// from an earlier run's textfile; nil when no metrics were asked for.
func (m reclaimMetrics) exporter(r *reclaim.Reclaimer, cfg reclaim.Config, watch time.Duration, errOut io.Writer) *metrics.ReclaimExporter {
	if m.addr == "" && m.textfile == "" {
		return nil
	}
	exp := metrics.NewReclaimExporter(func() metrics.ReclaimTotals { return reclaimTotals(r.Totals()) },
		metrics.ReclaimMarks{High: cfg.High, Low: cfg.Low, Critical: cfg.Critical}, watch)
	if m.textfile != "" {
		if err := exp.LoadBase(m.textfile); err != nil {
			fmt.Fprintf(errOut, "prune-guard reclaim: %v\n", err)
		}
	}
	return exp
}

// serve starts what --watch exports: the listener and the textfile
// follower, until ctx ends. The returned function waits for the
// follower's last write and for the listener to close (which removes a
// unix socket).
func (m reclaimMetrics) serve(ctx context.Context, exp *metrics.ReclaimExporter, errOut io.Writer) (wait func(), err error) {
	var wg sync.WaitGroup
	wait = wg.Wait
	if exp == nil {
		return wait, nil
	}
	if m.addr != "" {
		l, err := listenMetrics(m.addr, m.webConfig)
		if err != nil {
			return wait, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := metrics.Serve(ctx, l, metrics.Handler(metrics.NewRegistry(exp)), m.webConfig, time.Second, errOut); err != nil {
				fmt.Fprintf(errOut, "prune-guard reclaim: metrics listener stopped: %v\n", err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if m.textfile != "" {
			exp.FollowPasses(ctx, m.textfile, time.Second, errOut)
			return
		}
		observe(ctx, exp, time.Second)
	}()
	return wait, nil
}

// observe lets the exporter notice each pass within poll, so the last
// pass's end is when it ended, not when the next scrape came.
func observe(ctx context.Context, exp *metrics.ReclaimExporter, poll time.Duration) {
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			exp.Observe()
		}
	}
}

// afterOnce writes the textfile of a run once; passErr is the pass's.
func (m reclaimMetrics) afterOnce(exp *metrics.ReclaimExporter, passErr error) error {
	if exp == nil || m.textfile == "" {
		return nil
	}
	if !exp.Observe() && passErr != nil && !errors.Is(passErr, context.Canceled) {
		exp.RecordFailure()
	}
	return metrics.WriteTextfile(m.textfile, exp.Textfile())
}

// reclaimTotals is the reclaimer's totals as the exporter reads them.
func reclaimTotals(t reclaim.Totals) metrics.ReclaimTotals {
	mt := metrics.ReclaimTotals{
		Passes: t.Passes, Failed: t.Failed, FreedBytes: t.FreedBytes, ImagesRemoved: t.ImagesRemoved,
		BuildCacheFreedBytes: t.BuildCacheReclaimedBytes, Skipped: t.Skipped,
	}
	if l := t.Last; l != nil {
		mt.Last = &metrics.ReclaimPass{Started: l.Started, Duration: l.Duration, Before: reclaimUsage(l.Before), After: reclaimUsage(l.After)}
	}
	return mt
}

func reclaimUsage(u reclaim.UsageFigures) metrics.ReclaimUsage {
	return metrics.ReclaimUsage{Percent: u.Percent, TotalBytes: u.TotalBytes, AvailBytes: u.AvailBytes, Inodes: u.Inodes, FreeInodes: u.FreeInodes}
}
