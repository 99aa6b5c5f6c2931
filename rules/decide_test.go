package rules

import (
	"errors"
	"strings"
	"testing"
)

func TestDefaultPolicy(t *testing.T) {
	idle := RunState{}
	busy := RunState{Active: []Run{{Kind: "container", Name: "web-1", Label: "prune-guard.run", Value: "build-42"}}}
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
			msg: []string{"while a CI run is active", "prune-guard.run=build-42 (container web-1)", "retry after the run ends"}},
		{name: "container prune is denied during a run", c: Classification{Op: OpContainerPrune}, runs: busy, rule: "no-prune-during-run", wantAsked: true},
		{name: "network prune is denied during a run", c: Classification{Op: OpNetworkPrune}, runs: busy, rule: "no-prune-during-run", wantAsked: true},
		{name: "anonymous volume prune is denied during a run", c: Classification{Op: OpVolumePrune}, runs: busy, rule: "no-prune-during-run", wantAsked: true},
		{name: "build prune is denied during a run", c: Classification{Op: OpBuildPrune}, runs: busy, rule: "no-prune-during-run", wantAsked: true},
		{name: "image delete is allowed with no run", c: Classification{Op: OpImageDelete, Target: "alpine"}, runs: idle, allow: true, wantAsked: true},
		{name: "image delete is denied during a run and names image and run", c: Classification{Op: OpImageDelete, Target: "alpine"}, runs: busy, rule: "no-delete-during-run", wantAsked: true,
			msg: []string{`image delete of "alpine" is blocked while a CI run is active`, "build-42"}},
		{name: "image delete is denied when the run state is unknown", c: Classification{Op: OpImageDelete}, runs: unknown, rule: "no-delete-during-run", wantAsked: true,
			msg: []string{"run state is unknown", "engine unreachable"}},
		{name: "prune is denied when the run state is unknown", c: Classification{Op: OpContainerPrune}, runs: unknown, rule: "no-prune-during-run", wantAsked: true},
		{name: "plugin change is allowed by default", c: Classification{Op: OpPluginChange}, runs: busy, allow: true},
		{name: "other is allowed without asking", c: Classification{Op: OpOther}, runs: unknown, allow: true},
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
		runs = append(runs, Run{Kind: "container", Name: "c", Label: "l", Value: "v"})
	}
	d := Evaluate(Classification{Op: OpContainerPrune}, Default(), FactsFuncs{RunsFunc: func() RunState { return RunState{Active: runs} }})
	if !strings.Contains(d.Message, "and 3 more") {
		t.Errorf("message %q should cut the run list", d.Message)
	}
}
