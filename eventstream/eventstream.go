// Package eventstream follows a Docker Engine's event stream for the packages
// that learn from it: runs (which CI jobs ended) and reclaim (which images
// were used). It negotiates the API version, subscribes with since, until and
// filters, reconnects with a backoff, reads the engine's replay of the events
// it keeps as a stream the engine itself ends, and counts that replay, so
// that a caller can judge whether the engine still held everything it asked
// for. Every event is dated by one rule, Time.
//
// It must never change anything on the engine (it pings and reads events),
// never drop or reorder an event it received, never take silence for the end
// of a replay, and never judge coverage itself: what a replay's length means
// for a decision is the caller's business.
package eventstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"

	"github.com/prune-guard/prune-guard/engine"
)

// Kept is how many events dockerd keeps for replay: a subscription with
// since or until set is first sent those of its last Kept events that fall
// in the range (daemon/events/events.go, eventsLimit = 256, the same in
// v20.10.24, v26.1.5, v28.5.2, docker-v29.7.2 and moby/v2 v2.0.0-beta.24).
// An unfiltered replay that returns this many may have lost older ones; a
// filtered one is a part of those 256, so its length says nothing.
const Kept = 256

// Time is when m happened, by the one rule every reader of the engine's
// events applies: its TimeNano, else its Time (whole seconds), else, for an
// event the engine did not date, received, when it was received. dated
// reports whether the engine dated it.
//
// dockerd dates every event; an undated one comes from something else that
// speaks the API. Its receipt is the latest it can have happened, and later
// is the safe side for every reader: a job's container that died then holds
// image deletes for the whole grace from then, an image used then stays
// young longer, and a replay whose oldest event is later is blind for
// longer. The other readings are unsafe: the zero Unix time puts a job's
// end decades before any grace window, and, as a replay's oldest event,
// makes a replay that filled the engine's buffer look as if it reached back
// past the window; dropping the event loses a job's end or an image's use.
// An undated event still never moves a follower's resume point and never
// ends a replay: a receipt on prune-guard's clock says nothing about where
// the engine's stream is.
func Time(m events.Message, received time.Time) (at time.Time, dated bool) {
	switch {
	case m.TimeNano > 0:
		return time.Unix(0, m.TimeNano), true
	case m.Time > 0:
		return time.Unix(m.Time, 0), true
	}
	return received, false
}

// Event is one message of the stream, dated by Time.
type Event struct {
	events.Message
	// At is when it happened: Time(Message, its receipt).
	At time.Time
	// Dated is false for an event the engine sent without a time: At is
	// then when it was received.
	Dated bool
	// Replayed is set for an event the engine sent from the events it
	// keeps, before the subscription's live ones (for every event of a
	// Replay).
	Replayed bool
}

// Received is m as a follower hands it over when it received it at
// received.
func Received(m events.Message, received time.Time) Event {
	at, dated := Time(m, received)
	return Event{Message: m, At: at, Dated: dated}
}

// Replay is what one subscription's replay held.
type Replay struct {
	// Since and Until are the range the subscription asked for (Until is
	// zero while following).
	Since, Until time.Time
	// Subscribed is when the subscription was asked for, on the
	// follower's clock: once its replay is over, every event dated before
	// it that the engine still keeps has been handed over. While
	// following, it is the until of the bounded replay Follow reads first.
	Subscribed time.Time
	// N is how many events the engine replayed. An unfiltered replay of
	// at least Kept events may have lost older ones since Since. While
	// following, it counts the bounded replay and, when CaughtUp is called
	// a second time, the live subscription's own replay as well.
	N int
	// Oldest is the oldest replayed event's time (zero if none).
	Oldest time.Time
	// Early (Replay only) is set when the engine may have taken Until as
	// already past: Until had passed on the follower's clock when it
	// subscribed, or the engine ended the stream before Until came. dockerd
	// then leaves out the events it keeps from after Until, so that a
	// count short of Kept proves nothing.
	Early bool
}

// replayCount counts the events dockerd replays to the live subscription
// Follow opens after its bounded replay: the events since that replay's
// until, which dockerd sends before the live ones. They are all older than
// the first event's arrival (dockerd takes its replay before sending
// anything); a dated event after that arrival is live, and ends the count.
// Events published between dockerd's replay and the first arrival are
// counted too, and so are undated ones, which only errs towards a longer
// replay. Nothing waits for the count to end: it only adds to the bounded
// replay's, to tell whether the two together reached Kept.
type replayCount struct {
	end    time.Time // arrival of the first event
	n      int
	oldest time.Time
}

// add counts e, received at now, and reports whether it was live (the
// replay is over).
func (r *replayCount) add(e Event, now time.Time) bool {
	if r.end.IsZero() {
		r.end = now
	}
	if e.Dated && e.At.After(r.end) {
		return true
	}
	r.n++
	if r.oldest.IsZero() || e.At.Before(r.oldest) {
		r.oldest = e.At
	}
	return false
}

// Engine is what a follower asks of the engine: its API version, then its
// events. *engine.Client is the real one.
type Engine interface {
	Events(ctx context.Context, options client.EventsListOptions) client.EventsResult
	engine.Pinger
}

// Handler receives what Follow sees, one call at a time, in the order the
// engine sent it. Its methods must return quickly: dockerd drops the events
// of a subscriber that falls behind.
type Handler interface {
	// Event is called for each event.
	Event(Event)
	// CaughtUp is called once per subscription, when Seed (if set) has
	// returned and the engine has ended the bounded replay from the
	// subscription's since: the events the engine kept from since to
	// the replay's until (Replay.Subscribed) have all been handed over,
	// and Replay.N counts them exactly. It is called a second time, with
	// N counting both, if the live subscription's own replay (the events
	// since that until) takes the count to Kept: events may then have
	// been lost before the oldest one.
	CaughtUp(Replay)
	// Broken is called when a subscription ends, or could not start,
	// while ctx is live; the follower subscribes again after retry.
	Broken(err error, retry time.Duration)
}

// Follower subscribes to one engine's events. Engine and Timeout must be
// set; MinBackoff and MaxBackoff too, for Follow.
type Follower struct {
	Engine Engine
	// Timeout bounds the API version negotiation before each
	// subscription (engine.Negotiate says why it comes first).
	Timeout time.Duration
	// Filters narrow the subscriptions as dockerd's filters parameter
	// does (type, event, ...); nil for every event.
	Filters client.Filters
	// Seed, if set, runs at the start of each subscription of Follow,
	// before its bounded replay: a listing of what is there, so that
	// anything that changes later is an event, and anything that changed
	// before is in the replay, which reaches past the listing. An error
	// ends the subscription, and is what Broken is told.
	Seed func(ctx context.Context) error
	// The wait before subscribing again starts at MinBackoff, doubles up
	// to MaxBackoff after each subscription that ends, and is back at
	// MinBackoff after one that caught up.
	MinBackoff, MaxBackoff time.Duration
	// Now is the follower's clock (time.Now if nil): the until of each
	// bounded replay, when it receives an event, and whether Until has
	// come.
	Now func() time.Time
}

// errClosed is why a followed stream ended when the engine ended it
// without an error (dockerd closes its streams when it stops).
var errClosed = errors.New("the engine closed it")

// Follow subscribes to the engine's events from since (zero: from when it
// subscribes) and hands them to h until ctx ends. After a subscription ends
// it tells h and subscribes again, after the backoff, from the newest dated
// event received: that replay repeats the events at that time, which h must
// take twice as it takes them once. Follow returns when ctx ends; h is not
// called after it returns.
func (f *Follower) Follow(ctx context.Context, since time.Time, h Handler) {
	backoff := f.MinBackoff
	for {
		next, caughtUp, err := f.subscribe(ctx, since, h)
		if ctx.Err() != nil {
			return
		}
		since = next
		if caughtUp {
			backoff = f.MinBackoff
		}
		h.Broken(err, backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, f.MaxBackoff)
	}
}

// subscribe runs one subscription from since until it ends, and returns
// where the next should start, whether this one caught up, and why it
// ended.
//
// Whether the engine's replay is over is never judged by timing: an engine
// under load can take any time to send it. The subscription first lists
// (Seed), then reads the engine's replay from since as a bounded stream up
// to until, now, which the engine ends itself once it has sent the events
// it keeps in that range, so that its end and its count are exact and
// reach past the listing. Only then does it follow the live events from
// until: dockerd first replays those since until, which bridges the gap
// between the two streams, and whose count adds to the bounded one (events
// the engine took after until, while it answered the bounded replay, were
// kept but not sent by it; they are in this replay).
func (f *Follower) subscribe(ctx context.Context, since time.Time, h Handler) (time.Time, bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The streams' context lives as long as the follower: the version
	// must be settled within the timeout first.
	if err := engine.Negotiate(ctx, f.Engine, f.Timeout); err != nil {
		return since, false, err
	}
	if f.Seed != nil {
		if err := f.Seed(ctx); err != nil {
			return since, false, err
		}
	}
	last := since
	hand := func(e Event) {
		if e.Dated && e.At.After(last) {
			last = e.At
		}
		h.Event(e)
	}
	// dockerd refuses an until before since; a since ahead of the clock
	// has nothing before it to replay but the events at since.
	until := f.now()
	if until.Before(since) {
		until = since
	}
	rep := Replay{Since: since, Subscribed: until}
	if !since.IsZero() {
		if err := f.read(ctx, since, until, &rep, hand); err != nil {
			return last, false, err
		}
	}
	stream := f.Engine.Events(ctx, f.options(until, time.Time{}))
	h.CaughtUp(rep)
	var (
		r    replayCount
		live bool // the live subscription's replay is over
		lost = rep.N >= Kept
	)
	for {
		select {
		case <-ctx.Done():
			return last, true, ctx.Err()
		case err := <-stream.Err:
			if err == nil || errors.Is(err, io.EOF) {
				err = errClosed
			}
			return last, true, err
		case m := <-stream.Messages:
			now := f.now()
			e := Received(m, now)
			if !live {
				if live = r.add(e, now); !live {
					e.Replayed = true
				}
			}
			hand(e)
			if !live && !lost && rep.N+r.n >= Kept {
				lost = true
				both := rep
				both.N += r.n
				if both.Oldest.IsZero() || r.oldest.Before(both.Oldest) {
					both.Oldest = r.oldest
				}
				h.CaughtUp(both)
			}
		}
	}
}

// Replay reads the events the engine keeps from since to until, hands them
// to each in order, and returns what the replay held; every event counts as
// replayed, the stream being the range asked for. It subscribes once: a
// stream that breaks is an error, since a caller that replays answers now
// and cannot wait for a reconnection.
func (f *Follower) Replay(ctx context.Context, since, until time.Time, each func(Event)) (Replay, error) {
	rep := Replay{Since: since, Until: until, Subscribed: f.now()}
	if err := engine.Negotiate(ctx, f.Engine, f.Timeout); err != nil {
		return rep, err
	}
	// Measured on the monotonic clock: the engine's own answer is judged
	// against how long it took.
	left := until.Sub(f.now())
	deadline := time.Now().Add(left)
	if err := f.read(ctx, since, until, &rep, each); err != nil {
		return rep, err
	}
	rep.Early = left <= 0 || time.Now().Before(deadline)
	return rep, nil
}

// read reads one bounded subscription, since to until, until the engine
// ends it, and counts it into rep, handing each event to each, as
// replayed.
func (f *Follower) read(ctx context.Context, since, until time.Time, rep *Replay, each func(Event)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream := f.Engine.Events(ctx, f.options(since, until))
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-stream.Err:
			// The client sends every message before the stream's end.
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			return nil
		case m := <-stream.Messages:
			e := Received(m, f.now())
			e.Replayed = true
			rep.N++
			if rep.Oldest.IsZero() || e.At.Before(rep.Oldest) {
				rep.Oldest = e.At
			}
			each(e)
		}
	}
}

func (f *Follower) now() time.Time {
	if f.Now == nil {
		return time.Now()
	}
	return f.Now()
}

func (f *Follower) options(since, until time.Time) client.EventsListOptions {
	o := client.EventsListOptions{Filters: f.Filters}
	if !since.IsZero() {
		o.Since = unixNano(since)
	}
	if !until.IsZero() {
		o.Until = unixNano(until)
	}
	return o
}

// unixNano formats t as the engine's since and until parameters take it.
func unixNano(t time.Time) string {
	return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond())
}
