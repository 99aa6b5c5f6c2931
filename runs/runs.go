// Package runs finds the CI runs that are active on a Docker Engine: the
// containers (created, running, paused or restarting) and swarm services
// that carry one of the configured run labels.
//
// It asks the engine at the moment of a decision and keeps no cache: engine
// events can be dropped, so a safety decision must never rest on having
// received one. It must never change anything on the engine.
package runs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/client"

	"github.com/prune-guard/prune-guard/rules"
)

// DefaultLabel is the run label used when none is configured.
const DefaultLabel = "prune-guard.run"

// activeStates are the container states that hold a run open. An exited or
// dead container is a run's leftover, not a run.
var activeStates = []string{"created", "running", "paused", "restarting"}

// Tracker asks an engine which runs are active.
type Tracker struct {
	c       *client.Client
	timeout time.Duration
}

// New returns a tracker for the engine at host (a DOCKER_HOST URL). Each
// question is bounded by timeout.
func New(host string, timeout time.Duration) (*Tracker, error) {
	c, err := client.New(client.WithHost(host))
	if err != nil {
		return nil, fmt.Errorf("runs: engine client for %s: %w", host, err)
	}
	return &Tracker{c: c, timeout: timeout}, nil
}

// ValidateLabels reports the first run label selector that is not KEY or
// KEY=VALUE, or that there is none.
func ValidateLabels(labels []string) error {
	if len(labels) == 0 {
		return errors.New("no run labels configured")
	}
	for _, l := range labels {
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "=") {
			return fmt.Errorf("invalid run label %q: want KEY or KEY=VALUE", l)
		}
	}
	return nil
}

// Close releases the engine client's connections.
func (t *Tracker) Close() error { return t.c.Close() }

// Active lists the containers and services carrying any of the run label
// selectors (KEY or KEY=VALUE). An error means the state is unknown.
func (t *Tracker) Active(ctx context.Context, labels []string) ([]rules.Run, error) {
	if err := ValidateLabels(labels); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()

	// One container and one service query per label selector, all at once:
	// the engine ANDs label filters within one query, and a decision waits
	// for the slowest query, not their sum.
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		runs []rules.Run
		errs []error
	)
	collect := func(rs []rules.Run, err error) {
		mu.Lock()
		defer mu.Unlock()
		runs = append(runs, rs...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, sel := range labels {
		wg.Add(2)
		go func() { defer wg.Done(); collect(t.containers(ctx, sel)) }()
		go func() { defer wg.Done(); collect(t.services(ctx, sel)) }()
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, fmt.Errorf("cannot ask the engine which runs are active: %w", errors.Join(errs...))
	}
	return dedupe(runs), nil
}

func (t *Tracker) containers(ctx context.Context, sel string) ([]rules.Run, error) {
	f := make(client.Filters).Add("label", sel).Add("status", activeStates...)
	res, err := t.c.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list containers labelled %s: %w", sel, err)
	}
	key := labelKey(sel)
	out := make([]rules.Run, 0, len(res.Items))
	for _, c := range res.Items {
		name := c.ID
		if len(name) > 12 {
			name = name[:12]
		}
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		out = append(out, rules.Run{Kind: "container", Name: name, ID: c.ID, Label: key, Value: c.Labels[key]})
	}
	return out, nil
}

func (t *Tracker) services(ctx context.Context, sel string) ([]rules.Run, error) {
	res, err := t.c.ServiceList(ctx, client.ServiceListOptions{Filters: make(client.Filters).Add("label", sel)})
	if err != nil {
		if notManager(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("list services labelled %s: %w", sel, err)
	}
	key := labelKey(sel)
	out := make([]rules.Run, 0, len(res.Items))
	for _, s := range res.Items {
		out = append(out, rules.Run{Kind: "service", Name: s.Spec.Name, ID: s.ID, Label: key, Value: s.Spec.Labels[key]})
	}
	return out, nil
}

// notManager reports the engine's answer on a node that is not a swarm
// manager (not in a swarm, or a worker): such a node has no services.
func notManager(err error) bool {
	return strings.Contains(err.Error(), "not a swarm manager")
}

func labelKey(sel string) string {
	k, _, _ := strings.Cut(sel, "=")
	return k
}

// dedupe drops a container or service listed under two selectors.
func dedupe(runs []rules.Run) []rules.Run {
	seen := make(map[string]bool, len(runs))
	out := runs[:0]
	for _, r := range runs {
		k := r.Kind + "/" + r.ID
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, r)
	}
	return out
}
