package guard

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prune-guard/prune-guard/audit"
)

// Stats counts decisions since start. Reads, the bulk of all traffic, cost
// one atomic add; destructive decisions take a short lock.
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
}

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
	return Snapshot{
		Started: s.started, Reads: s.reads.Load(), EngineErrors: s.engineErrors.Load(),
		Reloads: s.reloads.Load(), Rejections: s.rejections.Load(), Decisions: d,
		LatencyCounts: append([]int64(nil), s.latency[:]...), LatencySum: s.latSum, LatencyN: s.latN,
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
