package guard

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/distribution/reference"
	"github.com/sirupsen/logrus"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/pullprogress"
	"github.com/prune-guard/prune-guard/redact"
	"github.com/prune-guard/prune-guard/rules"
)

// A pull is never refused and never decided by a policy: it removes
// nothing. The guard counts it, by registry and by whether the image was
// local before the pull (one image inspect, before the pull runs: in
// authz mode dockerd asks the plugin before its handler runs, and a proxy
// asks before it forwards), and writes a pull record. A transport that
// relays the response (the proxy) hands the response to the Pull the
// verdict carries, which reads the progress stream for layers and bytes
// and writes the record when the pull ends; otherwise the record is
// written at once.

// UnknownRegistry is the registry of a pull whose reference is unknown.
const UnknownRegistry = "(unknown)"

// pull lets a pull through and accounts for it.
func (g *Guard) pull(ctx context.Context, req Request, c rules.Classification, start time.Time) Verdict {
	result, why := g.cached(ctx, c)
	rec := audit.Record{Operation: c.Op.String(), Method: req.Method, URI: req.URI, User: req.User,
		Target: c.Target, Doubt: c.Doubt, Reason: why, DurationUS: time.Since(start).Microseconds(),
		Pull: &audit.Pull{Registry: RegistryOf(c.Target), Result: result}}
	p := &Pull{g: g, rec: rec}
	if !req.RelaysResponse {
		p.finish()
		return allowed
	}
	return Verdict{Allow: true, Pull: p}
}

// cached asks the engine whether the pull's reference is local, and says
// why the result is what it is. It never panics and never fails: what it
// cannot tell is unknown, and the pull goes ahead all the same.
func (g *Guard) cached(ctx context.Context, c rules.Classification) (result audit.PullResult, why string) {
	if c.Target == "" {
		return audit.PullUnknown, "unknown: prune-guard cannot tell which image it pulls (" + c.Doubt + ")"
	}
	if named, err := reference.ParseNormalizedNamed(c.Target); err == nil && reference.IsNameOnly(named) {
		return audit.PullUnknown, "unknown: it pulls every tag of " + c.Target
	}
	defer func() {
		if p := recover(); p != nil {
			g.log.WithFields(logrus.Fields{"panic": fmt.Sprint(p), "stack": string(debug.Stack())}).
				Error("panic while asking whether a pulled image is local; the pull goes ahead, counted as unknown")
			result, why = audit.PullUnknown, "unknown: prune-guard failed while asking the engine"
		}
	}()
	_, found, err := g.names.Image(ctx, c.Target)
	switch {
	case err != nil:
		g.stats.engineError()
		g.log.WithField("error", redact.String(err.Error())).Warn("pull counted as unknown: the engine did not say whether the image was local")
		return audit.PullUnknown, "unknown: " + err.Error()
	case found:
		return audit.PullHit, "hit: " + c.Target + " was local before the pull"
	}
	return audit.PullMiss, "miss: " + c.Target + " was not local before the pull"
}

// RegistryOf is the registry a pulled reference names, normalized as
// metrics and reports count it: docker.io for Docker Hub (index.docker.io
// included), host[:port] in lower case otherwise, UnknownRegistry when
// the reference is unknown.
func RegistryOf(ref string) string {
	named, err := reference.ParseNormalizedNamed(ref)
	if ref == "" || err != nil {
		return UnknownRegistry
	}
	return strings.ToLower(reference.Domain(named))
}

// maxErrorBody bounds what is kept of an error response's body.
const maxErrorBody = 1024

// Pull is one pull a transport relays the response of. It is told the
// response as the proxy relays it (proxy.Observer: Response, Body, Done,
// from the one goroutine relaying the response) and writes the pull record
// when Done is called. Its methods never panic and do bounded work per
// byte, so they cannot hold up or break the client's stream.
type Pull struct {
	g      *Guard
	rec    audit.Record
	status int
	// progress reads a 2xx response's stream; errBody keeps the start of
	// any other response, which is dockerd's JSON error.
	progress pullprogress.Parser
	errBody  []byte
	broken   atomic.Bool // the parser panicked: layers and bytes unknown
	done     atomic.Bool
}

// Response is told the status of the engine's final response.
func (p *Pull) Response(status int) { p.status = status }

// Body is told the response body's content bytes, after the client got
// them.
func (p *Pull) Body(b []byte) {
	if p.broken.Load() {
		return
	}
	defer p.recoverBody()
	if p.status/100 == 2 {
		p.progress.Write(b)
		return
	}
	if n := maxErrorBody - len(p.errBody); n > 0 {
		p.errBody = append(p.errBody, b[:min(n, len(b))]...)
	}
}

func (p *Pull) recoverBody() {
	if r := recover(); r != nil {
		p.broken.Store(true)
		p.g.log.WithFields(logrus.Fields{"panic": fmt.Sprint(r), "stack": string(debug.Stack())}).
			Error("panic while reading a pull's progress; its layers and bytes are not counted")
	}
}

// Done is told that the exchange ended, and why when it ended early; it
// writes the pull record once.
func (p *Pull) Done(err error) {
	if !p.done.CompareAndSwap(false, true) {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			p.g.log.WithFields(logrus.Fields{"panic": fmt.Sprint(r), "stack": string(debug.Stack())}).
				Error("panic while recording a pull")
		}
	}()
	pr := p.rec.Pull
	switch {
	case p.status == 0:
		pr.Error = "the engine did not answer"
		if err != nil {
			pr.Error += ": " + err.Error()
		}
	case p.status/100 != 2:
		pr.Error = fmt.Sprintf("the engine answered %d: %s", p.status, errorMessage(p.errBody))
	case !p.broken.Load():
		res := p.progress.Result()
		pr.Progress = &audit.PullProgress{LayersReused: res.LayersReused, LayersDownloaded: res.LayersDownloaded, BytesDownloaded: res.BytesDownloaded}
		pr.Error = res.Error
		p.g.stats.pullProgress(res)
	}
	if pr.Error == "" && err != nil {
		pr.Error = "the pull's stream was cut off: " + err.Error()
	}
	p.finish()
}

// finish counts the pull and writes its record.
func (p *Pull) finish() {
	p.g.stats.pull(p.rec.Pull.Registry, p.rec.Pull.Result)
	p.g.audit.Write(p.rec)
}

// errorMessage is dockerd's {"message": …} error, or the body's start.
func errorMessage(body []byte) string {
	var m struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &m) == nil && m.Message != "" {
		return m.Message
	}
	return string(bytes.TrimSpace(body))
}
