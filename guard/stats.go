package guard

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/pullprogress"
)

// Stats counts decisions since start. Reads, the bulk of all traffic, cost
// one atomic add; destructive decisions and pulls take a short lock.
type Stats struct {
	started      time.Time
	reads        atomic.Int64
	engineErrors atomic.Int64
	reloads      atomic.Int64
	rejections   atomic.Int64

	mu     sync.Mutex
	byRule map[string]map[string]int64 // rule -> outcome -> count
	// latency counts destructive decisions by the first LatencyBuckets
	// bound their time is within; the last element counts those over
	// every bound.
	latency [numLatencyBuckets + 1]int64
	latSum  time.Duration
	latN    int64

	// pulls counts pulls by registry and result, holding at most
	// maxRegistries registries (a client names any registry it likes);
	// later ones are counted as OtherRegistry.
	pulls                          map[string]map[audit.PullResult]int64
	layersReused, layersDownloaded atomic.Int64
	pullBytes                      atomic.Int64
}

const (
	// maxRegistries bounds the registries metrics hold apart.
	maxRegistries = 100
	// OtherRegistry counts the pulls of registries past maxRegistries.
	OtherRegistry = "(other)"
)

const numLatencyBuckets = 8

// LatencyBuckets are the upper bounds of the decision latency histogram.
var LatencyBuckets = [numLatencyBuckets]time.Duration{
	100 * time.Microsecond, time.Millisecond, 5 * time.Millisecond, 25 * time.Millisecond,
	100 * time.Millisecond, 500 * time.Millisecond, time.Second, 5 * time.Second,
}

func newStats() *Stats {
	return &Stats{started: time.Now(), byRule: map[string]map[string]int64{}}
}

func (s *Stats) allowRead()   { s.reads.Add(1) }
func (s *Stats) engineError() { s.engineErrors.Add(1) }

// PolicyLoaded counts a policy loaded after start.
func (s *Stats) PolicyLoaded() { s.reloads.Add(1) }

// PolicyRejected counts a policy file that did not load.
func (s *Stats) PolicyRejected() { s.rejections.Add(1) }

// pull counts a pull.
func (s *Stats) pull(registry string, result audit.PullResult) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pulls == nil {
		s.pulls = map[string]map[audit.PullResult]int64{}
	}
	m := s.pulls[registry]
	if m == nil {
		if len(s.pulls) >= maxRegistries {
			registry = OtherRegistry
			m = s.pulls[registry]
		}
		if m == nil {
			m = map[audit.PullResult]int64{}
			s.pulls[registry] = m
		}
	}
	m[result]++
}

// pullProgress counts what a relayed pull's progress stream reported.
func (s *Stats) pullProgress(r pullprogress.Result) {
	s.layersReused.Add(r.LayersReused)
	s.layersDownloaded.Add(r.LayersDownloaded)
	s.pullBytes.Add(r.BytesDownloaded)
}

func (s *Stats) count(decision audit.Outcome, rule string, took time.Duration) {
	if rule == "" {
		rule = "(none)"
	}
	i := sort.Search(len(LatencyBuckets), func(i int) bool { return took <= LatencyBuckets[i] })
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.byRule[rule]
	if m == nil {
		m = map[string]int64{}
		s.byRule[rule] = m
	}
	m[string(decision)]++
	s.latency[i]++
	s.latSum += took
	s.latN++
}

// Snapshot is a copy of the counters.
type Snapshot struct {
	Started       time.Time                   `json:"started"`
	Reads         int64                       `json:"reads_allowed"`
	EngineErrors  int64                       `json:"engine_errors"`
	Reloads       int64                       `json:"policy_reloads"`
	Rejections    int64                       `json:"policy_rejections"`
	Decisions     map[string]map[string]int64 `json:"decisions"` // rule -> decision -> count
	LatencyCounts []int64                     `json:"latency_counts"`
	LatencySum    time.Duration               `json:"latency_sum_ns"`
	LatencyN      int64                       `json:"latency_n"`
	// Pulls counts image pulls: registry -> result (hit, miss,
	// unknown) -> count.
	Pulls map[string]map[string]int64 `json:"pulls"`
	// The layers and bytes of the pulls a proxy relayed.
	PullLayersReused     int64 `json:"pull_layers_reused"`
	PullLayersDownloaded int64 `json:"pull_layers_downloaded"`
	PullBytes            int64 `json:"pull_bytes"`
}

// Snapshot copies the counters.
func (s *Stats) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := make(map[string]map[string]int64, len(s.byRule))
	for r, m := range s.byRule {
		c := make(map[string]int64, len(m))
		for k, v := range m {
			c[k] = v
		}
		d[r] = c
	}
	pulls := make(map[string]map[string]int64, len(s.pulls))
	for reg, m := range s.pulls {
		c := make(map[string]int64, len(m))
		for k, v := range m {
			c[string(k)] = v
		}
		pulls[reg] = c
	}
	return Snapshot{
		Started: s.started, Reads: s.reads.Load(), EngineErrors: s.engineErrors.Load(),
		Reloads: s.reloads.Load(), Rejections: s.rejections.Load(), Decisions: d,
		LatencyCounts: append([]int64(nil), s.latency[:]...), LatencySum: s.latSum, LatencyN: s.latN,
		Pulls: pulls, PullLayersReused: s.layersReused.Load(), PullLayersDownloaded: s.layersDownloaded.Load(),
		PullBytes: s.pullBytes.Load(),
	}
}

// Total sums one decision ("allow", "deny", "would-deny") across rules.
func (s Snapshot) Total(decision string) int64 {
	var n int64
	for _, m := range s.Decisions {
		n += m[decision]
	}
	return n
}
