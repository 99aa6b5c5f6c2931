package runs

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/rules"
)

// fakeEngine answers the few engine endpoints the tracker uses.
type fakeEngine struct {
	containers []map[string]any
	services   []map[string]any
	serviceErr int // HTTP status for /services, 0 for success
	serviceMsg string
	delay      time.Duration
	queries    chan string
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
		w.Write([]byte("OK"))
		return
	}
	select {
	case <-time.After(f.delay):
	case <-r.Context().Done():
		return
	}
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

func newTracker(t *testing.T, f *fakeEngine) *Tracker {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	tr, err := New("tcp://"+strings.TrimPrefix(srv.URL, "http://"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
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
