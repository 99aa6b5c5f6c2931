package plugin

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/sirupsen/logrus"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/rules"
)

// RunSource reports the active CI runs; *runs.Tracker is the real one.
type RunSource interface {
	Active(ctx context.Context) ([]rules.Run, error)
}

// Guard decides authorization requests. It is safe for concurrent use.
type Guard struct {
	classifier *rules.Classifier
	policy     atomic.Pointer[rules.Policy]
	runs       RunSource
	audit      *audit.Log
	log        logrus.FieldLogger
}

// NewGuard returns a guard enforcing p. Records go to al; operational
// messages (panics, engine trouble) to log.
func NewGuard(p *rules.Policy, runs RunSource, al *audit.Log, log logrus.FieldLogger) *Guard {
	g := &Guard{classifier: rules.NewClassifier(), runs: runs, audit: al, log: log}
	g.policy.Store(p)
	return g
}

// SetPolicy replaces the policy atomically: a decision in flight finishes
// under the policy it started with.
func (g *Guard) SetPolicy(p *rules.Policy) { g.policy.Store(p) }

// internalErrorRule names the decision taken when deciding itself failed.
const internalErrorRule = "internal-error"

// AuthZReq decides whether dockerd may run a request.
func (g *Guard) AuthZReq(ctx context.Context, req authorization.Request) (resp authorization.Response) {
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			g.log.WithFields(logrus.Fields{"panic": fmt.Sprint(p), "stack": string(debug.Stack())}).
				Error("panic while deciding a request; refused it")
			msg := "prune-guard: request refused because prune-guard failed while deciding it (see the plugin's log); retry, and report the log if it persists"
			g.audit.Write(audit.Record{Decision: audit.Denied, Rule: internalErrorRule, Operation: "unknown",
				Method: req.RequestMethod, URI: req.RequestURI, User: req.User, Reason: msg})
			resp = authorization.Response{Allow: false, Msg: msg}
		}
	}()

	c := g.classifier.Classify(rules.Request{
		Method:  req.RequestMethod,
		URI:     req.RequestURI,
		Headers: req.RequestHeaders,
		Body:    req.RequestBody,
	})
	if c.Op == rules.OpOther {
		return authorization.Response{Allow: true}
	}

	d := rules.Evaluate(c, g.policy.Load(), rules.FactsFunc(func() rules.RunState {
		active, err := g.runs.Active(ctx)
		if err != nil {
			g.log.WithError(err).Warn("run state unknown")
		}
		return rules.RunState{Active: active, Err: err}
	}))

	if c.Op.Destructive() || !d.Allow || d.Warned {
		g.audit.Write(record(req, c, d, time.Since(start)))
	}
	if !d.Allow {
		return authorization.Response{Allow: false, Msg: d.Message}
	}
	return authorization.Response{Allow: true}
}

// AuthZRes allows every response: by then the handler has run, and a deny
// would only hide its result from the client.
func (g *Guard) AuthZRes(context.Context, authorization.Request) authorization.Response {
	return authorization.Response{Allow: true}
}

func record(req authorization.Request, c rules.Classification, d rules.Decision, took time.Duration) audit.Record {
	r := audit.Record{
		Decision:  audit.Allowed,
		Rule:      d.Rule,
		Operation: c.Op.String(),
		Method:    req.RequestMethod,
		URI:       req.RequestURI,
		Target:    c.Target,
		User:      req.User,
		Doubt:     c.Doubt,
		Duration:  took,
		Reason:    d.Message,
	}
	switch {
	case !d.Allow:
		r.Decision = audit.Denied
	case d.Warned:
		r.Decision = audit.WouldDeny
	}
	if r.Reason == "" {
		r.Reason = "no rule matched"
		if d.Rule != "" {
			r.Reason = "allowed by rule " + d.Rule
		}
	}
	if d.RunsErr != nil {
		r.Runs = []string{"unknown: " + d.RunsErr.Error()}
	}
	for _, run := range d.Runs {
		r.Runs = append(r.Runs, run.String())
	}
	return r
}
