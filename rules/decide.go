package rules

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// RunState is what the caller knows about active CI jobs. A non-nil Err
// means the state is unknown, and destructive requests are then refused.
type RunState struct {
	// Active are the objects of jobs that are running now (Run.Ended
	// zero).
	Active []Run
	// Ended are objects of jobs that went within the grace (Run.Ended
	// set); they count as active for grace operations only.
	Ended []Run
	// Blind, when set, is a stretch of the grace window the caller could
	// not see: a job may have ended in it unnoticed.
	Blind *Blind
	// Grace is the teardown grace the caller applied.
	Grace time.Duration
	Err   error
}

// Blind says prune-guard cannot know whether a job ended before Since
// (it started then, or missed engine events then). Until Since+Grace that
// unknown stretch counts as a job in its teardown grace.
type Blind struct {
	Since time.Time
	Why   string
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
	// PruneProtected answers whether an image prune with this label scope
	// (positive label filters; none for every image) could remove a
	// protected image.
	PruneProtected(scope []string, danglingOnly bool) Check
	PluginProtected(name string) Check
}

// FactsFuncs adapts functions to Facts. A nil function answers "no run" or
// "not protected".
type FactsFuncs struct {
	RunsFunc   func() RunState
	ImageFunc  func(ref string) Check
	PruneFunc  func(scope []string, danglingOnly bool) Check
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

// PruneProtected calls f.PruneFunc.
func (f FactsFuncs) PruneProtected(scope []string, danglingOnly bool) Check {
	if f.PruneFunc == nil {
		return Check{}
	}
	return f.PruneFunc(scope, danglingOnly)
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
	// Runs is the part of the run state the decision relied on, if it
	// asked: what held the request (Holding) when a run rule decided,
	// only the error when the state was unknown, otherwise the live runs.
	Runs RunState
	// Protected says why the request's image or plugin is protected when
	// a protection condition asked and the answer was yes (the rule it
	// belongs to then decided); it is "" otherwise. The audit log records
	// it, so that replay knows the answer whatever the rule is named.
	Protected string
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
		if !r.matches(c.Op, c.GRPCMethod) {
			continue
		}
		switch r.When {
		case RunActive, RunInScope:
			if !asked {
				state, asked = facts.Runs(), true
			}
			switch {
			case state.Err != nil && r.Action == Allow:
				// An allow rule cannot be taken on an unknown state.
				continue
			case state.Err != nil:
				return decide(p, r, c, Decision{Runs: RunState{Err: state.Err, Grace: state.Grace},
					Message: fmt.Sprintf("prune-guard: %s is blocked because the CI run state is unknown (rule %s): %v; retry when the engine answers",
						describe(c), r.Name, state.Err)})
			}
			held := state.Holding(c, r.When == RunInScope)
			if !held.Holds() {
				continue
			}
			return decide(p, r, c, Decision{Runs: held, Message: runMessage(c, r, held)})
		case Unscoped:
			if len(c.Scope) > 0 {
				continue
			}
			return decide(p, r, c, Decision{
				Message: fmt.Sprintf("prune-guard: %s is blocked (rule %s): %s", describe(c), r.Name, r.Message)})
		case ImageProtected, PluginProtected:
			if !protAsked {
				switch {
				case r.When == PluginProtected:
					prot = facts.PluginProtected(c.Target)
				case c.Op == OpImagePrune || c.Op == OpImagePruneAll:
					prot = facts.PruneProtected(c.Scope, c.Op == OpImagePrune)
				default:
					prot = facts.ImageProtected(c.Target)
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
			return decide(p, r, c, Decision{Protected: cmp.Or(prot.Why, "it is protected"),
				Message: fmt.Sprintf("prune-guard: %s is blocked (rule %s): %s; %s", describe(c), r.Name, prot.Why, r.Message)})
		default:
			return decide(p, r, c, Decision{
				Message: fmt.Sprintf("prune-guard: %s is blocked (rule %s): %s", describe(c), r.Name, r.Message),
			})
		}
	}
	d := Decision{Allow: true}
	if asked {
		// What an allowed request relied on is that no live job held it.
		d.Runs = RunState{Active: state.Active, Grace: state.Grace, Err: state.Err}
	}
	return d
}

// Holding returns the part of s that holds back a request classified as c:
// live jobs always; for grace operations also jobs that ended within the
// grace and the blind stretch; and, when inScope, for a scopable prune with
// a label scope only the runs the scope selects.
func (s RunState) Holding(c Classification, inScope bool) RunState {
	held := RunState{Active: s.Active, Grace: s.Grace, Err: s.Err}
	if c.Op.Grace() {
		held.Ended, held.Blind = s.Ended, s.Blind
	}
	if inScope && c.Op.Scopable() && len(c.Scope) > 0 {
		held.Active, held.Ended = selected(held.Active, c.Scope), selected(held.Ended, c.Scope)
	}
	return held
}

// Holds reports whether s has a run, live or ended, or an unseen stretch:
// whether, as Holding returned it, it holds a request back.
func (s RunState) Holds() bool { return len(s.Active) > 0 || len(s.Ended) > 0 || s.Blind != nil }

// selected returns the runs a prune scoped by these label filters selects.
func selected(runs []Run, scope []string) []Run {
	var out []Run
	for _, r := range runs {
		if r.InScope(scope) {
			out = append(out, r)
		}
	}
	return out
}

// runMessage explains a denial held by runs.
func runMessage(c Classification, r Rule, held RunState) string {
	scope := ""
	if len(c.Scope) > 0 && c.Op.Scopable() && r.When == RunInScope {
		scope = fmt.Sprintf(" and its label filter %s selects the job's objects", strings.Join(c.Scope, ", "))
	}
	when := "while a CI job is active"
	if len(held.Active) == 0 {
		when = "during a CI job's teardown grace"
	}
	msg := fmt.Sprintf("prune-guard: %s is blocked %s%s (rule %s): %s", describe(c), when, scope, r.Name, HoldReason(held))
	if r.Message != "" {
		msg += "; " + r.Message
	}
	return msg
}

// HoldReason says which jobs hold a request back (as Holding returned them)
// and, when only jobs in their teardown grace do, when it may resume.
func HoldReason(held RunState) string {
	live, ended := slices.Clone(held.Active), slices.Clone(held.Ended)
	sortRuns(live)
	sortRuns(ended)
	var why []string
	if len(live) > 0 {
		why = append(why, "active "+listRuns(live))
	}
	var resume time.Time
	if len(ended) > 0 {
		why = append(why, "in its teardown grace: "+listEnded(ended))
		resume = ended[len(ended)-1].Ended.Add(held.Grace)
	}
	if b := held.Blind; b != nil {
		why = append(why, fmt.Sprintf("prune-guard cannot tell whether a CI job ended before %s (%s)", clock(b.Since), b.Why))
		if t := b.Since.Add(held.Grace); t.After(resume) {
			resume = t
		}
	}
	if len(live) == 0 && !resume.IsZero() {
		// Only image operations wait out the grace.
		why = append(why, "image deletes and image prunes resume at "+clock(resume))
	}
	return strings.Join(why, "; ")
}

// clock formats a time for a denial: an operator compares it with the
// host's clock, and the audit line carries the exact time.
func clock(t time.Time) string { return t.UTC().Format("15:04:05 UTC") }

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
	switch {
	case c.Op == OpGRPCUnknown:
		return c.Op.Describe() + " " + c.GRPCMethod
	case c.Target != "":
		return fmt.Sprintf("%s of %q", c.Op.Describe(), c.Target)
	}
	return c.Op.Describe()
}

// maxListedRuns bounds a denial message on a host running many jobs.
const maxListedRuns = 5

func listRuns(runs []Run) string {
	return listed(runs, func(r Run) string { return r.String() })
}

func listEnded(runs []Run) string {
	return listed(runs, func(r Run) string { return r.String() + " ended at " + clock(r.Ended) })
}

func listed(runs []Run, str func(Run) string) string {
	var b strings.Builder
	for i, r := range runs {
		if i == maxListedRuns {
			fmt.Fprintf(&b, " and %d more", len(runs)-maxListedRuns)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(str(r))
	}
	return b.String()
}
