package reclaim

import (
	"context"
	"errors"

	"github.com/moby/moby/api/types/events"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/rules"
)

// fakeGranter grants every request (numbering them) unless err is set.
type fakeGranter struct {
	mu     sync.Mutex
	grants []Grant
	err    error
}

func (g *fakeGranter) Grant(ctx context.Context, gr Grant) (context.Context, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return nil, g.err
	}
	g.grants = append(g.grants, gr)
	return context.WithValue(ctx, grantKey{}, len(g.grants)), nil
}

// busy is a disk of 1000 bytes at 96% with a CI job running throughout on
// image "job": four old images of 40 bytes (old3 tagged twice), the job's
// image, and the image of a job that ended 30 seconds ago, within its
// teardown grace of 2 minutes (its container gone). Removing the four old
// ones brings it to 80%.
func busy(t *testing.T) (*fakeEngine, map[string]time.Duration) {
	f := newFake(t, 1000, 750,
		img("old1", 40, "app-old1:1"), img("old2", 40, "app-old2:1"),
		img("old3", 40, "app-old3:1", "app-old3:latest"), img("old4", 40, "app-old4:1"),
		img("job", 30, "ci-job:1"), img("graceimg", 20, "ci-grace:1"),
	)
	f.addContainer("c-build", "ci-job:1", "running", map[string]string{rules.DefaultRunLabel: "job-1"})
	died := time.Now().Add(-30 * time.Second) // the run tracker replays on its own clock
	f.log = []events.Message{{
		Type: events.ContainerEventType, Action: events.ActionDie, Time: died.Unix(), TimeNano: died.UnixNano(),
		Actor: events.Actor{ID: "c-gone", Attributes: map[string]string{"name": "build-0", "image": "ci-grace:1", "exitCode": "0", rules.DefaultRunLabel: "job-0"}},
	}}
	return f, map[string]time.Duration{
		"old1": 5 * time.Hour, "old2": 4 * time.Hour, "old3": 3 * time.Hour, "old4": 2 * time.Hour, "job": 9 * time.Hour, "graceimg": 9 * time.Hour,
	}
}

func critical(t *testing.T, g Granter) func(*Config) {
	return func(c *Config) { c.Critical = 95; c.Grants = g; c.Detection = ciDetection(t, 2*time.Minute) }
}

// At or above --critical a pass acts while a job runs: it frees to --low,
// each step's deletes going with a grant that names exactly them, and
// spares the job's image; the audit says each removal was granted.
func TestCriticalPassActsDuringAJobWithAGrantPerStep(t *testing.T) {
	f, seen := busy(t)
	g := &fakeGranter{}
	h := newHarness(t, f, seen, critical(t, g))
	res := h.once(t)

	// 96% -> 80% needs 160 bytes: the four old images; old3 is untagged
	// down to one name first, then deleted by ID once, with its step's
	// grant (each target of a grant passes once).
	equal(t, "removals", f.removals(), []string{
		"rmi sha256:old1 grant=1", "rmi sha256:old2 grant=2",
		"rmi app-old3:latest noprune grant=3", "rmi sha256:old3 grant=3", "rmi sha256:old4 grant=4",
	})
	if _, ok := f.names("sha256:graceimg"); !ok {
		t.Errorf("the image of the job in its teardown grace is gone")
	}
	if !res.Plan.Critical || res.After.Percent() > 80 || res.Stopped != "" {
		t.Errorf("critical %v, after %.1f%%, stopped %q; want a critical pass to low", res.Plan.Critical, res.After.Percent(), res.Stopped)
	}
	if len(g.grants) != 4 {
		t.Fatalf("%d grants; want one per step", len(g.grants))
	}
	old3 := g.grants[2]
	if !slices.Equal(old3.Images, []string{"sha256:old3"}) || len(old3.Untag) != 1 || old3.Untag[0] != (GrantName{Ref: "app-old3:latest", Image: "sha256:old3"}) ||
		old3.Critical != 95 || old3.StartedPercent != 96 || len(old3.Runs) < 2 || !strings.Contains(old3.Runs[0], "prune-guard run job-1") ||
		!strings.Contains(old3.Runs[1], "prune-guard run job-0, container build-0 (ended ") {
		t.Errorf("grant for old3: %+v", old3)
	}
	if !strings.Contains(h.out.String(), "at or above --critical 95% while CI jobs hold image deletes: acting during them, sparing their images") {
		t.Errorf("the report does not say it acts during the job:\n%s", h.out.String())
	}
	for _, l := range h.auditLines(t) {
		if l["msg"] == "reclaim removed image" && l["granted"] != true {
			t.Errorf("removal not marked granted: %v", l)
		}
		if l["msg"] == "reclaim pass" && (l["critical_pass"] != true || l["outcome"] != OutcomeActed) {
			t.Errorf("pass line %v", l)
		}
	}
	if fig := res.Figures(); !fig.Critical || fig.ImagesRemoved != 4 || fig.Kept[KeepInUse] != 1 || fig.Kept[KeepJob] != 1 {
		t.Errorf("figures %+v", fig)
	}
}

func TestBetweenHighAndCriticalAPassWaitsForTheJob(t *testing.T) {
	f, seen := busy(t)
	f.base = 680 // 89%
	g := &fakeGranter{}
	h := newHarness(t, f, seen, critical(t, g))
	res := h.once(t)
	equal(t, "removals", f.removals(), nil)
	if !res.Plan.Waiting || len(g.grants) != 0 || !strings.Contains(h.out.String(), "(89.0% used is below --critical 95%, so reclaim waits for the jobs)") {
		t.Errorf("waiting %v, %d grants; report:\n%s", res.Plan.Waiting, len(g.grants), h.out.String())
	}
	if fig := res.Figures(); fig.Outcome != OutcomeWaiting {
		t.Errorf("outcome %q; want waiting", fig.Outcome)
	}
}

// Without a grant the deletes would be refused: the pass stops before any
// and fails, since the disk stays critical.
func TestCriticalPassWithoutAGrantStopsAndFails(t *testing.T) {
	f, seen := busy(t)
	g := &fakeGranter{err: errors.New("dial unix /run/prune-guard/control.sock: connect: no such file or directory")}
	h := newHarness(t, f, seen, critical(t, g))
	res, err := h.r.Once(context.Background())
	equal(t, "removals", f.removals(), nil)
	if err == nil || !strings.Contains(err.Error(), "prune-guard gave no grant for the deletes") || res == nil || res.NoGrant == nil {
		t.Errorf("err %v; want the pass to fail for want of a grant", err)
	}
	if !strings.Contains(h.out.String(), "stopped: at or above --critical during a CI job, but prune-guard gave no grant") {
		t.Errorf("report:\n%s", h.out.String())
	}
}

// With no guard to ask (--control-socket ""), the deletes go as any
// client's: an engine without prune-guard runs them.
func TestCriticalPassWithoutAGranterDeletesAsAnyClient(t *testing.T) {
	f, seen := busy(t)
	h := newHarness(t, f, seen, critical(t, nil))
	h.once(t)
	if got := f.removals(); len(got) != 6 || strings.Contains(strings.Join(got, " "), "grant") {
		t.Errorf("removals %q; want the five steps without grants", got)
	}
}

// A job that starts during a critical pass holds its image: its step is
// skipped, not refused, and the pass goes on.
func TestAJobThatStartsDuringACriticalPassKeepsItsImage(t *testing.T) {
	f, seen := busy(t)
	f.deleted = func(id string) {
		if id == "sha256:old1" {
			f.addContainer("c-late", "app-old2:1", "created", map[string]string{rules.DefaultRunLabel: "job-2"})
		}
	}
	h := newHarness(t, f, seen, critical(t, &fakeGranter{}))
	res := h.once(t)
	if got := kinds(res.Skipped); !slices.Equal(got, []string{"old2 job"}) {
		t.Errorf("skipped %v; want old2 as a job's image", got)
	}
	if _, ok := f.names("sha256:old2"); !ok {
		t.Errorf("the late job's image is gone")
	}
}

func TestByteTargetsDriveAPass(t *testing.T) {
	// 60% used, but only 400 bytes free: under --min-free 450, freed to
	// --target-free 480.
	f, seen := lru(t)
	f.base = 420 // 420 + 170 images of 1000 = 59%
	h := newHarness(t, f, seen, func(c *Config) { c.MinFree = 450; c.TargetFree = 480 })
	res := h.once(t)
	if got := res.After.Avail; got < 480 {
		t.Errorf("%d bytes free after the pass; want at least 480", got)
	}
	equal(t, "removals", f.removals(), rmi(ids("d1", "old1", "old2")...))
	if !strings.Contains(h.out.String(), "available, under --min-free 450") {
		t.Errorf("report does not name the byte trigger:\n%s", h.out.String())
	}
}

func TestBuildCacheGoesBeforeImagesWithinItsBudget(t *testing.T) {
	cache := func(f *fakeEngine) {
		f.cache = []fakeCacheRecord{
			{ID: "r1", Size: 40, LastUsed: now.Add(-3 * time.Hour)}, {ID: "r2", Size: 40, LastUsed: now.Add(-2 * time.Hour)},
			{ID: "r3", Size: 40, LastUsed: now.Add(-time.Hour)}, {ID: "shared", Size: 500, Shared: true},
		}
		f.base -= 120
	}
	for _, tc := range []struct {
		name, api, call string
	}{
		{"below API 1.48 the budget is keep-storage", "1.41", "build-prune all=false reserved=50 max-used=0"},
		{"from API 1.48 it is max-used-space", "1.51", "build-prune all=false reserved=0 max-used=50"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, seen := lru(t) // 89% with the cache's 120 bytes
			cache(f)
			f.apiVersion = tc.api
			h := newHarness(t, f, seen, func(c *Config) { c.BuildCacheMax = 50 })
			res := h.once(t)
			if !slices.Contains(f.calls, tc.call) {
				t.Errorf("calls %q; want %q", f.calls, tc.call)
			}
			bc := res.BuildCache
			if bc == nil || !bc.Pruned || bc.Before != 120 || bc.After != 40 || bc.Reclaimed != 80 {
				t.Fatalf("build cache %+v; want 120 -> 40 bytes", bc)
			}
			// 89% -> 81%: below high once the cache is pruned, so no
			// image goes.
			equal(t, "removals", f.removals(), nil)
			if !strings.Contains(h.out.String(), "build cache: 120 B -> 40 B (budget 50, ") {
				t.Errorf("report:\n%s", h.out.String())
			}
			if fig := res.Figures(); fig.BuildCache == nil || fig.BuildCache.ReclaimedBytes != 80 {
				t.Errorf("figures %+v", fig.BuildCache)
			}
		})
	}
	t.Run("never during a job", func(t *testing.T) {
		f, seen := lru(t)
		cache(f)
		f.addContainer("c-job", "app-new1:1", "running", map[string]string{rules.DefaultRunLabel: "job-3"})
		h := newHarness(t, f, seen, func(c *Config) { c.BuildCacheMax = 50 })
		res := h.once(t)
		if slices.ContainsFunc(f.calls, func(c string) bool { return strings.HasPrefix(c, "build-prune") }) || res.BuildCache.Held == "" {
			t.Errorf("calls %q, held %q; want no prune during the job", f.calls, res.BuildCache.Held)
		}
		if !strings.Contains(h.out.String(), "over its budget 50; waits: a CI job is active: active prune-guard run job-3") {
			t.Errorf("report:\n%s", h.out.String())
		}
	})
	t.Run("a dry run prunes nothing", func(t *testing.T) {
		f, seen := lru(t)
		cache(f)
		h := newHarness(t, f, seen, func(c *Config) { c.BuildCacheMax = 50; c.DryRun = true })
		h.once(t)
		if slices.ContainsFunc(f.calls, func(c string) bool { return strings.HasPrefix(c, "build-prune") }) ||
			!strings.Contains(h.out.String(), "a budgeted build prune (keep-storage=50, no --all) would run (dry run)") {
			t.Errorf("calls %q; report:\n%s", f.calls, h.out.String())
		}
	})
	t.Run("within its budget nothing is pruned, without pressure too", func(t *testing.T) {
		f := newFake(t, 1000, 100, img("a", 10, "a:1"))
		f.cache = []fakeCacheRecord{{ID: "r1", Size: 40}}
		h := newHarness(t, f, map[string]time.Duration{"a": time.Hour}, func(c *Config) { c.BuildCacheMax = 50 })
		h.once(t)
		if slices.ContainsFunc(f.calls, func(c string) bool { return strings.HasPrefix(c, "build-prune") }) ||
			!strings.Contains(h.out.String(), "build cache: 40 B, within its budget 50") {
			t.Errorf("calls %q; report:\n%s", f.calls, h.out.String())
		}
	})
	t.Run("over budget without disk pressure it still prunes", func(t *testing.T) {
		f := newFake(t, 1000, 100, img("a", 10, "a:1"))
		f.cache = []fakeCacheRecord{{ID: "r1", Size: 40, LastUsed: now.Add(-time.Hour)}, {ID: "r2", Size: 40, LastUsed: now}}
		h := newHarness(t, f, map[string]time.Duration{"a": time.Hour}, func(c *Config) { c.BuildCacheMax = 50 })
		res := h.once(t)
		if bc := res.BuildCache; bc == nil || !bc.Pruned || bc.After != 40 {
			t.Errorf("build cache %+v; want pruned to 40", bc)
		}
		equal(t, "removals", f.removals(), nil)
	})
}

func TestTotalsSumThePasses(t *testing.T) {
	f, seen := lru(t)
	f.deny["sha256:old2"] = true
	h := newHarness(t, f, seen)
	h.once(t)
	h.once(t) // below high now: idle
	tot := h.r.Totals()
	if tot.Passes[OutcomeActed] != 1 || tot.Passes[OutcomeIdle] != 1 || tot.ImagesRemoved != 4 || tot.Skipped["denied"] != 1 ||
		tot.FreedBytes != 110 || tot.Last == nil || tot.Last.Outcome != OutcomeIdle || tot.Failed != 0 {
		t.Errorf("totals %+v", tot)
	}
}
