package reclaim

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/rules"
)

// The rules issue 18 adds to the planner: acting during CI jobs at or above
// --critical (sparing their images), waiting between --high and
// --critical, byte and inode targets, and --keep-per-repo.

// critical96 is a filesystem at 96%, above the default critical mark.
var critical96 = Usage{Path: "/var/lib/docker", Total: 1000, Avail: 40}

// withCritical acts during jobs at 95%; its min-age is shorter than the
// jobs' teardown grace, so that the grace's own rule shows.
var withCritical = withOpts(func(o *Options) { o.Critical = 95; o.MinAge = time.Minute })

func liveJob(name, img string) rules.Run {
	return rules.Run{Detector: "gitlab", System: "GitLab job", Job: "47" + name, Kind: rules.Container, Name: name, ID: "c-" + name, Image: img}
}

func endedJob(name, img string, ended time.Time) rules.Run {
	r := liveJob(name, img)
	r.Ended = ended
	return r
}

// criticalCase is a case of TestPlanDuringCIJobs.
type criticalCase struct {
	name        string
	usage       Usage
	opts        Options
	runs        rules.RunState
	pass        bool // re-planning within a pass that started critical
	wantCrit    bool
	wantRefuse  string
	wantWaiting bool
	wantSteps   []string
	wantKeep    map[string]KeepReason
}

// duringJobs is TestPlanDuringCIJobs's host: old images, a live job's and
// an ended job's images (one known by ID, one by name), an image built on
// another that a live job uses, and one used 90 seconds ago.
func duringJobs() ([]Image, map[string]Record, rules.RunState) {
	old := func(name, tag string) Image { return image(name, tags(tag)) }
	records := map[string]Record{}
	for _, n := range []string{"jobimg", "graceimg", "graceref", "old1", "old2", "base", "child", "recent"} {
		records["sha256:"+n] = seen(9 * time.Hour)
	}
	records["sha256:recent"] = used(9*time.Hour, 90*time.Second)
	images := []Image{
		old("jobimg", "job:1"), old("graceimg", "grace:1"), old("graceref", "graceref:1"), old("old1", "old:1"), old("old2", "old:2"),
		old("base", "base:1"), image("child", tags("child:1"), parent("base")), old("recent", "recent:1"),
	}
	grace := 2 * time.Minute
	runs := rules.RunState{Grace: grace,
		Active: []rules.Run{liveJob("build", "sha256:jobimg"), liveJob("child-job", "sha256:child")},
		Ended:  []rules.Run{endedJob("gone", "sha256:graceimg", ago(time.Minute)), endedJob("byname", "graceref:1", ago(30*time.Second))},
	}
	return images, records, runs
}

func criticalCases(runs rules.RunState, grace time.Duration) []criticalCase {
	return []criticalCase{
		{
			name:  "at or above critical it acts during the jobs and spares their images, what they are built on, and what the grace still covers",
			usage: critical96, opts: withCritical, runs: runs, wantCrit: true,
			wantSteps: []string{"old1", "old2"},
			wantKeep: map[string]KeepReason{"jobimg": KeepJob, "graceimg": KeepJob, "graceref": KeepJob, "child": KeepJob,
				"base": KeepBase, "recent": KeepJob},
		},
		{
			name:  "between high and critical it waits for the jobs and says so",
			usage: pressure, opts: withCritical, runs: runs, wantWaiting: true,
			wantRefuse: "(90.0% used is below --critical 95%, so reclaim waits for the jobs)",
		},
		{
			name:  "with critical off it waits at any usage",
			usage: critical96, opts: withOpts(func(o *Options) { o.MinAge = time.Minute }), runs: runs, wantWaiting: true,
			wantRefuse: "(--critical is off, so reclaim waits for the jobs)",
		},
		{
			name:  "a job only in its teardown grace is held the same way",
			usage: critical96, opts: withCritical, wantCrit: true,
			runs:      rules.RunState{Grace: grace, Ended: []rules.Run{endedJob("gone", "sha256:graceimg", ago(time.Minute))}},
			wantSteps: []string{"child", "base", "graceref", "jobimg", "old1", "old2"},
			wantKeep:  map[string]KeepReason{"graceimg": KeepJob, "recent": KeepJob},
		},
		{
			name:  "an unseen stretch of the grace: images used within the grace stay",
			usage: critical96, opts: withCritical, wantCrit: true,
			runs:      rules.RunState{Grace: grace, Blind: &rules.Blind{Since: ago(time.Minute), Why: "events were missed"}},
			wantSteps: []string{"child", "base", "graceimg", "graceref", "jobimg", "old1", "old2"},
			wantKeep:  map[string]KeepReason{"recent": KeepJob},
		},
		{
			name:  "an unknown run state refuses even at critical",
			usage: critical96, opts: withCritical, runs: rules.RunState{Err: errors.New("engine timeout")},
			wantRefuse: "the CI run state is unknown",
		},
		{
			name:  "a pass that started critical goes on to low during the jobs below critical",
			usage: Usage{Total: 1000, Avail: 170}, opts: withCritical, runs: runs, pass: true, wantCrit: true,
			wantSteps: []string{"old1", "old2"},
			wantKeep: map[string]KeepReason{"jobimg": KeepJob, "graceimg": KeepJob, "graceref": KeepJob, "child": KeepJob,
				"base": KeepBase, "recent": KeepJob},
		},
		{
			name:  "without jobs, critical changes nothing",
			usage: critical96, opts: withCritical,
			wantSteps: []string{"child", "base", "graceimg", "graceref", "jobimg", "old1", "old2", "recent"},
			wantKeep:  map[string]KeepReason{},
		},
	}
}

func TestPlanDuringCIJobs(t *testing.T) {
	images, records, runs := duringJobs()
	for _, tc := range criticalCases(runs, runs.Grace) {
		t.Run(tc.name, func(t *testing.T) {
			p := NewPlan(Facts{Now: now, Usage: tc.usage, Images: images, Records: records, Runs: tc.runs,
				Acting: tc.pass, CriticalPass: tc.pass}, tc.opts)
			if !strings.Contains(p.Refused, tc.wantRefuse) || (tc.wantRefuse == "") != (p.Refused == "") {
				t.Fatalf("Refused = %q; want %q", p.Refused, tc.wantRefuse)
			}
			if p.Critical != tc.wantCrit || p.Waiting != tc.wantWaiting {
				t.Errorf("Critical, Waiting = %v, %v; want %v, %v", p.Critical, p.Waiting, tc.wantCrit, tc.wantWaiting)
			}
			if got := stepNames(p); !slices.Equal(got, tc.wantSteps) {
				t.Errorf("steps %v; want %v (kept %v)", got, tc.wantSteps, keptWhy(p))
			}
			if tc.wantKeep == nil {
				return
			}
			got := map[string]KeepReason{}
			for _, k := range p.Keep {
				got[strings.TrimPrefix(k.Image.ID, "sha256:")] = k.Reason
			}
			for name, want := range tc.wantKeep {
				if got[name] != want {
					t.Errorf("keep[%s] = %q (%s); want %q", name, got[name], keptWhy(p)[name], want)
				}
			}
			for name := range got {
				if _, ok := tc.wantKeep[name]; !ok {
					t.Errorf("%s kept (%s); want it removable", name, keptWhy(p)[name])
				}
			}
			for _, s := range p.Steps {
				if p.Critical && (s.Forced || !strings.Contains(s.Why, "during a CI job at or above --critical 95%")) {
					t.Errorf("critical step %s: forced %v, why %q", s.Image.ID, s.Forced, s.Why)
				}
			}
		})
	}
	// The reasons name the jobs.
	p := NewPlan(Facts{Now: now, Usage: critical96, Images: images, Records: records, Runs: runs}, withCritical)
	why := keptWhy(p)
	for name, want := range map[string]string{
		"jobimg":   "image of active GitLab job 47build, container build",
		"graceimg": "image of GitLab job 47gone, container gone, in its teardown grace until",
		"graceref": "image of GitLab job 47byname",
		"recent":   "within the teardown grace 2m0s",
		"base":     "child:1 (child) is built on it and stays",
	} {
		if !strings.Contains(why[name], want) {
			t.Errorf("keep[%s] = %q; want it to say %q", name, why[name], want)
		}
	}
}

// Max-unused removes nothing during a job: only the disk justifies that.
func TestMaxUnusedForcesNothingDuringAJob(t *testing.T) {
	p := NewPlan(Facts{Now: now, Usage: critical96, Images: []Image{image("stale", tags("a:1"))},
		Records: map[string]Record{"sha256:stale": seen(90 * time.Hour)},
		Runs:    rules.RunState{Active: []rules.Run{liveJob("b", "sha256:other")}}},
		withOpts(func(o *Options) { o.Critical = 95; o.MaxUnused = 2 * time.Hour }))
	if len(p.Steps) != 1 || p.Steps[0].Forced || !p.Steps[0].Needed {
		t.Errorf("steps %+v; want one needed, unforced step", p.Steps)
	}
	// Without pressure, max-unused during a job is refused as before.
	p = NewPlan(Facts{Now: now, Usage: calm, Images: []Image{image("stale", tags("a:1"))},
		Records: map[string]Record{"sha256:stale": seen(90 * time.Hour)},
		Runs:    rules.RunState{Active: []rules.Run{liveJob("b", "sha256:other")}}},
		withOpts(func(o *Options) { o.Critical = 95; o.MaxUnused = 2 * time.Hour }))
	if p.Refused == "" || p.Waiting {
		t.Errorf("max-unused during a job without pressure: refused %q, waiting %v; want refused, not waiting", p.Refused, p.Waiting)
	}
}

func TestByteAndInodeTargets(t *testing.T) {
	const gb = 1_000_000_000
	disk := func(availGB, inodes, freeInodes uint64) Usage {
		return Usage{Path: "/d", Total: 100 * gb, Avail: availGB * gb, Inodes: inodes, FreeInodes: freeInodes}
	}
	for _, tc := range []struct {
		name          string
		usage         Usage
		acting        bool
		opts          Options
		wantPressure  bool
		wantTrigger   string
		wantNeed      int64
		wantSatisfied bool
	}{
		{"below every mark nothing is due", disk(30, 0, 0),
			false, withOpts(func(o *Options) { o.MinFree = 20 * gb }), false, "", 0, true},
		{"less free than min-free acts below high", disk(15, 0, 0),
			false, withOpts(func(o *Options) { o.MinFree = 20 * gb }), true, "under --min-free 20GB", 5 * gb, false},
		{"target-free sets what a pass frees up to", disk(15, 0, 0),
			false, withOpts(func(o *Options) { o.MinFree = 20 * gb; o.TargetFree = 25 * gb }), true, "15.0 GiB"[:0] + "available, under --min-free 20GB", 10 * gb, false},
		{"at high the percent target and the byte target both count", disk(10, 0, 0),
			false, withOpts(func(o *Options) { o.TargetFree = 25 * gb }), true, "90.0% used, at or above --high 85%", 15 * gb, false},
		{"an acting pass is done when every target is met", disk(22, 0, 0),
			true, withOpts(func(o *Options) { o.MinFree = 20 * gb; o.TargetFree = 25 * gb }), true, "", 3 * gb, false},
		{"an acting pass with every target met is not under pressure", disk(26, 0, 0),
			true, withOpts(func(o *Options) { o.MinFree = 20 * gb; o.TargetFree = 25 * gb }), false, "", 0, true},
		{"fewer free inodes than min-free-inodes acts", disk(30, 1000, 50),
			false, withOpts(func(o *Options) { o.MinFreeInodes = 100 }), true, "50 inodes free, under --min-free-inodes 100", 0, false},
		{"enough inodes", disk(30, 1000, 500),
			false, withOpts(func(o *Options) { o.MinFreeInodes = 100 }), false, "", 0, true},
		{"a filesystem without inode counts ignores the inode target", disk(30, 0, 0),
			false, withOpts(func(o *Options) { o.MinFreeInodes = 100 }), false, "", 0, true},
		{"every trigger at once is named", disk(10, 1000, 5),
			false, withOpts(func(o *Options) { o.MinFree = 20 * gb; o.MinFreeInodes = 100 }), true,
			"90.0% used, at or above --high 85%; 9.3 GiB available, under --min-free 20GB; 5 inodes free, under --min-free-inodes 100", 10 * gb, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := NewPlan(Facts{Now: now, Usage: tc.usage, Acting: tc.acting}, tc.opts)
			if p.Pressure != tc.wantPressure || !strings.Contains(p.Trigger, tc.wantTrigger) || (tc.wantTrigger == "") != (p.Trigger == "") || p.Need != tc.wantNeed {
				t.Errorf("Pressure %v, Trigger %q, Need %d; want %v, %q, %d", p.Pressure, p.Trigger, p.Need, tc.wantPressure, tc.wantTrigger, tc.wantNeed)
			}
			if got := tc.opts.Satisfied(tc.usage); got != tc.wantSatisfied {
				t.Errorf("Satisfied = %v; want %v", got, tc.wantSatisfied)
			}
		})
	}
}

func TestKeepPerRepo(t *testing.T) {
	images := []Image{
		image("a1", tags("app:1")), image("a2", tags("app:2")), image("a3", tags("app:3")),
		image("a4", tags("app:4", "registry.example/app:4")),
		image("t1", tags("tool:1")),
		image("inuse", tags("app:5")),
		image("dangling"),
	}
	records := map[string]Record{
		"sha256:a1": used(90*time.Hour, 50*time.Hour), "sha256:a2": used(90*time.Hour, 20*time.Hour),
		"sha256:a3": used(90*time.Hour, 30*time.Hour), "sha256:a4": used(90*time.Hour, 40*time.Hour),
		"sha256:t1": seen(90 * time.Hour), "sha256:inuse": used(90*time.Hour, 10*time.Hour), "sha256:dangling": seen(90 * time.Hour),
	}
	for _, tc := range []struct {
		n         int
		wantKept  []string
		wantSteps []string
	}{
		{0, []string{"inuse"}, []string{"dangling", "t1", "a1", "a4", "a3", "a2"}},
		// app:5 (in use) counts among app's most recent tags, and
		// registry.example/app is another repository: a4 stays for it.
		{1, []string{"a4", "inuse", "t1"}, []string{"dangling", "a1", "a3", "a2"}},
		{2, []string{"a2", "a4", "inuse", "t1"}, []string{"dangling", "a1", "a3"}},
		{3, []string{"a2", "a3", "a4", "inuse", "t1"}, []string{"dangling", "a1"}},
	} {
		p := NewPlan(Facts{Now: now, Usage: critical96, Images: images, Records: records,
			Containers: []Container{container("job", "inuse", "exited")}},
			withOpts(func(o *Options) { o.KeepPerRepo = tc.n }))
		var kept []string
		for _, k := range p.Keep {
			kept = append(kept, strings.TrimPrefix(k.Image.ID, "sha256:"))
		}
		slices.Sort(kept)
		if !slices.Equal(kept, tc.wantKept) || !slices.Equal(stepNames(p), tc.wantSteps) {
			t.Errorf("--keep-per-repo %d: kept %v, steps %v; want %v, %v (%v)", tc.n, kept, stepNames(p), tc.wantKept, tc.wantSteps, keptWhy(p))
		}
	}
	p := NewPlan(Facts{Now: now, Usage: critical96, Images: images, Records: records}, withOpts(func(o *Options) { o.KeepPerRepo = 1 }))
	if why := keptWhy(p)["t1"]; why != "tool:1 is one of the 1 most recently used tags of tool (--keep-per-repo)" {
		t.Errorf("keep[t1] = %q", why)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		ok   bool
	}{
		{"defaults", defaults, true},
		{"critical at high", withOpts(func(o *Options) { o.Critical = 85 }), true},
		{"critical 100", withOpts(func(o *Options) { o.Critical = 100 }), true},
		{"critical below high: every pass acts during jobs", withOpts(func(o *Options) { o.Critical = 84 }), true},
		{"critical off", withOpts(func(o *Options) { o.Critical = 0 }), true},
		{"negative critical", withOpts(func(o *Options) { o.Critical = -1 }), false},
		{"critical above 100", withOpts(func(o *Options) { o.Critical = 101 }), false},
		{"low at high", withOpts(func(o *Options) { o.Low = 85 }), false},
		{"target-free below min-free", withOpts(func(o *Options) { o.MinFree = 20; o.TargetFree = 10 }), false},
		{"target-free alone", withOpts(func(o *Options) { o.TargetFree = 10 }), true},
		{"negative min-free", withOpts(func(o *Options) { o.MinFree = -1 }), false},
		{"negative keep-per-repo", withOpts(func(o *Options) { o.KeepPerRepo = -1 }), false},
		{"max-unused under min-age", withOpts(func(o *Options) { o.MaxUnused = time.Minute }), false},
	} {
		if err := tc.o.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v; want ok %v", tc.name, err, tc.ok)
		}
	}
}
