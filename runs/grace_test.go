package runs

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"

	"github.com/prune-guard/prune-guard/eventstream"
	"github.com/prune-guard/prune-guard/rules"
)

const grace = 2 * time.Minute

// graceDetection enables only the prune-guard detector (on containers and
// services), with the default run label and this grace.
func graceDetection(t *testing.T, g time.Duration) rules.Detection {
	t.Helper()
	d := detection(t, rules.DefaultRunLabel)
	d.Grace = g
	return d
}

func jobContainer(id, job string) map[string]any {
	return map[string]any{"Id": id, "Names": []string{"/" + id + "-name"}, "Labels": map[string]string{rules.DefaultRunLabel: job}}
}

// containerEvent is what dockerd sends about a container: its labels,
// name and image among the attributes.
func containerEvent(action events.Action, id, job string, at time.Time) events.Message {
	attrs := map[string]string{"name": id + "-name", "image": "alpine:3", "exitCode": "0"}
	if job != "" {
		attrs[rules.DefaultRunLabel] = job
	}
	return events.Message{Type: events.ContainerEventType, Action: action, Actor: events.Actor{ID: id, Attributes: attrs},
		Time: at.Unix(), TimeNano: at.UnixNano()}
}

// otherEvents are n events that say nothing about jobs, one a millisecond
// from start.
func otherEvents(n int, start time.Time) []events.Message {
	out := make([]events.Message, n)
	for i := range out {
		at := start.Add(time.Duration(i) * time.Millisecond)
		out[i] = events.Message{Type: events.NetworkEventType, Action: events.ActionConnect,
			Actor: events.Actor{ID: fmt.Sprint("net", i)}, Time: at.Unix(), TimeNano: at.UnixNano()}
	}
	return out
}

// watch runs tr.Watch until the test ends.
func watch(t *testing.T, tr *Tracker, d rules.Detection) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); tr.Watch(ctx, func() rules.Detection { return d }) }()
	t.Cleanup(func() { cancel(); <-done })
}

// caughtUp reports whether a running Watch receives events and has read the
// engine's replay.
func caughtUp(tr *Tracker) bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.watching && tr.cov.down == ""
}

// waitFor waits (without a time limit of its own: the test binary's bounds
// it) until cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for start := time.Now(); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("still waiting for %s", what)
		}
	}
}

// goneAt is when the tracker's memory says the container went (zero if it
// is not known gone).
func goneAt(tr *Tracker, id string) time.Time {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if e := tr.mem.entries[key{rules.Container, id}]; e != nil && e.precise {
		return e.gone
	}
	return time.Time{}
}

func endedNames(st rules.RunState) []string {
	var out []string
	for _, r := range st.Ended {
		out = append(out, r.Name)
	}
	return out
}

func TestJobContainerThatDiedIsEndedFromItsEventForTheGraceThenForgotten(t *testing.T) {
	f := &fakeEngine{containers: []map[string]any{jobContainer("c1", "job-7")}}
	tr := newTracker(t, f)
	d := graceDetection(t, grace)
	watch(t, tr, d)
	waitFor(t, "the watch to catch up", func() bool { return caughtUp(tr) })

	f.clock.Add(10 * time.Second)
	died := epoch.Add(5 * time.Second)
	f.setContainers()
	f.publish(containerEvent(events.ActionDie, "c1", "job-7", died), containerEvent(events.ActionDestroy, "c1", "job-7", died.Add(time.Second)))
	waitFor(t, "the die event", func() bool { return !goneAt(tr, "c1").IsZero() })

	st := tr.State(context.Background(), d)
	if st.Err != nil || st.Blind != nil || len(st.Active) != 0 || len(st.Ended) != 1 {
		t.Fatalf("state = %+v, want c1 ended alone", st)
	}
	r := st.Ended[0]
	if !r.Ended.Equal(died) || r.Job != "job-7" || r.Name != "c1-name" {
		t.Errorf("ended run = %+v, want job-7's c1-name ended at its die event %v", r, died)
	}
	if !r.InScope([]string{rules.DefaultRunLabel + "=job-7"}) || r.InScope([]string{"image"}) {
		t.Errorf("ended run's labels %v: want the container's labels only, for label scopes", r.Labels)
	}

	f.clock.Add(died.Add(grace).Sub(f.clock.Now()) - time.Second)
	if st := tr.State(context.Background(), d); len(st.Ended) != 1 {
		t.Errorf("a second before the grace runs out: ended %v, want c1", endedNames(st))
	}
	f.clock.Add(2 * time.Second)
	if st := tr.State(context.Background(), d); len(st.Ended) != 0 || st.Blind != nil {
		t.Errorf("after the grace: ended %v, blind %v; want nothing", endedNames(st), st.Blind)
	}
	f.clock.Add(grace + keepMargin)
	tr.State(context.Background(), d)
	tr.mu.Lock()
	left := len(tr.mem.entries)
	tr.mu.Unlock()
	if left != 0 {
		t.Errorf("%d objects remembered long after the grace, want none", left)
	}
}

func TestContainerGoneFromTheListingIsEndedWhenNoticedEvenWithoutItsEvent(t *testing.T) {
	f := &fakeEngine{containers: []map[string]any{jobContainer("c1", "job-7")}}
	tr := newTracker(t, f)
	d := graceDetection(t, grace)
	watch(t, tr, d)
	waitFor(t, "the watch to catch up", func() bool { return caughtUp(tr) })
	f.clock.Add(10 * time.Second)
	f.setContainers() // its die event is lost, or not read yet
	st := tr.State(context.Background(), d)
	if len(st.Ended) != 1 || !st.Ended[0].Ended.Equal(f.clock.Now()) {
		t.Fatalf("ended %+v, want c1 ended when the listing stopped showing it (%v)", st.Ended, f.clock.Now())
	}
}

func TestJobWithAnotherLiveContainerIsNotEnded(t *testing.T) {
	f := &fakeEngine{containers: []map[string]any{jobContainer("c1", "job-7"), jobContainer("c2", "job-7")}}
	tr := newTracker(t, f)
	d := graceDetection(t, grace)
	watch(t, tr, d)
	waitFor(t, "the watch to catch up", func() bool { return caughtUp(tr) })
	f.clock.Add(time.Second)
	f.setContainers(jobContainer("c2", "job-7"))
	f.publish(containerEvent(events.ActionDie, "c1", "job-7", f.clock.Now()))
	waitFor(t, "the die event", func() bool { return !goneAt(tr, "c1").IsZero() })
	st := tr.State(context.Background(), d)
	if len(st.Ended) != 0 || len(st.Active) != 1 || st.Active[0].Name != "c2-name" {
		t.Fatalf("active %v, ended %v; want c2 active and nothing ended while job-7 runs", st.Active, endedNames(st))
	}
}

func TestWatchIsBlindUntilItFirstReceivesTheEnginesEvents(t *testing.T) {
	f := &fakeEngine{hold: make(chan struct{})}
	tr := newTracker(t, f)
	d := graceDetection(t, grace)
	watch(t, tr, d)
	waitFor(t, "the watch to start", func() bool { tr.mu.Lock(); defer tr.mu.Unlock(); return tr.watching })
	st := tr.State(context.Background(), d)
	if st.Blind == nil || !st.Blind.Since.Equal(epoch) || !strings.Contains(st.Blind.Why, "not yet received the engine's events") {
		t.Fatalf("blind = %+v, want blind since now: not yet subscribed", st.Blind)
	}
	close(f.hold)
	waitFor(t, "the watch to catch up", func() bool { return caughtUp(tr) })
	if st := tr.State(context.Background(), d); st.Blind != nil {
		t.Fatalf("blind = %+v after a replay of the whole window", st.Blind)
	}
}

func TestReplayThatFillsTheEnginesBufferIsBlindSinceItsOldestEvent(t *testing.T) {
	// 300 events within the window: dockerd keeps the last 256.
	f := &fakeEngine{}
	tr := newTracker(t, f)
	f.publish(otherEvents(300, epoch.Add(-grace/2))...)
	oldestKept := epoch.Add(-grace/2 + 44*time.Millisecond)
	d := graceDetection(t, grace)

	t.Run("watch", func(t *testing.T) {
		tr := newTracker(t, f)
		watch(t, tr, d)
		waitFor(t, "the watch to catch up", func() bool { return caughtUp(tr) })
		st := tr.State(context.Background(), d)
		if st.Blind == nil || !st.Blind.Since.Equal(oldestKept) || !strings.Contains(st.Blind.Why, "256") {
			t.Fatalf("blind = %+v, want since the oldest replayed event %v", st.Blind, oldestKept)
		}
	})
	t.Run("one-shot", func(t *testing.T) {
		st := tr.State(context.Background(), d)
		if st.Err != nil || st.Blind == nil || !st.Blind.Since.Equal(oldestKept) {
			t.Fatalf("state = %+v, want blind since the oldest replayed event %v", st, oldestKept)
		}
	})
}

func TestReplayShorterThanTheEnginesBufferCoversTheWindow(t *testing.T) {
	f := &fakeEngine{}
	tr := newTracker(t, f)
	f.publish(otherEvents(eventstream.Kept-1, epoch.Add(-grace/2))...)
	if st := tr.State(context.Background(), graceDetection(t, grace)); st.Err != nil || st.Blind != nil {
		t.Fatalf("state = %+v, want no blind stretch", st)
	}
}

func TestBrokenStreamIsBlindUntilTheReconnectionsReplayBridgesIt(t *testing.T) {
	f := &fakeEngine{containers: []map[string]any{jobContainer("c1", "job-7")}}
	tr := newTracker(t, f)
	d := graceDetection(t, grace)
	watch(t, tr, d)
	waitFor(t, "the watch to catch up", func() bool { return caughtUp(tr) })
	f.clock.Add(time.Second)
	f.publish(otherEvents(1, f.clock.Now())...) // the last event before the break

	f.mu.Lock()
	f.hold = make(chan struct{})
	f.mu.Unlock()
	f.breakStreams()
	waitFor(t, "the break to be noticed", func() bool { return !caughtUp(tr) })
	f.clock.Add(time.Second)
	st := tr.State(context.Background(), d)
	if st.Blind == nil || !st.Blind.Since.Equal(f.clock.Now()) || !strings.Contains(st.Blind.Why, "event stream broke at") {
		t.Fatalf("blind = %+v, want blind since now: the stream is broken", st.Blind)
	}

	// The job's container goes while nobody listens.
	died := f.clock.Now()
	f.setContainers()
	f.publish(containerEvent(events.ActionDie, "c1", "job-7", died))
	f.clock.Add(time.Second)
	close(f.hold)
	waitFor(t, "the reconnection to catch up", func() bool { return caughtUp(tr) && goneAt(tr, "c1").Equal(died) })
	st = tr.State(context.Background(), d)
	if st.Blind != nil || len(st.Ended) != 1 || !st.Ended[0].Ended.Equal(died) {
		t.Fatalf("blind %+v, ended %+v; want c1 ended at %v from the replay, nothing blind", st.Blind, st.Ended, died)
	}
	if n := f.subscriptions(); n < 2 {
		t.Errorf("%d subscriptions, want a reconnection", n)
	}
}

func TestGraceZeroReportsNothingEndedAndAsksNoEvents(t *testing.T) {
	f := &fakeEngine{queries: make(chan string, 16)}
	tr := newTracker(t, f)
	f.publish(containerEvent(events.ActionDie, "c1", "job-7", epoch.Add(-time.Second)))
	f.publish(otherEvents(300, epoch.Add(-time.Minute))...)
	st := tr.State(context.Background(), graceDetection(t, 0))
	if st.Err != nil || len(st.Ended) != 0 || st.Blind != nil {
		t.Fatalf("state = %+v, want nothing ended and nothing blind", st)
	}
	close(f.queries)
	for q := range f.queries {
		if strings.Contains(q, "/events") {
			t.Errorf("grace 0 replayed events: %s", q)
		}
	}
}

func TestOneShotStateReplaysTheGraceWindow(t *testing.T) {
	f := &fakeEngine{containers: []map[string]any{jobContainer("c3", "job-9")}}
	tr := newTracker(t, f)
	died := epoch.Add(-30 * time.Second)
	f.publish(
		containerEvent(events.ActionDie, "old", "job-1", epoch.Add(-grace-time.Second)), // before the window
		containerEvent(events.ActionCreate, "c1", "job-7", died.Add(-time.Minute)),
		containerEvent(events.ActionStart, "c1", "job-7", died.Add(-time.Minute)),
		containerEvent(events.ActionDie, "c1", "job-7", died),
		containerEvent(events.ActionDestroy, "c1", "job-7", died.Add(time.Second)),
		containerEvent(events.ActionDie, "web", "", died),     // not a job's
		containerEvent(events.ActionDie, "c2", "job-9", died), // job-9 still runs in c3
	)
	st := tr.State(context.Background(), graceDetection(t, grace))
	if st.Err != nil || st.Blind != nil {
		t.Fatalf("state = %+v", st)
	}
	if len(st.Ended) != 1 || st.Ended[0].ID != "c1" || !st.Ended[0].Ended.Equal(died) {
		t.Fatalf("ended = %+v, want only c1, ended at its die event %v", st.Ended, died)
	}
}

func TestRemovingALongExitedJobContainerEndsNothing(t *testing.T) {
	// A janitor's container prune of job containers that exited before the
	// window must not hold the image prune that follows it.
	f := &fakeEngine{}
	tr := newTracker(t, f)
	f.publish(containerEvent(events.ActionDestroy, "c1", "job-7", epoch.Add(-time.Second)))
	if st := tr.State(context.Background(), graceDetection(t, grace)); st.Err != nil || len(st.Ended) != 0 || st.Blind != nil {
		t.Fatalf("state = %+v, want nothing ended", st)
	}
}

func TestRemovingAJobContainerThatNeverStartedEndsItThen(t *testing.T) {
	f := &fakeEngine{}
	tr := newTracker(t, f)
	removed := epoch.Add(-time.Second)
	f.publish(containerEvent(events.ActionCreate, "c1", "job-7", epoch.Add(-time.Minute)),
		containerEvent(events.ActionDestroy, "c1", "job-7", removed))
	st := tr.State(context.Background(), graceDetection(t, grace))
	if len(st.Ended) != 1 || !st.Ended[0].Ended.Equal(removed) {
		t.Fatalf("ended = %+v, want c1 ended at its removal", st.Ended)
	}
}

func TestServiceRemovedBeforeItsLabelsWereSeenIsBlind(t *testing.T) {
	f := &fakeEngine{}
	tr := newTracker(t, f)
	removed := epoch.Add(-10 * time.Second)
	f.publish(events.Message{Type: events.ServiceEventType, Action: events.ActionRemove,
		Actor: events.Actor{ID: "s1", Attributes: map[string]string{"name": "deploy"}}, TimeNano: removed.UnixNano()})
	st := tr.State(context.Background(), graceDetection(t, grace))
	if st.Blind == nil || !st.Blind.Since.Equal(removed) || !strings.Contains(st.Blind.Why, "deploy") {
		t.Fatalf("blind = %+v, want since the removal of a service whose labels nobody saw", st.Blind)
	}
}

func TestEngineThatDoesNotAnswerTheReplayMakesTheStateUnknown(t *testing.T) {
	f := &fakeEngine{hold: make(chan struct{})}
	tr := newTracker(t, f)
	st := tr.State(context.Background(), graceDetection(t, grace))
	if st.Err == nil || !strings.Contains(st.Err.Error(), "ended within the grace") {
		t.Fatalf("err = %v, want the state unknown", st.Err)
	}
}

func TestMemoryStaysBoundedUnderABurstOfEndedJobs(t *testing.T) {
	m := newMemory()
	now := epoch
	for i := range 3 * maxEntries {
		at := epoch.Add(time.Duration(i) * time.Millisecond)
		m.ended(rules.Object{Kind: rules.Container, ID: fmt.Sprint("c", i), Labels: map[string]string{rules.DefaultRunLabel: "burst"}}, at, now, false)
	}
	if n := len(m.entries); n > maxEntries {
		t.Fatalf("%d objects remembered, want at most %d", n, maxEntries)
	}
	if !m.floor.After(epoch) || !strings.Contains(m.floorWhy, "forgot") {
		t.Fatalf("floor %v (%s): forgetting must make the forgotten stretch blind", m.floor, m.floorWhy)
	}
	tr := &Tracker{mem: m, now: func() time.Time { return now }}
	d := detection(t, rules.DefaultRunLabel)
	d.Grace = grace
	if b := tr.blindLocked(d, now.Add(time.Minute), false); b == nil || !b.Since.Equal(m.floor) {
		t.Fatalf("blind = %+v, want since the last forgotten end %v", b, m.floor)
	}
}

func TestDecodeKeepsOnlyLabelsOfContainerEvents(t *testing.T) {
	tests := []struct {
		name string
		m    events.Message
		kind evKind
		want rules.Object
	}{
		{"die", containerEvent(events.ActionDie, "c1", "j", epoch), evDied,
			rules.Object{Kind: rules.Container, ID: "c1", Name: "c1-name", Labels: map[string]string{rules.DefaultRunLabel: "j"}}},
		{"start", containerEvent(events.ActionStart, "c1", "", epoch), evStarted,
			rules.Object{Kind: rules.Container, ID: "c1", Name: "c1-name", Labels: map[string]string{}}},
		{"exec_die is not the container's", containerEvent("exec_die", "c1", "j", epoch), evIgnored, rules.Object{}},
		{"no actor", events.Message{Type: events.ContainerEventType, Action: events.ActionDie}, evIgnored, rules.Object{}},
		{"service removal", events.Message{Type: events.ServiceEventType, Action: events.ActionRemove,
			Actor: events.Actor{ID: "s1", Attributes: map[string]string{"name": "web"}}}, evServiceRemoved,
			rules.Object{Kind: rules.Service, ID: "s1", Name: "web"}},
		{"image delete", events.Message{Type: events.ImageEventType, Action: events.ActionDelete, Actor: events.Actor{ID: "sha256:1"}}, evIgnored, rules.Object{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, kind := decode(tt.m)
			if kind != tt.kind || fmt.Sprint(o) != fmt.Sprint(tt.want) {
				t.Errorf("decode = %+v, %v; want %+v, %v", o, kind, tt.want, tt.kind)
			}
		})
	}
}

// undatedEvent is e without the time dockerd always sets.
func undatedEvent(e events.Message) events.Message {
	e.Time, e.TimeNano = 0, 0
	return e
}

func TestUndatedEventOfAJobsEndEndsItWhenReceived(t *testing.T) {
	tests := []struct {
		name  string
		watch bool
	}{
		{"while watching", true},
		{"in a one-shot replay", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeEngine{containers: []map[string]any{jobContainer("c1", "job-7")}}
			tr := newTracker(t, f)
			d := graceDetection(t, grace)
			if tt.watch {
				watch(t, tr, d)
				waitFor(t, "the watch to catch up", func() bool { return caughtUp(tr) })
			}
			f.clock.Add(10 * time.Second)
			received := f.clock.Now()
			f.setContainers()
			f.publish(undatedEvent(containerEvent(events.ActionDie, "c1", "job-7", epoch)))
			if tt.watch {
				waitFor(t, "the undated die event", func() bool { return !goneAt(tr, "c1").IsZero() })
				// Noticed later by a listing, it would end later.
				f.clock.Add(5 * time.Second)
			}
			st := tr.State(context.Background(), d)
			if st.Err != nil || len(st.Ended) != 1 || !st.Ended[0].Ended.Equal(received) || st.Ended[0].Job != "job-7" {
				t.Fatalf("state = %+v, want job-7 ended when its undated die event was received (%v)", st, received)
			}
		})
	}
}

func TestReplayThatFillsTheEnginesBufferWithUndatedEventsIsBlindSinceTheyWereReceived(t *testing.T) {
	f := &fakeEngine{}
	tr := newTracker(t, f)
	evs := otherEvents(eventstream.Kept, epoch.Add(-grace/2))
	for i := range evs {
		evs[i] = undatedEvent(evs[i])
	}
	f.publish(evs...)
	d := graceDetection(t, grace)

	t.Run("watch", func(t *testing.T) {
		tr := newTracker(t, f)
		watch(t, tr, d)
		waitFor(t, "the watch to catch up", func() bool { return caughtUp(tr) })
		st := tr.State(context.Background(), d)
		if st.Blind == nil || !st.Blind.Since.Equal(epoch) || !strings.Contains(st.Blind.Why, "256") {
			t.Fatalf("blind = %+v, want since the replay was received %v", st.Blind, epoch)
		}
	})
	t.Run("one-shot", func(t *testing.T) {
		st := tr.State(context.Background(), d)
		if st.Err != nil || st.Blind == nil || !st.Blind.Since.Equal(epoch) {
			t.Fatalf("state = %+v, want blind since the replay was received %v", st, epoch)
		}
	})
}

// A prune-guard (re)started after a job ended and more than 256 events
// followed must say it cannot tell, however late the engine sends its
// replay: on a loaded machine that can be far longer than the 100 ms of
// quiet the follower once took for the replay's end, after which it counted
// none, judged the window covered and let image deletes through.
func TestSlowReplayOfAFullBufferAfterAJobsEndIsBlind(t *testing.T) {
	f := &fakeEngine{gate: make(chan struct{}), queries: make(chan string, 64)}
	tr := newTracker(t, f)
	died := epoch.Add(-grace / 2)
	f.publish(containerEvent(events.ActionDie, "c1", "job-7", died))
	f.publish(otherEvents(300, died.Add(time.Second))...)
	oldestKept := died.Add(time.Second + 44*time.Millisecond)
	d := graceDetection(t, grace)
	watch(t, tr, d)
	for q := range f.queries {
		if strings.Contains(q, "/events") {
			break // the engine holds the subscription's replay
		}
	}
	// The engine sends nothing for far longer than 100 ms.
	<-time.After(500 * time.Millisecond)
	if st := tr.State(context.Background(), d); st.Blind == nil || !strings.Contains(st.Blind.Why, "not yet received the engine's events") {
		t.Fatalf("blind = %+v while the engine holds its replay, want blind: not yet received", st.Blind)
	}
	close(f.gate)
	waitFor(t, "the watch to catch up", func() bool { return caughtUp(tr) })
	st := tr.State(context.Background(), d)
	if st.Err != nil || st.Blind == nil || !st.Blind.Since.Equal(oldestKept) ||
		!strings.Contains(st.Blind.Why, "the engine keeps only its last 256 events and prune-guard missed those before ") {
		t.Fatalf("state = %+v (blind %+v), want blind since the oldest replayed event %v", st, st.Blind, oldestKept)
	}
	if len(st.Ended) != 0 {
		t.Errorf("ended %v: the job's end is no longer in the engine's buffer", endedNames(st))
	}
}
