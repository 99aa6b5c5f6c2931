package runs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"

	"github.com/prune-guard/prune-guard/engine"
	"github.com/prune-guard/prune-guard/rules"
)

// engineEventsKept is how many events dockerd keeps for replay: a
// subscription with since or until set is first sent those of its last
// eventsLimit events that fall in the range (daemon/events/events.go,
// eventsLimit = 256, the same in v20.10.24, v26.1.5, v28.5.2,
// docker-v29.7.2 and moby/v2 v2.0.0-beta.24). A replay that returns this
// many may have lost older ones.
const engineEventsKept = 256

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

	since := t.now().Add(-detection().Grace)
	first := true // no subscription has caught up yet
	backoff := minBackoff
	for {
		next, caughtUp, err := t.follow(ctx, since, first, detection)
		if ctx.Err() != nil {
			return
		}
		if caughtUp {
			backoff, first = minBackoff, false
		}
		since = next
		t.mu.Lock()
		switch {
		case first:
			t.cov.down = fmt.Sprintf("prune-guard has not yet received the engine's events (%v)", err)
		case t.cov.down == "":
			// Kept while reconnecting: the gap started at the break.
			t.cov.down = fmt.Sprintf("the engine's event stream broke at %s: %v", clock(t.now()), err)
		}
		t.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
	// quietReplay: after this long without an event, a new subscription
	// has sent all the events dockerd replays (it writes them at once).
	quietReplay = 100 * time.Millisecond
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

// follow subscribes to every event since since and applies them until the
// stream ends. It returns where a new subscription should start, whether
// this one caught up with the replay, and why it ended.
func (t *Tracker) follow(ctx context.Context, since time.Time, first bool, detection func() rules.Detection) (time.Time, bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The stream's context lives as long as the watcher: the version must
	// be settled within the timeout first (engine.Negotiate says why).
	if err := engine.Negotiate(ctx, t.c, t.timeout); err != nil {
		return since, false, err
	}
	// Unfiltered, so that the replay's length says whether dockerd's
	// buffer covered since.
	stream := t.c.Events(ctx, client.EventsListOptions{Since: unixNano(since)})
	// Listed after subscribing, so that anything that ends later is an
	// event; concurrently, so that the stream is read meanwhile (dockerd
	// drops events for a subscriber that falls behind).
	seeded := make(chan error, 1)
	go func() { seeded <- t.seed(ctx, detection()) }()
	var (
		r        replayCount
		last     = since
		quiet    = time.NewTimer(quietReplay)
		caughtUp bool
		replayed bool // dockerd has sent its replay
		seedDone bool
	)
	defer quiet.Stop()
	catchUp := func() {
		if caughtUp || !replayed || !seedDone {
			return
		}
		caughtUp = true
		t.mu.Lock()
		defer t.mu.Unlock()
		t.cov.down = ""
		switch {
		case r.n >= engineEventsKept:
			// The replay filled dockerd's buffer: events between since
			// and the oldest replayed one may be lost.
			t.cov.from = r.oldest
			t.cov.fromWhy = fmt.Sprintf("the engine keeps only its last %d events and prune-guard missed those before %s", engineEventsKept, clock(r.oldest))
		case first:
			t.cov.from = since
			t.cov.fromWhy = fmt.Sprintf("prune-guard has followed the engine's events only since %s", clock(since))
		}
		// Otherwise the replay bridged the gap since the last event.
	}
	for {
		select {
		case <-ctx.Done():
			return last, caughtUp, ctx.Err()
		case err := <-seeded:
			if err != nil {
				return last, caughtUp, fmt.Errorf("list what is there: %w", err)
			}
			seedDone = true
			catchUp()
		case err := <-stream.Err:
			if err == nil || errors.Is(err, io.EOF) {
				err = errors.New("the engine closed it")
			}
			return last, caughtUp, err
		case <-quiet.C:
			replayed = true
			catchUp()
		case m := <-stream.Messages:
			at := eventTime(m)
			if !replayed {
				if r.add(at, t.now()) {
					replayed = true
				} else {
					quiet.Reset(quietReplay)
				}
				catchUp()
			}
			if at.After(last) {
				last = at
			}
			t.apply(m, at, detection)
		}
	}
}

// replayCount counts the events dockerd replays to a new subscription. They
// come first and are all older than the first event's arrival (dockerd
// takes its replay before sending anything); an event dated after that
// arrival is live, and ends the replay. Events published between dockerd's
// replay and the first arrival are counted too, which only errs towards
// blind.
type replayCount struct {
	end    time.Time // arrival of the first event
	n      int
	oldest time.Time
}

// add counts an event dated at that arrived at now, and reports whether it
// was live (the replay is over).
func (r *replayCount) add(at, now time.Time) bool {
	if r.end.IsZero() {
		r.end = now
	}
	if at.After(r.end) {
		return true
	}
	r.n++
	if r.oldest.IsZero() || at.Before(r.oldest) {
		r.oldest = at
	}
	return false
}

// seed lists what is there when a subscription starts, so that an object
// whose end event is still in flight or lost is noticed gone by the next
// listing.
func (t *Tracker) seed(ctx context.Context, d rules.Detection) error {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	_, err := t.observe(ctx, d, false)
	return err
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

func eventTime(m events.Message) time.Time {
	if m.TimeNano != 0 {
		return time.Unix(0, m.TimeNano)
	}
	return time.Unix(m.Time, 0)
}

// unixNano formats t as the engine's since and until parameters take it.
func unixNano(t time.Time) string {
	return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond())
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
	since, until := now.Add(-d.Grace), now.Add(replayDelay)
	// Measured on the monotonic clock: the engine's own answer is judged
	// against how long it took.
	deadline := time.Now().Add(replayDelay)
	stream := t.c.Events(ctx, client.EventsListOptions{Since: unixNano(since), Until: unixNano(until)})
	var (
		n      int
		oldest time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("replay the engine's events: %w", ctx.Err())
		case err := <-stream.Err:
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("replay the engine's events: %w", err)
			}
			return replayBlind(n, oldest, time.Now().Before(deadline), until), nil
		case m := <-stream.Messages:
			at := eventTime(m)
			n++
			if oldest.IsZero() || at.Before(oldest) {
				oldest = at
			}
			o, what := decode(m)
			if what == evIgnored {
				continue
			}
			if _, ok := d.Match(o); !ok && what != evServiceRemoved {
				continue
			}
			t.mu.Lock()
			t.record(o, what, at)
			t.mu.Unlock()
		}
	}
}

// replayBlind judges a one-shot replay of n events. A replay that ended
// before until on our clock was answered as past (dockerd read until as
// before its own now): it then left out buffered events after until, so
// its length proves nothing.
func replayBlind(n int, oldest time.Time, early bool, until time.Time) *rules.Blind {
	switch {
	case n >= engineEventsKept:
		return &rules.Blind{Since: oldest, Why: fmt.Sprintf("the engine keeps only its last %d events and they go back only to %s", engineEventsKept, clock(oldest))}
	case early:
		since := until
		if !oldest.IsZero() {
			since = oldest
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
