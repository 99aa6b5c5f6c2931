package guard

import (
	"fmt"
	"time"

	"github.com/prune-guard/prune-guard/rules"
)

// RunsView is what prune-guard knew of CI jobs when it decided a request, or
// knows now: the one value behind an audit record's runs and the runs
// status shows. Live and ended jobs are kept apart, an ended job carries
// when it ended and when its grace is over, and the unseen stretch its own
// bounds, so no reader has to take them back out of text. The audit record
// flattens it to lines (whose wording docs/audit.md documents and
// "prune-guard audit replay" reads); status sends it as JSON.
type RunsView struct {
	// Error is why the run state was unknown, if it was.
	Error string `json:"error,omitempty"`
	// Active are live jobs' objects.
	Active []ActiveRun `json:"active"`
	// Ended are objects of jobs that ended within the teardown grace.
	Ended []EndedRun `json:"ended"`
	// Unseen is the stretch of the grace window prune-guard could not
	// see, if there is one.
	Unseen *Unseen `json:"unseen,omitempty"`
}

// ActiveRun is a live job's object.
type ActiveRun struct {
	// Run names it as denials do ("GitLab job 4711, container build-7").
	Run string `json:"run"`
	// Detector names the detector that counts it.
	Detector string `json:"detector"`
	// Job names the job the object belongs to ("GitLab job 4711"; the
	// object's name when its CI system gives no job identifier): a job's
	// objects share it, so jobs are counted by it.
	Job string `json:"job"`
	// Looks says what that detector looks for, which is why it counts
	// the object. Status fills it; an audit record names the run only.
	Looks string `json:"looks,omitempty"`
}

// EndedRun is the object of a job that ended within the teardown grace.
type EndedRun struct {
	Run      string `json:"run"`
	Detector string `json:"detector"`
	// Job names the job, as ActiveRun.Job does.
	Job string `json:"job"`
	// Ended is when the object was last seen or went away; GraceUntil
	// is when its teardown grace is over.
	Ended      time.Time `json:"ended"`
	GraceUntil time.Time `json:"grace_until"`
}

// String describes the run as the audit record and status list it.
func (r EndedRun) String() string {
	return fmt.Sprintf("%s (ended %s, grace until %s)", r.Run, stamp(r.Ended), stamp(r.GraceUntil))
}

// Unseen is a stretch of the grace window prune-guard could not see: a job
// may have ended in it unnoticed, so it counts as a job in its teardown
// grace until Until.
type Unseen struct {
	Since time.Time `json:"since"`
	Why   string    `json:"why"`
	Until time.Time `json:"until"`
}

// String explains the stretch as the audit record and status show it.
func (u Unseen) String() string {
	return fmt.Sprintf("whether a job ended before %s (%s); counted as active until %s", stamp(u.Since), u.Why, stamp(u.Until))
}

// stamp is the time format of runs in audit records and status: to the
// second, in UTC, as an operator compares it with other logs.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// viewRuns is st as a RunsView, its grace applied.
func viewRuns(st rules.RunState) RunsView {
	var v RunsView
	if st.Err != nil {
		v.Error = st.Err.Error()
	}
	for _, r := range st.Active {
		v.Active = append(v.Active, ActiveRun{Run: r.String(), Detector: r.Detector, Job: jobOf(r)})
	}
	for _, r := range st.Ended {
		v.Ended = append(v.Ended, EndedRun{Run: r.String(), Detector: r.Detector, Job: jobOf(r), Ended: r.Ended.UTC(), GraceUntil: r.Ended.Add(st.Grace).UTC()})
	}
	if b := st.Blind; b != nil {
		v.Unseen = &Unseen{Since: b.Since.UTC(), Why: b.Why, Until: b.Since.Add(st.Grace).UTC()}
	}
	return v
}

// jobOf names r's job: its system and job identifier, or its system and
// object name when the system gives none.
func jobOf(r rules.Run) string {
	if r.Kind == 0 {
		return r.Job // known only by its recorded description
	}
	id := r.Job
	if id == "" {
		id = r.Name
	}
	return r.System + " " + id
}

// auditLines flattens v to an audit record's runs: the unknown state
// first, then each live and each ended run, then the unseen stretch. The
// prefixes "unknown: " and "unseen: " are the audit log's format; replay
// reads "unknown: " back.
func (v RunsView) auditLines() []string {
	var out []string
	if v.Error != "" {
		out = append(out, "unknown: "+v.Error)
	}
	for _, r := range v.Active {
		out = append(out, r.Run)
	}
	for _, r := range v.Ended {
		out = append(out, r.String())
	}
	if v.Unseen != nil {
		out = append(out, "unseen: "+v.Unseen.String())
	}
	return out
}
