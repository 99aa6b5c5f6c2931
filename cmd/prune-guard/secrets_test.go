package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/sirupsen/logrus"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/authz"
	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/resolve"
	"github.com/prune-guard/prune-guard/rules"
)

// A credential can travel in every part of a request a client controls:
// headers (repeated ones arrive flattened), query parameters, JSON bodies,
// the /auth body, and the userinfo of an absolute-form request target.
// dockerd strips Authorization and registry-auth headers and forwards only
// JSON bodies, but the plugin socket accepts calls from anything, so none of
// that is relied on here. Whatever the request and whatever the decision
// (allowed and audited, denied, refused as unparsable, failed on an
// unreachable engine), no credential may appear in the audit log or in the
// plugin's operational log.

// credPlacement puts a credential somewhere in a request and returns the
// strings that must never be logged: the credential and any encoding of it
// that is as good as the credential (a base64 auth blob).
type credPlacement struct {
	name string
	put  func(r *authorization.Request, secret string) []string
}

// withQuery appends key=value to the request's query.
func withQuery(uri, kv string) string {
	if strings.Contains(uri, "?") {
		return uri + "&" + kv
	}
	return uri + "?" + kv
}

// absolute rewrites an origin-form target into absolute-form with userinfo.
func absolute(uri, scheme, userinfo string) string {
	return scheme + "://" + userinfo + "@docker" + uri
}

func registryAuth(secret string) string {
	b, _ := json.Marshal(map[string]string{"username": "ci", "password": secret, "serveraddress": "registry.example"})
	return base64.URLEncoding.EncodeToString(b)
}

var credPlacements = []credPlacement{
	{"Authorization: Bearer", func(r *authorization.Request, s string) []string {
		r.RequestHeaders["Authorization"] = "Bearer " + s
		return []string{s}
	}},
	{"Authorization: Basic", func(r *authorization.Request, s string) []string {
		blob := base64.StdEncoding.EncodeToString([]byte("ci:" + s))
		r.RequestHeaders["Authorization"] = "Basic " + blob
		return []string{s, blob}
	}},
	{"X-Registry-Auth header", func(r *authorization.Request, s string) []string {
		blob := registryAuth(s)
		r.RequestHeaders["X-Registry-Auth"] = blob
		return []string{s, blob}
	}},
	{"X-Registry-Config header", func(r *authorization.Request, s string) []string {
		b, _ := json.Marshal(map[string]any{"registry.example": map[string]string{"username": "ci", "password": s}})
		blob := base64.URLEncoding.EncodeToString(b)
		r.RequestHeaders["X-Registry-Config"] = blob
		return []string{s, blob}
	}},
	{"repeated headers flattened to one", func(r *authorization.Request, s string) []string {
		r.RequestHeaders["Authorization"] = "Basic Y2k6eA==, Bearer " + s
		r.RequestHeaders["Proxy-Authorization"] = "Bearer " + s
		r.RequestHeaders["Cookie"] = "session=" + s
		r.RequestHeaders["X-Auth-Token"] = s
		return []string{s}
	}},
	{"password query parameter", func(r *authorization.Request, s string) []string {
		r.RequestURI = withQuery(r.RequestURI, "password="+s)
		return []string{s}
	}},
	{"token query parameters, repeated", func(r *authorization.Request, s string) []string {
		r.RequestURI = withQuery(r.RequestURI, "access_token="+s+"&token="+s+"&id_token="+s)
		return []string{s}
	}},
	{"secret query parameter first, upper case", func(r *authorization.Request, s string) []string {
		path, query, _ := strings.Cut(r.RequestURI, "?")
		r.RequestURI = path + "?CLIENT_SECRET=" + s
		if query != "" {
			r.RequestURI += "&" + query
		}
		return []string{s}
	}},
	{"percent-encoded parameter name", func(r *authorization.Request, s string) []string {
		r.RequestURI = withQuery(r.RequestURI, "pass%77ord="+s)
		return []string{s}
	}},
	{"password parameter after a ';' (a separator for daemons built with Go < 1.17)", func(r *authorization.Request, s string) []string {
		r.RequestURI = withQuery(r.RequestURI, "x=1;password="+s)
		return []string{s}
	}},
	{"access token in a fragment", func(r *authorization.Request, s string) []string {
		r.RequestURI = withQuery(r.RequestURI, "x=1#access_token="+s)
		return []string{s}
	}},
	{"api key parameter", func(r *authorization.Request, s string) []string {
		r.RequestURI = withQuery(r.RequestURI, "api_key="+s+"&apikey="+s)
		return []string{s}
	}},
	{"registry auth in the query", func(r *authorization.Request, s string) []string {
		blob := registryAuth(s)
		r.RequestURI = withQuery(r.RequestURI, "X-Registry-Auth="+blob)
		return []string{s, blob}
	}},
	{"JSON body", func(r *authorization.Request, s string) []string {
		r.RequestHeaders["Content-Type"] = "application/json"
		r.RequestBody, _ = json.Marshal(map[string]any{"password": s, "auth": base64.StdEncoding.EncodeToString([]byte("ci:" + s)), "identitytoken": s})
		return []string{s}
	}},
	{"/auth body", func(r *authorization.Request, s string) []string {
		r.RequestMethod, r.RequestURI = "POST", "/v1.41/auth"
		r.RequestHeaders["Content-Type"] = "application/json"
		r.RequestBody, _ = json.Marshal(map[string]string{"username": "ci", "password": s, "serveraddress": "registry.example"})
		return []string{s}
	}},
	{"userinfo in an absolute-form target", func(r *authorization.Request, s string) []string {
		r.RequestURI = absolute(r.RequestURI, "http", "ci:"+s)
		return []string{s}
	}},
	{"token as userinfo user, other scheme", func(r *authorization.Request, s string) []string {
		r.RequestURI = absolute(r.RequestURI, "HTTPS", s)
		return []string{s}
	}},
	{"userinfo with an escaped password", func(r *authorization.Request, s string) []string {
		r.RequestURI = absolute(r.RequestURI, "tcp", "ci:"+url.PathEscape(s+"@!"))
		return []string{s}
	}},
	{"reclaim grant header", func(r *authorization.Request, s string) []string {
		r.RequestHeaders[guard.GrantHeader] = "pgg_" + s
		return []string{s}
	}},
	{"everywhere at once", func(r *authorization.Request, s string) []string {
		r.RequestHeaders["Authorization"] = "Bearer " + s
		r.RequestHeaders["X-Registry-Auth"] = registryAuth(s)
		r.RequestURI = absolute(withQuery(r.RequestURI, "password="+s), "http", "ci:"+s)
		r.RequestBody, _ = json.Marshal(map[string]string{"password": s})
		return []string{s, registryAuth(s)}
	}},
}

// credRoute is a request shape that reaches a different part of the
// decision and audit code.
type credRoute struct {
	name       string
	method     string
	uri        string
	headers    map[string]string
	runsActive bool
	runsErr    error
}

var credRoutes = []credRoute{
	{name: "prune -a: denied by request", method: "POST", uri: pruneAllURI},
	{name: "dangling prune: allowed and audited", method: "POST", uri: "/v1.41/images/prune"},
	{name: "image delete during a run: denied, names the run", method: "DELETE", uri: "/v1.41/images/base:1", runsActive: true},
	{name: "prune with the engine down: denied, state unknown", method: "POST", uri: "/v1.41/containers/prune", runsErr: errors.New("dial unix /run/docker.sock: connection refused")},
	{name: "form body doubt: denied as prune -a", method: "POST", uri: "/v1.41/images/prune", headers: map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "40"}},
	{name: "unparsable target: refused fail-closed, quoting the URI", method: "POST", uri: "/v1.41/images/prune\x7f"},
	{name: "disabling prune-guard: denied, self-protection", method: "POST", uri: "/v1.41/plugins/prune-guard/disable"},
	{name: "a read: allowed", method: "GET", uri: "/v1.41/containers/json"},
}

// leakCheck runs one request through a fresh guard, under both audit
// levels, and reports every place a secret shows up.
func leakCheck(t *testing.T, route credRoute, p credPlacement, secret string) {
	t.Helper()
	for _, level := range []policy.AuditLevel{policy.AuditDestructive, policy.AuditAll} {
		cfg := policy.Default()
		cfg.Audit = level
		runs := fixedRuns{err: route.runsErr}
		if route.runsActive {
			runs.active = []rules.Run{{Detector: "prune-guard", System: "prune-guard run", Job: "r1", Kind: rules.Container, Name: "job"}}
		}
		auditBuf, logBuf := &syncBuffer{}, &syncBuffer{}
		log := logrus.New()
		log.SetOutput(logBuf)
		log.SetLevel(logrus.DebugLevel)
		al := audit.New(auditBuf, nil)
		g := guard.New(cfg, runs, noNames{}, al, log)
		h := authz.Handler(authzDecider{g}, g.Handler(), authz.Options{Headers: guard.ReadHeaders()})

		req := authorization.Request{RequestMethod: route.method, RequestURI: route.uri, RequestHeaders: map[string]string{}, User: "ci-user"}
		for k, v := range route.headers {
			req.RequestHeaders[k] = v
		}
		forbidden := p.put(&req, secret)
		body, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/AuthZPlugin.AuthZReq", bytes.NewReader(body)))
		if rec.Code != http.StatusOK {
			t.Fatalf("plugin answered %d: %s", rec.Code, rec.Body)
		}
		if level == policy.AuditAll && !strings.Contains(auditBuf.String(), `"uri"`) {
			t.Fatalf("nothing was audited under audit: all; the check would prove nothing")
		}
		// The status endpoint is another way out of the process.
		status := httptest.NewRecorder()
		h.ServeHTTP(status, httptest.NewRequest("GET", "/status", nil))

		for where, text := range map[string]string{"audit log": auditBuf.String(), "operational log": logBuf.String(), "status": status.Body.String()} {
		forms:
			for _, f := range forbidden {
				for _, form := range []string{f, url.QueryEscape(f), url.PathEscape(f)} {
					if i := strings.Index(text, form); i >= 0 {
						line := text[strings.LastIndex(text[:i], "\n")+1:]
						line, _, _ = strings.Cut(line, "\n")
						t.Errorf("audit=%s: the %s holds a credential (%q) put in %s of %s %q:\n%s", level, where, form, p.name, route.method, req.RequestURI, line)
						break forms
					}
				}
			}
		}
	}
}

func TestNoCredentialReachesTheAuditOrOperationalLog(t *testing.T) {
	secrets := []string{
		"hunter2Hunter2hunter2",                      // a password
		"ghp_0123456789abcdefghijABCDEFGHIJKLmnop",   // a GitHub token
		"glpat-abcdefghij0123456789",                 // a GitLab token
		"AKIAABCDEFGHIJKLMNOP",                       // an AWS key ID
		"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2ln", // a registry identity token (JWT)
		"dckr_pat_0123456789abcdefABCDEF",            // a Docker Hub access token
	}
	for _, route := range credRoutes {
		for _, p := range credPlacements {
			t.Run(route.name+"/"+p.name, func(t *testing.T) {
				for _, s := range secrets {
					leakCheck(t, route, p, s)
					if t.Failed() {
						break // one secret shape is enough to name the leak
					}
				}
			})
		}
	}
}

// FuzzNoCredentialReachesTheLogs explores credential strings, placements and
// routes beyond the table. Only strings shaped like credentials (8 or more
// letters and digits) are tried, so that a match in the logs is a leak and
// not a coincidence with ordinary words.
func FuzzNoCredentialReachesTheLogs(f *testing.F) {
	f.Add("hunter2Hunter2", uint8(0), uint8(0))
	f.Add("ghp_0123456789abcdefghij", uint8(5), uint8(3))
	f.Add("AKIAABCDEFGHIJKLMNOP", uint8(13), uint8(5))
	f.Fuzz(func(t *testing.T, secret string, placement, route uint8) {
		if len(secret) < 8 || len(secret) > 200 || strings.Trim(secret, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != "" {
			t.Skip("not shaped like a credential")
		}
		// Skip strings that occur in the plugin's own output regardless of
		// the request (rule names, field names, fixed messages).
		for _, fixed := range []string{"prune-guard", "no-prune-all", "no-prune-during-run", "fail-closed", "protect-self", "operation", "decision", "container", "destructive", "duration", "image-prune", "plugin-change"} {
			if strings.Contains(fixed, secret) {
				t.Skip("part of the plugin's fixed output")
			}
		}
		leakCheck(t, credRoutes[int(route)%len(credRoutes)], credPlacements[int(placement)%len(credPlacements)], secret)
	})
}

// fixedRuns reports the same run state whenever asked.
type fixedRuns struct {
	active []rules.Run
	err    error
}

func (f fixedRuns) State(context.Context, rules.Detection) rules.RunState {
	return rules.RunState{Active: f.active, Err: f.err}
}

func (fixedRuns) HostVisible() (bool, string) { return true, "" }

// noNames knows no image and no plugin.
type noNames struct{}

func (noNames) Image(context.Context, string) (resolve.Image, bool, error) {
	return resolve.Image{}, false, nil
}

func (noNames) Images(context.Context, []string, bool) ([]resolve.Image, error) { return nil, nil }

func (noNames) Plugin(context.Context, string) (resolve.Plugin, bool, error) {
	return resolve.Plugin{}, false, nil
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A reclaim grant's token is a credential: whoever holds it may delete the
// images it names during a CI job. The control socket hands it to the
// reclaimer and nowhere else; a delete that carries it (used, reused, or
// for another image) is decided and audited without it.
func TestReclaimGrantTokenIsNeverLoggedOrAudited(t *testing.T) {
	auditBuf, logBuf := &syncBuffer{}, &syncBuffer{}
	log := logrus.New()
	log.SetOutput(logBuf)
	log.SetLevel(logrus.DebugLevel)
	cfg := policy.Default()
	cfg.Audit = policy.AuditAll
	runs := fixedRuns{active: []rules.Run{{Detector: "prune-guard", System: "prune-guard run", Job: "r1", Kind: rules.Container, Name: "job"}}}
	g := guard.New(cfg, runs, noNames{}, audit.New(auditBuf, nil), log)
	h := authz.Handler(authzDecider{g}, g.Handler(), authz.Options{Headers: guard.ReadHeaders()})
	ctl := g.ControlHandler(func(context.Context) (guard.Peer, error) { return guard.Peer{PID: 1}, nil })

	id := "sha256:" + strings.Repeat("ab", 32)
	other := "sha256:" + strings.Repeat("cd", 32)
	body, _ := json.Marshal(guard.GrantRequest{Images: []string{id}, Critical: 95,
		Usage: guard.GrantUsage{DataRoot: "/var/lib/docker", Percent: 97, TotalBytes: 1 << 30, AvailBytes: 30 << 20}})
	rec := httptest.NewRecorder()
	ctl.ServeHTTP(rec, httptest.NewRequest("POST", "/reclaim/grants", bytes.NewReader(body)))
	var ans guard.GrantAnswer
	if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil || ans.Token == "" {
		t.Fatalf("no grant: %d %s", rec.Code, rec.Body)
	}
	decide := func(target string) authorization.Response {
		req := authorization.Request{RequestMethod: "DELETE", RequestURI: "/v1.41/images/" + target, User: "root",
			RequestHeaders: map[string]string{guard.GrantHeader: ans.Token}}
		b, _ := json.Marshal(req)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/AuthZPlugin.AuthZReq", bytes.NewReader(b)))
		var res authorization.Response
		if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
			t.Fatalf("plugin answered %d %s", rec.Code, rec.Body)
		}
		return res
	}
	for _, c := range []struct {
		target string
		allow  bool
	}{{other, false}, {id, true}, {id, false}} {
		if res := decide(c.target); res.Allow != c.allow {
			t.Errorf("delete %s with the grant: allow %v (%s); want %v", c.target, res.Allow, res.Msg, c.allow)
		}
	}
	status := httptest.NewRecorder()
	h.ServeHTTP(status, httptest.NewRequest("GET", "/status", nil))
	hex := strings.TrimPrefix(ans.Token, "pgg_")
	for where, text := range map[string]string{"audit log": auditBuf.String(), "operational log": logBuf.String(), "status": status.Body.String()} {
		if strings.Contains(text, hex) {
			t.Errorf("the %s holds the grant token", where)
		}
	}
	if !strings.Contains(auditBuf.String(), `"rule":"reclaim-grant"`) || !strings.Contains(auditBuf.String(), "reclaim grant issued") {
		t.Errorf("the audit log does not show the grant and the delete it allowed:\n%s", auditBuf.String())
	}
}
