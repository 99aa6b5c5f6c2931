package runs

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"

	"github.com/prune-guard/prune-guard/engine"
	"github.com/prune-guard/prune-guard/eventstream"
	"github.com/prune-guard/prune-guard/rules"
)

// fakeEngine answers the few engine endpoints the tracker uses. Its event
// log behaves like dockerd's: a subscription with since or until is first
// sent those of the last eventstream.Kept events in range, then (unless until
// has passed) the live ones.
type fakeEngine struct {
	mu         sync.Mutex
	containers []map[string]any
	services   []map[string]any
	serviceErr int // HTTP status for /services, 0 for success
	serviceMsg string
	delay      time.Duration
	pingHang   chan struct{} // while set and open, /_ping does not answer
	queries    chan string
	clock      *fakeClock // the engine's clock, for until

	log        []events.Message
	subs       map[chan events.Message]bool
	subscribed int           // subscriptions so far
	hold       chan struct{} // while set and open, /events does not answer
	gate       chan struct{} // while set and open, /events answers its headers, then sends nothing
	broken     chan struct{} // closed to break every open stream
}

func (f *fakeEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.queries != nil {
		select {
		case f.queries <- r.URL.Path + "?" + r.URL.RawQuery:
		default:
		}
	}
	w.Header().Set("Api-Version", "1.41")
	if strings.HasSuffix(r.URL.Path, "/_ping") {
		if f.pingHang != nil {
			select {
			case <-f.pingHang:
			case <-r.Context().Done():
				return
			}
		}
		w.Write([]byte("OK"))
		return
	}
	if strings.HasSuffix(r.URL.Path, "/events") {
		f.events(w, r)
		return
	}
	select {
	case <-time.After(f.delay):
	case <-r.Context().Done():
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case strings.HasSuffix(r.URL.Path, "/containers/json"):
		json.NewEncoder(w).Encode(f.containers)
	case strings.HasSuffix(r.URL.Path, "/services"):
		if f.serviceErr != 0 {
			w.WriteHeader(f.serviceErr)
			json.NewEncoder(w).Encode(map[string]string{"message": f.serviceMsg})
			return
		}
		json.NewEncoder(w).Encode(f.services)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeEngine) events(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	hold := f.hold
	f.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
	}
	since, until := parseStamp(r.FormValue("since")), parseStamp(r.FormValue("until"))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	enc := json.NewEncoder(w)
	// dockerd flushes the headers before it takes its replay, so a
	// client's Events returns before the replay is sent.
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}

	f.mu.Lock()
	var replay []events.Message
	if !since.IsZero() || !until.IsZero() {
		kept := f.log[max(0, len(f.log)-eventstream.Kept):]
		for _, m := range kept {
			// An undated event (dockerd never sends one) has no
			// time to leave it out by.
			at := time.Unix(0, m.TimeNano)
			if m.TimeNano != 0 && (at.Before(since) || (!until.IsZero() && at.After(until))) {
				continue
			}
			replay = append(replay, m)
		}
	}
	live := make(chan events.Message, 4096)
	if f.subs == nil {
		f.subs = map[chan events.Message]bool{}
	}
	f.subs[live] = true
	f.subscribed++
	if f.broken == nil {
		f.broken = make(chan struct{})
	}
	broken := f.broken
	var wait <-chan time.Time
	if !until.IsZero() {
		left := until.Sub(f.clock.Now())
		if left <= 0 {
			delete(f.subs, live)
			f.mu.Unlock()
			for _, m := range replay {
				enc.Encode(m)
			}
			return
		}
		wait = time.After(left)
	}
	f.mu.Unlock()
	defer func() { f.mu.Lock(); delete(f.subs, live); f.mu.Unlock() }()
	for _, m := range replay {
		enc.Encode(m)
	}
	w.(http.Flusher).Flush()
	for {
		select {
		case m := <-live:
			enc.Encode(m)
			w.(http.Flusher).Flush()
		case <-wait:
			return
		case <-broken:
			return
		case <-r.Context().Done():
			return
		}
	}
}

// publish logs an event and sends it to every open stream.
func (f *fakeEngine) publish(ms ...events.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range ms {
		f.log = append(f.log, m)
		for s := range f.subs {
			s <- m
		}
	}
}

// breakStreams ends every open event stream, as a dockerd restart would.
func (f *fakeEngine) breakStreams() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broken != nil {
		close(f.broken)
	}
	f.broken = make(chan struct{})
}

func (f *fakeEngine) setContainers(cs ...map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.containers = cs
}

func (f *fakeEngine) subscriptions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.subscribed
}

func parseStamp(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	sec, nsec, _ := strings.Cut(s, ".")
	a, _ := strconv.ParseInt(sec, 10, 64)
	b, _ := strconv.ParseInt(nsec, 10, 64)
	return time.Unix(a, b)
}

// fakeClock is the tracker's and the engine's clock in tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *fakeClock) Add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

// epoch is the tests' "now" when they start.
var epoch = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func newTracker(t testing.TB, f *fakeEngine) *Tracker {
	t.Helper()
	if f.clock == nil {
		f.clock = &fakeClock{t: epoch}
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c, err := engine.Open("tcp://" + strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	tr := New(c, time.Second)
	tr.now = f.clock.Now
	tr.procs = procView{why: "tests see no host processes unless they build a /proc"}
	return tr
}

func TestContainersAndServicesAreRuns(t *testing.T) {
	f := &fakeEngine{
		containers: []map[string]any{{"Id": "c1abcdef0123456789", "Names": []string{"/web-1"}, "Labels": map[string]string{"prune-guard.run": "job-7"}}},
		services:   []map[string]any{{"ID": "s1", "Spec": map[string]any{"Name": "deploy", "Labels": map[string]string{"prune-guard.run": "job-8"}}}},
		queries:    make(chan string, 16),
	}
	st := newTracker(t, f).State(context.Background(), detection(t, rules.DefaultRunLabel))
	runs, err := st.Active, st.Err
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 2 {
		t.Fatalf("runs = %v", runs)
	}
	got := map[string]bool{}
	for _, r := range runs {
		got[r.String()] = true
	}
	for _, want := range []string{"prune-guard run job-7, container web-1", "prune-guard run job-8, service deploy"} {
		if !got[want] {
			t.Errorf("missing run %q in %v", want, runs)
		}
	}
	close(f.queries)
	var containerQuery string
	for q := range f.queries {
		if strings.Contains(q, "/containers/json") {
			containerQuery = q
		}
	}
	for _, want := range []string{"all=1", "running", "paused", "created", "restarting"} {
		if !strings.Contains(containerQuery, want) {
			t.Errorf("container query %q lacks %q", containerQuery, want)
		}
	}
	if strings.Contains(containerQuery, "exited") {
		t.Errorf("exited containers must not count as runs: %q", containerQuery)
	}
}

func TestNodeThatIsNotASwarmManagerHasNoServices(t *testing.T) {
	f := &fakeEngine{serviceErr: http.StatusServiceUnavailable,
		serviceMsg: `This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to connect this node to swarm and try again.`}
	st := newTracker(t, f).State(context.Background(), detection(t, rules.DefaultRunLabel))
	if runs, err := st.Active, st.Err; err != nil || len(runs) != 0 {
		t.Fatalf("runs %v, err %v; want none and no error", runs, err)
	}
}

func TestEngineErrorMakesTheStateUnknown(t *testing.T) {
	f := &fakeEngine{serviceErr: http.StatusInternalServerError, serviceMsg: "boom"}
	if err := newTracker(t, f).State(context.Background(), detection(t, rules.DefaultRunLabel)).Err; err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("err = %v, want the engine's error", err)
	}
}

func TestSlowEngineIsBoundedByTheTimeout(t *testing.T) {
	f := &fakeEngine{delay: time.Minute}
	start := time.Now()
	err := newTracker(t, f).State(context.Background(), detection(t, rules.DefaultRunLabel)).Err
	if err == nil {
		t.Fatal("a hung engine must make the state unknown")
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("Active waited %v on a hung engine", took)
	}
}

// The client negotiates its API version on its first request while holding a
// lock, with that request's context. A watcher whose stream lives as long as
// prune-guard must not be that request on an engine that hangs, or every
// decision would wait on the lock for as long as the engine hangs.
func TestWatcherOnAHangingEngineDoesNotHoldDecisionsBack(t *testing.T) {
	hang := make(chan struct{})
	release := sync.OnceFunc(func() { close(hang) })
	defer release()
	// Without the bound, the decision would wait for ever; end the hang
	// after a while so the test fails rather than stalls.
	time.AfterFunc(40*time.Second, release)
	f := &fakeEngine{pingHang: hang, queries: make(chan string, 64)}
	tr := newTracker(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tr.Watch(ctx, func() rules.Detection { return detection(t, rules.DefaultRunLabel) })
	for q := range f.queries {
		if strings.Contains(q, "/_ping") {
			break // the watcher is negotiating with the hung engine
		}
	}
	start := time.Now()
	if err := tr.State(context.Background(), detection(t, rules.DefaultRunLabel)).Err; err == nil {
		t.Fatal("a hung engine must make the state unknown")
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Fatalf("a decision waited %v behind the watcher on a hung engine", took)
	}
}

func TestSameContainerUnderTwoLabelsCountsOnce(t *testing.T) {
	f := &fakeEngine{containers: []map[string]any{{"Id": "c1", "Names": []string{"/a"}, "Labels": map[string]string{"ci": "1", "job": "2"}}}}
	st := newTracker(t, f).State(context.Background(), detection(t, "ci", "job=2"))
	if runs, err := st.Active, st.Err; err != nil || len(runs) != 1 {
		t.Fatalf("runs %v err %v", runs, err)
	}
}

// detection enables only the prune-guard detector, with these run labels.
func detection(t *testing.T, labels ...string) rules.Detection {
	t.Helper()
	off := map[string]string{}
	for _, b := range rules.Builtins() {
		if b.Name != rules.PruneGuardDetector {
			off[b.Name] = "off"
		}
	}
	d, err := rules.NewDetection(rules.DetectionSettings{Labels: labels, Switches: off})
	if err != nil {
		t.Fatal(err)
	}
	return d
}
