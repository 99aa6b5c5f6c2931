package auditlog

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/rules"
)

// The built-in protection rules' names. A line written before the audit
// record said whether a decision found its target protected, under a
// policy replay does not know, was decided by a protection rule iff it
// names one of these.
const (
	keepProtectedRule = "keep-protected"
	protectSelfRule   = "protect-self"
)

// ReplayOptions say which lines a replay reads and how it writes changes.
type ReplayOptions struct {
	// Since drops decisions recorded before it; zero keeps all.
	Since time.Time
	// JSON writes each change, then the summary, as JSON lines.
	JSON bool
	// PolicyName names the new policy in the text summary.
	PolicyName string
	// Recorded are policies the log may have been written under, by
	// short hash (a line's policy field). For a line without the
	// protected field, the recorded rule's condition in its policy says
	// whether the recorded decision found the target protected; a line
	// whose policy is not here falls back to the built-in rules' names.
	Recorded map[string]*rules.Policy
}

// Change is a recorded decision that the new policy decides differently.
type Change struct {
	Line   int
	Time   time.Time
	Method string
	URI    string
	// Operation is the request's operation as replayed.
	Operation string
	// Old is the recorded decision and rule; New is the replayed ones.
	OldDecision, NewDecision audit.Outcome
	OldRule, NewRule         string
}

// Replayed counts what a replay found.
type Replayed struct {
	// Read, Skipped, TooLong and FirstSkipped count lines as in Summary.
	Read, Skipped, TooLong int64
	FirstSkipped           int
	// Decisions counts the decisions replayed.
	Decisions int64
	// Changes counts changed decisions by "old->new" (allow->deny, …).
	Changes map[string]int64
	// RuleOnly counts decisions that stay the same under another rule.
	RuleOnly int64
	// Events and NoRequest count lines passed over: events, and
	// decisions recorded without a method or URI.
	Events, NoRequest int64
}

// Changed is the number of decisions that would change.
func (r *Replayed) Changed() int64 {
	var n int64
	for _, c := range r.Changes {
		n += c
	}
	return n
}

// Replay decides every recorded request in an audit log again under p and
// writes each decision that changes to out, then the counts.
//
// A request is reclassified from its recorded method and URI, so replay
// reflects this build's classifier. The facts a decision asked the engine
// for come from the record, because they cannot be asked again:
//
//   - a run was active iff the line's runs field lists one; a recorded
//     "unknown: REASON" replays as an unknown run state, which is what the
//     recorded decision saw. A decision that did not ask (no run-conditioned
//     rule was reached) recorded no runs, and replays as "no run active";
//   - the image or plugin is protected iff the line's protected field
//     says so; on a line without it (written before the field existed, or
//     by a decision that found nothing protected, did not ask or could not
//     tell), iff the recorded rule is conditioned on protection in the
//     recorded policy, when o.Recorded holds it, and otherwise iff the
//     recorded rule is keep-protected or protect-self;
//   - where the recorded decision doubted the request's reading because of
//     headers or a body (which the log does not keep), the recorded
//     operation is used, not a reading of the URI alone.
func Replay(in io.Reader, out io.Writer, p *rules.Policy, o ReplayOptions) (*Replayed, error) {
	bw := bufio.NewWriterSize(out, bufSize)
	r := NewReader(in)
	res := &Replayed{Changes: map[string]int64{}}
	classifier := rules.NewClassifier()
	f := Filter{Since: o.Since}
	for {
		l, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			res.setRead(r)
			bw.Flush()
			return res, readError(r, err)
		}
		if !f.Match(l) {
			continue
		}
		if !l.IsDecision {
			res.Events++
			continue
		}
		if l.Method == "" || l.URI == "" {
			res.NoRequest++
			continue
		}
		res.Decisions++
		cl, d := decideAgain(classifier, l, p, o.Recorded)
		c := Change{Line: l.Number, Time: l.Time, Method: l.Method, URI: l.URI, Operation: cl.Op.String(),
			OldDecision: l.Decision, OldRule: l.Rule, NewDecision: audit.OutcomeOf(d), NewRule: d.Rule}
		if c.NewDecision == c.OldDecision {
			if c.NewRule != c.OldRule {
				res.RuleOnly++
			}
			continue
		}
		res.Changes[transition(c.OldDecision, c.NewDecision)]++
		if o.JSON {
			err = writeChangeJSON(bw, c)
		} else {
			err = writeChange(bw, c)
		}
		if err != nil {
			return res, fmt.Errorf("write: %w", err)
		}
	}
	res.setRead(r)
	if o.JSON {
		line, err := marshal(struct {
			Summary *Replayed `json:"summary"`
		}{res})
		if err != nil {
			return res, err
		}
		bw.Write(line)
	} else {
		if res.Changed() > 0 {
			bw.WriteByte('\n')
		}
		res.WriteText(bw, or(o.PolicyName, "the new policy"))
	}
	if err := bw.Flush(); err != nil {
		return res, fmt.Errorf("write: %w", err)
	}
	return res, nil
}

func (r *Replayed) setRead(rd *Reader) {
	r.Read, r.Skipped, r.TooLong, r.FirstSkipped = rd.Read, rd.Skipped, rd.TooLong, rd.FirstSkipped
}

// decideAgain decides a recorded request under p, with the facts the
// record holds.
func decideAgain(c *rules.Classifier, l *Line, p *rules.Policy, recorded map[string]*rules.Policy) (rules.Classification, rules.Decision) {
	cl := reclassify(c, l)
	return cl, rules.Evaluate(cl, p, recordedFacts(l, recorded))
}

// reclassify reads a recorded request again. A recorded doubt that the URI
// alone does not reproduce came from headers or a body the log does not
// keep; the recorded operation, the most destructive reading, stands.
func reclassify(c *rules.Classifier, l *Line) rules.Classification {
	cl := c.Classify(rules.Request{Method: l.Method, URI: l.URI})
	if l.Doubt != "" && cl.Doubt == "" {
		if op, ok := operationNamed(l.Operation); ok {
			cl.Op, cl.Doubt = op, l.Doubt
		}
	}
	return cl
}

// operationNamed returns the single operation a recorded name stands for.
func operationNamed(name string) (rules.Operation, bool) {
	set, err := rules.ParseOperation(name)
	if err != nil {
		return 0, false
	}
	for op := rules.Operation(0); op < 32; op++ {
		if set == rules.Ops(op) {
			return op, true
		}
	}
	return 0, false
}

// recordedFacts answers a replayed decision's questions from the record.
func recordedFacts(l *Line, recorded map[string]*rules.Policy) rules.Facts {
	var state rules.RunState
	for _, run := range l.Runs {
		if reason, ok := strings.CutPrefix(run, "unknown:"); ok {
			state.Err = errors.New(strings.TrimSpace(reason))
			continue
		}
		state.Active = append(state.Active, rules.Run{Job: run})
	}
	protected := recordedProtection(l, recorded)
	return rules.FactsFuncs{
		RunsFunc:   func() rules.RunState { return state },
		ImageFunc:  func(string) rules.Check { return protected },
		PruneFunc:  func([]string, bool) rules.Check { return protected },
		PluginFunc: func(string) rules.Check { return protected },
	}
}

// recordedProtection is whether the recorded decision found the request's
// image, plugin or (for a prune) an image it would remove protected.
func recordedProtection(l *Line, recorded map[string]*rules.Policy) rules.Check {
	if l.Protected != "" {
		return rules.Check{Yes: true, Why: l.Protected}
	}
	// No field: the decision found nothing protected or did not ask,
	// unless its protection rule decided because the check could not be
	// answered (a denial replays as that rule's denial), or the line is
	// older than the field. Either way the deciding rule tells.
	if p := recorded[l.Policy]; p != nil && l.Policy != "" {
		if r, ok := ruleNamed(p, l.Rule); ok {
			return rules.Check{Yes: r.When == rules.ImageProtected || r.When == rules.PluginProtected,
				Why: "the recorded decision came from a protection rule"}
		}
	}
	return rules.Check{Yes: l.Rule == keepProtectedRule || l.Rule == protectSelfRule,
		Why: "the recorded decision came from a built-in protection rule"}
}

func ruleNamed(p *rules.Policy, name string) (rules.Rule, bool) {
	for _, r := range p.Rules {
		if r.Name == name {
			return r, true
		}
	}
	return rules.Rule{}, false
}

// writeChange writes c as one readable line:
//
//	TIME  OLD -> NEW  OLD-RULE -> NEW-RULE  OPERATION  METHOD URI
func writeChange(w io.Writer, c Change) error {
	_, err := fmt.Fprintf(w, "%-20s %-24s %-44s %-16s %s %s  (line %d)\n", formatTime(c.Time),
		string(c.OldDecision)+" -> "+string(c.NewDecision),
		Printable(or(c.OldRule, "(no rule)"))+" -> "+Printable(or(c.NewRule, "(no rule)")),
		Printable(or(c.Operation, "-")), Printable(c.Method), Printable(ReadableURI(c.URI)), c.Line)
	return err
}

type jsonOutcome struct {
	Decision audit.Outcome `json:"decision"`
	Rule     string        `json:"rule"`
}

func writeChangeJSON(w io.Writer, c Change) error {
	line, err := marshal(struct {
		Line      int         `json:"line"`
		Time      string      `json:"time,omitempty"`
		Method    string      `json:"method"`
		URI       string      `json:"uri"`
		Operation string      `json:"operation"`
		Old       jsonOutcome `json:"old"`
		New       jsonOutcome `json:"new"`
	}{c.Line, jsonTime(c.Time), c.Method, c.URI, c.Operation,
		jsonOutcome{c.OldDecision, c.OldRule}, jsonOutcome{c.NewDecision, c.NewRule}})
	if err != nil {
		return err
	}
	_, err = w.Write(line)
	return err
}

// MarshalJSON encodes the counts as the --json output's last line holds
// them.
func (r *Replayed) MarshalJSON() ([]byte, error) {
	return marshal(struct {
		LinesRead    int64            `json:"lines_read"`
		NotJSON      int64            `json:"not_json"`
		TooLong      int64            `json:"too_long,omitempty"`
		FirstNotJSON int              `json:"first_not_json_line,omitempty"`
		Replayed     int64            `json:"replayed"`
		Changed      int64            `json:"changed"`
		Changes      map[string]int64 `json:"changes"`
		RuleOnly     int64            `json:"same_decision_other_rule"`
		Events       int64            `json:"skipped_events"`
		NoRequest    int64            `json:"skipped_without_request"`
	}{r.Read, r.Skipped, r.TooLong, r.FirstSkipped, r.Decisions, r.Changed(), r.Changes, r.RuleOnly, r.Events, r.NoRequest})
}

// transitions orders the changes for people: what the new policy refuses
// first, since that is what breaks someone's job.
var transitions = []string{
	transition(audit.Allow, audit.Deny), transition(audit.WouldDeny, audit.Deny),
	transition(audit.Allow, audit.WouldDeny),
	transition(audit.Deny, audit.Allow), transition(audit.Deny, audit.WouldDeny), transition(audit.WouldDeny, audit.Allow),
}

// transition names a change of outcome, as Changes counts it.
func transition(from, to audit.Outcome) string { return string(from) + "->" + string(to) }

// WriteText writes the counts for people; policy names the new policy.
func (r *Replayed) WriteText(w io.Writer, policy string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "replayed %s against %s: ", plural(r.Decisions, "decision", "decisions"), policy)
	if r.Changed() == 0 {
		b.WriteString("none would change\n")
	} else {
		fmt.Fprintf(&b, "%d would change\n", r.Changed())
		for _, t := range transitions {
			if n := r.Changes[t]; n > 0 {
				fmt.Fprintf(&b, "%8d  %s\n", n, strings.ReplaceAll(t, "->", " -> "))
			}
		}
	}
	if r.RuleOnly > 0 {
		fmt.Fprintf(&b, "%s the same under another rule\n", plural(r.RuleOnly, "decision stays", "decisions stay"))
	}
	var passed []string
	if r.Events > 0 {
		passed = append(passed, plural(r.Events, "event", "events"))
	}
	if r.NoRequest > 0 {
		passed = append(passed, plural(r.NoRequest, "decision without a method and URI", "decisions without a method and URI"))
	}
	if len(passed) > 0 {
		fmt.Fprintf(&b, "passed over: %s\n", strings.Join(passed, ", "))
	}
	if note := SkippedNote(r.Skipped, r.TooLong, r.FirstSkipped); note != "" {
		b.WriteString(note + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
