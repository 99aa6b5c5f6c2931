package reclaim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/client"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/eventstream"
	"github.com/prune-guard/prune-guard/rules"
	"github.com/prune-guard/prune-guard/runs"
)

// Config configures a Reclaimer.
type Config struct {
	Options
	// Detection recognises the CI jobs whose images must stay, as for the
	// plugin.
	Detection rules.Detection
	// StatePath is the state file: first sightings and last uses.
	StatePath string
	// DryRun prints the plan and removes nothing.
	DryRun bool
	// EngineTimeout bounds each engine request.
	EngineTimeout time.Duration
	// Out receives the human-readable report.
	Out io.Writer
	// BuildCacheMax keeps BuildKit's cache at or under this many bytes on
	// every pass, through dockerd's budgeted build prune; 0 turns it off.
	BuildCacheMax int64
	// Grants gets the guard's leave for the deletes a critical plan makes
	// while CI jobs hold them; nil when there is no guard to ask (such a
	// pass stops and says so).
	Grants Granter
}

// maxPending bounds the events --watch holds between passes.
const maxPending = 1 << 16

// Engine is what the reclaimer asks of the engine: the run tracker's
// questions, and the images, the data root and image removal.
// *engine.Client is the real one.
type Engine interface {
	runs.Engine
	ImageList(ctx context.Context, options client.ImageListOptions) (client.ImageListResult, error)
	ImageRemove(ctx context.Context, image string, options client.ImageRemoveOptions) (client.ImageRemoveResult, error)
	Info(ctx context.Context, options client.InfoOptions) (client.SystemInfoResult, error)
	// The build cache's size and its budgeted prune; ClientVersion is
	// the API version negotiated, which names the budget's parameter.
	DiskUsage(ctx context.Context, options client.DiskUsageOptions) (client.DiskUsageResult, error)
	BuildCachePrune(ctx context.Context, options client.BuildCachePruneOptions) (client.BuildCachePruneResult, error)
	ClientVersion() string
}

// Reclaimer runs reclaim passes against one engine.
type Reclaimer struct {
	cfg     Config
	c       Engine
	runs    *runs.Tracker
	audit   *audit.Log
	now     func() time.Time
	measure func(path string) (Usage, error)

	mu      sync.Mutex
	pending []eventstream.Event // watch mode: received, not yet applied
	horizon time.Time           // watch mode: events before this are received

	totals totals
}

// Totals are the figures of every pass so far.
func (r *Reclaimer) Totals() Totals { return r.totals.get() }

// New returns a Reclaimer that asks e and audits to al.
func New(cfg Config, e Engine, al *audit.Log) (*Reclaimer, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	return &Reclaimer{cfg: cfg, c: e, runs: runs.New(e, cfg.EngineTimeout), audit: al, now: time.Now, measure: Measure}, nil
}

func (cfg Config) validate() error {
	switch {
	case cfg.EngineTimeout <= 0:
		return errors.New("the engine timeout must be positive")
	case cfg.StatePath == "":
		return errors.New("no state file named")
	case cfg.BuildCacheMax < 0:
		return errors.New("the build cache budget must not be negative")
	}
	return cfg.Options.Validate()
}

// Result is what one pass did.
type Result struct {
	Plan    Plan
	Before  Usage
	After   Usage
	Started time.Time
	Took    time.Duration
	DryRun  bool
	Removed []Outcome
	Skipped []Outcome
	// Stopped says why the pass stopped before its plan was done (a run
	// started, no grant came); "" otherwise.
	Stopped string
	// NoGrant is set when a critical pass stopped for want of a grant:
	// the host needs a person.
	NoGrant error
	// BuildCache is what the build cache's budget did, when one is set.
	BuildCache *BuildCache
}

// Freed is the disk space the removals gave back, as measured.
func (res *Result) Freed() int64 {
	var n int64
	for _, o := range res.Removed {
		n += o.Freed
	}
	return n
}

// Outcome is what became of one step.
type Outcome struct {
	Step  Step
	Freed int64  // measured, bytes
	Err   error  // why it was skipped
	Kind  string // removed, conflict, denied, gone, job
	// Granted is set when the removal went with the guard's grant,
	// during a CI job.
	Granted bool
}

// Once runs one pass: it reads the engine's events since the last pass,
// resyncs, measures, plans, removes, and saves the state. This is what a
// systemd timer runs.
func (r *Reclaimer) Once(ctx context.Context) (*Result, error) {
	st := r.loadState()
	until := r.now()
	var evs []eventstream.Event
	// A state from the future (a clock set back) has nothing to replay.
	if !st.Since.IsZero() && st.Since.Before(until) {
		var err error
		if evs, err = r.replay(ctx, st.Since, until); err != nil {
			return nil, err
		}
	}
	res, err := r.pass(ctx, st, evs)
	if res != nil {
		// Even a refused pass has resynced: keep what it learned.
		st.Since = until
		if serr := st.Save(r.cfg.StatePath); serr != nil {
			err = errors.Join(err, serr)
		}
	}
	return res, err
}

// Watch runs a pass every interval until ctx ends, following the engine's
// events in between so that short-lived containers count as uses. A pass
// that fails is reported and the next one runs on time.
func (r *Reclaimer) Watch(ctx context.Context, interval time.Duration, errOut io.Writer) error {
	if interval <= 0 {
		return errors.New("the watch interval must be positive")
	}
	st := r.loadState()
	r.horizon = st.Since
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		r.follow(ctx, st.Since, errOut)
	}()
	defer func() { <-followed }()

	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		r.mu.Lock()
		evs, horizon := r.pending, r.horizon
		r.pending = nil
		r.mu.Unlock()
		_, err := r.pass(ctx, st, evs)
		switch {
		case err != nil && ctx.Err() == nil:
			fmt.Fprintf(errOut, "prune-guard reclaim: %v\n", err)
			r.audit.Event("reclaim failed", map[string]any{"component": "reclaim", "error": err.Error()})
			// The pass may have failed before applying them; applying
			// an event twice changes nothing.
			r.mu.Lock()
			r.pending = append(evs, r.pending...)
			r.mu.Unlock()
		case horizon.After(st.Since):
			st.Since = horizon
		}
		if err := st.Save(r.cfg.StatePath); err != nil {
			fmt.Fprintf(errOut, "prune-guard reclaim: %v\n", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// follow subscribes to the engine's events from since (or now) until ctx
// ends, queueing them for the next pass and reconnecting after an error
// from where it left off.
func (r *Reclaimer) follow(ctx context.Context, since time.Time, errOut io.Writer) {
	f := eventstream.Follower{
		Engine: r.c, Timeout: r.cfg.EngineTimeout, Filters: eventFilters(), Now: r.now,
		MinBackoff: time.Second, MaxBackoff: 30 * time.Second,
	}
	f.Follow(ctx, since, &queue{r: r, errOut: errOut})
}

// queue holds the events follow receives for the next pass, and moves the
// horizon.
type queue struct {
	r      *Reclaimer
	errOut io.Writer
}

func (q *queue) Event(e eventstream.Event) {
	r := q.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending) >= maxPending {
		// Passes have been failing for a long time; the resync covers
		// what is dropped.
		r.pending = r.pending[len(r.pending)-maxPending/2:]
	}
	r.pending = append(r.pending, e)
	// Only the engine's own times: a receipt says nothing of what is
	// still in flight.
	if e.Dated && e.At.After(r.horizon) {
		r.horizon = e.At
	}
}

// CaughtUp: everything the engine kept from before the subscription's
// bounded replay reached (rep.Subscribed) is in. The reclaimer's filters
// make the count meaningless, so a second call changes nothing.
func (q *queue) CaughtUp(rep eventstream.Replay) {
	r := q.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if rep.Subscribed.After(r.horizon) {
		r.horizon = rep.Subscribed
	}
}

func (q *queue) Broken(err error, retry time.Duration) {
	fmt.Fprintf(q.errOut, "prune-guard reclaim: engine events interrupted (%v); reconnecting in %v\n", err, retry)
}

func eventFilters() client.Filters {
	return make(client.Filters).Add("type", eventTypes...).Add("event", eventActions...)
}

// replay reads the events the engine still holds from since to until. The
// engine keeps only the most recent ones (256 on 20.10), so older gaps are
// left to the resync.
func (r *Reclaimer) replay(ctx context.Context, since, until time.Time) ([]eventstream.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.EngineTimeout)
	defer cancel()
	f := eventstream.Follower{Engine: r.c, Timeout: r.cfg.EngineTimeout, Filters: eventFilters(), Now: r.now}
	var evs []eventstream.Event
	if _, err := f.Replay(ctx, since, until, func(e eventstream.Event) { evs = append(evs, e) }); err != nil {
		return nil, fmt.Errorf("read engine events since %s: %w", since.Format(time.RFC3339), err)
	}
	return evs, nil
}

// loadState reads the state file; a corrupt one is reported and replaced.
func (r *Reclaimer) loadState() *State {
	st, err := LoadState(r.cfg.StatePath)
	if err == nil {
		return st
	}
	// Unreadable or corrupt: starting afresh only makes every image
	// young, which removes less, never more.
	fmt.Fprintf(r.cfg.Out, "warning: %v; starting afresh (every image counts as first seen now)\n", err)
	r.audit.Event("reclaim state reset", map[string]any{"component": "reclaim", "state": r.cfg.StatePath, "error": err.Error()})
	if st == nil {
		st = NewState()
	}
	return st
}

// pass runs one pass and adds its figures to the totals. A pass cut
// short because reclaim is stopping did not fail: its outcome says so.
func (r *Reclaimer) pass(ctx context.Context, st *State, evs []eventstream.Event) (*Result, error) {
	res, err := r.passOnce(ctx, st, evs)
	failed := err != nil && !errors.Is(err, context.Canceled)
	if res == nil {
		r.totals.add(nil, failed)
		return nil, err
	}
	f := res.Figures()
	r.totals.add(&f, failed)
	return res, err
}

// passOnce gathers the facts, keeps the build cache within its budget,
// plans, and (unless refused or dry) removes.
func (r *Reclaimer) passOnce(ctx context.Context, st *State, evs []eventstream.Event) (*Result, error) {
	res := &Result{Started: r.now(), DryRun: r.cfg.DryRun}
	root, images, containers, err := r.inventory(ctx)
	if err != nil {
		return nil, err
	}
	idx := NewIndex(images)
	for _, e := range evs {
		st.Observe(e, idx)
	}
	now := r.now()
	st.Resync(now, images, containers)

	if res.Before, err = r.measure(root); err != nil {
		return nil, fmt.Errorf("measure the engine's data root (reclaim must run on the engine's host): %w", err)
	}
	rs := r.runs.State(ctx, r.cfg.Detection)
	// Over its budget, the build cache goes before any image.
	u := res.Before
	if res.BuildCache = r.budgetBuildCache(ctx, rs); res.BuildCache != nil && (res.BuildCache.Pruned || res.BuildCache.Err != nil) {
		r.audit.Event("reclaim pruned build cache", buildCacheFields(res.BuildCache))
		if res.BuildCache.Pruned {
			if u, err = r.measure(root); err != nil {
				return nil, fmt.Errorf("measure %s: %w", root, err)
			}
		}
	}
	res.Plan = NewPlan(Facts{
		Now: now, Usage: u, Images: images, Containers: containers, Records: st.Images, Runs: rs,
	}, r.cfg.Options)
	p := &res.Plan
	p.startedPercent = u.Percent()
	r.reportBuildCache(res.BuildCache)
	r.header(res)

	switch {
	case p.Refused != "":
		res.After, res.Took = u, r.now().Sub(res.Started)
		r.audit.Event("reclaim refused", r.passFields(res))
		return res, r.buildCacheErr(res)
	case r.cfg.DryRun:
		r.printPlan(p)
		res.After, res.Took = u, r.now().Sub(res.Started)
		r.audit.Event("reclaim dry run", r.passFields(res))
		return res, r.buildCacheErr(res)
	}

	err = r.execute(ctx, st, p, res)
	if err == nil {
		err = r.replan(ctx, st, res)
	}
	return res, r.finish(res, root, err)
}

// finish measures the disk after the removals, reports and audits the
// pass, and returns its error: err, a failed budget, a missing grant, or
// a target still unmet when nothing more may go.
func (r *Reclaimer) finish(res *Result, root string, err error) error {
	p := &res.Plan
	if after, merr := r.measure(root); merr == nil {
		res.After = after
	} else {
		err = errors.Join(err, merr)
		res.After = res.Before
	}
	res.Took = r.now().Sub(res.Started)
	r.summary(res)
	r.audit.Event("reclaim pass", r.passFields(res))
	err = errors.Join(err, r.buildCacheErr(res))
	switch {
	case err != nil:
		return err
	case res.NoGrant != nil:
		return fmt.Errorf("%s is %.1f%% used, at or above --critical %g%% during a CI job, and prune-guard gave no grant for the deletes: %w",
			root, res.After.Percent(), p.opts.Critical, res.NoGrant)
	}
	if why := p.opts.trigger(res.After); p.Pressure && why != "" && res.Stopped == "" {
		return fmt.Errorf("%s: still %s: nothing more may be removed (see the kept images above)", root, why)
	}
	return nil
}

// buildCacheErr is the budget's failure, if it failed.
func (r *Reclaimer) buildCacheErr(res *Result) error {
	if res.BuildCache != nil && res.BuildCache.Err != nil {
		return res.BuildCache.Err
	}
	return nil
}

// inventory lists the data root, every image and every container.
func (r *Reclaimer) inventory(ctx context.Context) (string, []Image, []Container, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.EngineTimeout)
	defer cancel()
	info, err := r.c.Info(ctx, client.InfoOptions{})
	if err != nil {
		return "", nil, nil, fmt.Errorf("ask the engine for its data root: %w", err)
	}
	root := info.Info.DockerRootDir
	if root == "" {
		return "", nil, nil, errors.New("the engine reports no data root (DockerRootDir)")
	}
	il, err := r.c.ImageList(ctx, client.ImageListOptions{All: true, SharedSize: true})
	if err != nil {
		return "", nil, nil, fmt.Errorf("list images: %w", err)
	}
	images := make([]Image, 0, len(il.Items))
	for _, s := range il.Items {
		images = append(images, Image{
			ID: s.ID, ParentID: s.ParentID, RepoTags: s.RepoTags, RepoDigests: s.RepoDigests,
			Labels: s.Labels, Size: s.Size, SharedSize: s.SharedSize,
		})
	}
	cl, err := r.c.ContainerList(ctx, client.ContainerListOptions{All: true})
	if err != nil {
		return "", nil, nil, fmt.Errorf("list containers: %w", err)
	}
	containers := make([]Container, 0, len(cl.Items))
	for _, c := range cl.Items {
		name := ""
		if len(c.Names) > 0 {
			name = c.Names[0]
		}
		containers = append(containers, Container{
			ID: c.ID, Name: name, ImageID: c.ImageID, State: string(c.State), Created: time.Unix(c.Created, 0),
		})
	}
	return root, images, containers, nil
}

// maxRounds bounds the plans one pass makes: the first, and re-plans while
// the disk stays above Low.
const maxRounds = 4

// replan plans again while the disk is still above Low after a round that
// removed something: a removal can leave images the plan could not foresee
// (the containerd image store leaves intermediate images it no longer knows
// as parents), and usage, not the plan's estimate, says whether the pass is
// done. A round that removes nothing ends the pass.
func (r *Reclaimer) replan(ctx context.Context, st *State, res *Result) error {
	p := &res.Plan
	if !p.Pressure {
		return nil
	}
	removed := len(res.Removed)
	for round := 2; round <= maxRounds && res.Stopped == "" && removed > 0; round++ {
		_, images, containers, err := r.inventory(ctx)
		if err != nil {
			return err
		}
		now := r.now()
		st.Resync(now, images, containers)
		u, err := r.measure(p.Usage.Path)
		if err != nil {
			return fmt.Errorf("measure %s: %w", p.Usage.Path, err)
		}
		if p.Satisfied(u) {
			return nil
		}
		// The same question as the first plan's: jobs in their teardown
		// grace and unseen stretches hold a re-plan too, unless the pass
		// acts at or above --critical.
		rs := r.runs.State(ctx, r.cfg.Detection)
		next := NewPlan(Facts{Now: now, Usage: u, Images: images, Containers: containers, Records: st.Images, Runs: rs,
			Acting: p.Pressure, CriticalPass: p.Critical}, r.cfg.Options)
		next.startedPercent = p.startedPercent
		p.Keep = next.Keep
		if next.Refused != "" {
			res.Stopped = next.Refused
			fmt.Fprintf(r.cfg.Out, "stopped: %s\n", next.Refused)
			return nil
		}
		// An image skipped once this pass (denied, in conflict) is not
		// tried again until the next.
		next.Steps = slices.DeleteFunc(next.Steps, func(s Step) bool {
			return slices.ContainsFunc(res.Skipped, func(o Outcome) bool { return o.Step.Image.ID == s.Image.ID })
		})
		if len(next.Steps) == 0 {
			return nil
		}
		fmt.Fprintf(r.cfg.Out, "re-planning: %.1f%% used, %s (round %d)\n", u.Percent(), p.opts.unmet(u), round)
		before := len(res.Removed)
		if err := r.execute(ctx, st, &next, res); err != nil {
			return err
		}
		removed = len(res.Removed) - before
		if res.NoGrant != nil {
			return nil
		}
	}
	return nil
}

// execute takes the plan's steps in order: a forced step always, any other
// while a target is unmet as measured. Before each removal it asks again
// whether a run is active, and stops if one is (or if it cannot tell),
// unless the plan acts at or above --critical: then each step's deletes go
// with the guard's grant, and an image a job that holds deletes now uses
// is skipped.
func (r *Reclaimer) execute(ctx context.Context, st *State, p *Plan, res *Result) error {
	root := p.Usage.Path
	for _, s := range p.Steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		before, err := r.measure(root)
		if err != nil {
			return fmt.Errorf("measure %s: %w", root, err)
		}
		if !s.Forced && p.Satisfied(before) {
			continue // every target met; only forced steps remain to take
		}
		rctx, o, stop := r.clearStep(ctx, p, s, before, res)
		if stop {
			return nil
		}
		if o.Kind == "" {
			o.Kind, o.Err = r.remove(rctx, s.Image, o.Granted)
		}
		if o.Err == nil {
			r.removeIntermediates(rctx, s)
			after, err := r.measure(root)
			if err != nil {
				return fmt.Errorf("measure %s: %w", root, err)
			}
			o.Freed = int64(after.Avail) - int64(before.Avail)
			o.Freed = max(o.Freed, 0) // others write to the disk meanwhile
			res.Removed = append(res.Removed, o)
			delete(st.Images, s.Image.ID)
			fmt.Fprintf(r.cfg.Out, "removed %s: freed %s (%s)\n", s.Image.Name(), bytesText(o.Freed), s.Why)
			r.audit.Event("reclaim removed image", r.stepFields(o))
			continue
		}
		if o.Kind == "" {
			return fmt.Errorf("remove %s: %w", s.Image.Name(), o.Err)
		}
		res.Skipped = append(res.Skipped, o)
		fmt.Fprintf(r.cfg.Out, "skipped %s (%s): %v\n", s.Image.Name(), o.Kind, o.Err)
		r.audit.Event("reclaim skipped image", r.stepFields(o))
	}
	return nil
}

// clearStep asks whether step s may be taken now: it returns the context
// its removals go with (carrying a grant during a job), an outcome already
// decided (a job's image, skipped), or stop, with res.Stopped saying why.
// Without a Granter (no guard to ask) the deletes go as any client's, and
// a guard in front of the engine decides them.
func (r *Reclaimer) clearStep(ctx context.Context, p *Plan, s Step, u Usage, res *Result) (context.Context, Outcome, bool) {
	o := Outcome{Step: s}
	rs := r.runs.State(ctx, r.cfg.Detection)
	held := rs.Holding(rules.Classification{Op: rules.OpImageDelete}, false)
	switch {
	case rs.Err != nil:
		res.Stopped = fmt.Sprintf("the CI run state became unknown (%v)", rs.Err)
	case held.Holds() && !p.Critical:
		res.Stopped = "a CI job holds image deletes: " + rules.HoldReason(held)
	case !held.Holds():
		return ctx, o, false
	}
	if res.Stopped == "" {
		if run, ok := heldImage(held, s.Image); ok {
			o.Kind, o.Err = "job", fmt.Errorf("%s uses it", run.String())
			return ctx, o, false
		}
		if r.cfg.Grants == nil {
			return ctx, o, false
		}
		gctx, err := r.cfg.Grants.Grant(ctx, r.grantFor(p, s, u, held))
		if err == nil {
			o.Granted = true
			return gctx, o, false
		}
		res.NoGrant = err
		res.Stopped = fmt.Sprintf("at or above --critical during a CI job, but prune-guard gave no grant for the deletes (%v); they would be refused", err)
	}
	fmt.Fprintf(r.cfg.Out, "stopped: %s; the rest waits for the next pass\n", res.Stopped)
	return ctx, o, true
}

// remove deletes an image by ID, without force, with its untagged parents
// (as docker rmi does). It returns the kind of a skippable failure
// (conflict, denied, gone) or "" with an error that should stop the pass.
//
// The engine refuses to delete by ID an image tagged more than once ("image
// is referenced in multiple repositories"), which a CI host's app:sha plus
// app:latest is. Since the plan has already decided that every one of its
// names may go, reclaim then checks that no container has started using the
// image, removes the extra names one by one (each an ordinary, authorized
// untag), and deletes by ID again. With a grant (untagFirst) it untags
// first and deletes by ID once: a grant lets each of its targets through
// once, and the engine refuses the first delete of such an image anyway
// (moby's isSingleReference: one tag, and digests of its repository only,
// which is what extraNames leaves).
func (r *Reclaimer) remove(ctx context.Context, im Image, untagFirst bool) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.EngineTimeout)
	defer cancel()
	refs := im.Refs()
	if untagFirst && len(extraNames(refs)) > 0 {
		if err := r.untagExtra(ctx, im.ID, refs); err != nil {
			return skipKind(err), err
		}
	}
	_, err := r.c.ImageRemove(ctx, im.ID, client.ImageRemoveOptions{PruneChildren: true})
	if !untagFirst && err != nil && cerrdefs.IsConflict(err) && len(refs) > 1 && strings.Contains(err.Error(), "referenced in multiple repositories") {
		if err := r.untagExtra(ctx, im.ID, refs); err != nil {
			return skipKind(err), err
		}
		_, err = r.c.ImageRemove(ctx, im.ID, client.ImageRemoveOptions{PruneChildren: true})
	}
	if err != nil {
		return skipKind(err), err
	}
	return "removed", nil
}

// removeIntermediates deletes the intermediate images only s's image was
// built on, once it is gone. The graph driver has deleted them with it
// (404, nothing to do); the containerd image store may have left them.
// A failure here is reported, never fatal: the image itself is gone.
func (r *Reclaimer) removeIntermediates(ctx context.Context, s Step) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.EngineTimeout)
	defer cancel()
	for _, id := range s.Intermediates {
		_, err := r.c.ImageRemove(ctx, id, client.ImageRemoveOptions{PruneChildren: true})
		switch {
		case err == nil:
			r.audit.Event("reclaim removed intermediate image", map[string]any{
				"component": "reclaim", "operation": "image-delete", "image": id, "for": s.Image.ID})
		case cerrdefs.IsNotFound(err):
		default:
			fmt.Fprintf(r.cfg.Out, "warning: intermediate image %s of %s stays: %v\n", ShortID(id), s.Image.Name(), err)
		}
	}
}

// untagExtra removes every name of an image but its first tag.
func (r *Reclaimer) untagExtra(ctx context.Context, id string, refs []string) error {
	cl, err := r.c.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("ancestor", id)})
	if err != nil {
		return fmt.Errorf("check the image's containers before untagging: %w", err)
	}
	if len(cl.Items) > 0 {
		return cerrdefs.ErrConflict.WithMessage(fmt.Sprintf("container %s now uses the image", ShortID(cl.Items[0].ID)))
	}
	var done []string
	for _, ref := range extraNames(refs) {
		if _, err := r.c.ImageRemove(ctx, ref, client.ImageRemoveOptions{}); err != nil {
			// The containerd image store lists name@digest for every
			// tag, and removing the tag removes that name too.
			if cerrdefs.IsNotFound(err) {
				continue
			}
			if len(done) > 0 {
				return fmt.Errorf("untag %s (after untagging %s): %w", ref, strings.Join(done, ", "), err)
			}
			return fmt.Errorf("untag %s: %w", ref, err)
		}
		done = append(done, ref)
	}
	return nil
}

// sameRepoDigest reports whether ref is a digest reference (repo@sha256:…)
// in keep's repository. It must stay: on the containerd image store,
// deleting repo@digest removes every tag of that repository at that digest,
// keep included (moby daemon/containerd/image_delete.go); the graph driver
// deletes by ID an image whose names are one tag and digests of its
// repository, so leaving it costs nothing there.
func sameRepoDigest(keep, ref string) bool {
	d, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return false
	}
	if _, ok := d.(reference.Digested); !ok {
		return false
	}
	k, err := reference.ParseNormalizedNamed(keep)
	return err == nil && k.Name() == d.Name()
}

// skipKind classifies a removal error that must not stop the pass: a
// conflict (the image gained a container or a child), a denial (an
// authorization plugin's policy), or an image already gone.
func skipKind(err error) string {
	switch {
	case cerrdefs.IsConflict(err):
		return "conflict"
	case cerrdefs.IsPermissionDenied(err):
		return "denied"
	case cerrdefs.IsNotFound(err):
		return "gone"
	}
	return ""
}

func (r *Reclaimer) header(res *Result) {
	p := &res.Plan
	u := p.Usage
	w := r.cfg.Out
	fmt.Fprintf(w, "reclaim: %s: %.1f%% of %s used (%s)", u.Path, u.Percent(), bytesText(int64(u.Total)), p.opts.targetsText())
	switch {
	case p.Critical:
		fmt.Fprintf(w, ": %s; at or above --critical %g%% while CI jobs hold image deletes: acting during them, sparing their images, %s to free\n",
			p.Trigger, p.opts.Critical, bytesText(p.Need))
	case p.Pressure:
		fmt.Fprintf(w, ": %s, %s to free\n", p.Trigger, bytesText(p.Need))
	case len(p.Steps) > 0:
		fmt.Fprintf(w, ": below high; removing images unused for longer than --max-unused %s\n", r.cfg.MaxUnused)
	default:
		fmt.Fprintf(w, ": below high, nothing to do\n")
	}
	if p.Refused != "" {
		fmt.Fprintf(w, "refused: %s\n", p.Refused)
	}
}

func (r *Reclaimer) printPlan(p *Plan) {
	w := r.cfg.Out
	if len(p.Steps) == 0 && !p.Pressure {
		return
	}
	fmt.Fprintln(w, "plan (dry run: nothing is removed):")
	for i, s := range p.Steps {
		what := "remove"
		if !s.Forced && !s.Needed {
			what = "if still above low, remove"
		}
		fmt.Fprintf(w, "  %2d. %s %s, about %s: %s\n", i+1, what, s.Image.Name(), bytesText(s.Estimate), s.Why)
	}
	if len(p.Steps) == 0 {
		fmt.Fprintln(w, "  nothing may be removed")
	}
	r.printKept(p)
	after := p.Usage
	after.Avail += uint64(p.Planned())
	fmt.Fprintf(w, "estimate: %s freed, %.1f%% used after\n", bytesText(p.Planned()), after.Percent())
}

func (r *Reclaimer) printKept(p *Plan) {
	if len(p.Keep) == 0 {
		return
	}
	fmt.Fprintln(r.cfg.Out, "kept:")
	for _, k := range p.Keep {
		fmt.Fprintf(r.cfg.Out, "  %s: %s\n", k.Image.Name(), k.Why)
	}
}

func (r *Reclaimer) summary(res *Result) {
	p := &res.Plan
	if len(res.Removed)+len(res.Skipped) == 0 && !p.Pressure && res.Stopped == "" {
		return // nothing was due: the header said so
	}
	fmt.Fprintf(r.cfg.Out, "reclaim: freed %s in %v: %.1f%% -> %.1f%% used (%d removed, %d skipped, %d kept)\n",
		bytesText(res.Freed()), res.Took.Round(time.Millisecond), res.Before.Percent(), res.After.Percent(),
		len(res.Removed), len(res.Skipped), len(p.Keep))
	if p.Pressure && !p.Satisfied(res.After) {
		r.printKept(p)
	}
}

// passFields are a pass's audit fields: its figures, flat, as the audit
// log has always carried them, with the new ones beside.
func (r *Reclaimer) passFields(res *Result) map[string]any {
	p := &res.Plan
	fig := res.Figures()
	f := map[string]any{
		"component":     "reclaim",
		"data_root":     p.Usage.Path,
		"high":          p.High,
		"low":           p.Low,
		"critical":      p.opts.Critical,
		"pressure":      p.Pressure,
		"critical_pass": p.Critical,
		"outcome":       fig.Outcome,
		"usage_before":  round1(res.Before.Percent()),
		"usage_after":   round1(res.After.Percent()),
		"total_bytes":   p.Usage.Total,
		"avail_before":  res.Before.Avail,
		"avail_after":   res.After.Avail,
		"freed_bytes":   res.Freed(),
		"removed":       len(res.Removed),
		"skipped":       len(res.Skipped),
		"kept":          len(p.Keep),
		"skipped_by":    fig.Skipped,
		"kept_by":       fig.Kept,
		"planned_bytes": p.Planned(),
		"duration_ms":   res.Took.Milliseconds(),
		"dry_run":       r.cfg.DryRun,
	}
	if p.Trigger != "" {
		f["trigger"] = p.Trigger
	}
	if res.Before.Inodes > 0 {
		f["free_inodes_before"], f["free_inodes_after"] = res.Before.FreeInodes, res.After.FreeInodes
	}
	if bc := fig.BuildCache; bc != nil {
		f["build_cache"] = bc
	}
	if p.Refused != "" {
		f["reason"] = p.Refused
	}
	if res.Stopped != "" {
		f["stopped"] = res.Stopped
	}
	return f
}

func (r *Reclaimer) stepFields(o Outcome) map[string]any {
	s := o.Step
	f := map[string]any{
		"component":      "reclaim",
		"operation":      "image-delete",
		"image":          s.Image.ID,
		"refs":           strings.Join(s.Image.Refs(), ","),
		"why":            s.Why,
		"forced":         s.Forced,
		"estimate_bytes": s.Estimate,
		"result":         o.Kind,
	}
	if o.Granted {
		f["granted"] = true
	}
	if !s.LastUse.IsZero() {
		// "prune-guard audit cache" tells from it how long the image had
		// been unused when it is pulled again.
		f["last_used"] = s.LastUse.UTC().Format(time.RFC3339Nano)
	}
	if o.Err != nil {
		f["error"] = o.Err.Error()
	} else {
		f["freed_bytes"] = o.Freed
	}
	return f
}

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

// bytesText prints a size in binary units: 512 B, 12.0 MiB, 3.4 GiB.
func bytesText(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), 0
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	for f /= unit; (f >= unit || f <= -unit) && i < len(units)-1; i++ {
		f /= unit
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}
