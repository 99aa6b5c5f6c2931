// Package runs finds the CI jobs that are active on a Docker Engine and its
// host, and those that ended within the teardown grace: the containers
// (created, running, paused or restarting), swarm services and host
// processes that a detector recognises.
//
// Live jobs are asked of the engine (and read from /proc) at the moment of a
// decision. Ended jobs are learnt from the engine's events, which can be
// dropped and which dockerd keeps only its last 256 of: so the tracker keeps
// track of from when its record is complete, and reports the rest of the
// grace window as blind rather than as "no job ended".
//
// It must never change anything on the engine, and never keep state that a
// safety decision rests on without knowing its coverage.
package runs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/client"

	"github.com/prune-guard/prune-guard/eventstream"
	"github.com/prune-guard/prune-guard/rules"
)

// activeStates are the container states that hold a run open. An exited or
// dead container is a run's leftover, not a run.
var activeStates = []string{"created", "running", "paused", "restarting"}

// Tracker asks an engine which runs are active, and remembers which ended.
type Tracker struct {
	c       Engine
	timeout time.Duration
	procs   procView
	now     func() time.Time

	mu       sync.Mutex
	mem      *memory
	watching bool // a Watch is running; otherwise State replays events itself
	cov      coverage
}

// Engine is what the tracker asks the engine: its containers, its services
// and its event stream. *engine.Client is the real one.
type Engine interface {
	ContainerList(ctx context.Context, options client.ContainerListOptions) (client.ContainerListResult, error)
	ServiceList(ctx context.Context, options client.ServiceListOptions) (client.ServiceListResult, error)
	eventstream.Engine
}

// New returns a tracker that asks e. Each question is bounded by timeout.
func New(e Engine, timeout time.Duration) *Tracker {
	return &Tracker{c: e, timeout: timeout, procs: viewProcs("/proc"), now: time.Now, mem: newMemory()}
}

// HostVisible reports whether prune-guard sees the host's processes, and if
// not, why. Without them process detectors are inactive.
func (t *Tracker) HostVisible() (bool, string) { return t.procs.visible, t.procs.why }

// State lists the engine's active containers once (and its services, when a
// detector looks at services), scans the host's processes when a detector
// looks at them, and matches every detector locally, so a decision costs one
// round of engine queries however many detectors are enabled. With a grace,
// it adds the objects of jobs that ended within it and the stretch of it
// that cannot be seen; without a running Watch it replays the engine's
// recent events for that. A state whose Err is set is unknown.
func (t *Tracker) State(ctx context.Context, d rules.Detection) rules.RunState {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	obs, err := t.observe(ctx, d, true)
	if err != nil {
		return rules.RunState{Grace: d.Grace, Err: fmt.Errorf("cannot ask the engine which runs are active: %w", err)}
	}
	st := rules.RunState{Active: obs.active, Grace: d.Grace}
	if d.Grace <= 0 {
		return st
	}
	t.mu.Lock()
	watching := t.watching
	t.mu.Unlock()
	var replayed *rules.Blind
	if !watching && (d.Looks(rules.Container) || d.Looks(rules.Service)) {
		if replayed, err = t.replay(ctx, d); err != nil {
			return rules.RunState{Grace: d.Grace, Err: fmt.Errorf("cannot tell which runs ended within the grace: %w", err)}
		}
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.mem.forget(now, d.Grace)
	var unseen *rules.Blind
	st.Ended, unseen = t.mem.endedRuns(d, now, obs.live, obs.active)
	st.Blind = latest(now.Add(-d.Grace), replayed, unseen, t.blindLocked(d, now, watching))
	return st
}

// blindLocked is the stretch of the grace window the tracker's own record
// does not cover. Host processes are left out: they are not learnt from
// events, and a host job's teardown runs inside the job's process.
func (t *Tracker) blindLocked(d rules.Detection, now time.Time, watching bool) *rules.Blind {
	if !d.Looks(rules.Container) && !d.Looks(rules.Service) {
		return nil
	}
	var b []*rules.Blind
	if watching {
		if t.cov.down != "" {
			b = append(b, &rules.Blind{Since: now, Why: t.cov.down})
		} else {
			b = append(b, &rules.Blind{Since: t.cov.from, Why: t.cov.fromWhy})
		}
	}
	b = append(b, &rules.Blind{Since: t.mem.floor, Why: t.mem.floorWhy})
	return latest(now.Add(-d.Grace), b...)
}

// latest returns the blind stretch that ends last among those that start
// after windowStart (nil if none): the one a decision waits for.
func latest(windowStart time.Time, bs ...*rules.Blind) *rules.Blind {
	var out *rules.Blind
	for _, b := range bs {
		if b == nil || !b.Since.After(windowStart) {
			continue
		}
		if out == nil || b.Since.After(out.Since) {
			out = b
		}
	}
	return out
}

// observation is what one round of listing found.
type observation struct {
	active []rules.Run
	live   map[key]bool
}

// observe lists active containers (and services and host processes, when d
// looks at them) concurrently, records what it found in the tracker's
// memory, and returns the live runs.
func (t *Tracker) observe(ctx context.Context, d rules.Detection, procs bool) (observation, error) {
	var (
		wg                  sync.WaitGroup
		cs, ss, ps          []rules.Object
		cErr, sErr, pErr    error
		cSent, sSent, pSent = t.now(), t.now(), t.now()
	)
	wg.Add(1)
	go func() { defer wg.Done(); cs, cErr = t.containers(ctx, d) }()
	if d.Looks(rules.Service) {
		wg.Add(1)
		go func() { defer wg.Done(); ss, sErr = t.services(ctx, d) }()
	}
	scan := procs && d.Looks(rules.Process) && t.procs.visible
	if scan {
		wg.Add(1)
		go func() { defer wg.Done(); ps, pErr = t.scanObjects(d) }()
	}
	wg.Wait()
	if err := errors.Join(cErr, sErr, pErr); err != nil {
		return observation{}, err
	}
	obs := observation{live: make(map[key]bool, len(cs)+len(ss)+len(ps))}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.saw(d, rules.Container, cs, cSent, now, &obs)
	if d.Looks(rules.Service) {
		t.saw(d, rules.Service, ss, sSent, now, &obs)
	}
	if scan {
		t.saw(d, rules.Process, ps, pSent, now, &obs)
	}
	return obs, nil
}

// saw records one complete listing of kind, sent at sent, whose matched
// objects are os.
func (t *Tracker) saw(d rules.Detection, kind rules.ObjectKind, os []rules.Object, sent, now time.Time, obs *observation) {
	there := make(map[string]bool, len(os))
	for _, o := range os {
		r, _ := d.Match(o)
		obs.active = append(obs.active, r)
		obs.live[key{kind, o.ID}] = true
		there[o.ID] = true
		t.mem.present(o, sent, now)
	}
	t.mem.absent(kind, there, sent, now)
}

// scan looks at the host's processes and records the job processes found.
func (t *Tracker) scan(d rules.Detection) error {
	sent := t.now()
	ps, err := t.scanObjects(d)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.saw(d, rules.Process, ps, sent, t.now(), &observation{live: map[key]bool{}})
	return nil
}

func (t *Tracker) scanObjects(d rules.Detection) ([]rules.Object, error) {
	ps, err := t.procs.scanProcs(d)
	if err != nil {
		return nil, fmt.Errorf("scan the host's processes: %w", err)
	}
	return ps, nil
}

// containers lists the active containers and returns those d recognises.
func (t *Tracker) containers(ctx context.Context, d rules.Detection) ([]rules.Object, error) {
	f := make(client.Filters).Add("status", activeStates...)
	res, err := t.c.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list active containers: %w", err)
	}
	var out []rules.Object
	for _, c := range res.Items {
		name := c.ID
		if len(name) > 12 {
			name = name[:12]
		}
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		o := rules.Object{Kind: rules.Container, ID: c.ID, Name: name, Labels: c.Labels, Image: c.ImageID}
		if _, ok := d.Match(o); ok {
			out = append(out, o)
		}
	}
	return out, nil
}

func (t *Tracker) services(ctx context.Context, d rules.Detection) ([]rules.Object, error) {
	res, err := t.c.ServiceList(ctx, client.ServiceListOptions{})
	if err != nil {
		if notManager(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("list services: %w", err)
	}
	var out []rules.Object
	for _, s := range res.Items {
		o := rules.Object{Kind: rules.Service, ID: s.ID, Name: s.Spec.Name, Labels: s.Spec.Labels}
		if _, ok := d.Match(o); ok {
			out = append(out, o)
		}
	}
	return out, nil
}

// notManager reports the engine's answer on a node that is not a swarm
// manager (not in a swarm, or a worker): such a node has no services.
func notManager(err error) bool {
	return strings.Contains(err.Error(), "not a swarm manager")
}
