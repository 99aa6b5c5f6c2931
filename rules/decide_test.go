package rules

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultPolicy(t *testing.T) {
	idle := RunState{}
	busy := RunState{Active: []Run{{Detector: "prune-guard", System: "prune-guard run", Job: "build-42", Kind: Container, Name: "web-1"}}}
	unknown := RunState{Err: errors.New("engine unreachable")}
	tests := []struct {
		name      string
		c         Classification
		runs      RunState
		allow     bool
		rule      string
		msg       []string // substrings the denial must contain
		wantAsked bool
	}{
		{name: "prune --all is denied with no run active", c: Classification{Op: OpImagePruneAll}, runs: idle, rule: "no-prune-all",
			msg: []string{"prune-guard: image prune --all is blocked (rule no-prune-all)", "docker image prune"}},
		{name: "prune --all is denied without asking the engine", c: Classification{Op: OpImagePruneAll}, runs: unknown, rule: "no-prune-all"},
		{name: "build prune --all is denied", c: Classification{Op: OpBuildPruneAll}, runs: idle, rule: "no-build-prune-all"},
		{name: "volume prune of named volumes is denied", c: Classification{Op: OpVolumePruneAll}, runs: idle, rule: "no-volume-prune-all"},
		{name: "dangling prune is allowed with no run", c: Classification{Op: OpImagePrune}, runs: idle, allow: true, wantAsked: true},
		{name: "dangling prune is denied during a run", c: Classification{Op: OpImagePrune}, runs: busy, rule: "no-prune-during-run", wantAsked: true,
			msg: []string{"while a CI job is active", "prune-guard run build-42, container web-1", "retry after the job ends"}},
		{name: "container prune is denied during a run", c: Classification{Op: OpContainerPrune}, runs: busy, rule: "no-prune-during-run", wantAsked: true},
		{name: "network prune is denied during a run", c: Classification{Op: OpNetworkPrune}, runs: busy, rule: "no-prune-during-run", wantAsked: true},
		{name: "anonymous volume prune is denied during a run", c: Classification{Op: OpVolumePrune}, runs: busy, rule: "no-prune-during-run", wantAsked: true},
		{name: "build prune is denied during a run", c: Classification{Op: OpBuildPrune}, runs: busy, rule: "no-prune-during-run", wantAsked: true},
		{name: "image delete is allowed with no run", c: Classification{Op: OpImageDelete, Target: "alpine"}, runs: idle, allow: true, wantAsked: true},
		{name: "image delete is denied during a run and names image and run", c: Classification{Op: OpImageDelete, Target: "alpine"}, runs: busy, rule: "no-delete-during-run", wantAsked: true,
			msg: []string{`image delete of "alpine" is blocked while a CI job is active`, "build-42"}},
		{name: "image delete is denied when the run state is unknown", c: Classification{Op: OpImageDelete}, runs: unknown, rule: "no-delete-during-run", wantAsked: true,
			msg: []string{"run state is unknown", "engine unreachable"}},
		{name: "prune is denied when the run state is unknown", c: Classification{Op: OpContainerPrune}, runs: unknown, rule: "no-prune-during-run", wantAsked: true},
		{name: "plugin change is allowed by default", c: Classification{Op: OpPluginChange}, runs: busy, allow: true},
		{name: "other is allowed without asking", c: Classification{Op: OpOther}, runs: unknown, allow: true},
		{name: "an unknown gRPC method is denied without asking the engine, naming the method and the way out",
			c: Classification{Op: OpGRPCUnknown, GRPCMethod: "/moby.extensions.v1.Volumes/Prune"}, runs: unknown, rule: "no-unknown-grpc",
			msg: []string{"prune-guard: call to unknown gRPC method /moby.extensions.v1.Volumes/Prune is blocked (rule no-unknown-grpc)",
				"cannot tell what it removes", "a rule matching grpc-unknown, with methods: naming its service, placed before no-unknown-grpc"}},
		{name: "a build history update is allowed by default", c: Classification{Op: OpBuildKitHistory, GRPCMethod: "/moby.buildkit.v1.Control/UpdateBuildHistory"}, runs: busy, allow: true},
		{name: "a BuildKit session in gRPC is allowed by default", c: Classification{Op: OpBuildKitStream, GRPCMethod: "/moby.buildkit.v1.Control/Session"}, runs: busy, allow: true},
		{name: "unknown is denied fail-closed", c: Classification{Op: OpUnknown, Doubt: "no method"}, runs: idle, rule: FailClosedRule,
			msg: []string{"no method"}},
		{name: "doubt is explained in the denial", c: Classification{Op: OpImagePruneAll, Doubt: "a hidden form body"}, runs: idle, rule: "no-prune-all",
			msg: []string{"read as image prune --all because a hidden form body"}},
	}
	p := Default()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			asked := 0
			d := Evaluate(tt.c, p, FactsFuncs{RunsFunc: func() RunState { asked++; return tt.runs }})
			if d.Allow != tt.allow || d.Rule != tt.rule {
				t.Fatalf("Evaluate = allow %v rule %q (%s), want allow %v rule %q", d.Allow, d.Rule, d.Message, tt.allow, tt.rule)
			}
			if asked > 1 || (asked == 1) != tt.wantAsked {
				t.Errorf("engine asked %d times, want asked=%v", asked, tt.wantAsked)
			}
			for _, s := range tt.msg {
				if !strings.Contains(d.Message, s) {
					t.Errorf("message %q lacks %q", d.Message, s)
				}
			}
			if !d.Allow && !strings.HasPrefix(d.Message, "prune-guard: ") {
				t.Errorf("denial %q does not say who denied it", d.Message)
			}
		})
	}
}

func TestWarnAndAllowActions(t *testing.T) {
	p := &Policy{Rules: []Rule{
		{Name: "allow-during-unknown", Match: Ops(OpImageDelete), When: RunActive, Action: Allow},
		{Name: "warn-prune", Match: AnyPrune, When: Always, Action: Warn, Message: "m"},
		{Name: "deny-delete", Match: Ops(OpImageDelete), When: Always, Action: Deny, Message: "m"},
	}}
	d := Evaluate(Classification{Op: OpImagePruneAll}, p, FactsFuncs{RunsFunc: func() RunState { return RunState{} }})
	if !d.Allow || !d.Warned || d.Rule != "warn-prune" || d.Message == "" {
		t.Errorf("warn rule: %+v", d)
	}
	// An allow rule conditioned on runs is skipped when the state is unknown.
	d = Evaluate(Classification{Op: OpImageDelete}, p, FactsFuncs{RunsFunc: func() RunState { return RunState{Err: errors.New("x")} }})
	if d.Allow || d.Rule != "deny-delete" {
		t.Errorf("unknown state must not take an allow rule: %+v", d)
	}
}

func TestDenialListsAtMostFiveRuns(t *testing.T) {
	var runs []Run
	for i := 0; i < 8; i++ {
		runs = append(runs, Run{System: "CI job", Kind: Container, Name: "c"})
	}
	d := Evaluate(Classification{Op: OpContainerPrune}, Default(), FactsFuncs{RunsFunc: func() RunState { return RunState{Active: runs} }})
	if !strings.Contains(d.Message, "and 3 more") {
		t.Errorf("message %q should cut the run list", d.Message)
	}
}

func TestScopedPrunesAndTheTeardownGraceUnderTheDefaultPolicy(t *testing.T) {
	ended := time.Date(2026, 12, 1, 10, 41, 13, 0, time.UTC)
	ghJob := Run{Detector: "github-actions", System: "GitHub Actions job", Kind: Container, Name: "a1b2c3_job", Labels: map[string]string{"a1b2c3": ""}}
	gitlabJob := Run{Detector: "gitlab", System: "GitLab job", Job: "4711", Kind: Container, Name: "runner-build",
		Labels: map[string]string{"com.gitlab.gitlab-runner.job.id": "4711", "com.gitlab.gitlab-runner.managed": "true"}}
	endedJob := gitlabJob
	endedJob.Ended = ended
	hostJob := Run{Detector: "github-actions-host", System: "GitHub Actions job", Kind: Process, ID: "42", Name: "Runner.Worker"}

	otherRunnersJob := RunState{Active: []Run{ghJob}, Grace: 2 * time.Minute}
	gitlabRunning := RunState{Active: []Run{gitlabJob}, Grace: 2 * time.Minute}
	tearingDown := RunState{Ended: []Run{endedJob}, Grace: 2 * time.Minute}
	blind := RunState{Blind: &Blind{Since: ended, Why: "prune-guard started then"}, Grace: 2 * time.Minute}
	hostRunning := RunState{Active: []Run{hostJob}, Grace: 2 * time.Minute}

	tests := []struct {
		name  string
		c     Classification
		runs  RunState
		allow bool
		rule  string
		msg   []string
	}{
		{name: "a network prune scoped to another runner's key passes while that runner's job runs",
			c: Classification{Op: OpNetworkPrune, Scope: []string{"ffee00"}}, runs: otherRunnersJob, allow: true},
		{name: "a network prune scoped to the running job's own key is refused",
			c: Classification{Op: OpNetworkPrune, Scope: []string{"a1b2c3"}}, runs: otherRunnersJob, rule: "no-prune-during-run",
			msg: []string{"its label filter a1b2c3 selects the job's objects", "GitHub Actions job, container a1b2c3_job"}},
		{name: "an unscoped network prune is refused during a run",
			c: Classification{Op: OpNetworkPrune}, runs: otherRunnersJob, rule: "no-prune-during-run"},
		{name: "a container prune scoped to a value the job does not carry passes",
			c: Classification{Op: OpContainerPrune, Scope: []string{"com.gitlab.gitlab-runner.job.id=9"}}, runs: gitlabRunning, allow: true},
		{name: "a scoped dangling image prune that selects the job is refused",
			c: Classification{Op: OpImagePrune, Scope: []string{"com.gitlab.gitlab-runner.managed=true"}}, runs: gitlabRunning, rule: "no-prune-during-run"},
		{name: "an anonymous volume prune scoped away from the job passes",
			c: Classification{Op: OpVolumePrune, Scope: []string{"other"}}, runs: gitlabRunning, allow: true},
		{name: "a scoped prune --all is still refused during a run",
			c: Classification{Op: OpImagePruneAll, Scope: []string{"other"}}, runs: gitlabRunning, rule: "no-prune-during-run"},
		{name: "a build prune is never scoped",
			c: Classification{Op: OpBuildPrune}, runs: otherRunnersJob, rule: "no-prune-during-run"},
		{name: "a scoped prune --all passes with no job active (GitLab clear-docker-cache)",
			c: Classification{Op: OpImagePruneAll, Scope: []string{"com.gitlab.gitlab-runner.managed=true"}}, runs: RunState{}, allow: true},
		{name: "an unscoped prune --all is refused without asking the engine",
			c: Classification{Op: OpImagePruneAll}, runs: RunState{Err: errors.New("must not be asked")}, rule: "no-prune-all"},
		{name: "a scoped prune passes with only a host job active: no label marks its objects",
			c: Classification{Op: OpNetworkPrune, Scope: []string{"a1b2c3"}}, runs: hostRunning, allow: true},
		{name: "an image delete during a job's teardown grace is refused and says when deletes resume",
			c: Classification{Op: OpImageDelete, Target: "node:20"}, runs: tearingDown, rule: "no-delete-during-run",
			msg: []string{"during a CI job's teardown grace", "GitLab job 4711, container runner-build ended at 10:41:13 UTC", "resume at 10:43:13 UTC"}},
		{name: "a dangling image prune during the grace is refused",
			c: Classification{Op: OpImagePrune}, runs: tearingDown, rule: "no-prune-during-run"},
		{name: "a container prune scoped to the ended job's label passes at once",
			c: Classification{Op: OpContainerPrune, Scope: []string{"com.gitlab.gitlab-runner.managed=true"}}, runs: tearingDown, allow: true},
		{name: "an unscoped network prune passes during the grace: the grace protects images only",
			c: Classification{Op: OpNetworkPrune}, runs: tearingDown, allow: true},
		{name: "an image delete in an unseen stretch of the window is refused and says why",
			c: Classification{Op: OpImageDelete, Target: "x"}, runs: blind, rule: "no-delete-during-run",
			msg: []string{"cannot tell whether a CI job ended before 10:41:13 UTC (prune-guard started then)", "resume at 10:43:13 UTC"}},
		{name: "a scoped dangling image prune in an unseen stretch is refused: the ended job's labels are unknown",
			c: Classification{Op: OpImagePrune, Scope: []string{"x"}}, runs: blind, rule: "no-prune-during-run"},
		{name: "a container prune in an unseen stretch passes",
			c: Classification{Op: OpContainerPrune}, runs: blind, allow: true},
	}
	p := Default()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Evaluate(tt.c, p, FactsFuncs{RunsFunc: func() RunState { return tt.runs }})
			if d.Allow != tt.allow || d.Rule != tt.rule {
				t.Fatalf("Evaluate = allow %v rule %q (%s), want allow %v rule %q", d.Allow, d.Rule, d.Message, tt.allow, tt.rule)
			}
			for _, s := range tt.msg {
				if !strings.Contains(d.Message, s) {
					t.Errorf("message %q lacks %q", d.Message, s)
				}
			}
		})
	}
}

func TestScopedPruneAllKeepsProtectedImages(t *testing.T) {
	c := Classification{Op: OpImagePruneAll, Scope: []string{"team=a"}}
	var askedScope []string
	d := Evaluate(c, Default(), FactsFuncs{PruneFunc: func(scope []string, danglingOnly bool) Check {
		askedScope = scope
		return Check{Yes: !danglingOnly, Why: "it would remove image sha256:abc: it carries the protecting label prune-guard.keep=true"}
	}})
	if d.Allow || d.Rule != "keep-protected" || !strings.Contains(d.Message, "prune-guard.keep=true") {
		t.Fatalf("Evaluate = %+v", d)
	}
	if strings.Join(askedScope, ",") != "team=a" {
		t.Errorf("asked about scope %q, want the prune's", askedScope)
	}
}

func TestDecisionRecordsTheRunStateItReliedOn(t *testing.T) {
	ended := time.Date(2026, 12, 1, 10, 41, 13, 0, time.UTC)
	live := Run{Detector: "gitlab", System: "GitLab job", Job: "4711", Kind: Container, Name: "build", Labels: map[string]string{"team": "a"}}
	other := Run{Detector: "gitlab", System: "GitLab job", Job: "4712", Kind: Container, Name: "test", Labels: map[string]string{"team": "b"}}
	gone := Run{Detector: "gitlab", System: "GitLab job", Job: "4700", Kind: Container, Name: "old", Labels: map[string]string{"team": "a"}, Ended: ended}
	blind := &Blind{Since: ended, Why: "prune-guard started then"}
	state := RunState{Active: []Run{live, other}, Ended: []Run{gone}, Blind: blind, Grace: 2 * time.Minute}
	unknown := errors.New("engine unreachable")

	tests := []struct {
		name  string
		c     Classification
		state RunState
		want  RunState
	}{
		{name: "an image delete relies on live and ended runs and the unseen stretch, kept apart",
			c: Classification{Op: OpImageDelete, Target: "x"}, state: state,
			want: RunState{Active: []Run{live, other}, Ended: []Run{gone}, Blind: blind, Grace: 2 * time.Minute}},
		{name: "a container prune relies on live runs only: the grace holds images",
			c: Classification{Op: OpContainerPrune}, state: state,
			want: RunState{Active: []Run{live, other}, Grace: 2 * time.Minute}},
		{name: "a scoped prune relies on the runs its scope selects, live and ended",
			c: Classification{Op: OpImagePrune, Scope: []string{"team=a"}}, state: state,
			want: RunState{Active: []Run{live}, Ended: []Run{gone}, Blind: blind, Grace: 2 * time.Minute}},
		{name: "an unknown state is recorded as its error alone",
			c: Classification{Op: OpImageDelete, Target: "x"}, state: RunState{Err: unknown, Grace: 2 * time.Minute},
			want: RunState{Err: unknown, Grace: 2 * time.Minute}},
		{name: "an allowed request relied on the live runs, none holding it",
			c: Classification{Op: OpNetworkPrune, Scope: []string{"team=c"}}, state: state,
			want: RunState{Active: []Run{live, other}, Grace: 2 * time.Minute}},
		{name: "a request no run rule reached relied on nothing",
			c: Classification{Op: OpBuildPruneAll}, state: state},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Evaluate(tt.c, Default(), FactsFuncs{RunsFunc: func() RunState { return tt.state }})
			if !reflect.DeepEqual(d.Runs, tt.want) {
				t.Errorf("Decision.Runs = %+v\nwant %+v", d.Runs, tt.want)
			}
		})
	}
}

func TestDecisionSaysWhenItFoundTheTargetProtected(t *testing.T) {
	const why = "registry.example/base/node:20 matches the protected pattern registry.example/base/*"
	renamed := &Policy{Rules: []Rule{
		{Name: "dont-touch-base-images", Match: Ops(OpImageDelete, OpImagePruneAll), When: ImageProtected, Action: Deny},
		{Name: "hands-off-my-plugin", Match: Ops(OpPluginChange), When: PluginProtected, Action: Deny},
		{Name: "no-delete", Match: Ops(OpImageDelete), When: Always, Action: Deny},
	}}
	allowProtected := &Policy{Rules: []Rule{{Name: "protected-may-go", Match: Ops(OpImageDelete), When: ImageProtected, Action: Allow}}}
	yes := Check{Yes: true, Why: why}
	tests := []struct {
		name          string
		p             *Policy
		c             Classification
		answer        Check
		wantRule      string
		wantProtected string
	}{
		{name: "a protection rule of any name that finds the image protected records why",
			p: renamed, c: Classification{Op: OpImageDelete, Target: "node:20"}, answer: yes, wantRule: "dont-touch-base-images", wantProtected: why},
		{name: "so does one that finds a scoped prune --all would take a protected image",
			p: renamed, c: Classification{Op: OpImagePruneAll, Scope: []string{"team=a"}}, answer: yes, wantRule: "dont-touch-base-images", wantProtected: why},
		{name: "and one that finds the plugin protected",
			p: renamed, c: Classification{Op: OpPluginChange, Target: "prune-guard"}, answer: yes, wantRule: "hands-off-my-plugin", wantProtected: why},
		{name: "an allow rule on a protected image records it too",
			p: allowProtected, c: Classification{Op: OpImageDelete, Target: "node:20"}, answer: yes, wantRule: "protected-may-go", wantProtected: why},
		{name: "an answer without a reason still records that it was yes",
			p: renamed, c: Classification{Op: OpImageDelete, Target: "node:20"}, answer: Check{Yes: true}, wantRule: "dont-touch-base-images", wantProtected: "it is protected"},
		{name: "an image found unprotected records nothing",
			p: renamed, c: Classification{Op: OpImageDelete, Target: "node:20"}, answer: Check{}, wantRule: "no-delete"},
		{name: "a check that could not be answered records nothing",
			p: renamed, c: Classification{Op: OpImageDelete, Target: "node:20"}, answer: Check{Err: errors.New("engine down")}, wantRule: "dont-touch-base-images"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			answer := func() Check { return tt.answer }
			d := Evaluate(tt.c, tt.p, FactsFuncs{
				ImageFunc:  func(string) Check { return answer() },
				PruneFunc:  func([]string, bool) Check { return answer() },
				PluginFunc: func(string) Check { return answer() },
			})
			if d.Rule != tt.wantRule || d.Protected != tt.wantProtected {
				t.Errorf("Evaluate = rule %q, protected %q; want rule %q, protected %q", d.Rule, d.Protected, tt.wantRule, tt.wantProtected)
			}
		})
	}
}
