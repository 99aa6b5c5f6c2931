package reclaim

import (
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"

	"github.com/prune-guard/prune-guard/eventstream"
	"github.com/prune-guard/prune-guard/rules"
)

// The run tracker and the reclaimer read the same engine events, each
// through eventstream; an event without a time is, to both, something that
// happened when it was received.
func TestUndatedEventIsReceivedAlikeByTheRunTrackerAndTheReclaimer(t *testing.T) {
	f, seen := lru(t)
	f.log = []events.Message{{
		Type: events.ContainerEventType, Action: events.ActionDie,
		Actor: events.Actor{ID: "c-job", Attributes: map[string]string{"name": "build-9", "image": "app-old1:1", "exitCode": "0", rules.DefaultRunLabel: "job-9"}},
	}}
	h := newHarness(t, f, seen, func(c *Config) { c.Detection = ciDetection(t, 2*time.Minute) })
	st, err := LoadState(h.r.cfg.StatePath)
	if err != nil {
		t.Fatal(err)
	}
	st.Since = ago(time.Hour) // so that the pass replays the events since
	if err := st.Save(h.r.cfg.StatePath); err != nil {
		t.Fatal(err)
	}

	res := h.once(t)
	// The tracker: job-9 ended when the replay received its die event, so
	// it is in its teardown grace.
	if r := res.Plan.Refused; !strings.HasPrefix(r, "a CI job holds image deletes: in its teardown grace: ") || !strings.Contains(r, "job-9") {
		t.Errorf("refused %q, want job-9's teardown grace", r)
	}
	// The reclaimer: the container's image was used when the replay
	// received the event (the reclaimer's clock reads now).
	st, err = LoadState(h.r.cfg.StatePath)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.Images["sha256:old1"]; !r.LastUsed.Equal(now) {
		t.Errorf("app-old1's record %+v, want it last used when the undated event was received (%v)", r, now)
	}
}

func TestWatchQueueMovesTheHorizonOnlyByTheEnginesOwnTimes(t *testing.T) {
	start := ago(time.Hour)
	dated := func(at time.Time) eventstream.Event {
		return eventstream.Received(events.Message{Type: events.ImageEventType, Action: events.ActionPull, TimeNano: at.UnixNano()}, now)
	}
	tests := []struct {
		name  string
		call  func(q *queue)
		want  time.Time
		queue int
	}{
		{"a dated event moves it to its time", func(q *queue) { q.Event(dated(ago(time.Minute))) }, ago(time.Minute), 1},
		{"an older event leaves it", func(q *queue) { q.Event(dated(ago(2 * time.Hour))) }, start, 1},
		{"an undated event is queued but leaves it: its receipt says nothing of what is in flight",
			func(q *queue) {
				q.Event(eventstream.Received(events.Message{Type: events.ImageEventType, Action: events.ActionPull}, now))
			}, start, 1},
		{"a subscription that caught up moves it to when it subscribed",
			func(q *queue) { q.CaughtUp(eventstream.Replay{Subscribed: ago(time.Second)}) }, ago(time.Second), 0},
		{"a subscription from before it leaves it",
			func(q *queue) { q.CaughtUp(eventstream.Replay{Subscribed: ago(2 * time.Hour)}) }, start, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Reclaimer{horizon: start}
			tt.call(&queue{r: r})
			if !r.horizon.Equal(tt.want) || len(r.pending) != tt.queue {
				t.Errorf("horizon %v with %d queued, want %v with %d", r.horizon, len(r.pending), tt.want, tt.queue)
			}
		})
	}
}
