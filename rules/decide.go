package rules

import (
	"fmt"
	"strings"
)

// Run is one container or service whose run label marks a CI run as active.
type Run struct {
	Kind  string // "container" or "service"
	Name  string
	ID    string
	Label string // the label key that marks the run
	Value string // that label's value, usually the run's identifier
}

// String names the run the way an operator would look it up.
func (r Run) String() string {
	return fmt.Sprintf("%s=%s (%s %s)", r.Label, r.Value, r.Kind, r.Name)
}

// RunState is what the caller knows about active runs. A non-nil Err means
// the state is unknown, and destructive requests are then refused.
type RunState struct {
	Active []Run
	Err    error
}

// Check is the answer to "is this protected?". A non-nil Err means the
// answer is unknown, and deny rules then apply.
type Check struct {
	Yes bool
	Why string
	Err error
}

// Facts supplies what a decision needs from outside the request. Evaluate
// asks each question at most once per decision, and only when a rule's
// condition needs it, so requests decided by the request alone never wait on
// the engine.
type Facts interface {
	Runs() RunState
	ImageProtected(ref string) Check
	PluginProtected(name string) Check
}

// FactsFuncs adapts functions to Facts. A nil function answers "no run" or
// "not protected".
type FactsFuncs struct {
	RunsFunc   func() RunState
	ImageFunc  func(ref string) Check
	PluginFunc func(name string) Check
}

// Runs calls f.RunsFunc.
func (f FactsFuncs) Runs() RunState {
	if f.RunsFunc == nil {
		return RunState{}
	}
	return f.RunsFunc()
}

// ImageProtected calls f.ImageFunc.
func (f FactsFuncs) ImageProtected(ref string) Check {
	if f.ImageFunc == nil {
		return Check{}
	}
	return f.ImageFunc(ref)
}

// PluginProtected calls f.PluginFunc.
func (f FactsFuncs) PluginProtected(name string) Check {
	if f.PluginFunc == nil {
		return Check{}
	}
	return f.PluginFunc(name)
}

// Decision is the outcome of evaluating a request against a policy.
type Decision struct {
	// Allow is whether the daemon may run the request.
	Allow bool
	// Warned is set when a warn rule matched: the request is allowed and
	// audited as would-deny.
	Warned bool
	// Rule names the deciding rule; "" when no rule matched.
	Rule string
	// Message is the denial (or would-be denial) as the client sees it.
	Message string
	// Runs are the active runs the decision relied on, if it asked.
	Runs []Run
	// RunsErr is why the run state was unknown, if it was.
	RunsErr error
}

// FailClosedRule names the built-in rule that refuses unclassifiable
// requests. It comes before every policy rule and cannot be overridden.
const FailClosedRule = "fail-closed"

// Evaluate decides a classified request against p. The first rule whose
// operations include c.Op and whose condition holds decides; no match allows.
func Evaluate(c Classification, p *Policy, facts Facts) Decision {
	if c.Op == OpUnknown {
		return Decision{
			Rule:    FailClosedRule,
			Message: fmt.Sprintf("prune-guard: request refused (rule %s): %s; prune-guard cannot tell what the daemon would do with it", FailClosedRule, c.Doubt),
		}
	}
	var (
		state     RunState
		asked     bool
		prot      Check
		protAsked bool
	)
	for _, r := range p.Rules {
		if !r.Match.Has(c.Op) {
			continue
		}
		switch r.When {
		case RunActive:
			if !asked {
				state, asked = facts.Runs(), true
			}
			switch {
			case state.Err != nil && r.Action == Allow:
				// An allow rule cannot be taken on an unknown state.
				continue
			case state.Err != nil:
				return decide(p, r, c, Decision{RunsErr: state.Err,
					Message: fmt.Sprintf("prune-guard: %s is blocked because the CI run state is unknown (rule %s): %v; retry when the engine answers",
						describe(c), r.Name, state.Err)})
			case len(state.Active) == 0:
				continue
			}
			return decide(p, r, c, Decision{Runs: state.Active,
				Message: fmt.Sprintf("prune-guard: %s is blocked while a CI run is active (rule %s): active %s; %s",
					describe(c), r.Name, listRuns(state.Active), r.Message)})
		case ImageProtected, PluginProtected:
			if !protAsked {
				if r.When == ImageProtected {
					prot = facts.ImageProtected(c.Target)
				} else {
					prot = facts.PluginProtected(c.Target)
				}
				protAsked = true
			}
			switch {
			case prot.Err != nil && r.Action == Allow:
				continue
			case prot.Err != nil:
				return decide(p, r, c, Decision{
					Message: fmt.Sprintf("prune-guard: %s is blocked because prune-guard cannot tell whether it is protected (rule %s): %v; retry when the engine answers",
						describe(c), r.Name, prot.Err)})
			case !prot.Yes:
				continue
			}
			return decide(p, r, c, Decision{
				Message: fmt.Sprintf("prune-guard: %s is blocked (rule %s): %s; %s", describe(c), r.Name, prot.Why, r.Message)})
		default:
			return decide(p, r, c, Decision{
				Message: fmt.Sprintf("prune-guard: %s is blocked (rule %s): %s", describe(c), r.Name, r.Message),
			})
		}
	}
	d := Decision{Allow: true}
	if asked {
		d.Runs, d.RunsErr = state.Active, state.Err
	}
	return d
}

// decide completes d for rule r's action under p's mode.
func decide(p *Policy, r Rule, c Classification, d Decision) Decision {
	d.Rule = r.Name
	if c.Doubt != "" {
		d.Message += fmt.Sprintf(" (read as %s because %s)", c.Op.Describe(), c.Doubt)
	}
	action := r.Action
	if action == Deny && p.Mode == WarnOnly {
		action = Warn
	}
	switch action {
	case Allow:
		d.Allow, d.Message = true, ""
	case Warn:
		d.Allow, d.Warned = true, true
	}
	return d
}

func describe(c Classification) string {
	if c.Target != "" {
		return fmt.Sprintf("%s of %q", c.Op.Describe(), c.Target)
	}
	return c.Op.Describe()
}

// maxListedRuns bounds a denial message on a host running many jobs.
const maxListedRuns = 5

func listRuns(runs []Run) string {
	var b strings.Builder
	if len(runs) == 1 {
		b.WriteString("run ")
	} else {
		b.WriteString("runs ")
	}
	for i, r := range runs {
		if i == maxListedRuns {
			fmt.Fprintf(&b, " and %d more", len(runs)-maxListedRuns)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(r.String())
	}
	return b.String()
}
