package reclaim

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/rules"
)

// harness is a Reclaimer on a fakeEngine, with its report and audit log.
type harness struct {
	f          *fakeEngine
	r          *Reclaimer
	out, audit bytes.Buffer
}

// newHarness makes a reclaimer with the default thresholds (high 85, low
// 80, --min-age 1h), the prune-guard run label and no teardown grace, and a
// state in which each image named in firstSeen was first seen that long
// ago.
func newHarness(t *testing.T, f *fakeEngine, firstSeen map[string]time.Duration, opts ...func(*Config)) *harness {
	t.Helper()
	h := &harness{f: f}
	cfg := Config{
		Options:       defaults,
		Detection:     ciDetection(t, 0),
		StatePath:     filepath.Join(t.TempDir(), "state.json"),
		EngineTimeout: 10 * time.Second,
		Out:           &h.out,
	}
	for _, o := range opts {
		o(&cfg)
	}
	st := NewState()
	for name, d := range firstSeen {
		st.Images["sha256:"+name] = seen(d)
	}
	if err := st.Save(cfg.StatePath); err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, f, audit.New(&h.audit, nil))
	if err != nil {
		t.Fatal(err)
	}
	r.now = func() time.Time { return now }
	r.measure = f.measure
	h.r = r
	return h
}

// ciDetection enables only the prune-guard detector, on its default run
// label, with this teardown grace.
func ciDetection(t *testing.T, grace time.Duration) rules.Detection {
	t.Helper()
	off := map[string]string{}
	for _, b := range rules.Builtins() {
		if b.Name != rules.PruneGuardDetector {
			off[b.Name] = "off"
		}
	}
	d, err := rules.NewDetection(rules.DetectionSettings{Labels: []string{rules.DefaultRunLabel}, Switches: off, Grace: grace})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (h *harness) once(t *testing.T) *Result {
	t.Helper()
	res, err := h.r.Once(context.Background())
	if err != nil {
		t.Fatalf("Once: %v\nreport:\n%s", err, h.out.String())
	}
	return res
}

// auditLines are the audit log's lines, decoded.
func (h *harness) auditLines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(h.audit.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func msgs(lines []map[string]any) []string {
	var out []string
	for _, l := range lines {
		out = append(out, l["msg"].(string))
	}
	return out
}

func rmi(names ...string) []string {
	var out []string
	for _, n := range names {
		out = append(out, "rmi "+n)
	}
	return out
}

func ids(names ...string) []string {
	var out []string
	for _, n := range names {
		out = append(out, "sha256:"+n)
	}
	return out
}

func kinds(os []Outcome) []string {
	var out []string
	for _, o := range os {
		out = append(out, strings.TrimPrefix(o.Step.Image.ID, "sha256:")+" "+o.Kind)
	}
	return out
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got %q\nwant %q", what, got, want)
	}
}

// lru is a disk of 1000 bytes at 89%: a dangling image, four tagged ones
// first seen 5h to 2h ago and one seen 10 minutes ago (under --min-age).
// Removing the dangling image and the three oldest brings it to 78%.
func lru(t *testing.T) (*fakeEngine, map[string]time.Duration) {
	f := newFake(t, 1000, 720,
		img("d1", 20),
		img("old1", 30, "app-old1:1"), img("old2", 30, "app-old2:1"),
		img("old3", 30, "app-old3:1"), img("old4", 30, "app-old4:1"),
		img("new1", 30, "app-new1:1"),
	)
	return f, map[string]time.Duration{
		"d1": time.Hour, "old1": 5 * time.Hour, "old2": 4 * time.Hour, "old3": 3 * time.Hour, "old4": 2 * time.Hour,
		"new1": 10 * time.Minute,
	}
}

func TestPassUnderPressureRemovesDanglingThenLeastRecentlyUsedByIDWithoutForceUntilLow(t *testing.T) {
	f, seen := lru(t)
	h := newHarness(t, f, seen)
	res := h.once(t)

	equal(t, "removals", f.removals(), rmi(ids("d1", "old1", "old2", "old3")...))
	equal(t, "images left", f.ids(), ids("old4", "new1"))
	if res.Before.Percent() != 89 || res.After.Percent() != 78 || res.Freed() != 110 {
		t.Errorf("usage %.1f%% -> %.1f%%, freed %d; want 89%% -> 78%%, 110 freed", res.Before.Percent(), res.After.Percent(), res.Freed())
	}
	if len(res.Skipped) != 0 || res.Stopped != "" {
		t.Errorf("skipped %v, stopped %q; want neither", kinds(res.Skipped), res.Stopped)
	}
	st, err := LoadState(h.r.cfg.StatePath)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Images["sha256:old1"]; ok || len(st.Images) != 2 || !st.Since.Equal(now) {
		t.Errorf("saved state %+v: want the records of old4 and new1 only, since %v", st, now)
	}
	if !strings.Contains(h.out.String(), "removed app-old1:1 (old1): freed 30 B (least recently used, first seen 5h0m ago)") {
		t.Errorf("report does not say what was removed and why:\n%s", h.out.String())
	}
}

func TestPassStopsAtLowAsMeasuredNotAsEstimated(t *testing.T) {
	f, seen := lru(t)
	for _, im := range f.images {
		if strings.HasPrefix(im.ID, "sha256:old") {
			im.Disk = 60 // layers the listing does not show, freed with it
		}
	}
	f.base = 600 // 89% again: 600 + 20 + 4*60 + 30
	h := newHarness(t, f, seen)
	res := h.once(t)

	equal(t, "removals", f.removals(), rmi(ids("d1", "old1", "old2")...))
	if res.After.Percent() != 75 {
		t.Errorf("after %.1f%%, want 75%%", res.After.Percent())
	}
}

func TestImageTaggedSeveralTimesIsUntaggedDownToOneThenDeletedByID(t *testing.T) {
	for _, tc := range []struct {
		name string
		refs []string
		want []string
	}{{
		name: "the kept tag's own digest reference stays",
		refs: []string{"app:1", "app:latest", "app" + digest},
		want: []string{"rmi sha256:multi", "rmi app:latest noprune", "rmi sha256:multi"},
	}, {
		name: "a digest reference of another repository is untagged",
		refs: []string{"app:1", "app:latest", "app" + digest, "mirror.example/app" + digest},
		want: []string{"rmi sha256:multi", "rmi app:latest noprune", "rmi mirror.example/app" + digest + " noprune", "rmi sha256:multi"},
	}, {
		name: "a digest reference its tag's untag took is not found, and passed over",
		refs: []string{"app:1", "other:2", "app" + digest, "other" + digest},
		want: []string{"rmi sha256:multi", "rmi other:2 noprune", "rmi other" + digest + " noprune", "rmi sha256:multi"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, 1000, 800, img("multi", 100, tc.refs...), img("new1", 30, "app-new1:1"))
			h := newHarness(t, f, map[string]time.Duration{"multi": 5 * time.Hour, "new1": time.Minute})
			res := h.once(t)
			equal(t, "removals", f.removals(), tc.want)
			equal(t, "removed", kinds(res.Removed), []string{"multi removed"})
			equal(t, "images left", f.ids(), ids("new1"))
		})
	}
}

// Each case is a disk at 86% with three old images, the first of which
// cannot be removed.
func TestSkippedImageIsReportedAndThePassGoesOn(t *testing.T) {
	for _, tc := range []struct {
		name  string
		refs  []string
		setup func(f *fakeEngine)
		kind  string
		err   string // in the reason
		want  []string
	}{{
		name: "an image a container started using since the plan is a conflict",
		setup: func(f *fakeEngine) {
			f.before = func(name string) {
				if name == "sha256:old1" {
					f.addContainer("c-late", "sha256:old1", "exited", nil)
				}
			}
		},
		kind: "conflict", err: "image is being used by stopped container c-late",
		want: rmi(ids("old1", "old2", "old3")...),
	}, {
		name: "a tagged-twice image a container was created from since the plan is a conflict, and keeps its tags",
		refs: []string{"app-old1:latest"},
		setup: func(f *fakeEngine) {
			f.before = func(name string) {
				if name == "sha256:old1" {
					f.addContainer("c-late", "sha256:old1", "created", nil)
				}
			}
		},
		kind: "conflict", err: "container c-late now uses the image",
		want: rmi(ids("old1", "old2", "old3")...),
	}, {
		name:  "an image the policy protects is denied",
		setup: func(f *fakeEngine) { f.deny["sha256:old1"] = true },
		kind:  "denied", err: "authorization denied by plugin",
		want: rmi(ids("old1", "old2", "old3")...),
	}, {
		name:  "an extra tag the policy protects is denied",
		refs:  []string{"app-old1:latest"},
		setup: func(f *fakeEngine) { f.deny["app-old1:latest"] = true },
		kind:  "denied", err: "untag app-old1:latest: ",
		want: []string{"rmi sha256:old1", "rmi app-old1:latest noprune", "rmi sha256:old2", "rmi sha256:old3"},
	}, {
		name: "an image another client removed meanwhile is gone",
		setup: func(f *fakeEngine) {
			f.before = func(name string) {
				if name == "sha256:old1" {
					f.drop("sha256:old1")
				}
			}
		},
		kind: "gone", err: "No such image: sha256:old1",
		want: rmi(ids("old1", "old2")...), // the drop freed old1's bytes
	}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, 1000, 740,
				img("old1", 30, append([]string{"app-old1:1"}, tc.refs...)...),
				img("old2", 30, "app-old2:1"), img("old3", 30, "app-old3:1"), img("new1", 30, "app-new1:1"))
			tc.setup(f)
			h := newHarness(t, f, map[string]time.Duration{"old1": 5 * time.Hour, "old2": 4 * time.Hour, "old3": 3 * time.Hour, "new1": time.Minute})
			res := h.once(t)

			equal(t, "removals", f.removals(), tc.want)
			equal(t, "skipped", kinds(res.Skipped), []string{"old1 " + tc.kind})
			if len(res.Skipped) == 1 && !strings.Contains(res.Skipped[0].Err.Error(), tc.err) {
				t.Errorf("skip reason %q, want it to say %q", res.Skipped[0].Err, tc.err)
			}
			if want := "skipped app-old1:1 (old1) (" + tc.kind + "): "; !strings.Contains(h.out.String(), want) {
				t.Errorf("report does not say %q:\n%s", want, h.out.String())
			}
			if len(res.Removed) == 0 || res.Removed[0].Step.Image.ID != "sha256:old2" {
				t.Errorf("removed %v: want the pass to go on to old2", kinds(res.Removed))
			}
			if names, ok := f.names("sha256:old1"); ok && !slices.Equal(names, append([]string{"app-old1:1"}, tc.refs...)) {
				t.Errorf("old1's names are %v after a skip", names)
			}
		})
	}
}

func TestEngineFailureOnRemovalStopsThePassWithAnError(t *testing.T) {
	f, seen := lru(t)
	f.removeErr = errEngineDown
	h := newHarness(t, f, seen)
	res, err := h.r.Once(context.Background())
	if err == nil || !strings.Contains(err.Error(), "remove <none> (d1): Cannot connect to the Docker daemon") {
		t.Fatalf("err = %v, want the removal's failure", err)
	}
	equal(t, "removals", f.removals(), rmi("sha256:d1"))
	if res == nil || len(res.Removed)+len(res.Skipped) != 0 {
		t.Errorf("result %+v: want nothing removed or skipped", res)
	}
}

func TestRunStateIsAskedAgainBeforeEachRemoval(t *testing.T) {
	for _, tc := range []struct {
		name    string
		after   func(f *fakeEngine) // once the first image is deleted
		stopped string
	}{{
		name: "a CI job that started stops the pass",
		after: func(f *fakeEngine) {
			f.addContainer("c-job", "sha256:new1", "running", map[string]string{rules.DefaultRunLabel: "job-9"})
		},
		stopped: "a CI job holds image deletes: active ",
	}, {
		name:    "an engine that stops answering stops the pass",
		after:   func(f *fakeEngine) { f.setActiveErr(errEngineDown) },
		stopped: "the CI run state became unknown (cannot ask the engine which runs are active: list active containers: Cannot connect",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			f, seen := lru(t)
			f.deleted = func(id string) {
				if id == "sha256:d1" {
					tc.after(f)
				}
			}
			h := newHarness(t, f, seen)
			res := h.once(t) // still above high, but stopped: not an error

			equal(t, "removals", f.removals(), rmi("sha256:d1"))
			if !strings.HasPrefix(res.Stopped, tc.stopped) {
				t.Errorf("stopped %q, want %q…", res.Stopped, tc.stopped)
			}
			if !strings.Contains(h.out.String(), "stopped: "+res.Stopped+"; the rest waits for the next pass") {
				t.Errorf("report does not say why it stopped:\n%s", h.out.String())
			}
			lines := h.auditLines(t)
			if last := lines[len(lines)-1]; last["msg"] != "reclaim pass" || last["stopped"] != res.Stopped || last["removed"] != 1.0 {
				t.Errorf("last audit line %v: want the pass, stopped, one removed", last)
			}
		})
	}
}

func TestUnknownRunStateRefusesThePassBeforeAnyRemoval(t *testing.T) {
	f, seen := lru(t)
	f.activeErr = errEngineDown
	h := newHarness(t, f, seen)
	res := h.once(t)
	if !strings.HasPrefix(res.Plan.Refused, "the CI run state is unknown (cannot ask the engine which runs are active") {
		t.Errorf("refused %q, want the unknown run state", res.Plan.Refused)
	}
	equal(t, "removals", f.removals(), nil)
	equal(t, "audit", msgs(h.auditLines(t)), []string{"reclaim refused"})
}

func TestJobInItsTeardownGraceRefusesThePass(t *testing.T) {
	f, seen := lru(t)
	// The run tracker replays the grace window on its own clock.
	died := time.Now().Add(-30 * time.Second)
	f.log = []events.Message{{
		Type: events.ContainerEventType, Action: events.ActionDie, Time: died.Unix(), TimeNano: died.UnixNano(),
		Actor: events.Actor{ID: "c-job", Attributes: map[string]string{"name": "build-9", "image": "app-new1:1", "exitCode": "0", rules.DefaultRunLabel: "job-9"}},
	}}
	h := newHarness(t, f, seen, func(c *Config) { c.Detection = ciDetection(t, 2*time.Minute) })
	res := h.once(t)

	// The fake answers a replay at once, which the tracker also reports
	// as a blind stretch; the ended job must be named whatever else is.
	if r := res.Plan.Refused; !strings.HasPrefix(r, "a CI job holds image deletes: in its teardown grace: ") || !strings.Contains(r, "job-9") {
		t.Errorf("refused %q, want job-9's teardown grace", r)
	}
	equal(t, "removals", f.removals(), nil)
	lines := h.auditLines(t)
	equal(t, "audit", msgs(lines), []string{"reclaim refused"})
	if len(lines) == 1 && lines[0]["reason"] != res.Plan.Refused {
		t.Errorf("audit reason %q, want %q", lines[0]["reason"], res.Plan.Refused)
	}
}

// shared is a build's intermediate image (first seen 5h ago, as the
// build's container events recorded it) with two tagged images built on
// it, and an image under --min-age; the disk is at 94%.
func sharedParent(t *testing.T) (*fakeEngine, map[string]time.Duration) {
	f := newFake(t, 1000, 800,
		img("base", 50),
		img("a", 80, "app-a:1").on("base"), img("b", 80, "app-b:1").on("base"),
		img("new1", 30, "app-new1:1"),
	)
	for _, im := range f.images[1:3] {
		im.Disk = 30
	}
	return f, map[string]time.Duration{"base": 5 * time.Hour, "a": 4 * time.Hour, "b": 4 * time.Hour, "new1": time.Minute}
}

func TestRePlanningRemovesWhatTheContainerdStoreLeavesBehind(t *testing.T) {
	for _, tc := range []struct {
		name       string
		containerd bool
		want       []string
		replanned  bool
	}{
		{name: "the graph driver prunes the shared parent with its last child", want: rmi(ids("a", "b")...)},
		{name: "the containerd store leaves it, and the next round removes it", containerd: true, want: rmi(ids("a", "b", "base")...), replanned: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, seen := sharedParent(t)
			f.containerd = tc.containerd
			h := newHarness(t, f, seen)
			res := h.once(t)

			equal(t, "removals", f.removals(), tc.want)
			equal(t, "images left", f.ids(), ids("new1"))
			if res.After.Percent() != 83 {
				t.Errorf("after %.1f%%, want 83%%", res.After.Percent())
			}
			if got := strings.Contains(h.out.String(), "re-planning: 88.0% used, still above low 80% (round 2)"); got != tc.replanned {
				t.Errorf("re-planned %v, want %v:\n%s", got, tc.replanned, h.out.String())
			}
		})
	}
}

// This is the re-plan's documented promise ("plans again while the disk is
// still above Low") for a round that ends between Low and High: a pass that
// acts stays under pressure until Low (Facts.Acting), so the eligible image
// left behind goes, and the kept images are the re-plan's own.
func TestRePlanningBetweenLowAndHighRemovesWhatTheContainerdStoreLeavesBehind(t *testing.T) {
	f, seen := sharedParent(t)
	f.containerd = true
	f.base = 750 // 89%: a round of a and b ends at 83%, between low and high
	h := newHarness(t, f, seen)
	res := h.once(t)
	equal(t, "removals", f.removals(), rmi(ids("a", "b", "base")...))
	if res.After.Percent() > 80 {
		t.Errorf("after %.1f%%, want at or below low 80%%", res.After.Percent())
	}
	// The empty re-plan also replaces the plan's kept images, so the
	// report and the audit line's "kept" lose new1.
	if len(res.Plan.Keep) != 1 {
		t.Errorf("kept %v, want new1 (under --min-age)", keptWhy(res.Plan))
	}
}

func TestIntermediatesGoWithTheirImage(t *testing.T) {
	for _, tc := range []struct {
		name       string
		containerd bool
		deny       bool
		audited    bool
		warning    string
	}{
		{name: "the graph driver has deleted them: not found is nothing to do"},
		{name: "the containerd store has left them: they are deleted and audited", containerd: true, audited: true},
		{name: "one that cannot be deleted is a warning, not a failure", containerd: true, deny: true,
			warning: "warning: intermediate image i1 of app-old1:1 (old1) stays: Error response from daemon: authorization denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, 1000, 770, img("i1", 20), img("old1", 50, "app-old1:1").on("i1"), img("new1", 30, "app-new1:1"))
			f.images[1].Disk = 30
			f.containerd = tc.containerd
			f.deny["sha256:i1"] = tc.deny
			h := newHarness(t, f, map[string]time.Duration{"old1": 5 * time.Hour, "new1": time.Minute})
			res := h.once(t)

			equal(t, "removals", f.removals(), rmi(ids("old1", "i1")...))
			equal(t, "removed", kinds(res.Removed), []string{"old1 removed"})
			got := slices.Contains(msgs(h.auditLines(t)), "reclaim removed intermediate image")
			if got != tc.audited {
				t.Errorf("intermediate audited %v, want %v", got, tc.audited)
			}
			if tc.warning != "" && !strings.Contains(h.out.String(), tc.warning) {
				t.Errorf("report does not warn %q:\n%s", tc.warning, h.out.String())
			}
			if tc.warning == "" && strings.Contains(h.out.String(), "warning") {
				t.Errorf("report warns:\n%s", h.out.String())
			}
		})
	}
}

func TestDryRunRemovesNothingAndPrintsThePlan(t *testing.T) {
	f, seen := lru(t)
	h := newHarness(t, f, seen, func(c *Config) { c.DryRun = true })
	res := h.once(t)

	equal(t, "removals", f.removals(), nil)
	equal(t, "images left", f.ids(), ids("d1", "old1", "old2", "old3", "old4", "new1"))
	if res.After != res.Before || len(res.Plan.Steps) != 5 {
		t.Errorf("after %+v (before %+v), %d steps; want the usage unchanged and 5 steps planned", res.After, res.Before, len(res.Plan.Steps))
	}
	for _, want := range []string{
		"plan (dry run: nothing is removed):",
		"   1. remove <none> (d1), about 20 B: dangling",
		"   5. if still above low, remove app-old4:1 (old4), about 30 B",
		"kept:\n  app-new1:1 (new1): first seen 10m ago, under --min-age 1h0m0s",
	} {
		if !strings.Contains(h.out.String(), want) {
			t.Errorf("report does not say %q:\n%s", want, h.out.String())
		}
	}
	equal(t, "audit", msgs(h.auditLines(t)), []string{"reclaim dry run"})
}

func TestAuditLogRecordsEachRemovalSkipAndThePass(t *testing.T) {
	f := newFake(t, 1000, 740, img("i1", 20), img("old1", 50, "app-old1:1").on("i1"), img("old2", 30, "app-old2:1"), img("new1", 30, "app-new1:1"))
	f.images[1].Disk = 30
	f.containerd = true
	f.deny["sha256:old2"] = true
	h := newHarness(t, f, map[string]time.Duration{"old1": 5 * time.Hour, "old2": 6 * time.Hour, "new1": time.Minute})
	h.once(t)

	lines := h.auditLines(t)
	// An intermediate goes before its image's line, which carries what
	// both freed.
	equal(t, "audit", msgs(lines), []string{"reclaim skipped image", "reclaim removed intermediate image", "reclaim removed image", "reclaim pass"})
	if len(lines) != 4 {
		return
	}
	for i, want := range []map[string]any{
		{"component": "reclaim", "operation": "image-delete", "image": "sha256:old2", "refs": "app-old2:1", "result": "denied", "forced": false, "estimate_bytes": 30.0},
		{"component": "reclaim", "operation": "image-delete", "image": "sha256:i1", "for": "sha256:old1"},
		{"component": "reclaim", "operation": "image-delete", "image": "sha256:old1", "refs": "app-old1:1", "result": "removed", "freed_bytes": 50.0, "estimate_bytes": 50.0},
		{"component": "reclaim", "data_root": f.root, "pressure": true, "usage_before": 85.0, "usage_after": 80.0,
			"freed_bytes": 50.0, "removed": 1.0, "skipped": 1.0, "kept": 1.0, "dry_run": false, "high": 85.0, "low": 80.0},
	} {
		for k, v := range want {
			if lines[i][k] != v {
				t.Errorf("audit line %d (%s): %s = %v, want %v", i, lines[i]["msg"], k, lines[i][k], v)
			}
		}
	}
	if e, _ := lines[0]["error"].(string); !strings.Contains(e, "authorization denied by plugin prune-guard") {
		t.Errorf("skip's error %q, want the plugin's denial", e)
	}
	if _, ok := lines[0]["freed_bytes"]; ok {
		t.Errorf("a skip has freed_bytes: %v", lines[0])
	}
}
