package eventstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"
)

// epoch is the follower's clock when a test starts.
var epoch = time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)

// clock is a follower's clock that moves on by step each time it is read,
// so that no two receipts are at the same time.
type clock struct {
	mu   sync.Mutex
	t    time.Time
	step time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.t
	c.t = c.t.Add(c.step)
	return t
}

// dated is a container event the engine dated at.
func dated(id string, at time.Time) events.Message {
	return events.Message{Type: events.ContainerEventType, Action: events.ActionDie, Actor: events.Actor{ID: id},
		Time: at.Unix(), TimeNano: at.UnixNano()}
}

// undated is a container event without a time, which dockerd never sends.
func undated(id string) events.Message {
	return events.Message{Type: events.ContainerEventType, Action: events.ActionDie, Actor: events.Actor{ID: id}}
}

// recorder is a Handler that passes on every call.
type recorder struct {
	events chan Event
	caught chan Replay
	broken chan broken
	// before is sent, with each CaughtUp, how many events were handed
	// over before it (the follower calls a handler from one goroutine).
	before chan int
	handed int
}

type broken struct {
	err   error
	retry time.Duration
}

func newRecorder() *recorder {
	return &recorder{events: make(chan Event, 1024), caught: make(chan Replay, 64), broken: make(chan broken, 64), before: make(chan int, 64)}
}

func (r *recorder) Event(e Event)                         { r.handed++; r.events <- e }
func (r *recorder) CaughtUp(rep Replay)                   { r.before <- r.handed; r.caught <- rep }
func (r *recorder) Broken(err error, retry time.Duration) { r.broken <- broken{err, retry} }

// next receives from ch, failing the test if nothing comes (the bound
// catches a hang; nothing is timed by it).
func next[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("still waiting for %s", what)
		panic("unreachable")
	}
}

// follow runs fl.Follow from since until the test ends, and returns how
// to stop it early and a channel closed once it has returned.
func follow(t *testing.T, fl *Follower, since time.Time, h Handler) (context.CancelFunc, <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); fl.Follow(ctx, since, h) }()
	t.Cleanup(func() { cancel(); <-done })
	return cancel, done
}

func follower(f *fakeEngine, c *clock) *Follower {
	return &Follower{Engine: f, Timeout: 10 * time.Second, MinBackoff: time.Nanosecond, MaxBackoff: 4 * time.Nanosecond, Now: c.Now}
}

func TestTime(t *testing.T) {
	received := epoch.Add(time.Hour)
	tests := []struct {
		name      string
		m         events.Message
		want      time.Time
		wantDated bool
	}{
		{"TimeNano is the time, to the nanosecond", events.Message{Time: 1764583200, TimeNano: 1764583200_000000123},
			time.Unix(1764583200, 123), true},
		{"Time in whole seconds stands when TimeNano is missing", events.Message{Time: 1764583200},
			time.Unix(1764583200, 0), true},
		{"an undated event happened when it was received", events.Message{}, received, false},
		{"a time before 1970 is no time", events.Message{Time: -1, TimeNano: -1}, received, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at, isDated := Time(tt.m, received)
			if !at.Equal(tt.want) || isDated != tt.wantDated {
				t.Errorf("Time = %v, %v; want %v, %v", at, isDated, tt.want, tt.wantDated)
			}
			if e := Received(tt.m, received); !e.At.Equal(tt.want) || e.Dated != tt.wantDated {
				t.Errorf("Received = %v, %v; want Time's answer", e.At, e.Dated)
			}
		})
	}
}

func TestFollowCountsTheBoundedReplayExactlyBeforeCatchingUp(t *testing.T) {
	since := epoch.Add(-time.Minute)
	tests := []struct {
		name       string
		log        []events.Message
		wantFlags  []bool // Replayed, per event handed over before CaughtUp
		wantN      int
		wantOldest time.Time
		wantNext   string // the first event handed over after CaughtUp, if any
	}{
		{"events before since are not sent; those since, up to the subscription, are the replay",
			[]events.Message{dated("before", since.Add(-time.Second)), dated("a", since), dated("b", epoch.Add(-time.Second))},
			[]bool{true, true}, 2, since, ""},
		{"an event after the subscription is left to the live stream",
			[]events.Message{dated("a", since.Add(time.Second)), dated("live", epoch.Add(time.Hour))},
			[]bool{true}, 1, since.Add(time.Second), "live"},
		{"an undated event counts as replayed",
			[]events.Message{undated("u1"), dated("a", since.Add(time.Second)), undated("u2")},
			[]bool{true, true, true}, 3, since.Add(time.Second), ""},
		{"a replay of undated events alone is as old as its first receipt",
			[]events.Message{undated("u1"), undated("u2")},
			[]bool{true, true}, 2, epoch.Add(time.Millisecond), ""},
		{"nothing to replay is a replay of none", nil, nil, 0, time.Time{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.log = tt.log
			rec := newRecorder()
			// The clock is read once for the bounded replay's until,
			// then once per event: receipts are 1 ms apart, from
			// epoch + 1 ms.
			follow(t, follower(f, &clock{t: epoch, step: time.Millisecond}), since, rec)
			rep := next(t, "the replay to be over", rec.caught)
			var flags []bool
			for range <-rec.before {
				flags = append(flags, (<-rec.events).Replayed)
			}
			if len(flags) != len(tt.wantFlags) || !equalBools(flags, tt.wantFlags) {
				t.Errorf("replayed flags %v, want %v", flags, tt.wantFlags)
			}
			if rep.N != tt.wantN || !rep.Oldest.Equal(tt.wantOldest) || !rep.Since.Equal(since) || !rep.Subscribed.Equal(epoch) {
				t.Errorf("replay = %+v; want %d events, oldest %v, since %v, subscribed %v", rep, tt.wantN, tt.wantOldest, since, epoch)
			}
			if tt.wantNext != "" {
				if e := next(t, "the live event", rec.events); e.Actor.ID != tt.wantNext || e.Replayed {
					t.Errorf("after catching up: %s (replayed %v), want %s, live", e.Actor.ID, e.Replayed, tt.wantNext)
				}
			}
			subs := f.subscriptions()
			if len(subs) != 2 || subs[0].Since != unixNano(since) || subs[0].Until != unixNano(epoch) ||
				subs[1].Since != unixNano(epoch) || subs[1].Until != "" {
				t.Errorf("subscriptions %+v, want a bounded replay from %s to %s, then the live events from %s",
					subs, unixNano(since), unixNano(epoch), unixNano(epoch))
			}
		})
	}
}

// Events the engine took after the bounded replay's until are not sent by
// it, yet they count in the engine's 256: they can push events since since
// out of its buffer while the bounded replay counts fewer than Kept. The
// live subscription replays them first; counted with the bounded replay,
// they tell.
func TestFollowCountsTheLiveSubscriptionsOwnReplayWithTheBoundedOne(t *testing.T) {
	since := epoch.Add(-time.Hour)
	tests := []struct {
		name            string
		before, after   int // events dated before and after the bounded replay's until
		wantN, wantBoth int // the counts CaughtUp is told, 0 for no second call
		wantOldest      time.Time
	}{
		{"together they reach Kept: blind before the oldest replayed event", Kept - 10, 20,
			Kept - 20, Kept, since.Add(11 * time.Second)},
		{"together they stay short of Kept: no second call", 100, 20, 100, 0, since.Add(time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			for i := range tt.before {
				f.log = append(f.log, dated(fmt.Sprint("old", i), since.Add(time.Duration(i+1)*time.Second)))
			}
			for i := range tt.after {
				f.log = append(f.log, dated(fmt.Sprint("gap", i), epoch.Add(time.Duration(i+1)*time.Millisecond)))
			}
			rec := newRecorder()
			// until is epoch; receipts are an hour apart from epoch +
			// 1 h, so the events after until are all older than the
			// live subscription's first receipt.
			follow(t, follower(f, &clock{t: epoch, step: time.Hour}), since, rec)
			rep := next(t, "the bounded replay to be over", rec.caught)
			if rep.N != tt.wantN || !rep.Oldest.Equal(tt.wantOldest) || !rep.Subscribed.Equal(epoch) {
				t.Errorf("caught up with %+v; want %d events, the oldest at %v, up to %v", rep, tt.wantN, tt.wantOldest, epoch)
			}
			if tt.wantBoth != 0 {
				both := next(t, "the second call", rec.caught)
				if both.N != tt.wantBoth || !both.Oldest.Equal(tt.wantOldest) || !both.Since.Equal(since) || !both.Subscribed.Equal(epoch) {
					t.Errorf("second call %+v; want %d events, the oldest at %v", both, tt.wantBoth, tt.wantOldest)
				}
			}
			// Once two live events are handed over, every call the
			// replay could cause has been made.
			f.publish(dated("live1", epoch.Add(1000*time.Hour)), dated("live2", epoch.Add(1001*time.Hour)))
			var gap int
			for e := next(t, "an event", rec.events); e.Actor.ID != "live2"; e = next(t, "an event", rec.events) {
				if strings.HasPrefix(e.Actor.ID, "gap") {
					gap++
					if !e.Replayed {
						t.Errorf("%s not marked replayed", e.Actor.ID)
					}
				}
				if e.Actor.ID == "live1" && e.Replayed {
					t.Errorf("live1 marked replayed")
				}
			}
			if gap != tt.after {
				t.Errorf("%d events after until handed over, want %d", gap, tt.after)
			}
			if n := len(rec.caught); n != 0 {
				t.Errorf("%d more calls to CaughtUp: %+v", n, <-rec.caught)
			}
		})
	}
}

func equalBools(a, b []bool) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return len(a) == len(b)
}

func TestFollowHandsOverLiveEventsInTheOrderTheEngineSentThem(t *testing.T) {
	f := newFake(t)
	rec := newRecorder()
	follow(t, follower(f, &clock{t: epoch}), epoch.Add(-time.Minute), rec)
	next(t, "the replay to be over", rec.caught)
	var ids []string
	for i := range 50 {
		m := dated(string(rune('a'+i%26))+strings.Repeat("'", i/26), epoch.Add(time.Duration(50-i)*time.Second))
		// The first is dated, after the subscription: the live
		// subscription has replayed nothing.
		if i%7 == 3 {
			m = undated(m.Actor.ID)
		}
		ids = append(ids, m.Actor.ID)
		f.publish(m)
	}
	for i, want := range ids {
		if e := next(t, "a live event", rec.events); e.Actor.ID != want || e.Replayed {
			t.Fatalf("event %d is %s (replayed %v), want %s, live", i, e.Actor.ID, e.Replayed, want)
		}
	}
}

func TestFollowResubscribesFromTheNewestDatedEventAfterTheStreamBreaks(t *testing.T) {
	tests := []struct {
		name    string
		end     error
		wantErr string
	}{
		{"an engine that ends the stream closed it", io.EOF, "the engine closed it"},
		{"a stream that fails says why", io.ErrUnexpectedEOF, "unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			rec := newRecorder()
			// Receipts an hour apart: the undated event is received
			// after the newest dated one happened.
			c := &clock{t: epoch, step: time.Hour}
			follow(t, follower(f, c), epoch.Add(-time.Minute), rec)
			next(t, "the first replay to be over", rec.caught)
			newest := epoch.Add(time.Hour)
			f.publish(dated("older", epoch.Add(time.Minute)), dated("newest", newest), dated("late", epoch.Add(30*time.Minute)), undated("undated"))
			for range 4 {
				next(t, "a live event", rec.events)
			}
			f.breakStreams(tt.end)
			b := next(t, "the break", rec.broken)
			if b.err == nil || b.err.Error() != tt.wantErr || b.retry != time.Nanosecond {
				t.Errorf("broken: %v, retry in %v; want %q, at the shortest backoff after a subscription that caught up", b.err, b.retry, tt.wantErr)
			}
			rep := next(t, "the second replay to be over", rec.caught)
			if !rep.Since.Equal(newest) {
				t.Errorf("resubscribed since %v, want the newest dated event's time %v (not an undated receipt, nor the last event's)", rep.Since, newest)
			}
			// Each subscription is a bounded replay and the live events.
			if subs := f.subscriptions(); len(subs) != 4 || subs[2].Since != unixNano(newest) || subs[2].Until == "" {
				t.Errorf("subscriptions %+v, want a second one replaying since %s", subs, unixNano(newest))
			}
		})
	}
}

func TestFollowWaitsLongerAfterEachFailedSubscriptionAndNoLongerOnceOneCatchesUp(t *testing.T) {
	f := newFake(t)
	down := errors.New("Cannot connect to the Docker daemon")
	f.pingErrs = []error{down, down, down, down, down}
	rec := newRecorder()
	follow(t, follower(f, &clock{t: epoch}), epoch, rec)
	var retries []time.Duration
	for range 5 {
		b := next(t, "a failed subscription", rec.broken)
		if !strings.Contains(b.err.Error(), "negotiate the engine's API version: Cannot connect") {
			t.Errorf("broken: %v, want the negotiation's error", b.err)
		}
		retries = append(retries, b.retry)
	}
	want := []time.Duration{1, 2, 4, 4, 4}
	for i := range want {
		if retries[i] != want[i] {
			t.Fatalf("retries %v, want %v", retries, want)
		}
	}
	next(t, "a subscription to catch up", rec.caught)
	f.breakStreams(io.ErrUnexpectedEOF)
	if b := next(t, "the break", rec.broken); b.retry != time.Nanosecond {
		t.Errorf("retry in %v after a subscription that caught up, want the shortest backoff", b.retry)
	}
}

func TestFollowListsFirstAndCatchesUpOnlyOnceTheSeedHasListed(t *testing.T) {
	f := newFake(t)
	f.log = []events.Message{dated("a", epoch.Add(-time.Second))}
	release, listing := make(chan struct{}), make(chan struct{}, 1)
	var seeds int
	fl := follower(f, &clock{t: epoch})
	fl.Seed = func(ctx context.Context) error {
		seeds++
		if seeds == 1 {
			return errors.New("list what is there: boom")
		}
		listing <- struct{}{}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	rec := newRecorder()
	follow(t, fl, epoch.Add(-time.Minute), rec)

	if b := next(t, "the first seed's failure", rec.broken); b.err == nil || b.err.Error() != "list what is there: boom" {
		t.Errorf("broken: %v, want the seed's error as it is", b.err)
	}
	next(t, "the second seed to list", listing)
	// The replay reaches past the listing: it is asked for only once the
	// seed has returned.
	if subs := f.subscriptions(); len(subs) != 0 {
		t.Errorf("subscriptions %+v while the seed lists, want none yet", subs)
	}
	select {
	case rep := <-rec.caught:
		t.Fatalf("caught up (%+v) while the seed was listing", rep)
	default:
	}
	close(release)
	if rep := next(t, "the subscription to catch up", rec.caught); rep.N != 1 {
		t.Errorf("caught up with %+v, want the one event replayed", rep)
	}
}

func TestFollowStopsWhenItsContextEnds(t *testing.T) {
	tests := []struct {
		name string
		// setup prepares the engine and follower, and returns what to
		// wait for before ending the context.
		setup func(f *fakeEngine, fl *Follower, rec *recorder) (what string, reached <-chan struct{})
	}{
		{"while it reads a stream", func(f *fakeEngine, fl *Follower, rec *recorder) (string, <-chan struct{}) {
			return "the replay to be over", signal(func() { <-rec.caught })
		}},
		{"while it negotiates with an engine that does not answer", func(f *fakeEngine, fl *Follower, rec *recorder) (string, <-chan struct{}) {
			f.pingHang, f.pinged = make(chan struct{}), make(chan struct{}, 1)
			fl.Timeout = time.Hour
			return "the ping", signal(func() { <-f.pinged })
		}},
		{"while it waits to subscribe again", func(f *fakeEngine, fl *Follower, rec *recorder) (string, <-chan struct{}) {
			f.pingErr = errors.New("connection refused")
			fl.MinBackoff, fl.MaxBackoff = time.Hour, time.Hour
			return "the failure", signal(func() { <-rec.broken })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			fl := follower(f, &clock{t: epoch})
			rec := newRecorder()
			what, reached := tt.setup(f, fl, rec)
			stop, done := follow(t, fl, epoch, rec)
			next(t, what, reached)
			stop()
			next(t, "Follow to return", done)
		})
	}
	t.Run("while its seed lists, and the seed first", func(t *testing.T) {
		f := newFake(t)
		fl := follower(f, &clock{t: epoch})
		started, returned := make(chan struct{}), make(chan struct{})
		fl.Seed = func(ctx context.Context) error {
			close(started)
			<-ctx.Done()
			close(returned)
			return ctx.Err()
		}
		stop, done := follow(t, fl, epoch, newRecorder())
		next(t, "the seed to start", started)
		stop()
		next(t, "Follow to return", done)
		select {
		case <-returned:
		default:
			t.Error("Follow returned before its seed")
		}
	})
}

// signal closes the channel it returns once wait has returned.
func signal(wait func()) <-chan struct{} {
	ch := make(chan struct{})
	go func() { defer close(ch); wait() }()
	return ch
}

func TestReplay(t *testing.T) {
	since := epoch.Add(-90 * time.Second)
	log := []events.Message{dated("before", epoch.Add(-2*time.Minute)), dated("a", epoch.Add(-time.Minute)),
		undated("u"), dated("b", epoch.Add(-30*time.Second))}
	tests := []struct {
		name      string
		until     time.Time
		untilErr  error
		wantIDs   []string
		wantN     int
		wantEarly bool
		wantErr   string
	}{
		{"hands over the range in order, every event replayed, and counts it",
			epoch.Add(time.Hour), nil, []string{"a", "u", "b"}, 3, true, ""},
		{"an until already past when it subscribes is early",
			epoch.Add(-time.Second), nil, []string{"a", "u", "b"}, 3, true, ""},
		{"a stream that breaks is an error",
			epoch.Add(time.Hour), io.ErrUnexpectedEOF, []string{"a", "u", "b"}, 3, false, "unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.log, f.untilErr = log, tt.untilErr
			var got []Event
			rep, err := follower(f, &clock{t: epoch}).Replay(context.Background(), since, tt.until, func(e Event) { got = append(got, e) })
			if (err == nil) != (tt.wantErr == "") || (err != nil && err.Error() != tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			var ids []string
			for _, e := range got {
				ids = append(ids, e.Actor.ID)
				if !e.Replayed {
					t.Errorf("event %s not marked replayed", e.Actor.ID)
				}
				if e.Actor.ID == "u" && (e.Dated || !e.At.Equal(epoch)) {
					t.Errorf("undated event at %v (dated %v), want its receipt %v", e.At, e.Dated, epoch)
				}
			}
			if strings.Join(ids, " ") != strings.Join(tt.wantIDs, " ") {
				t.Errorf("events %v, want %v", ids, tt.wantIDs)
			}
			if err != nil {
				return
			}
			if rep.N != tt.wantN || !rep.Oldest.Equal(epoch.Add(-time.Minute)) || rep.Early != tt.wantEarly {
				t.Errorf("replay = %+v; want %d events, oldest %v, early %v", rep, tt.wantN, epoch.Add(-time.Minute), tt.wantEarly)
			}
			if subs := f.subscriptions(); len(subs) != 1 || subs[0].Since != unixNano(since) || subs[0].Until != unixNano(tt.until) {
				t.Errorf("subscriptions %+v, want one from %s to %s", subs, unixNano(since), unixNano(tt.until))
			}
		})
	}
	t.Run("ends with its context", func(t *testing.T) {
		f := newFake(t)
		f.hold = make(chan struct{})
		ctx, cancel := context.WithCancel(context.Background())
		fl := follower(f, &clock{t: epoch})
		done := make(chan error, 1)
		go func() {
			_, err := fl.Replay(ctx, since, epoch.Add(time.Hour), func(Event) {})
			done <- err
		}()
		cancel()
		if err := next(t, "Replay to return", done); !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want the context's", err)
		}
	})
}

// The runs tracker and the reclaimer both read the engine's events through
// Follow (while watching) and Replay (for one pass); an undated event must
// come out of both with the same time, its receipt.
func TestFollowAndReplayDateAnUndatedEventAtItsReceipt(t *testing.T) {
	f := newFake(t)
	f.log = []events.Message{undated("u")}
	rec := newRecorder()
	follow(t, follower(f, &clock{t: epoch}), epoch.Add(-time.Minute), rec)
	followed := next(t, "the followed event", rec.events)
	var replayed Event
	if _, err := follower(f, &clock{t: epoch}).Replay(context.Background(), epoch.Add(-time.Minute), epoch, func(e Event) { replayed = e }); err != nil {
		t.Fatal(err)
	}
	for _, e := range []Event{followed, replayed} {
		if e.Actor.ID != "u" || e.Dated || !e.At.Equal(epoch) {
			t.Errorf("event %s at %v (dated %v), want u at its receipt %v", e.Actor.ID, e.At, e.Dated, epoch)
		}
	}
}

// An engine under load can take longer to send its replay than any quiet
// period: the follower must count the whole replay however late it comes,
// and catch up only then. The fake holds every stream until the test opens
// the gate; nothing else is timed.
func TestFollowCountsTheWholeReplayHoweverLateTheEngineSendsIt(t *testing.T) {
	since := epoch.Add(-time.Minute)
	f := newFake(t)
	for i := range 5 {
		f.log = append(f.log, dated(string(rune('a'+i)), since.Add(time.Duration(i+1)*time.Second)))
	}
	f.gate, f.told = make(chan struct{}), make(chan client.EventsListOptions, 16)
	rec := newRecorder()
	follow(t, follower(f, &clock{t: epoch, step: time.Millisecond}), since, rec)
	next(t, "the first subscription", f.told)
	// Far longer than the 100 ms of quiet the follower once took for the
	// replay's end: the engine has sent nothing yet.
	select {
	case rep := <-rec.caught:
		t.Fatalf("caught up (%+v) before the engine sent its replay", rep)
	case e := <-rec.events:
		t.Fatalf("event %s handed over before the engine sent it", e.Actor.ID)
	case <-time.After(500 * time.Millisecond):
	}
	close(f.gate)
	rep := next(t, "the replay to be over", rec.caught)
	if rep.N != 5 || !rep.Oldest.Equal(since.Add(time.Second)) || !rep.Since.Equal(since) {
		t.Errorf("replay = %+v; want all 5 events since %v counted, the oldest at %v", rep, since, since.Add(time.Second))
	}
	if got := len(rec.events); got != 5 {
		t.Fatalf("%d events handed over before catching up, want the 5 replayed", got)
	}
	for range 5 {
		if e := <-rec.events; !e.Replayed {
			t.Errorf("event %s not marked replayed", e.Actor.ID)
		}
	}
}
