package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/docker/go-plugins-helpers/authorization"
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
}

func (f *fakeRuns) State(context.Context, rules.Detection) rules.RunState {
	f.asked.Add(1)
	if f.panic {
		panic("engine client exploded")
	}
	return rules.RunState{Active: f.runs, Err: f.err}
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
	return NewGuard(cfg, runs, names, audit.New(buf, nil), log), buf
}

func post(t *testing.T, h http.Handler, path string, body []byte) authorization.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", path, bytes.NewReader(body)))
	if rec.Code != http.StatusOK {
		t.Fatalf("%s answered %d: %s", path, rec.Code, rec.Body)
	}
	var resp authorization.Response
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatalf("%s answer is not JSON: %q", path, rec.Body)
	}
	return resp
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const pruneAllURI = "/v1.41/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D"

func TestActivateAnnouncesAuthz(t *testing.T) {
	g, _ := newTestGuard(&fakeRuns{})
	rec := httptest.NewRecorder()
	Handler(g).ServeHTTP(rec, httptest.NewRequest("POST", "/Plugin.Activate", nil))
	if got := strings.TrimSpace(rec.Body.String()); got != `{"Implements":["authz"]}` {
		t.Errorf("Activate = %s", got)
	}
}

func TestMalformedCallsAreDeniedWithAReason(t *testing.T) {
	g, _ := newTestGuard(&fakeRuns{})
	h := Handler(g)
	for name, body := range map[string][]byte{
		"empty body":          nil,
		"not JSON":            []byte("DELETE /images/x"),
		"wrong field type":    []byte(`{"RequestMethod":7,"RequestUri":"/images/x"}`),
		"trailing data":       []byte(`{"RequestMethod":"GET","RequestUri":"/_ping"} {"x":1}`),
		"empty object":        []byte(`{}`),
		"null":                []byte(`null`),
		"bad base64 body":     []byte(`{"RequestMethod":"POST","RequestUri":"/images/prune","RequestBody":"!!"}`),
		"oversized call":      append(append([]byte(`{"RequestMethod":"DELETE","RequestUri":"/images/x","RequestBody":"`), bytes.Repeat([]byte("A"), maxCallSize)...), []byte(`"}`)...),
		"method only, delete": []byte(`{"RequestMethod":"DELETE"}`),
	} {
		t.Run(name, func(t *testing.T) {
			resp := post(t, h, "/AuthZPlugin.AuthZReq", body)
			if resp.Allow || !strings.HasPrefix(resp.Msg, "prune-guard: ") {
				t.Errorf("got %+v, want a deny that says why", resp)
			}
		})
	}
}

func TestBogusPeerCertificateDoesNotCrash(t *testing.T) {
	g, _ := newTestGuard(&fakeRuns{})
	body := []byte(`{"RequestMethod":"GET","RequestUri":"/_ping","RequestPeerCertificates":["bm90IGEgY2VydA=="]}`)
	if resp := post(t, Handler(g), "/AuthZPlugin.AuthZReq", body); !resp.Allow {
		t.Errorf("a read with a bogus certificate should pass: %+v", resp)
	}
}

func TestReadsPassWithoutEngineQueryOrAudit(t *testing.T) {
	runs := &fakeRuns{err: errors.New("engine down")}
	g, buf := newTestGuard(runs)
	h := Handler(g)
	for _, r := range []authorization.Request{
		{RequestMethod: "GET", RequestURI: "/v1.41/containers/json"},
		{RequestMethod: "POST", RequestURI: "/v1.41/containers/create", RequestHeaders: map[string]string{"Content-Type": "application/json"}, RequestBody: []byte(`{"Image":"x"}`)},
		{RequestMethod: "HEAD", RequestURI: "/_ping"},
	} {
		if resp := post(t, h, "/AuthZPlugin.AuthZReq", mustJSON(t, r)); !resp.Allow {
			t.Errorf("%s %s denied: %s", r.RequestMethod, r.RequestURI, resp.Msg)
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
	req := authorization.Request{RequestMethod: "POST", RequestURI: pruneAllURI, User: "alice"}
	resp := post(t, Handler(g), "/AuthZPlugin.AuthZReq", mustJSON(t, req))
	if resp.Allow || !strings.Contains(resp.Msg, "(rule no-prune-all)") {
		t.Fatalf("got %+v", resp)
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

func TestDeleteDuringRunIsDeniedAndNamesTheRun(t *testing.T) {
	g, buf := newTestGuard(&fakeRuns{runs: []rules.Run{{Detector: "prune-guard", System: "prune-guard run", Job: "r9", Kind: rules.Service, Name: "deploy"}}})
	resp := post(t, Handler(g), "/AuthZPlugin.AuthZReq", mustJSON(t, authorization.Request{RequestMethod: "DELETE", RequestURI: "/v1.41/images/base:1"}))
	if resp.Allow || !strings.Contains(resp.Msg, "prune-guard run r9, service deploy") {
		t.Fatalf("got %+v", resp)
	}
	if l := buf.lines(t)[0]; l["target"] != "base:1" || len(l["runs"].([]any)) != 1 {
		t.Errorf("audit line %v", l)
	}
}

func TestUnknownRunStateDeniesDestructiveRequests(t *testing.T) {
	g, buf := newTestGuard(&fakeRuns{err: errors.New("dial unix /var/run/docker.sock: connect: no such file")})
	resp := post(t, Handler(g), "/AuthZPlugin.AuthZReq", mustJSON(t, authorization.Request{RequestMethod: "POST", RequestURI: "/v1.41/containers/prune"}))
	if resp.Allow || !strings.Contains(resp.Msg, "run state is unknown") || !strings.Contains(resp.Msg, "no such file") {
		t.Fatalf("got %+v", resp)
	}
	if l := buf.lines(t)[0]; !strings.HasPrefix(l["runs"].([]any)[0].(string), "unknown: ") {
		t.Errorf("audit should record the unknown run state: %v", l)
	}
}

func TestPanicWhileDecidingIsADenyAndTheServerKeepsServing(t *testing.T) {
	g, buf := newTestGuard(&fakeRuns{panic: true})
	h := Handler(g)
	resp := post(t, h, "/AuthZPlugin.AuthZReq", mustJSON(t, authorization.Request{RequestMethod: "DELETE", RequestURI: "/images/x"}))
	if resp.Allow || !strings.Contains(resp.Msg, "failed while deciding") {
		t.Fatalf("got %+v", resp)
	}
	if l := buf.lines(t)[0]; l["rule"] != internalErrorRule {
		t.Errorf("audit %v", l)
	}
	if resp := post(t, h, "/AuthZPlugin.AuthZReq", mustJSON(t, authorization.Request{RequestMethod: "GET", RequestURI: "/_ping"})); !resp.Allow {
		t.Errorf("server stopped serving after a panic: %+v", resp)
	}
}

func TestResponsePhaseAlwaysAllows(t *testing.T) {
	g, _ := newTestGuard(&fakeRuns{})
	h := Handler(g)
	for _, body := range [][]byte{nil, []byte("junk"), mustJSON(t, authorization.Request{RequestMethod: "POST", RequestURI: pruneAllURI})} {
		if resp := post(t, h, "/AuthZPlugin.AuthZRes", body); !resp.Allow {
			t.Errorf("AuthZRes(%q) = %+v", body, resp)
		}
	}
}

func TestConcurrentDecisionsKeepAuditLinesWhole(t *testing.T) {
	runs := &fakeRuns{runs: []rules.Run{{System: "CI job", Job: "v", Kind: rules.Container, Name: "c"}}}
	g, buf := newTestGuard(runs)
	h := Handler(g)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, r := range []authorization.Request{
				{RequestMethod: "GET", RequestURI: "/v1.41/containers/json"},
				{RequestMethod: "POST", RequestURI: pruneAllURI},
				{RequestMethod: "DELETE", RequestURI: "/v1.41/images/a"},
			} {
				resp := post(t, h, "/AuthZPlugin.AuthZReq", mustJSON(t, r))
				if resp.Allow == (r.RequestMethod != "GET") {
					t.Errorf("%s %s: %+v", r.RequestMethod, r.RequestURI, resp)
				}
			}
		}()
	}
	wg.Wait()
	if n := len(buf.lines(t)); n != 100 {
		t.Errorf("want 100 whole audit lines, got %d", n)
	}
}

func BenchmarkAuthZReqRead(b *testing.B) {
	g, _ := newTestGuard(&fakeRuns{})
	req := authorization.Request{RequestMethod: "GET", RequestURI: "/v1.41/containers/json", RequestHeaders: map[string]string{"User-Agent": "Docker-Client/28.2.2 (linux)"}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		g.AuthZReq(ctx, req)
	}
}

func BenchmarkHandlerRead(b *testing.B) {
	g, _ := newTestGuard(&fakeRuns{})
	body, _ := json.Marshal(authorization.Request{RequestMethod: "GET", RequestURI: "/v1.41/containers/json",
		RequestHeaders: map[string]string{"User-Agent": "Docker-Client/28.2.2 (linux)", "Accept": "*/*"}})
	h := Handler(g)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/AuthZPlugin.AuthZReq", bytes.NewReader(body)))
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
		resp := g.AuthZReq(context.Background(), authorization.Request{RequestMethod: "DELETE", RequestURI: "/v1.41/images/" + name})
		if resp.Allow != wantAllow {
			t.Errorf("delete %s: %+v, want allow=%v", name, resp, wantAllow)
		}
		if !resp.Allow && !strings.Contains(resp.Msg, "(rule keep-protected)") {
			t.Errorf("delete %s: %s", name, resp.Msg)
		}
	}
}

func TestSelfProtectionResolvesPluginIDs(t *testing.T) {
	names := &fakeNames{plugins: map[string]resolve.Plugin{"4f5e": {ID: "4f5e0000", Name: "prune-guard:latest"}}}
	g, _ := newTestGuardWith(policy.Default(), &fakeRuns{}, names)
	for _, uri := range []string{"/v1.41/plugins/prune-guard/disable", "/v1.41/plugins/prune-guard:latest/set", "/v1.41/plugins/4f5e/disable"} {
		if resp := g.AuthZReq(context.Background(), authorization.Request{RequestMethod: "POST", RequestURI: uri}); resp.Allow || !strings.Contains(resp.Msg, "protect-self") {
			t.Errorf("%s: %+v", uri, resp)
		}
	}
	if resp := g.AuthZReq(context.Background(), authorization.Request{RequestMethod: "DELETE", RequestURI: "/v1.41/plugins/vieux/sshfs"}); !resp.Allow {
		t.Errorf("another plugin's removal was denied: %+v", resp)
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
		g.AuthZReq(context.Background(), authorization.Request{RequestMethod: "POST", RequestURI: pruneAllURI})
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
