package runs

import (
	"context"
	"fmt"
	"time"

	"github.com/moby/moby/api/types/events"

	"github.com/prune-guard/prune-guard/eventstream"
	"github.com/prune-guard/prune-guard/rules"
)

// Watch follows the engine's events until ctx ends, so that State knows
// which jobs ended within the teardown grace, and polls the host's
// processes to notice host jobs ending. detection is asked for the policy in
// force at each event. It reconnects after an error, and while it is not
// subscribed State reports the gap as blind. Watch changes nothing on the
// engine.
func (t *Tracker) Watch(ctx context.Context, detection func() rules.Detection) {
	t.mu.Lock()
	t.watching = true
	t.cov = coverage{down: "prune-guard has not yet received the engine's events", start: t.now()}
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		t.watching = false
		t.mu.Unlock()
	}()

	polled := make(chan struct{})
	go func() { defer close(polled); t.pollProcs(ctx, detection) }()
	defer func() { <-polled }()

	// No filters, so that the replay's length says whether dockerd's
	// buffer covered since.
	f := eventstream.Follower{
		Engine: t.c, Timeout: t.timeout, MinBackoff: minBackoff, MaxBackoff: maxBackoff, Now: t.now,
		// Listed before the replay, which reaches past the listing: a
		// job that ended before it is in the replay, handed over before
		// CaughtUp, and one there at the listing that ends later is an
		// event, or, until its event is read, gone from the next
		// decision's listing.
		Seed: func(ctx context.Context) error { return t.seed(ctx, detection()) },
	}
	f.Follow(ctx, t.now().Add(-detection().Grace), &watcher{t: t, detection: detection, first: true})
}

const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
	// procPoll is how often Watch looks for host jobs that ended.
	procPoll = 2 * time.Second
)

// coverage is from when the tracker's record of ended jobs is complete.
type coverage struct {
	// down, when set, says why events are not being received now.
	down string
	// from: events are known completely from here (while down is "").
	from    time.Time
	fromWhy string
	// start is when Watch started.
	start time.Time
}

// watcher applies a Watch's events to the tracker and keeps its coverage.
type watcher struct {
	t         *Tracker
	detection func() rules.Detection
	first     bool // no subscription has caught up yet
}

func (w *watcher) Event(e eventstream.Event) { w.t.apply(e.Message, e.At, w.detection) }

// CaughtUp judges a subscription's replay: the tracker's record is
// complete from its since, unless the replay filled dockerd's buffer. It is
// called again if the live stream's own replay, counted with the bounded
// one, fills it.
func (w *watcher) CaughtUp(r eventstream.Replay) {
	t := w.t
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cov.down = ""
	switch {
	case r.N >= eventstream.Kept:
		// The replay filled dockerd's buffer: events between since
		// and the oldest replayed one may be lost. Coverage only
		// ever starts later.
		if r.Oldest.After(t.cov.from) {
			t.cov.from = r.Oldest
			t.cov.fromWhy = fmt.Sprintf("the engine keeps only its last %d events and prune-guard missed those before %s", eventstream.Kept, clock(r.Oldest))
		}
	case w.first:
		t.cov.from = r.Since
		t.cov.fromWhy = fmt.Sprintf("prune-guard has followed the engine's events only since %s", clock(r.Since))
	}
	// Otherwise the replay bridged the gap since the last event.
	w.first = false
}

func (w *watcher) Broken(err error, _ time.Duration) {
	t := w.t
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case w.first:
		t.cov.down = fmt.Sprintf("prune-guard has not yet received the engine's events (%v)", err)
	case t.cov.down == "":
		// Kept while reconnecting: the gap started at the break.
		t.cov.down = fmt.Sprintf("the engine's event stream broke at %s: %v", clock(t.now()), err)
	}
}

// seed lists what is there when a subscription starts, so that an object
// whose end event is still in flight or lost is noticed gone by the next
// listing.
func (t *Tracker) seed(ctx context.Context, d rules.Detection) error {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	if _, err := t.observe(ctx, d, false); err != nil {
		return fmt.Errorf("list what is there: %w", err)
	}
	return nil
}

// apply records what one event says about a job's object.
func (t *Tracker) apply(m events.Message, at time.Time, detection func() rules.Detection) {
	o, what := decode(m)
	if what == evIgnored {
		return
	}
	d := detection()
	if what != evServiceRemoved {
		if _, ok := d.Match(o); !ok {
			return
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.record(o, what, at)
}

func (t *Tracker) record(o rules.Object, what evKind, at time.Time) {
	now := t.now()
	switch what {
	case evStarted:
		t.mem.present(o, at, now)
	case evDied:
		t.mem.ended(o, at, now, false)
	case evDestroyed:
		t.mem.destroyed(o, at, now)
	case evServiceRemoved:
		t.mem.ended(o, at, now, true)
	}
}

type evKind uint8

const (
	evIgnored evKind = iota
	evStarted
	evDied
	evDestroyed
	evServiceRemoved
)

// decode reads the object an event is about. Container events carry the
// container's labels among their attributes, overwritten by name and image
// (daemon/events.go LogContainerEventWithAttributes); service events carry
// only the name.
func decode(m events.Message) (rules.Object, evKind) {
	switch m.Type {
	case events.ContainerEventType:
		var what evKind
		switch m.Action {
		case events.ActionCreate, events.ActionStart:
			what = evStarted
		case events.ActionDie:
			what = evDied
		case events.ActionDestroy:
			what = evDestroyed
		default:
			return rules.Object{}, evIgnored
		}
		if m.Actor.ID == "" {
			return rules.Object{}, evIgnored
		}
		labels := m.Actor.Attributes
		name := labels["name"]
		// The message is ours: strip what is not a label in place.
		for _, k := range [...]string{"name", "image", "exitCode", "signal"} {
			delete(labels, k)
		}
		if labels == nil {
			labels = map[string]string{}
		}
		return rules.Object{Kind: rules.Container, ID: m.Actor.ID, Name: name, Labels: labels}, what
	case events.ServiceEventType:
		if m.Action != events.ActionRemove || m.Actor.ID == "" {
			return rules.Object{}, evIgnored
		}
		return rules.Object{Kind: rules.Service, ID: m.Actor.ID, Name: m.Actor.Attributes["name"]}, evServiceRemoved
	}
	return rules.Object{}, evIgnored
}

// replayDelay is how far past the decision a one-shot replay reaches: its
// until must be after dockerd takes the replay, or dockerd leaves out the
// replayed events after until, which would undercount the replay.
const replayDelay = 100 * time.Millisecond

// replay reads the events dockerd still holds from the grace window, for a
// caller without a running Watch, records them, and returns the stretch of
// the window it could not see (nil if none). It runs after the listing, and
// reaches past it, so that an object gone from the listing ended inside the
// replay.
func (t *Tracker) replay(ctx context.Context, d rules.Detection) (*rules.Blind, error) {
	now := t.now()
	f := eventstream.Follower{Engine: t.c, Timeout: t.timeout, Now: t.now}
	r, err := f.Replay(ctx, now.Add(-d.Grace), now.Add(replayDelay), func(e eventstream.Event) {
		o, what := decode(e.Message)
		if what == evIgnored {
			return
		}
		if _, ok := d.Match(o); !ok && what != evServiceRemoved {
			return
		}
		t.mu.Lock()
		t.record(o, what, e.At)
		t.mu.Unlock()
	})
	if err != nil {
		return nil, fmt.Errorf("replay the engine's events: %w", err)
	}
	return replayBlind(r), nil
}

// replayBlind judges a one-shot replay. One that the engine may have cut
// at until (Early) left out the buffered events after until, so its length
// proves nothing.
func replayBlind(r eventstream.Replay) *rules.Blind {
	switch {
	case r.N >= eventstream.Kept:
		return &rules.Blind{Since: r.Oldest, Why: fmt.Sprintf("the engine keeps only its last %d events and they go back only to %s", eventstream.Kept, clock(r.Oldest))}
	case r.Early:
		since := r.Until
		if !r.Oldest.IsZero() {
			since = r.Oldest
		}
		return &rules.Blind{Since: since, Why: "the engine answered the replay of its recent events too late to show whether it kept them all"}
	}
	return nil
}

// pollProcs looks at the host's processes every procPoll while a process
// detector is on, so that a host job's end is noticed between decisions.
func (t *Tracker) pollProcs(ctx context.Context, detection func() rules.Detection) {
	tick := time.NewTicker(procPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		d := detection()
		t.mu.Lock()
		t.mem.forget(t.now(), d.Grace)
		t.mu.Unlock()
		if !d.Looks(rules.Process) || !t.procs.visible {
			continue
		}
		// A /proc scan error is not an engine error; the next
		// decision's own scan reports it.
		_ = t.scan(d)
	}
}

// clock formats a time for a reason, as rules does.
func clock(t time.Time) string { return t.UTC().Format("15:04:05 UTC") }
