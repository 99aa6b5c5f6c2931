package guard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/resolve"
	"github.com/prune-guard/prune-guard/rules"
)

// fakeRuns is a RunSource that counts how often it is asked.
type fakeRuns struct {
	runs  []rules.Run
	err   error
	panic bool
	asked atomic.Int64
	// ended, blind and grace are the rest of the state, when a test
	// needs a teardown grace.
	ended []rules.Run
	blind *rules.Blind
	grace time.Duration
}

func (f *fakeRuns) State(context.Context, rules.Detection) rules.RunState {
	f.asked.Add(1)
	if f.panic {
		panic("engine client exploded")
	}
	return rules.RunState{Active: f.runs, Ended: f.ended, Blind: f.blind, Grace: f.grace, Err: f.err}
}

func (f *fakeRuns) HostVisible() (bool, string) { return true, "" }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("audit line is not JSON: %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// fakeNames resolves names from fixed tables.
type fakeNames struct {
	images  map[string]resolve.Image
	plugins map[string]resolve.Plugin
	err     error
}

func (f *fakeNames) Image(_ context.Context, name string) (resolve.Image, bool, error) {
	img, ok := f.images[name]
	return img, ok, f.err
}

// Images returns every image: the tests' scopes select nothing narrower.
func (f *fakeNames) Images(context.Context, []string, bool) ([]resolve.Image, error) {
	var out []resolve.Image
	for _, img := range f.images {
		out = append(out, img)
	}
	return out, f.err
}

func (f *fakeNames) Plugin(_ context.Context, name string) (resolve.Plugin, bool, error) {
	p, ok := f.plugins[name]
	return p, ok, f.err
}

func newTestGuard(runs *fakeRuns) (*Guard, *syncBuffer) {
	return newTestGuardWith(policy.Default(), runs, &fakeNames{})
}

func newTestGuardWith(cfg *policy.Config, runs *fakeRuns, names *fakeNames) (*Guard, *syncBuffer) {
	buf := &syncBuffer{}
	log := logrus.New()
	log.SetOutput(&bytes.Buffer{})
	return New(cfg, runs, names, audit.New(buf, nil), log), buf
}

// ctx is the context of the tests' decisions.
var ctx = context.Background()

const pruneAllURI = "/v1.41/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D"

func TestReadsPassWithoutEngineQueryOrAudit(t *testing.T) {
	runs := &fakeRuns{err: errors.New("engine down")}
	g, buf := newTestGuard(runs)
	for _, r := range []Request{
		{Method: "GET", URI: "/v1.41/containers/json"},
		{Method: "POST", URI: "/v1.41/containers/create", Headers: map[string]string{"Content-Type": "application/json"}, Body: rules.BodyForwarded},
		{Method: "HEAD", URI: "/_ping"},
	} {
		if v := g.Decide(ctx, r); !v.Allow {
			t.Errorf("%s %s denied: %s", r.Method, r.URI, v.Message)
		}
	}
	if n := runs.asked.Load(); n != 0 {
		t.Errorf("engine asked %d times for non-destructive requests", n)
	}
	if lines := buf.lines(t); len(lines) != 0 {
		t.Errorf("non-destructive requests were audited: %v", lines)
	}
}

func TestPruneAllIsDeniedAndAudited(t *testing.T) {
	runs := &fakeRuns{}
	g, buf := newTestGuard(runs)
	v := g.Decide(ctx, Request{Method: "POST", URI: pruneAllURI, User: "alice"})
	if v.Allow || !strings.Contains(v.Message, "(rule no-prune-all)") {
		t.Fatalf("got %+v", v)
	}
	if runs.asked.Load() != 0 {
		t.Errorf("an always-deny rule must not wait on the engine")
	}
	lines := buf.lines(t)
	if len(lines) != 1 {
		t.Fatalf("want 1 audit line, got %v", lines)
	}
	l := lines[0]
	for k, want := range map[string]any{"decision": "deny", "rule": "no-prune-all", "operation": "image-prune-all", "method": "POST", "uri": pruneAllURI, "user": "alice"} {
		if l[k] != want {
			t.Errorf("audit %s = %v, want %v", k, l[k], want)
		}
	}
	for _, k := range []string{"time", "reason", "runs"} {
		if _, ok := l[k]; !ok {
			t.Errorf("audit line lacks %q: %v", k, l)
		}
	}
}

func TestGRPCCallsAreDecidedByMethodAndMessage(t *testing.T) {
	runs := &fakeRuns{}
	g, buf := newTestGuard(runs)
	const prune = "/moby.buildkit.v1.Control/Prune"
	tests := []struct {
		name  string
		req   Request
		allow bool
		rule  string
		op    string // audited operation; "" for no audit line
	}{
		{name: "buildx prune -af is refused", req: Request{Method: "POST", URI: prune, GRPC: &rules.GRPCCall{Message: []byte{0x0a, 0x00, 0x10, 0x01}}},
			rule: "no-build-prune-all", op: "build-prune-all"},
		{name: "buildx prune -f passes with no job, audited", req: Request{Method: "POST", URI: prune, GRPC: &rules.GRPCCall{Message: []byte{0x0a, 0x00}}},
			allow: true, op: "build-prune"},
		{name: "a prune whose message was not read fails closed", req: Request{Method: "POST", URI: prune, GRPC: &rules.GRPCCall{Unread: "the stream ended"}},
			rule: rules.FailClosedRule, op: "unknown"},
		{name: "an unknown method is refused", req: Request{Method: "POST", URI: "/moby.extensions.v1.Volumes/Prune", GRPC: &rules.GRPCCall{}},
			rule: "no-unknown-grpc", op: "grpc-unknown"},
		{name: "a build passes unaudited", req: Request{Method: "POST", URI: "/moby.buildkit.v1.Control/Solve", GRPC: &rules.GRPCCall{}}, allow: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(buf.lines(t))
			v := g.Decide(ctx, tt.req)
			if v.Allow != tt.allow || (!tt.allow && !strings.Contains(v.Message, "(rule "+tt.rule+")")) {
				t.Fatalf("Decide = %+v, want allow %v rule %q", v, tt.allow, tt.rule)
			}
			lines := buf.lines(t)[before:]
			switch {
			case tt.op == "" && len(lines) != 0:
				t.Errorf("audited %v", lines)
			case tt.op != "" && (len(lines) != 1 || lines[0]["operation"] != tt.op || lines[0]["uri"] != tt.req.URI):
				t.Errorf("audit lines %v, want one of operation %s", lines, tt.op)
			}
		})
	}
}

func TestDeleteDuringRunIsDeniedAndNamesTheRun(t *testing.T) {
	g, buf := newTestGuard(&fakeRuns{runs: []rules.Run{{Detector: "prune-guard", System: "prune-guard run", Job: "r9", Kind: rules.Service, Name: "deploy"}}})
	v := g.Decide(ctx, Request{Method: "DELETE", URI: "/v1.41/images/base:1"})
	if v.Allow || !strings.Contains(v.Message, "prune-guard run r9, service deploy") {
		t.Fatalf("got %+v", v)
	}
	if l := buf.lines(t)[0]; l["target"] != "base:1" || len(l["runs"].([]any)) != 1 {
		t.Errorf("audit line %v", l)
	}
}

func TestUnknownRunStateDeniesDestructiveRequests(t *testing.T) {
	g, buf := newTestGuard(&fakeRuns{err: errors.New("dial unix /var/run/docker.sock: connect: no such file")})
	v := g.Decide(ctx, Request{Method: "POST", URI: "/v1.41/containers/prune"})
	if v.Allow || !strings.Contains(v.Message, "run state is unknown") || !strings.Contains(v.Message, "no such file") {
		t.Fatalf("got %+v", v)
	}
	if l := buf.lines(t)[0]; !strings.HasPrefix(l["runs"].([]any)[0].(string), "unknown: ") {
		t.Errorf("audit should record the unknown run state: %v", l)
	}
}

func TestPanicWhileDecidingIsADenyAndTheGuardKeepsDeciding(t *testing.T) {
	g, buf := newTestGuard(&fakeRuns{panic: true})
	v := g.Decide(ctx, Request{Method: "DELETE", URI: "/images/x"})
	if v.Allow || !strings.Contains(v.Message, "failed while deciding") {
		t.Fatalf("got %+v", v)
	}
	if l := buf.lines(t)[0]; l["rule"] != internalErrorRule {
		t.Errorf("audit %v", l)
	}
	if v := g.Decide(ctx, Request{Method: "GET", URI: "/_ping"}); !v.Allow {
		t.Errorf("the guard stopped deciding after a panic: %+v", v)
	}
}

// A request without a method or a URI cannot be classified: a destructive
// reading is assumed and refused, with a reason.
func TestRequestsWithoutMethodOrURIAreDeniedWithAReason(t *testing.T) {
	g, _ := newTestGuard(&fakeRuns{})
	for name, r := range map[string]Request{
		"empty request":       {},
		"method only, delete": {Method: "DELETE"},
		"URI only":            {URI: "/images/x"},
	} {
		if v := g.Decide(ctx, r); v.Allow || !strings.HasPrefix(v.Message, "prune-guard: ") {
			t.Errorf("%s: got %+v, want a deny that says why", name, v)
		}
	}
}

func TestConcurrentDecisionsKeepAuditLinesWhole(t *testing.T) {
	runs := &fakeRuns{runs: []rules.Run{{System: "CI job", Job: "v", Kind: rules.Container, Name: "c"}}}
	g, buf := newTestGuard(runs)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, r := range []Request{
				{Method: "GET", URI: "/v1.41/containers/json"},
				{Method: "POST", URI: pruneAllURI},
				{Method: "DELETE", URI: "/v1.41/images/a"},
			} {
				v := g.Decide(ctx, r)
				if v.Allow == (r.Method != "GET") {
					t.Errorf("%s %s: %+v", r.Method, r.URI, v)
				}
			}
		}()
	}
	wg.Wait()
	if n := len(buf.lines(t)); n != 100 {
		t.Errorf("want 100 whole audit lines, got %d", n)
	}
}

func BenchmarkDecideRead(b *testing.B) {
	g, _ := newTestGuard(&fakeRuns{})
	req := Request{Method: "GET", URI: "/v1.41/containers/json"}
	b.ReportAllocs()
	for b.Loop() {
		g.Decide(ctx, req)
	}
}

func TestProtectedImageDeleteIsDeniedByIDAndTag(t *testing.T) {
	cfg, err := policy.Parse("p.yaml", []byte("protect:\n  images: [\"docker.io/library/*\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	base := resolve.Image{ID: "sha256:aaa", Refs: []string{"alpine:3.19", "alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}}
	names := &fakeNames{images: map[string]resolve.Image{
		"alpine:3.19": base, "aaa": base, "alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef": base,
		"registry.example/app:1": {ID: "sha256:bbb", Refs: []string{"registry.example/app:1"}},
		"kept":                   {ID: "sha256:ccc", Refs: []string{"registry.example/kept:1"}, Labels: map[string]string{"prune-guard.keep": "true"}},
	}}
	g, _ := newTestGuardWith(cfg, &fakeRuns{}, names)
	for name, wantAllow := range map[string]bool{
		"alpine:3.19": false, "aaa": false,
		"alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef": false,
		"registry.example/app:1": true, "kept": false, "missing": true,
	} {
		v := g.Decide(ctx, Request{Method: "DELETE", URI: "/v1.41/images/" + name})
		if v.Allow != wantAllow {
			t.Errorf("delete %s: %+v, want allow=%v", name, v, wantAllow)
		}
		if !v.Allow && !strings.Contains(v.Message, "(rule keep-protected)") {
			t.Errorf("delete %s: %s", name, v.Message)
		}
	}
}

func TestSelfProtectionResolvesPluginIDs(t *testing.T) {
	names := &fakeNames{plugins: map[string]resolve.Plugin{"4f5e": {ID: "4f5e0000", Name: "prune-guard:latest"}}}
	g, _ := newTestGuardWith(policy.Default(), &fakeRuns{}, names)
	for _, uri := range []string{"/v1.41/plugins/prune-guard/disable", "/v1.41/plugins/prune-guard:latest/set", "/v1.41/plugins/4f5e/disable"} {
		if v := g.Decide(ctx, Request{Method: "POST", URI: uri}); v.Allow || !strings.Contains(v.Message, "protect-self") {
			t.Errorf("%s: %+v", uri, v)
		}
	}
	if v := g.Decide(ctx, Request{Method: "DELETE", URI: "/v1.41/plugins/vieux/sshfs"}); !v.Allow {
		t.Errorf("another plugin's removal was denied: %+v", v)
	}
}

func TestPolicySwapIsAtomicUnderConcurrentDecisions(t *testing.T) {
	warn, err := policy.Parse("warn.yaml", []byte("mode: warn\n"))
	if err != nil {
		t.Fatal(err)
	}
	enforce := policy.Default()
	g, buf := newTestGuard(&fakeRuns{})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%2 == 0 {
				g.SetConfig(warn)
			} else {
				g.SetConfig(enforce)
			}
		}
	}()
	for i := 0; i < 500; i++ {
		g.Decide(ctx, Request{Method: "POST", URI: pruneAllURI})
	}
	close(stop)
	wg.Wait()
	for _, l := range buf.lines(t) {
		// Each decision is whole: a deny comes from the enforcing policy's
		// hash, a would-deny from the warn policy's.
		switch l["decision"] {
		case "deny":
			if l["policy"] != enforce.ShortHash() {
				t.Fatalf("deny under policy %v", l["policy"])
			}
		case "would-deny":
			if l["policy"] != warn.ShortHash() {
				t.Fatalf("would-deny under policy %v", l["policy"])
			}
		default:
			t.Fatalf("unexpected decision %v", l)
		}
	}
}

// Replay cannot ask the engine again, so the audit record says when a
// decision found the target protected, whatever its rule is named.
func TestAuditRecordSaysWhyTheTargetWasProtected(t *testing.T) {
	cfg, err := policy.Parse("p.yaml", []byte(`protect:
  images: ["registry.example/base/*"]
  plugins: [prune-guard]
rules:
  - name: dont-touch-base-images
    match: [image-delete, image-prune-all]
    when: image-protected
  - name: hands-off-the-guard
    match: [plugin-change]
    when: plugin-protected
`))
	if err != nil {
		t.Fatal(err)
	}
	names := &fakeNames{images: map[string]resolve.Image{
		"registry.example/base/node:20": {ID: "sha256:aaa", Refs: []string{"registry.example/base/node:20"}},
		"app:1":                         {ID: "sha256:bbb", Refs: []string{"app:1"}},
	}}
	tests := []struct {
		name          string
		req           Request
		wantRule      string
		wantProtected any // nil: no "protected" field
	}{
		{name: "a protected image's delete records the matching pattern",
			req: Request{Method: "DELETE", URI: "/v1.41/images/registry.example/base/node:20"}, wantRule: "dont-touch-base-images",
			wantProtected: "registry.example/base/node:20 matches the protected pattern registry.example/base/*"},
		{name: "a protected plugin's change records the matching pattern",
			req: Request{Method: "POST", URI: "/v1.41/plugins/prune-guard/disable"}, wantRule: "hands-off-the-guard",
			wantProtected: "plugin prune-guard is protected (pattern prune-guard)"},
		{name: "an unprotected image's delete has no protected field",
			req: Request{Method: "DELETE", URI: "/v1.41/images/app:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, buf := newTestGuardWith(cfg, &fakeRuns{}, names)
			g.Decide(ctx, tt.req)
			l := buf.lines(t)[0]
			if l["rule"] != tt.wantRule || l["protected"] != tt.wantProtected {
				t.Errorf("audit line has rule %v, protected %v; want rule %q, protected %v", l["rule"], l["protected"], tt.wantRule, tt.wantProtected)
			}
		})
	}
}
