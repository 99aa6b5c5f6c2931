package guard

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/redact"
	"github.com/prune-guard/prune-guard/resolve"
	"github.com/prune-guard/prune-guard/rules"
)

// RunSource reports the active CI jobs as d recognises them; *runs.Tracker
// is the real one. A state whose Err is set is unknown.
type RunSource interface {
	State(ctx context.Context, d rules.Detection) rules.RunState
	// HostVisible reports whether host-process detectors can see the
	// host's processes, and if not, why.
	HostVisible() (bool, string)
}

// NameSource resolves the names requests carry; *resolve.Resolver is the
// real one.
type NameSource interface {
	Image(ctx context.Context, name string) (resolve.Image, bool, error)
	// Images lists the images an image prune with this label scope could
	// remove (every image for no scope; dangling ones only when asked).
	Images(ctx context.Context, scope []string, danglingOnly bool) ([]resolve.Image, error)
	Plugin(ctx context.Context, name string) (resolve.Plugin, bool, error)
}

// Request is one API request as a transport saw it: an authorization plugin
// call, or a request a proxy holds before forwarding it.
type Request struct {
	// Method and URI are the request's as the daemon receives them, the URI
	// raw (not decoded, query included).
	Method, URI string
	// User is the authenticated user the transport knows, if any.
	User string
	// Headers holds the request headers the classifier reads (rules.Request
	// says which, and which value of a repeated one).
	Headers map[string]string
	// Body says what the transport knows of the request body.
	Body rules.BodyView
	// GRPC is set for a gRPC call, which only a proxy sees; Method and
	// URI are then POST and the call's path (rules.Request.GRPC).
	GRPC *rules.GRPCCall
	// RelaysResponse is set by a transport that relays the engine's
	// response (a proxy) and passes it to the Verdict's Pull; a pull's
	// record then waits for the pull's end and counts its layers and
	// bytes.
	RelaysResponse bool
}

// Verdict is a decision as a transport answers it.
type Verdict struct {
	Allow bool
	// Message says why a request was refused and what to do instead; it
	// is "" when Allow is set.
	Message string
	// Pull is set for a pull whose response the transport relays
	// (Request.RelaysResponse): the transport must tell it the response
	// (Response, Body) and call its Done exactly once, when the exchange
	// ends however it ends.
	Pull *Pull
}

// allowed is the verdict of every request that passes.
var allowed = Verdict{Allow: true}

// Mode is how prune-guard sits in the engine's request path.
type Mode string

const (
	// ModeAuthz is an authorization plugin dockerd calls (serve).
	ModeAuthz Mode = "authz"
	// ModeProxy is a proxy that owns the socket clients use (proxy).
	ModeProxy Mode = "proxy"
)

// Transport says how the guard is reached, for status.
type Transport struct {
	Mode Mode `json:"mode"`
	// Listen is the socket clients use (proxy mode).
	Listen string `json:"listen,omitempty"`
	// Engine is the engine the guard asks, and in proxy mode forwards to.
	Engine string `json:"engine"`
}

// Guard decides requests. It is safe for concurrent use.
type Guard struct {
	classifier *rules.Classifier
	config     atomic.Pointer[policy.Config]
	runs       RunSource
	names      NameSource
	audit      *audit.Log
	log        logrus.FieldLogger
	stats      *Stats
	transport  atomic.Pointer[Transport]
	warnings   atomic.Pointer[[]string]
}

// New returns a guard enforcing cfg. Records go to al; operational
// messages (panics, engine trouble) to log.
func New(cfg *policy.Config, runs RunSource, names NameSource, al *audit.Log, log logrus.FieldLogger) *Guard {
	g := &Guard{classifier: rules.NewClassifier(), runs: runs, names: names, audit: al, log: log, stats: newStats()}
	g.config.Store(cfg)
	return g
}

// SetConfig replaces the policy atomically: a decision in flight finishes
// under the policy it started with, and no decision sees a mix of two.
func (g *Guard) SetConfig(cfg *policy.Config) { g.config.Store(cfg) }

// SetTransport records how the guard is reached, for status.
func (g *Guard) SetTransport(t Transport) { g.transport.Store(&t) }

// Transport returns how the guard is reached.
func (g *Guard) Transport() Transport {
	if t := g.transport.Load(); t != nil {
		return *t
	}
	return Transport{}
}

// SetWarnings records what an operator must know about the engine or how
// it is exposed, for status.
func (g *Guard) SetWarnings(w []string) { g.warnings.Store(&w) }

// Config returns the policy in force.
func (g *Guard) Config() *policy.Config { return g.config.Load() }

// Stats returns the guard's decision counters.
func (g *Guard) Stats() *Stats { return g.stats }

// internalErrorRule names the decision taken when deciding itself failed.
const internalErrorRule = "internal-error"

// Decide decides whether the daemon may run a request. It never panics: a
// failure while deciding is a refusal that says so.
func (g *Guard) Decide(ctx context.Context, req Request) (v Verdict) {
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			g.log.WithFields(logrus.Fields{"panic": fmt.Sprint(p), "stack": string(debug.Stack())}).
				Error("panic while deciding a request; refused it")
			msg := "prune-guard: request refused because prune-guard failed while deciding it (see the plugin's log); retry, and report the log if it persists"
			g.stats.count(audit.Deny, internalErrorRule, time.Since(start))
			g.audit.Write(audit.Record{Decision: audit.Deny, Rule: internalErrorRule, Operation: rules.OpUnknown.String(),
				Method: req.Method, URI: req.URI, User: req.User, Reason: msg})
			v = Verdict{Message: msg}
		}
	}()

	cfg := g.config.Load()
	c := g.classifier.Classify(rules.Request{Method: req.Method, URI: req.URI, Headers: req.Headers, Body: req.Body, GRPC: req.GRPC})
	if c.Op == rules.OpOther {
		g.stats.allowRead()
		if cfg.Audit == policy.AuditAll {
			g.audit.Write(audit.Record{Decision: audit.Allow, Operation: c.Op.String(), Method: req.Method,
				URI: req.URI, User: req.User, Reason: "not destructive", Policy: cfg.ShortHash()})
		}
		return allowed
	}
	if c.Op == rules.OpImagePull {
		return g.pull(ctx, req, c, start)
	}

	d := rules.Evaluate(c, cfg.Policy, &facts{ctx: ctx, g: g, cfg: cfg})
	took := time.Since(start)
	r := record(req, c, d, took)
	r.Policy = cfg.ShortHash()
	g.stats.count(r.Decision, d.Rule, took)
	if c.Op.Destructive() || !d.Allow || d.Warned || cfg.Audit == policy.AuditAll {
		g.audit.Write(r)
	}
	if !d.Allow {
		return Verdict{Message: d.Message}
	}
	return allowed
}

// facts answers a decision's questions about the engine under one policy
// snapshot.
type facts struct {
	ctx context.Context
	g   *Guard
	cfg *policy.Config
}

func (f *facts) Runs() rules.RunState {
	st := f.g.runs.State(f.ctx, f.cfg.Detection)
	if st.Err != nil {
		f.g.stats.engineError()
		f.g.log.WithField("error", redact.String(st.Err.Error())).Warn("run state unknown")
	}
	return st
}

// PruneProtected lists what an image prune could remove and checks each
// image: a scoped prune --all must not take a protected image that carries
// the scope's labels.
func (f *facts) PruneProtected(scope []string, danglingOnly bool) rules.Check {
	if !f.cfg.Protect.ProtectsImages() {
		return rules.Check{}
	}
	imgs, err := f.g.names.Images(f.ctx, scope, danglingOnly)
	if err != nil {
		f.g.stats.engineError()
		return rules.Check{Err: err}
	}
	for _, img := range imgs {
		if yes, why := f.cfg.Protect.Image(img.Refs, img.Labels); yes {
			return rules.Check{Yes: true, Why: fmt.Sprintf("it would remove image %.19s: %s", img.ID, why)}
		}
	}
	return rules.Check{}
}

func (f *facts) ImageProtected(name string) rules.Check {
	if !f.cfg.Protect.ProtectsImages() {
		return rules.Check{}
	}
	img, found, err := f.g.names.Image(f.ctx, name)
	if err != nil {
		f.g.stats.engineError()
		return rules.Check{Err: err}
	}
	if !found {
		// The delete will fail with "no such image": nothing to protect.
		return rules.Check{}
	}
	yes, why := f.cfg.Protect.Image(img.Refs, img.Labels)
	return rules.Check{Yes: yes, Why: why}
}

func (f *facts) PluginProtected(name string) rules.Check {
	if len(f.cfg.Protect.Plugins) == 0 {
		return rules.Check{}
	}
	if yes, why := f.cfg.Protect.Plugin(name); yes {
		return rules.Check{Yes: true, Why: why}
	}
	// The request may name the plugin by ID or ID prefix.
	p, found, err := f.g.names.Plugin(f.ctx, name)
	if err != nil {
		f.g.stats.engineError()
		return rules.Check{Err: err}
	}
	if !found {
		return rules.Check{}
	}
	yes, why := f.cfg.Protect.Plugin(p.Name)
	return rules.Check{Yes: yes, Why: why}
}

func record(req Request, c rules.Classification, d rules.Decision, took time.Duration) audit.Record {
	r := audit.Record{
		Decision:   audit.OutcomeOf(d),
		Rule:       d.Rule,
		Operation:  c.Op.String(),
		Method:     req.Method,
		URI:        req.URI,
		Target:     c.Target,
		User:       req.User,
		Doubt:      c.Doubt,
		DurationUS: took.Microseconds(),
		Reason:     d.Message,
		Protected:  d.Protected,
	}
	if r.Reason == "" {
		r.Reason = "no rule matched"
		if d.Rule != "" {
			r.Reason = "allowed by rule " + d.Rule
		}
	}
	r.Runs = viewRuns(d.Runs).auditLines()
	return r
}
