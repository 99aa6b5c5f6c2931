package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// ReclaimTotals are a reclaimer's figures since it started, as the
// exporter reads them (reclaim.Totals).
type ReclaimTotals struct {
	// Passes counts passes by outcome; Failed those that ended in an
	// error, with figures or before any.
	Passes map[string]int64
	Failed int64
	// FreedBytes and ImagesRemoved sum the passes'; BuildCacheFreedBytes
	// sums what budgeted build prunes freed.
	FreedBytes, ImagesRemoved, BuildCacheFreedBytes int64
	// Skipped counts removals that did not happen, by reason.
	Skipped map[string]int64
	// Last is the latest pass with figures, nil before the first.
	Last *ReclaimPass
}

// ReclaimPass is one pass's timing and the data root's usage at its start
// and end.
type ReclaimPass struct {
	Started       time.Time
	Duration      time.Duration
	Before, After ReclaimUsage
}

// ReclaimUsage is the data root filesystem's usage.
type ReclaimUsage struct {
	Percent                float64
	TotalBytes, AvailBytes uint64
	Inodes, FreeInodes     uint64
}

// ReclaimMarks are the usage percentages reclaim acts at: High, frees to
// Low, acts during CI jobs at Critical (0: never).
type ReclaimMarks struct{ High, Low, Critical float64 }

// ReclaimExporter turns a reclaimer's totals into prune_guard_reclaim_*
// series, for --metrics-addr and --metrics-textfile. It notices each pass
// by its totals changing (Observe). Its counters start from those of a
// previous textfile (LoadBase), so a reclaim run once per timer tick still
// counts up from run to run, as counters must.
type ReclaimExporter struct {
	totals   func() ReclaimTotals
	marks    ReclaimMarks
	interval time.Duration
	now      func() time.Time

	mu   sync.Mutex
	base map[string]map[string]float64 // family -> label value ("" for none) -> value
	seen ReclaimTotals
	last *lastPass
	// extraFailures counts failures the totals never saw (RecordFailure).
	extraFailures int64
	// passes counts the passes noticed, so FollowPasses knows whether one
	// ended since it last wrote, whoever noticed it.
	passes int64
}

// lastPass is what the exporter knows of the latest pass.
type lastPass struct {
	ended    time.Time
	duration time.Duration
	failed   bool
}

// NewReclaimExporter exports totals with marks; interval is --watch's (0
// for a run once).
func NewReclaimExporter(totals func() ReclaimTotals, marks ReclaimMarks, interval time.Duration) *ReclaimExporter {
	return &ReclaimExporter{totals: totals, marks: marks, interval: interval, now: time.Now, base: map[string]map[string]float64{}}
}

// Observe reads the totals and reports whether a pass ended since the last
// reading. Passes come seconds apart at least, so one reading sees at most
// one: a pass with figures moves Passes, and Failed too when it failed; a
// pass that failed before any figure moves Failed alone.
func (e *ReclaimExporter) Observe() bool {
	// The totals are read under the lock: a scrape and the follower
	// observing at once must not write an older reading over a newer one
	// (counters would go back and the pass be counted twice).
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.totals()
	dPasses, dFailed := sum(t.Passes)-sum(e.seen.Passes), t.Failed-e.seen.Failed
	e.seen = t
	switch {
	case dPasses > 0 && t.Last != nil:
		e.last = &lastPass{ended: t.Last.Started.Add(t.Last.Duration), duration: t.Last.Duration, failed: dFailed > 0}
	case dFailed > 0:
		e.last = &lastPass{ended: e.now(), failed: true}
	default:
		return false
	}
	e.passes++
	return true
}

// noticed is how many passes the exporter has noticed.
func (e *ReclaimExporter) noticed() int64 {
	e.Observe()
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.passes
}

// RecordFailure records a pass that failed before the reclaimer counted it
// (a run once whose engine events could not be read).
func (e *ReclaimExporter) RecordFailure() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.extraFailures++
	e.passes++
	e.last = &lastPass{ended: e.now(), failed: true}
}

func sum(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// The reclaim series. Counters carry over from a previous textfile
// (LoadBase); gauges are this process's.
var (
	descPasses = prometheus.NewDesc("prune_guard_reclaim_passes_total",
		"Reclaim passes, by outcome: idle (nothing due), acted, waiting (for CI jobs), refused (run state unknown), stopped (mid-pass), dry-run.", []string{"outcome"}, nil)
	descFailures = prometheus.NewDesc("prune_guard_reclaim_pass_failures_total",
		"Reclaim passes that ended in an error: an engine error, or a target still unmet after all it may remove.", nil, nil)
	descFreed = prometheus.NewDesc("prune_guard_reclaim_freed_bytes_total",
		"Bytes reclaim's image removals gave back, as measured on the data root's filesystem.", nil, nil)
	descRemoved = prometheus.NewDesc("prune_guard_reclaim_images_removed_total",
		"Images reclaim removed.", nil, nil)
	descSkipped = prometheus.NewDesc("prune_guard_reclaim_skipped_total",
		"Removals reclaim planned but did not make, by reason: conflict (the image gained a container or child), denied (by the guard's policy), gone, job (a CI job started).", []string{"reason"}, nil)
	descBuildCache = prometheus.NewDesc("prune_guard_reclaim_build_cache_freed_bytes_total",
		"Bytes of BuildKit cache freed by reclaim's budgeted build prunes (--build-cache-max).", nil, nil)
	descLastEnd = prometheus.NewDesc("prune_guard_reclaim_last_pass_timestamp_seconds",
		"When the latest reclaim pass ended, in seconds since the epoch.", nil, nil)
	descLastOK = prometheus.NewDesc("prune_guard_reclaim_last_pass_success",
		"1 when the latest reclaim pass ended without an error, 0 when it failed.", nil, nil)
	descLastDuration = prometheus.NewDesc("prune_guard_reclaim_last_pass_duration_seconds",
		"How long the latest reclaim pass with figures took.", nil, nil)
	descUsed = prometheus.NewDesc("prune_guard_reclaim_disk_used_ratio",
		"Used share (0-1) of the filesystem holding the engine's data root, at the start or the end of the latest pass (root's reserved blocks count as used).", []string{"at"}, nil)
	descSize = prometheus.NewDesc("prune_guard_reclaim_disk_size_bytes",
		"Size of the filesystem holding the engine's data root, at the end of the latest pass.", nil, nil)
	descAvail = prometheus.NewDesc("prune_guard_reclaim_disk_avail_bytes",
		"Bytes available to unprivileged users on the data root's filesystem, at the end of the latest pass.", nil, nil)
	descFreeInodes = prometheus.NewDesc("prune_guard_reclaim_disk_free_inodes",
		"Free inodes on the data root's filesystem, at the end of the latest pass.", nil, nil)
	descMark = prometheus.NewDesc("prune_guard_reclaim_mark_ratio",
		"The usage (0-1) reclaim acts at (high), frees down to (low) and acts at during CI jobs (critical; absent when off).", []string{"mark"}, nil)
	descInterval = prometheus.NewDesc("prune_guard_reclaim_watch_interval_seconds",
		"The interval between passes of reclaim --watch (absent for a run once).", nil, nil)
)

// Describe sends every reclaim series' description.
func (e *ReclaimExporter) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPasses, descFailures, descFreed, descRemoved, descSkipped, descBuildCache, descLastEnd,
		descLastOK, descLastDuration, descUsed, descSize, descAvail, descFreeInodes, descMark, descInterval} {
		ch <- d
	}
}

// Collect reads the totals (a scrape notices a pass as Observe does) and
// writes the series.
func (e *ReclaimExporter) Collect(ch chan<- prometheus.Metric) {
	e.Observe()
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.seen
	e.counterVec(ch, descPasses, "prune_guard_reclaim_passes_total", t.Passes)
	e.counterVec(ch, descSkipped, "prune_guard_reclaim_skipped_total", t.Skipped)
	for _, c := range []struct {
		d    *prometheus.Desc
		name string
		v    int64
	}{
		{descFailures, "prune_guard_reclaim_pass_failures_total", t.Failed + e.extraFailures},
		{descFreed, "prune_guard_reclaim_freed_bytes_total", t.FreedBytes},
		{descRemoved, "prune_guard_reclaim_images_removed_total", t.ImagesRemoved},
		{descBuildCache, "prune_guard_reclaim_build_cache_freed_bytes_total", t.BuildCacheFreedBytes},
	} {
		ch <- prometheus.MustNewConstMetric(c.d, prometheus.CounterValue, e.base[c.name][""]+float64(c.v))
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descMark, e.marks.High/100, "high")
	gauge(descMark, e.marks.Low/100, "low")
	if e.marks.Critical > 0 {
		gauge(descMark, e.marks.Critical/100, "critical")
	}
	if e.interval > 0 {
		gauge(descInterval, e.interval.Seconds())
	}
	if l := e.last; l != nil {
		gauge(descLastEnd, float64(l.ended.UnixMilli())/1000)
		gauge(descLastOK, map[bool]float64{true: 0, false: 1}[l.failed])
	}
	if p := t.Last; p != nil {
		gauge(descLastDuration, p.Duration.Seconds())
		gauge(descUsed, p.Before.Percent/100, "start")
		gauge(descUsed, p.After.Percent/100, "end")
		gauge(descSize, float64(p.After.TotalBytes))
		gauge(descAvail, float64(p.After.AvailBytes))
		if p.After.Inodes > 0 {
			gauge(descFreeInodes, float64(p.After.FreeInodes))
		}
	}
}

// counterVec writes a labelled counter: this process's counts over the
// base's, every label value of either.
func (e *ReclaimExporter) counterVec(ch chan<- prometheus.Metric, d *prometheus.Desc, name string, now map[string]int64) {
	vals := maps.Clone(e.base[name])
	if vals == nil {
		vals = map[string]float64{}
	}
	for k, v := range now {
		vals[k] += float64(v)
	}
	for k, v := range vals {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, k)
	}
}

// LoadBase starts the counters from the textfile at path, if one is there:
// what earlier runs counted. A file that does not parse is reported and the
// counters start at zero, which Prometheus reads as a counter reset.
func (e *ReclaimExporter) LoadBase(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("metrics textfile: %w", err)
	}
	defer f.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(f)
	if err != nil {
		return fmt.Errorf("metrics textfile %s: %w (its counters start again from zero)", path, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for name, mf := range mfs {
		if mf.GetType() != dto.MetricType_COUNTER || !strings.HasPrefix(name, "prune_guard_reclaim_") {
			continue
		}
		vals := map[string]float64{}
		for _, m := range mf.GetMetric() {
			vals[labelValue(m)] += m.GetCounter().GetValue()
		}
		e.base[name] = vals
	}
	return nil
}

// labelValue is a reclaim counter's one label value, "" for none.
func labelValue(m *dto.Metric) string {
	if ls := m.GetLabel(); len(ls) > 0 {
		return ls[0].GetValue()
	}
	return ""
}

// Textfile is what --metrics-textfile holds: the reclaim series and
// prune_guard_build_info, without process or Go runtime metrics, which
// node_exporter exports for itself.
func (e *ReclaimExporter) Textfile() prometheus.Gatherer {
	reg := prometheus.NewRegistry()
	reg.MustRegister(BuildInfo(), e)
	return reg
}

// FollowPasses writes the textfile at path within poll after every pass
// the exporter notices, until ctx ends, and once more then. A write that
// fails is reported and tried again after the next pass.
func (e *ReclaimExporter) FollowPasses(ctx context.Context, path string, poll time.Duration, errOut io.Writer) {
	tick := time.NewTicker(poll)
	defer tick.Stop()
	written := int64(-1)
	for {
		stop := false
		select {
		case <-ctx.Done():
			stop = true
		case <-tick.C:
		}
		if n := e.noticed(); n != written || stop {
			if err := WriteTextfile(path, e.Textfile()); err != nil {
				fmt.Fprintf(errOut, "prune-guard reclaim: %v\n", err)
			} else {
				written = n
			}
		}
		if stop {
			return
		}
	}
}
