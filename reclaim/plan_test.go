package reclaim

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/rules"
)

var now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// ago is a moment d before now.
func ago(d time.Duration) time.Time { return now.Add(-d) }

// image builds an Image whose ID is "sha256:"+name, so that plans read as
// names. Options set tags, parent, size and labels.
func image(name string, opts ...func(*Image)) Image {
	im := Image{ID: "sha256:" + name, Size: 10, SharedSize: -1}
	for _, o := range opts {
		o(&im)
	}
	return im
}

func tags(refs ...string) func(*Image) { return func(im *Image) { im.RepoTags = refs } }
func parent(name string) func(*Image)  { return func(im *Image) { im.ParentID = "sha256:" + name } }
func size(n int64) func(*Image)        { return func(im *Image) { im.Size = n } }
func shared(n int64) func(*Image)      { return func(im *Image) { im.SharedSize = n } }
func labels(kv ...string) func(*Image) {
	return func(im *Image) {
		im.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			im.Labels[kv[i]] = kv[i+1]
		}
	}
}

// seen records an image as first seen d ago; used adds a last use.
func seen(d time.Duration) Record { return Record{FirstSeen: ago(d)} }
func used(first, last time.Duration) Record {
	return Record{FirstSeen: ago(first), LastUsed: ago(last)}
}
func container(name, img, state string) Container {
	return Container{ID: "c-" + name, Name: "/" + name, ImageID: "sha256:" + img, State: state, Created: ago(24 * time.Hour)}
}

// pressure is a filesystem at 90% with the default thresholds (85, 80):
// 100 bytes to free.
var pressure = Usage{Path: "/var/lib/docker", Total: 1000, Avail: 100}

// calm is a filesystem at 50%.
var calm = Usage{Path: "/var/lib/docker", Total: 1000, Avail: 500}

var defaults = Options{High: 85, Low: 80, MinAge: time.Hour, Protect: rules.Protection{Labels: []string{"prune-guard.keep=true"}}}

func withOpts(f func(*Options)) Options {
	o := defaults
	f(&o)
	return o
}

func stepNames(p Plan) []string {
	var names []string
	for _, s := range p.Steps {
		names = append(names, strings.TrimPrefix(s.Image.ID, "sha256:"))
	}
	return names
}

func keptWhy(p Plan) map[string]string {
	m := map[string]string{}
	for _, k := range p.Keep {
		m[strings.TrimPrefix(k.Image.ID, "sha256:")] = k.Why
	}
	return m
}

func TestPlan(t *testing.T) {
	cases := []struct {
		name       string
		facts      Facts
		opts       Options
		wantSteps  []string          // image names, in order
		wantNeeded []string          // the steps the estimates expect to take
		wantForced []string          // the steps taken without pressure
		wantKeep   map[string]string // image name → part of the reason
		wantRefuse string            // part of the refusal
	}{
		{
			name: "below high without max-unused nothing is planned",
			facts: Facts{Usage: calm,
				Images:  []Image{image("old", tags("app:1"))},
				Records: map[string]Record{"sha256:old": seen(100 * time.Hour)}},
			opts: defaults,
		},
		{
			name: "at exactly high it acts",
			facts: Facts{Usage: Usage{Total: 1000, Avail: 150},
				Images:  []Image{image("old", tags("app:1"))},
				Records: map[string]Record{"sha256:old": seen(2 * time.Hour)}},
			opts:       defaults,
			wantSteps:  []string{"old"},
			wantNeeded: []string{"old"},
		},
		{
			name: "dangling images go first, then the least recently used",
			facts: Facts{Usage: pressure,
				Images: []Image{
					image("recent", tags("app:3")),
					image("dangling"),
					image("oldest", tags("app:1")),
					image("older", tags("app:2")),
				},
				Records: map[string]Record{
					"sha256:dangling": seen(2 * time.Hour),
					"sha256:oldest":   used(50*time.Hour, 5*time.Hour),
					"sha256:older":    used(50*time.Hour, 4*time.Hour),
					"sha256:recent":   used(50*time.Hour, 3*time.Hour),
				}},
			opts:       defaults,
			wantSteps:  []string{"dangling", "oldest", "older", "recent"},
			wantNeeded: []string{"dangling", "oldest", "older", "recent"},
		},
		{
			name: "ties in last use are broken by ID, so the order is stable",
			facts: Facts{Usage: pressure,
				Images:  []Image{image("b", tags("b:1")), image("a", tags("a:1"))},
				Records: map[string]Record{"sha256:a": seen(2 * time.Hour), "sha256:b": seen(2 * time.Hour)}},
			opts:      defaults,
			wantSteps: []string{"a", "b"},
		},
		{
			name: "steps past the estimate of what reaches low are taken only if the disk is still above low",
			facts: Facts{Usage: pressure, // 100 bytes to free
				Images: []Image{
					image("x", tags("x:1"), size(60)),
					image("y", tags("y:1"), size(60)),
					image("z", tags("z:1"), size(60)),
				},
				Records: map[string]Record{
					"sha256:x": seen(5 * time.Hour), "sha256:y": seen(4 * time.Hour), "sha256:z": seen(3 * time.Hour),
				}},
			opts:       defaults,
			wantSteps:  []string{"x", "y", "z"},
			wantNeeded: []string{"x", "y"},
		},
		{
			name: "images used by a container in any state are kept",
			facts: Facts{Usage: pressure,
				Images: []Image{
					image("c", tags("c:1")), image("r", tags("r:1")), image("p", tags("p:1")),
					image("s", tags("s:1")), image("e", tags("e:1")), image("d", tags("d:1")),
					image("free", tags("free:1")),
				},
				Containers: []Container{
					container("made", "c", "created"), container("up", "r", "running"), container("frozen", "p", "paused"),
					container("looping", "s", "restarting"), container("done", "e", "exited"), container("broken", "d", "dead"),
				},
				Records: map[string]Record{
					"sha256:c": seen(9 * time.Hour), "sha256:r": seen(9 * time.Hour), "sha256:p": seen(9 * time.Hour),
					"sha256:s": seen(9 * time.Hour), "sha256:e": seen(9 * time.Hour), "sha256:d": seen(9 * time.Hour),
					"sha256:free": seen(9 * time.Hour),
				}},
			opts:      defaults,
			wantSteps: []string{"free"},
			wantKeep: map[string]string{
				"c": "used by container made (created)", "r": "used by container up (running)",
				"p": "used by container frozen (paused)", "s": "used by container looping (restarting)",
				"e": "used by container done (exited)", "d": "used by container broken (dead)",
			},
		},
		{
			name: "an image built on by a kept image stays with it",
			facts: Facts{Usage: pressure,
				Images: []Image{
					image("base", tags("base:1")),
					image("step", parent("base")), // intermediate layer of the classic builder
					image("app", tags("app:1"), parent("step")),
				},
				Containers: []Container{container("job", "app", "exited")},
				Records:    map[string]Record{"sha256:base": seen(9 * time.Hour), "sha256:app": seen(9 * time.Hour)}},
			opts: defaults,
			wantKeep: map[string]string{
				"app":  "used by container job (exited)",
				"base": "app:1 (app) is built on it and stays",
			},
		},
		{
			name: "a container on an intermediate image keeps the listed image below it",
			facts: Facts{Usage: pressure,
				Images: []Image{
					image("base", tags("base:1")),
					image("step", parent("base")),
					image("app", tags("app:1"), parent("step")),
				},
				Containers: []Container{container("debug", "step", "exited")},
				Records:    map[string]Record{"sha256:base": seen(9 * time.Hour), "sha256:app": seen(9 * time.Hour)}},
			opts:      defaults,
			wantSteps: []string{"app"},
			wantKeep:  map[string]string{"base": "container debug (exited) uses an image built on it"},
		},
		{
			name: "images protected by label or by reference pattern are kept",
			facts: Facts{Usage: pressure,
				Images: []Image{
					image("keep", tags("tools:1"), labels("prune-guard.keep", "true")),
					image("base", tags("alpine:3.19")),
					image("free", tags("app:1")),
				},
				Records: map[string]Record{
					"sha256:keep": seen(9 * time.Hour), "sha256:base": seen(9 * time.Hour), "sha256:free": seen(9 * time.Hour),
				}},
			opts: withOpts(func(o *Options) {
				o.Protect.Images = []string{"docker.io/library/alpine:*"}
			}),
			wantSteps: []string{"free"},
			wantKeep: map[string]string{
				"keep": "protected: it carries the protecting label prune-guard.keep=true",
				"base": "protected: docker.io/library/alpine:3.19 matches the protected pattern docker.io/library/alpine:*",
			},
		},
		{
			name: "images first seen or last used less than min-age ago are kept",
			facts: Facts{Usage: pressure,
				Images: []Image{
					image("new", tags("new:1")), image("busy", tags("busy:1")), image("old", tags("old:1")),
				},
				Records: map[string]Record{
					"sha256:new":  seen(30 * time.Minute),
					"sha256:busy": used(90*time.Hour, 10*time.Minute),
					"sha256:old":  seen(2 * time.Hour),
				}},
			opts:      defaults,
			wantSteps: []string{"old"},
			wantKeep: map[string]string{
				"new":  "first seen 30m ago, under --min-age 1h0m0s",
				"busy": "last used 10m ago, under --min-age 1h0m0s",
			},
		},
		{
			name: "an image without a record counts as first seen now, whatever its build date",
			facts: Facts{Usage: pressure,
				Images: []Image{image("unknown", tags("ancient:2015"))}},
			opts:     defaults,
			wantKeep: map[string]string{"unknown": "first seen 0s ago"},
		},
		{
			name: "children go before their parents even when the parent sorts first",
			facts: Facts{Usage: pressure,
				Images: []Image{
					image("b-base", tags("base:1")),
					image("b-step", parent("b-base")),
					image("c-child", tags("app:1"), parent("b-step")),
					image("u-other", tags("other:1")),
				},
				Records: map[string]Record{
					"sha256:b-base":  used(90*time.Hour, 6*time.Hour),
					"sha256:c-child": used(90*time.Hour, 4*time.Hour),
					"sha256:u-other": used(90*time.Hour, 5*time.Hour),
				}},
			opts: defaults,
			// base counts as used 4h ago, through its child.
			wantSteps: []string{"u-other", "c-child", "b-base"},
		},
		{
			name: "the parent of a young image stays",
			facts: Facts{Usage: pressure,
				Images: []Image{
					image("base", tags("base:1")),
					image("app", tags("app:1"), parent("base")),
				},
				Records: map[string]Record{"sha256:base": seen(90 * time.Hour), "sha256:app": seen(5 * time.Minute)}},
			opts: defaults,
			wantKeep: map[string]string{
				"app":  "first seen 5m ago",
				"base": "app:1 (app) is built on it and stays",
			},
		},
		{
			name: "an active run refuses and names the run",
			facts: Facts{Usage: pressure,
				Images:  []Image{image("old", tags("app:1"))},
				Records: map[string]Record{"sha256:old": seen(9 * time.Hour)},
				Runs: rules.RunState{Active: []rules.Run{
					{Detector: "prune-guard", System: "prune-guard run", Job: "job-7", Kind: rules.Container, Name: "build", ID: "c1"},
				}}},
			opts:       defaults,
			wantRefuse: "a CI job holds image deletes: active prune-guard run job-7, container build",
		},
		{
			name: "a job in its teardown grace refuses and says when removal resumes",
			facts: Facts{Usage: pressure,
				Images:  []Image{image("old", tags("app:1"))},
				Records: map[string]Record{"sha256:old": seen(9 * time.Hour)},
				Runs: rules.RunState{Grace: 2 * time.Minute, Ended: []rules.Run{
					{Detector: "gitlab", System: "GitLab job", Job: "4711", Kind: rules.Container, Name: "build", ID: "c1",
						Ended: time.Date(2026, 12, 1, 10, 41, 13, 0, time.UTC)},
				}}},
			opts:       defaults,
			wantRefuse: "GitLab job 4711, container build ended at 10:41:13 UTC; image deletes and image prunes resume at 10:43:13 UTC",
		},
		{
			name: "an unseen stretch of the grace window refuses",
			facts: Facts{Usage: pressure,
				Images:  []Image{image("old", tags("app:1"))},
				Records: map[string]Record{"sha256:old": seen(9 * time.Hour)},
				Runs: rules.RunState{Grace: 2 * time.Minute,
					Blind: &rules.Blind{Since: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), Why: "engine events were missed"}}},
			opts:       defaults,
			wantRefuse: "cannot tell whether a CI job ended before 10:00:00 UTC (engine events were missed)",
		},
		{
			name: "an active run without pressure is no refusal: nothing was due",
			facts: Facts{Usage: calm,
				Images:  []Image{image("old", tags("app:1"))},
				Records: map[string]Record{"sha256:old": seen(9 * time.Hour)},
				Runs: rules.RunState{Active: []rules.Run{
					{Detector: "prune-guard", System: "prune-guard run", Job: "job-7", Kind: rules.Container, Name: "build", ID: "c1"},
				}}},
			opts: defaults,
		},
		{
			name: "an unknown run state refuses",
			facts: Facts{Usage: pressure,
				Images:  []Image{image("old", tags("app:1"))},
				Records: map[string]Record{"sha256:old": seen(9 * time.Hour)},
				Runs:    rules.RunState{Err: errors.New("engine timeout")}},
			opts:       defaults,
			wantRefuse: "the CI run state is unknown (engine timeout)",
		},
		{
			name: "max-unused removes long-unused images without pressure",
			facts: Facts{Usage: calm,
				Images: []Image{
					image("stale", tags("a:1")), image("older", tags("b:1")), image("fresh", tags("c:1")),
				},
				Records: map[string]Record{
					"sha256:stale": used(90*time.Hour, 5*time.Hour),
					"sha256:older": seen(3 * time.Hour),
					"sha256:fresh": seen(90 * time.Minute),
				}},
			opts:       withOpts(func(o *Options) { o.MaxUnused = 2 * time.Hour }),
			wantSteps:  []string{"stale", "older"},
			wantForced: []string{"stale", "older"},
		},
		{
			name: "max-unused never overrides use, protection or min-age",
			facts: Facts{Usage: calm,
				Images: []Image{
					image("inuse", tags("a:1")),
					image("kept", tags("b:1"), labels("prune-guard.keep", "true")),
					image("young", tags("c:1")),
				},
				Containers: []Container{container("job", "inuse", "exited")},
				Records: map[string]Record{
					"sha256:inuse": seen(90 * time.Hour), "sha256:kept": seen(90 * time.Hour), "sha256:young": seen(30 * time.Minute),
				}},
			opts: withOpts(func(o *Options) { o.MaxUnused = 2 * time.Hour }),
			wantKeep: map[string]string{
				"inuse": "used by container job", "kept": "protected", "young": "under --min-age",
			},
		},
		{
			name: "under pressure, steps past max-unused are forced and others follow the estimate",
			facts: Facts{Usage: pressure,
				Images: []Image{
					image("stale", tags("a:1"), size(10)), image("mid", tags("b:1"), size(200)), image("late", tags("c:1"), size(200)),
				},
				Records: map[string]Record{
					"sha256:stale": seen(50 * time.Hour), "sha256:mid": seen(5 * time.Hour), "sha256:late": seen(4 * time.Hour),
				}},
			opts:       withOpts(func(o *Options) { o.MaxUnused = 24 * time.Hour }),
			wantSteps:  []string{"stale", "mid", "late"},
			wantNeeded: []string{"mid"},
			wantForced: []string{"stale"},
		},
		{
			name: "placeholder <none> tags count as dangling",
			facts: Facts{Usage: pressure,
				Images: []Image{
					image("tagged", tags("a:1")),
					image("none", tags("<none>:<none>"), func(im *Image) { im.RepoDigests = []string{"<none>@<none>"} }),
				},
				Records: map[string]Record{"sha256:tagged": seen(9 * time.Hour), "sha256:none": seen(2 * time.Hour)}},
			opts:      defaults,
			wantSteps: []string{"none", "tagged"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.facts.Now = now
			p := NewPlan(tc.facts, tc.opts)
			if tc.wantRefuse != "" {
				if !strings.Contains(p.Refused, tc.wantRefuse) {
					t.Errorf("Refused = %q, want it to contain %q", p.Refused, tc.wantRefuse)
				}
				if len(p.Steps) > 0 {
					t.Errorf("a refused plan has steps %v", stepNames(p))
				}
				return
			}
			if p.Refused != "" {
				t.Fatalf("Refused = %q, want a plan", p.Refused)
			}
			if got := stepNames(p); !slices.Equal(got, tc.wantSteps) {
				t.Errorf("steps = %q, want %q", got, tc.wantSteps)
			}
			if tc.wantNeeded != nil {
				var got []string
				for _, s := range p.Steps {
					if s.Needed {
						got = append(got, strings.TrimPrefix(s.Image.ID, "sha256:"))
					}
				}
				if !slices.Equal(got, tc.wantNeeded) {
					t.Errorf("needed steps = %q, want %q", got, tc.wantNeeded)
				}
			}
			var forced []string
			for _, s := range p.Steps {
				if s.Forced {
					forced = append(forced, strings.TrimPrefix(s.Image.ID, "sha256:"))
				}
			}
			if !slices.Equal(forced, tc.wantForced) {
				t.Errorf("forced steps = %q, want %q", forced, tc.wantForced)
			}
			kept := keptWhy(p)
			for name, want := range tc.wantKeep {
				if got, ok := kept[name]; !ok || !strings.Contains(got, want) {
					t.Errorf("keep[%s] = %q, want it kept because %q", name, got, want)
				}
			}
			for name, why := range kept {
				if _, ok := tc.wantKeep[name]; !ok {
					t.Errorf("%s kept (%s), want it removable", name, why)
				}
			}
		})
	}
}

// Engines never report a parent cycle; a plan from one must still return.
func TestParentCycleNeitherHangsNorPanics(t *testing.T) {
	done := make(chan Plan)
	go func() {
		done <- NewPlan(Facts{Now: now, Usage: pressure,
			Images: []Image{
				image("x", tags("x:1"), parent("y")),
				image("y", parent("z")),
				image("z", parent("y")),
				image("w", tags("w:1"), parent("x")),
			},
			Records: map[string]Record{"sha256:x": seen(9 * time.Hour), "sha256:w": seen(9 * time.Hour)},
		}, defaults)
	}()
	select {
	case p := <-done:
		t.Logf("steps %v, kept %v", stepNames(p), keptWhy(p))
	case <-time.After(10 * time.Second):
		t.Fatal("NewPlan did not return within 10s")
	}
}

func TestPressureAndNeedFollowTheThresholds(t *testing.T) {
	cases := []struct {
		name         string
		usage        Usage
		wantPressure bool
		wantNeed     int64
	}{
		{"90% used frees down to 80%", Usage{Total: 1000, Avail: 100}, true, 100},
		{"85% used is at high", Usage{Total: 1000, Avail: 150}, true, 50},
		{"84.9% used is below high", Usage{Total: 1000, Avail: 151}, false, 0},
		{"a full filesystem frees a fifth of it", Usage{Total: 1000, Avail: 0}, true, 200},
		{"an unmeasured filesystem is no pressure", Usage{}, false, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := NewPlan(Facts{Now: now, Usage: tc.usage}, defaults)
			if p.Pressure != tc.wantPressure || p.Need != tc.wantNeed {
				t.Errorf("Pressure, Need = %v, %d; want %v, %d", p.Pressure, p.Need, tc.wantPressure, tc.wantNeed)
			}
		})
	}
}

func TestEstimates(t *testing.T) {
	cases := []struct {
		name   string
		images []Image
		want   map[string]int64
	}{
		{
			name: "the engine's shared size is used for an image built on nothing listed",
			images: []Image{
				image("a", tags("a:1"), size(100), shared(30)),
			},
			want: map[string]int64{"a": 70},
		},
		{
			// The containerd image store: each layer twice (blob and
			// snapshot), every layer of app shared with its own
			// intermediate image, the busybox step with every image.
			name: "a built image's shared size counts its own intermediates, so the chain decides",
			images: []Image{
				image("busybox", size(4), shared(4)),
				image("blob", parent("busybox"), size(36), shared(36)),
				image("app", tags("app:1"), parent("blob"), size(36), shared(36)),
				image("other", tags("other:1"), parent("busybox"), size(36), shared(4)),
			},
			want: map[string]int64{"app": 32, "other": 32},
		},
		{
			name: "without it, the size above the nearest ancestor that survives",
			images: []Image{
				image("base", tags("base:1"), size(100)),
				image("step", parent("base"), size(150)),
				image("app", tags("app:1"), parent("step"), size(160)),
			},
			want: map[string]int64{"app": 60, "base": 100},
		},
		{
			name: "an intermediate image with other children survives",
			images: []Image{
				image("step", size(50)),
				image("one", tags("one:1"), parent("step"), size(70)),
				image("two", tags("two:1"), parent("step"), size(90)),
			},
			want: map[string]int64{"one": 20, "two": 40},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			recs := map[string]Record{}
			for _, im := range tc.images {
				recs[im.ID] = seen(9 * time.Hour)
			}
			p := NewPlan(Facts{Now: now, Usage: pressure, Images: tc.images, Records: recs}, defaults)
			got := map[string]int64{}
			for _, s := range p.Steps {
				got[strings.TrimPrefix(s.Image.ID, "sha256:")] = s.Estimate
			}
			for name, want := range tc.want {
				if got[name] != want {
					t.Errorf("estimate[%s] = %d, want %d (all: %v)", name, got[name], want, got)
				}
			}
		})
	}
}

func TestIntermediateImagesAreNeitherRemovedNorListed(t *testing.T) {
	p := NewPlan(Facts{Now: now, Usage: pressure,
		Images: []Image{
			image("base", tags("base:1")),
			image("step", parent("base")),
			image("app", tags("app:1"), parent("step")),
		},
		Records: map[string]Record{"sha256:base": seen(9 * time.Hour), "sha256:app": seen(9 * time.Hour)},
	}, defaults)
	for _, s := range p.Steps {
		if s.Image.ID == "sha256:step" {
			t.Errorf("plan removes the intermediate image: %v", stepNames(p))
		}
	}
	if _, ok := keptWhy(p)["step"]; ok {
		t.Errorf("plan lists the intermediate image as kept")
	}
}

func TestStepsSayWhy(t *testing.T) {
	p := NewPlan(Facts{Now: now, Usage: pressure,
		Images:  []Image{image("d"), image("old", tags("app:1"))},
		Records: map[string]Record{"sha256:d": seen(2 * time.Hour), "sha256:old": used(90*time.Hour, 3*time.Hour+5*time.Minute)},
	}, withOpts(func(o *Options) { o.MaxUnused = 3 * time.Hour }))
	want := []string{
		"dangling, first seen 2h0m ago",
		"least recently used, last used 3h5m ago, unused for longer than --max-unused 3h0m0s",
	}
	if len(p.Steps) != len(want) {
		t.Fatalf("steps = %v, want %d", stepNames(p), len(want))
	}
	for i, s := range p.Steps {
		if s.Why != want[i] {
			t.Errorf("step %d: Why = %q, want %q", i, s.Why, want[i])
		}
	}
}

func TestUsagePercentCountsReservedBlocksAsUsed(t *testing.T) {
	u := Usage{Total: 1000, Avail: 250} // 50 free blocks reserved for root are not available
	if got := u.Percent(); got != 75 {
		t.Errorf("Percent() = %v, want 75", got)
	}
	if got := (Usage{Total: 10, Avail: 20}).Percent(); got != 0 {
		t.Errorf("Percent() with more available than total = %v, want 0", got)
	}
}

func TestStepsTakeTheIntermediateImagesOnlyTheyUse(t *testing.T) {
	p := NewPlan(Facts{Now: now, Usage: pressure,
		Images: []Image{
			image("base", tags("base:1")),
			image("shared-step", parent("base")),
			image("own-step-1", parent("shared-step")),
			image("own-step-2", parent("own-step-1")),
			image("app", tags("app:1"), parent("own-step-2")),
			image("tool", tags("tool:1"), parent("shared-step")),
			image("pulled", tags("pulled:1")),
		},
		Records: map[string]Record{"sha256:base": seen(9 * time.Hour), "sha256:app": seen(9 * time.Hour),
			"sha256:tool": seen(9 * time.Hour), "sha256:pulled": seen(9 * time.Hour)},
	}, defaults)
	want := map[string][]string{
		"app":    {"sha256:own-step-2", "sha256:own-step-1"}, // not shared-step: tool is built on it too
		"tool":   nil,
		"pulled": nil,
	}
	for _, s := range p.Steps {
		name := strings.TrimPrefix(s.Image.ID, "sha256:")
		if w, ok := want[name]; ok && !slices.Equal(s.Intermediates, w) {
			t.Errorf("%s: intermediates %v, want %v", name, s.Intermediates, w)
		}
	}
}

func TestAPassThatActsStaysUnderPressureUntilLow(t *testing.T) {
	between := Usage{Path: "/d", Total: 100, Avail: 17} // 83%
	for _, tt := range []struct {
		name   string
		acting bool
		want   bool
	}{
		{"a new pass between low and high has nothing to do", false, false},
		{"a pass already acting goes on until low", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPlan(Facts{Usage: between, Acting: tt.acting}, Options{High: 85, Low: 80})
			if p.Pressure != tt.want {
				t.Errorf("Pressure = %v, want %v", p.Pressure, tt.want)
			}
		})
	}
}
