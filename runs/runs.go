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

// Close releases the engine client's connections.
func (t *Tracker) Close() error { return t.c.Close() }

// State lists the engine's active containers once (and its services, when a
// detector looks at services) and matches every detector locally, so a
// decision costs one round of engine queries however many detectors are
// enabled. A state whose Err is set is unknown.
func (t *Tracker) State(ctx context.Context, d rules.Detection) rules.RunState {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	var (
		wg               sync.WaitGroup
		containers, svcs []rules.Run
		cErr, sErr       error
	)
	wg.Add(1)
	go func() { defer wg.Done(); containers, cErr = t.containers(ctx, d) }()
	if d.Looks(rules.Service) {
		wg.Add(1)
		go func() { defer wg.Done(); svcs, sErr = t.services(ctx, d) }()
	}
	wg.Wait()
	if err := errors.Join(cErr, sErr); err != nil {
		return rules.RunState{Grace: d.Grace, Err: fmt.Errorf("cannot ask the engine which runs are active: %w", err)}
	}
	return rules.RunState{Active: append(containers, svcs...), Grace: d.Grace}
}

func (t *Tracker) containers(ctx context.Context, d rules.Detection) ([]rules.Run, error) {
	f := make(client.Filters).Add("status", activeStates...)
	res, err := t.c.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list active containers: %w", err)
	}
	var out []rules.Run
	for _, c := range res.Items {
		name := c.ID
		if len(name) > 12 {
			name = name[:12]
		}
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		if r, ok := d.Match(rules.Object{Kind: rules.Container, ID: c.ID, Name: name, Labels: c.Labels}); ok {
			out = append(out, r)
		}
	}
	return out, nil
}

func (t *Tracker) services(ctx context.Context, d rules.Detection) ([]rules.Run, error) {
	res, err := t.c.ServiceList(ctx, client.ServiceListOptions{})
	if err != nil {
		if notManager(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("list services: %w", err)
	}
	var out []rules.Run
	for _, s := range res.Items {
		if r, ok := d.Match(rules.Object{Kind: rules.Service, ID: s.ID, Name: s.Spec.Name, Labels: s.Spec.Labels}); ok {
			out = append(out, r)
		}
	}
	return out, nil
}

// notManager reports the engine's answer on a node that is not a swarm
// manager (not in a swarm, or a worker): such a node has no services.
func notManager(err error) bool {
	return strings.Contains(err.Error(), "not a swarm manager")
}
