package reclaim

import (
	"context"
	"fmt"

	"github.com/moby/moby/client"

	"github.com/prune-guard/prune-guard/bytesize"
	"github.com/prune-guard/prune-guard/rules"
)

// BuildKit's cache within a budget (--build-cache-max): on every pass, with
// or without disk pressure, before any image, reclaim asks dockerd for its
// own budgeted build prune, never with all, never while a CI job is
// active.
//
// dockerd's POST /build/prune takes the budget as keep-storage below API
// 1.48 (moby v20.10.24 and v26.1.5 api/server/router/build/build_routes.go,
// postPrune: KeepStorage, which BuildKit's cache manager keeps as KeepBytes)
// and from 1.48 as max-used-space, beside reserved-space and min-free-space
// (v28.5.2 the same file, v2.0.0-beta.24 daemon/server/router/build: below
// 1.48 only keep-storage is read, as ReservedSpace). BuildKit prunes the
// least recently used records until the cache, counted without records an
// image shares, is under the budget: KeepBytes in v0.8 (moby 20.10's
// eeb7b65) and v0.13.2 (26.1), max(MaxUsedSpace, ReservedSpace) in
// v0.25.2 (28.5) and v0.33.0 (29), cache/manager.go calculateKeepBytes.
// Without all it keeps internal and frontend records and records an image
// shares, so a budget smaller than those cannot be met: reclaim says so.
//
// prune-guard's default policy lets such a prune (build-prune: no all)
// through when no job is active, and refuses build-prune-all always.

// BuildCache is what the budget did on one pass.
type BuildCache struct {
	// Budget is --build-cache-max in bytes; Before and After the cache's
	// size (records no image shares), as BuildKit counts it for the
	// budget.
	Budget, Before, After int64
	// Reclaimed is what dockerd reports the prune freed.
	Reclaimed int64
	// Param is the budget's query parameter: keep-storage or
	// max-used-space, by the API version.
	Param string
	// Pruned is set when a prune ran; Held says why none could (a job is
	// active, the run state is unknown); Err why it failed.
	Pruned bool
	Held   string
	Err    error
}

// Over reports whether the cache was over its budget before the pass.
func (b *BuildCache) Over() bool { return b != nil && b.Before > b.Budget }

// budgetBuildCache keeps the build cache within its budget. rs is the run
// state the pass began with; a build prune is a prune, refused during a
// job (no-prune-during-run), never held by the teardown grace.
func (r *Reclaimer) budgetBuildCache(ctx context.Context, rs rules.RunState) *BuildCache {
	if r.cfg.BuildCacheMax <= 0 {
		return nil
	}
	bc := &BuildCache{Budget: r.cfg.BuildCacheMax}
	var err error
	if bc.Before, err = r.buildCacheSize(ctx); err != nil {
		bc.Err = fmt.Errorf("measure the build cache: %w", err)
		return bc
	}
	bc.After = bc.Before
	if !bc.Over() {
		return bc
	}
	switch held := rs.Holding(rules.Classification{Op: rules.OpBuildPrune}, false); {
	case rs.Err != nil:
		bc.Held = fmt.Sprintf("the CI run state is unknown (%v)", rs.Err)
		return bc
	case held.Holds():
		bc.Held = "a CI job is active: " + rules.HoldReason(held)
		return bc
	}
	opts := client.BuildCachePruneOptions{}
	if rules.CompareVersions(r.c.ClientVersion(), "1.48") < 0 {
		opts.ReservedSpace, bc.Param = bc.Budget, "keep-storage" // the client sends it as keep-storage below 1.48
	} else {
		opts.MaxUsedSpace, bc.Param = bc.Budget, "max-used-space"
	}
	if r.cfg.DryRun {
		return bc
	}
	pctx, cancel := context.WithTimeout(ctx, r.cfg.EngineTimeout)
	res, err := r.c.BuildCachePrune(pctx, opts)
	cancel()
	if err != nil {
		bc.Err = fmt.Errorf("budgeted build prune (%s=%d): %w", bc.Param, bc.Budget, err)
		return bc
	}
	bc.Pruned, bc.Reclaimed = true, int64(res.Report.SpaceReclaimed)
	if bc.After, err = r.buildCacheSize(ctx); err != nil {
		bc.Err = fmt.Errorf("measure the build cache after its prune: %w", err)
	}
	return bc
}

// buildCacheSize is the build cache's size as BuildKit counts it against a
// budget: every record no image shares (cache/manager.go, the DiskUsage
// sum before a budgeted prune). dockerd's own total counts shared records
// too from API 1.52, so the records are summed here.
func (r *Reclaimer) buildCacheSize(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.EngineTimeout)
	defer cancel()
	du, err := r.c.DiskUsage(ctx, client.DiskUsageOptions{BuildCache: true, Verbose: true})
	if err != nil {
		return 0, err
	}
	var n int64
	for _, rec := range du.BuildCache.Items {
		if !rec.Shared {
			n += rec.Size
		}
	}
	return n, nil
}

// reportBuildCache prints what the budget did.
func (r *Reclaimer) reportBuildCache(bc *BuildCache) {
	if bc == nil {
		return
	}
	w := r.cfg.Out
	budget := bytesize.Format(bc.Budget)
	switch {
	case bc.Err != nil:
		fmt.Fprintf(w, "build cache: %v\n", bc.Err)
	case !bc.Over():
		fmt.Fprintf(w, "build cache: %s, within its budget %s\n", bytesText(bc.Before), budget)
	case bc.Held != "":
		fmt.Fprintf(w, "build cache: %s, over its budget %s; waits: %s\n", bytesText(bc.Before), budget, bc.Held)
	case !bc.Pruned:
		fmt.Fprintf(w, "build cache: %s, over its budget %s: a budgeted build prune (%s=%d, no --all) would run (dry run)\n",
			bytesText(bc.Before), budget, bc.Param, bc.Budget)
	default:
		fmt.Fprintf(w, "build cache: %s -> %s (budget %s, %s=%d, no --all): dockerd reclaimed %s\n",
			bytesText(bc.Before), bytesText(bc.After), budget, bc.Param, bc.Budget, bytesText(bc.Reclaimed))
		if bc.After > bc.Budget {
			fmt.Fprintf(w, "build cache: still over its budget: what is left is cache an image shares, or BuildKit's internal and frontend records, which only a prune --all removes\n")
		}
	}
}

// buildCacheFields are the audit fields of a budgeted prune.
func buildCacheFields(bc *BuildCache) map[string]any {
	f := map[string]any{
		"component": "reclaim", "operation": "build-prune", "budget_bytes": bc.Budget,
		"before_bytes": bc.Before, "after_bytes": bc.After, "reclaimed_bytes": bc.Reclaimed, "param": bc.Param,
	}
	if bc.Err != nil {
		f["error"] = bc.Err.Error()
	}
	return f
}
