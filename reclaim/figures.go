package reclaim

import (
	"maps"
	"sync"
	"time"
)

// Figures are one pass's figures in a structured form: what the audit
// log's "reclaim pass" line carries, and what a metrics exporter reads
// (Reclaimer.Totals sums them). Field names are the exporter's to keep.
type Figures struct {
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
	// Outcome is what the pass came to (the Outcome* constants).
	Outcome string `json:"outcome"`
	DryRun  bool   `json:"dry_run"`
	// Pressure, Critical and Trigger are the first plan's.
	Pressure bool   `json:"pressure"`
	Critical bool   `json:"critical"`
	Trigger  string `json:"trigger,omitempty"`
	// Before and After are the data root's usage at the pass's start and
	// end.
	Before UsageFigures `json:"before"`
	After  UsageFigures `json:"after"`
	// FreedBytes is what the image removals gave back, measured.
	FreedBytes    int64 `json:"freed_bytes"`
	ImagesRemoved int   `json:"images_removed"`
	// Skipped counts the steps that did not remove their image, by kind
	// (conflict, denied, gone, job).
	Skipped map[string]int `json:"skipped"`
	// Kept counts the listed images that stay, by reason.
	Kept map[KeepReason]int `json:"kept"`
	// BuildCache is the budget's work, when --build-cache-max is set.
	BuildCache *BuildCacheFigures `json:"build_cache,omitempty"`
}

// UsageFigures is a Usage as figures.
type UsageFigures struct {
	Percent    float64 `json:"percent"`
	TotalBytes uint64  `json:"total_bytes"`
	AvailBytes uint64  `json:"avail_bytes"`
	Inodes     uint64  `json:"inodes,omitempty"`
	FreeInodes uint64  `json:"free_inodes,omitempty"`
}

// BuildCacheFigures is a BuildCache as figures.
type BuildCacheFigures struct {
	BudgetBytes    int64 `json:"budget_bytes"`
	BeforeBytes    int64 `json:"before_bytes"`
	AfterBytes     int64 `json:"after_bytes"`
	ReclaimedBytes int64 `json:"reclaimed_bytes"`
	Pruned         bool  `json:"pruned"`
	Held           bool  `json:"held"`
	Failed         bool  `json:"failed"`
}

// What a pass came to.
const (
	// OutcomeIdle: nothing was due.
	OutcomeIdle = "idle"
	// OutcomeActed: the pass removed images, or tried to.
	OutcomeActed = "acted"
	// OutcomeWaiting: under pressure below --critical, CI jobs hold image
	// deletes; the pass waits for them.
	OutcomeWaiting = "waiting"
	// OutcomeRefused: the run state is unknown, or a job holds the
	// removals --max-unused asked for.
	OutcomeRefused = "refused"
	// OutcomeStopped: a run started, or no grant came, mid-pass.
	OutcomeStopped = "stopped"
	// OutcomeDryRun: the plan was printed.
	OutcomeDryRun = "dry-run"
)

func usageFigures(u Usage) UsageFigures {
	return UsageFigures{Percent: round1(u.Percent()), TotalBytes: u.Total, AvailBytes: u.Avail, Inodes: u.Inodes, FreeInodes: u.FreeInodes}
}

// Figures are the pass's figures.
func (res *Result) Figures() Figures {
	p := &res.Plan
	f := Figures{
		Started: res.Started, Duration: res.Took, DryRun: res.DryRun,
		Pressure: p.Pressure, Critical: p.Critical, Trigger: p.Trigger,
		Before: usageFigures(res.Before), After: usageFigures(res.After),
		FreedBytes: res.Freed(), ImagesRemoved: len(res.Removed),
		Skipped: map[string]int{}, Kept: map[KeepReason]int{},
	}
	for _, o := range res.Skipped {
		f.Skipped[o.Kind]++
	}
	for _, k := range p.Keep {
		f.Kept[k.Reason]++
	}
	switch {
	case res.DryRun:
		f.Outcome = OutcomeDryRun
	case p.Waiting:
		f.Outcome = OutcomeWaiting
	case p.Refused != "":
		f.Outcome = OutcomeRefused
	case res.Stopped != "":
		f.Outcome = OutcomeStopped
	case len(res.Removed)+len(res.Skipped) > 0 || res.BuildCache != nil && res.BuildCache.Pruned:
		f.Outcome = OutcomeActed
	default:
		f.Outcome = OutcomeIdle
	}
	if bc := res.BuildCache; bc != nil {
		f.BuildCache = &BuildCacheFigures{BudgetBytes: bc.Budget, BeforeBytes: bc.Before, AfterBytes: bc.After,
			ReclaimedBytes: bc.Reclaimed, Pruned: bc.Pruned, Held: bc.Held != "", Failed: bc.Err != nil}
	}
	return f
}

// Totals are the figures of every pass since the reclaimer started, for a
// long-running reclaimer's (--watch) metrics.
type Totals struct {
	// Passes counts passes by outcome; Failed the passes that ended in an
	// error before or while acting (an engine error, usage still
	// triggered when nothing more could go).
	Passes map[string]int64 `json:"passes"`
	Failed int64            `json:"failed"`
	// FreedBytes and ImagesRemoved sum the passes'.
	FreedBytes    int64 `json:"freed_bytes"`
	ImagesRemoved int64 `json:"images_removed"`
	// Skipped sums the skips by kind.
	Skipped map[string]int64 `json:"skipped"`
	// BuildCacheReclaimedBytes sums what budgeted build prunes freed.
	BuildCacheReclaimedBytes int64 `json:"build_cache_reclaimed_bytes"`
	// Last is the latest pass's figures (nil before the first).
	Last *Figures `json:"last,omitempty"`
}

// totals accumulates Totals; safe for concurrent use.
type totals struct {
	mu sync.Mutex
	t  Totals
}

func (a *totals) add(f *Figures, failed bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.t.Passes == nil {
		a.t.Passes, a.t.Skipped = map[string]int64{}, map[string]int64{}
	}
	if failed {
		a.t.Failed++
	}
	if f == nil {
		return
	}
	a.t.Passes[f.Outcome]++
	a.t.FreedBytes += f.FreedBytes
	a.t.ImagesRemoved += int64(f.ImagesRemoved)
	for k, n := range f.Skipped {
		a.t.Skipped[k] += int64(n)
	}
	if bc := f.BuildCache; bc != nil {
		a.t.BuildCacheReclaimedBytes += bc.ReclaimedBytes
	}
	last := *f
	a.t.Last = &last
}

func (a *totals) get() Totals {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.t
	t.Passes, t.Skipped = maps.Clone(a.t.Passes), maps.Clone(a.t.Skipped)
	if a.t.Last != nil {
		last := *a.t.Last
		last.Skipped, last.Kept = maps.Clone(last.Skipped), maps.Clone(last.Kept)
		t.Last = &last
	}
	return t
}
