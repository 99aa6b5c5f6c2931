package runs

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/prune-guard/prune-guard/rules"
)

// maxEntries bounds the objects the tracker remembers. Past it, the oldest
// ended objects are forgotten and the tracker's knowledge of ended jobs
// starts after them (a blind stretch), so memory stays bounded under a burst
// of thousands of job containers without the answer becoming unsafe.
const maxEntries = 4096

// keepMargin is how long past the grace an ended object is kept, so that a
// decision racing the cleanup still sees it.
const keepMargin = time.Minute

// key names an object across sightings.
type key struct {
	kind rules.ObjectKind
	id   string
}

// entry is what the tracker remembers of one object: its raw name and labels
// (matched again under the detection of each State call, since the policy
// can be reloaded) and when it was last seen present or gone.
type entry struct {
	obj rules.Object
	// seen is the time of the latest sighting that said it was there.
	seen time.Time
	// gone is when it went (zero while it is there); precise when an
	// engine event dated it, otherwise when the tracker noticed.
	gone    time.Time
	precise bool
	// unlabelled is set for a swarm service known only from its events,
	// which carry no labels: detectors cannot tell whether it was a job's.
	unlabelled bool
}

// memory is the tracker's record of objects that are, or recently were, a
// job's. Its coverage says from when its record of ended objects is
// complete. It is not safe for concurrent use; Tracker guards it.
type memory struct {
	entries map[key]*entry
	// floor: ended objects before it may have been forgotten.
	floor    time.Time
	floorWhy string
}

func newMemory() *memory { return &memory{entries: make(map[key]*entry)} }

// present records that o was there at t. A sighting older than what is
// already known changes nothing, so events and lists can arrive in any
// order.
func (m *memory) present(o rules.Object, t time.Time, now time.Time) {
	k := key{o.Kind, o.ID}
	e := m.entries[k]
	if e == nil {
		m.bound(now)
		e = &entry{}
		m.entries[k] = e
	}
	if t.Before(e.seen) || (!e.gone.IsZero() && t.Before(e.gone)) {
		return
	}
	o.Image = keepImage(e.obj.Image, o.Image)
	e.obj, e.seen, e.gone, e.precise = o, t, time.Time{}, false
	e.unlabelled = false
}

// keepImage chooses what an object's image is known as: the engine's ID
// (from a listing) over the name an event carries, which may have moved
// to another image since the container was created.
func keepImage(known, next string) string {
	if next == "" || strings.HasPrefix(known, "sha256:") && !strings.HasPrefix(next, "sha256:") {
		return known
	}
	return next
}

// ended records that the object went at t, as an engine event dated it. o
// carries what the event knew of it; a known object keeps the name and
// labels already recorded when the event has none. An object that was
// already gone keeps its earlier end: it has not been active since.
func (m *memory) ended(o rules.Object, t, now time.Time, unlabelled bool) {
	k := key{o.Kind, o.ID}
	e := m.entries[k]
	switch {
	case e == nil:
		m.bound(now)
		e = &entry{obj: o, unlabelled: unlabelled}
		m.entries[k] = e
	case t.Before(e.seen):
		return // it came back after this
	case !e.gone.IsZero() && e.precise && !t.Before(e.gone):
		return
	default:
		if o.Labels != nil || e.obj.Name == "" {
			o.Image = keepImage(e.obj.Image, o.Image)
			e.obj, e.unlabelled = o, unlabelled
		}
	}
	e.gone, e.precise = t, true
}

// destroyed records a container's removal at t. Only a container known to
// be there (created and never started, or whose death went unseen) ends
// with its removal; an unknown one was already stopped before the
// tracker's knowledge starts, so its removal ends nothing. Counting that as
// an end would hold image prunes for the grace after every janitor's
// container prune of long-exited job containers.
func (m *memory) destroyed(o rules.Object, t, now time.Time) {
	e := m.entries[key{o.Kind, o.ID}]
	if e == nil || !e.gone.IsZero() {
		return
	}
	m.ended(o, t, now, false)
}

// absent records that a listing (or /proc scan) sent at sent no longer
// shows objects of kind that were there before it; they went before now.
func (m *memory) absent(kind rules.ObjectKind, there map[string]bool, sent, now time.Time) {
	for k, e := range m.entries {
		if k.kind != kind || !e.gone.IsZero() || !e.seen.Before(sent) || there[k.id] {
			continue
		}
		// Later is safer: the grace runs from when it was noticed.
		e.gone, e.precise = now, false
	}
}

// forget drops ended objects that no grace up to grace can still hold.
func (m *memory) forget(now time.Time, grace time.Duration) {
	horizon := now.Add(-grace - keepMargin)
	for k, e := range m.entries {
		if !e.gone.IsZero() && e.gone.Before(horizon) {
			delete(m.entries, k)
			m.raise(horizon, "prune-guard keeps ended jobs only for the grace it was configured with")
		}
	}
}

// bound makes room for one more entry within maxEntries: it forgets the oldest quarter of
// ended objects, or, with none ended, the longest-seen ones, and lowers its
// coverage accordingly.
func (m *memory) bound(now time.Time) {
	if len(m.entries) < maxEntries {
		return
	}
	type aged struct {
		k key
		t time.Time
	}
	var gone, there []aged
	for k, e := range m.entries {
		if e.gone.IsZero() {
			there = append(there, aged{k, e.seen})
		} else {
			gone = append(gone, aged{k, e.gone})
		}
	}
	byTime := func(a, b aged) int { return a.t.Compare(b.t) }
	why := fmt.Sprintf("prune-guard forgot ended jobs' objects to stay within %d remembered objects", maxEntries)
	if len(gone) > 0 {
		slices.SortFunc(gone, byTime)
		drop := gone[:max(1, len(gone)/4)]
		for _, a := range drop {
			delete(m.entries, a.k)
		}
		m.raise(drop[len(drop)-1].t, why)
		return
	}
	// Only live objects: forgetting one loses the fallback that notices
	// its end when its events are lost.
	slices.SortFunc(there, byTime)
	for _, a := range there[:max(1, len(there)/4)] {
		delete(m.entries, a.k)
	}
	m.raise(now, why)
}

// raise moves the coverage floor forward.
func (m *memory) raise(t time.Time, why string) {
	if t.After(m.floor) {
		m.floor, m.floorWhy = t, why
	}
}

// endedRuns returns the objects d recognises that went within grace before
// now, leaving out objects still live and objects of a job that still has a
// live object; and, as a blind stretch, the latest removal of a service whose
// labels were never seen, for which detectors cannot tell.
func (m *memory) endedRuns(d rules.Detection, now time.Time, live map[key]bool, active []rules.Run) ([]rules.Run, *rules.Blind) {
	since := now.Add(-d.Grace)
	type job struct{ detector, job string }
	liveJobs := make(map[job]bool, len(active))
	for _, r := range active {
		if r.Job != "" {
			liveJobs[job{r.Detector, r.Job}] = true
		}
	}
	var (
		out     []rules.Run
		unknown *rules.Blind
	)
	for k, e := range m.entries {
		if e.gone.IsZero() || !e.gone.After(since) || live[k] || !d.Looks(k.kind) {
			continue
		}
		r, ok := d.Match(e.obj)
		if !ok {
			if e.unlabelled && (unknown == nil || e.gone.After(unknown.Since)) {
				unknown = &rules.Blind{Since: e.gone, Why: fmt.Sprintf("swarm service %s was removed before prune-guard saw its labels", e.obj.Name)}
			}
			continue
		}
		if r.Job != "" && liveJobs[job{r.Detector, r.Job}] {
			continue
		}
		r.Ended = e.gone
		out = append(out, r)
	}
	return out, unknown
}
