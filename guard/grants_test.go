package guard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/resolve"
	"github.com/prune-guard/prune-guard/rules"
)

var (
	idA = "sha256:" + strings.Repeat("a", 64)
	idB = "sha256:" + strings.Repeat("b", 64)
	idK = "sha256:" + strings.Repeat("c", 64)
)

func grantReq(images ...string) GrantRequest {
	return GrantRequest{
		Images:   images,
		Usage:    GrantUsage{DataRoot: "/var/lib/docker", Percent: 96.4, TotalBytes: 100 << 30, AvailBytes: 3600 << 20},
		Critical: 95,
		Runs:     []string{"GitLab job 4711, container build-1"},
	}
}

func TestGrantValidation(t *testing.T) {
	for name, r := range map[string]GrantRequest{
		"no image":           {Usage: GrantUsage{Percent: 96}, Critical: 95},
		"short ID":           grantReq("sha256:abc"),
		"a name as an image": grantReq("app:1"),
		"upper-case ID":      grantReq("sha256:" + strings.Repeat("A", 64)),
		"below critical":     func() GrantRequest { r := grantReq(idA); r.Usage.Percent = 90; return r }(),
		"no critical mark":   func() GrantRequest { r := grantReq(idA); r.Critical = 0; return r }(),
		"untag bad name":     func() GrantRequest { r := grantReq(idA); r.Untag = []GrantName{{Ref: "UPPER:1", Image: idA}}; return r }(),
		"untag without its ID": func() GrantRequest {
			r := grantReq(idA)
			r.Untag = []GrantName{{Ref: "app:2", Image: "app:1"}}
			return r
		}(),
		"too many": grantReq(func() []string {
			s := make([]string, maxGrantTargets+1)
			for i := range s {
				s[i] = idA
			}
			return s
		}()...),
	} {
		if _, err := newGrants().issue(r); err == nil {
			t.Errorf("%s: issued; want refused", name)
		}
	}
}

func TestGrantTargetsAreUsableOnceUntilTheyExpire(t *testing.T) {
	gs := newGrants()
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	gs.now = func() time.Time { return now }
	ans, err := gs.issue(grantReq(idA, idB))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ans.Token, tokenPrefix) || len(ans.Token) != len(tokenPrefix)+32 || !ans.Expires.Equal(now.Add(GrantTTL)) {
		t.Fatalf("answer %+v; want a %s token of 128 bits expiring in %v", ans, tokenPrefix, GrantTTL)
	}
	if _, ok := gs.consume(ans.Token, idK); ok {
		t.Errorf("a target the grant does not list was taken")
	}
	if _, ok := gs.consume(tokenPrefix+strings.Repeat("0", 32), idA); ok {
		t.Errorf("a made-up token was accepted")
	}
	if _, ok := gs.consume(strings.TrimPrefix(ans.Token, tokenPrefix), idA); ok {
		t.Errorf("the token without its prefix was accepted")
	}
	if use, ok := gs.consume(ans.Token, idA); !ok || use.image != idA || !strings.Contains(use.why, "reached 96.4% used") {
		t.Fatalf("first use of a listed target: %+v, %v", use, ok)
	}
	if _, ok := gs.consume(ans.Token, idA); ok {
		t.Errorf("a target was taken twice")
	}
	now = now.Add(GrantTTL)
	if _, ok := gs.consume(ans.Token, idB); ok {
		t.Errorf("an expired grant was used")
	}
	if n := gs.live(); n != 0 {
		t.Errorf("%d grants live after expiry; want 0", n)
	}
	// Used up: the last target removes the grant.
	ans, _ = gs.issue(grantReq(idA))
	gs.consume(ans.Token, idA)
	if n := gs.live(); n != 0 {
		t.Errorf("%d grants live after the last target was used; want 0", n)
	}
}

func TestLiveGrantsAreBounded(t *testing.T) {
	gs := newGrants()
	for range maxLiveGrants {
		if _, err := gs.issue(grantReq(idA)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := gs.issue(grantReq(idA)); err == nil {
		t.Errorf("grant %d issued; want refused", maxLiveGrants+1)
	}
}

// During a job, an image delete carrying a live grant for exactly its
// target passes as if no job were active, audited as the grant's; every
// imitation is decided as any client's request and refused.
func TestGrantedDeleteDuringARunAndItsImitations(t *testing.T) {
	runs := &fakeRuns{runs: []rules.Run{{Detector: "gitlab", System: "GitLab job", Job: "4711", Kind: rules.Container, Name: "build-1"}}}
	names := &fakeNames{images: map[string]resolve.Image{
		"app:2": {ID: idA, Refs: []string{"app:1", "app:2"}},
		"old:1": {ID: idB, Refs: []string{"old:1"}},
		idK:     {ID: idK, Labels: map[string]string{"prune-guard.keep": "true"}},
	}}
	g, buf := newTestGuardWith(policy.Default(), runs, names)
	ans, err := g.grants.issue(GrantRequest{Images: []string{idA, idK}, Untag: []GrantName{{Ref: "app:2", Image: idA}, {Ref: "old:1", Image: idA}, {Ref: "gone:1", Image: idA}},
		Usage: grantReq().Usage, Critical: 95, Runs: grantReq().Runs})
	if err != nil {
		t.Fatal(err)
	}
	del := func(target, token string) Verdict {
		h := map[string]string{}
		if token != "" {
			h[GrantHeader] = token
		}
		return g.Decide(ctx, Request{Method: "DELETE", URI: "/v1.41/images/" + target, Headers: h})
	}
	other, _ := g.grants.issue(grantReq(idB))

	for _, c := range []struct {
		name, target, token string
		allow               bool
	}{
		{"plain docker rmi during the job", idA, "", false},
		{"a made-up token", idA, tokenPrefix + "0123456789abcdef0123456789abcdef", false},
		{"a grant for another image", idA, other.Token, false},
		{"force with a grant", idA + "?force=1", ans.Token, false},
		{"a granted name that names another image now", "old:1", ans.Token, false},
		{"a granted name", "app:2", ans.Token, true},
		{"a granted name that names nothing now: the engine answers 404", "gone:1", ans.Token, true},
		{"the granted ID", idA, ans.Token, true},
		{"the same ID again: used", idA, ans.Token, false},
		{"a granted but protected image", idK, ans.Token, false},
	} {
		if v := del(c.target, c.token); v.Allow != c.allow {
			t.Errorf("%s: allow %v (%s); want %v", c.name, v.Allow, v.Message, c.allow)
		}
	}
	// The lowercase header name a plugin call may carry works too.
	g2, _ := newTestGuardWith(policy.Default(), runs, names)
	a2, _ := g2.grants.issue(grantReq(idB))
	if v := g2.Decide(ctx, Request{Method: "DELETE", URI: "/v1.41/images/" + idB, Headers: map[string]string{"x-prune-guard-grant": a2.Token}}); !v.Allow {
		t.Errorf("lower-case header: %s", v.Message)
	}

	var granted []map[string]any
	for _, l := range buf.lines(t) {
		if l["rule"] == GrantRule {
			granted = append(granted, l)
		}
		if strings.Contains(buf.b.String(), ans.Token) {
			t.Fatalf("the token is in the audit log")
		}
	}
	if len(granted) != 3 {
		t.Fatalf("want 3 audit lines by rule %s, have %v", GrantRule, granted)
	}
	for _, l := range granted {
		if l["decision"] != "allow" || !strings.Contains(l["reason"].(string), "at or above the critical mark 95%") ||
			!strings.Contains(l["reason"].(string), "/var/lib/docker reached 96.4% used") || !strings.Contains(l["reason"].(string), "now 96.4%, 3.5 GiB of 100.0 GiB available") {
			t.Errorf("granted audit line does not say why: %v", l)
		}
		if rs, _ := l["runs"].([]any); len(rs) != 1 || rs[0] != "GitLab job 4711, container build-1" {
			t.Errorf("granted audit line's runs %v; want the job the reclaimer saw", l["runs"])
		}
	}
	if n := g.Stats().Snapshot().Decisions[GrantRule]["allow"]; n != 3 {
		t.Errorf("decision counter %s/allow = %d; want 3", GrantRule, n)
	}
}

func TestControlHandlerGivesGrantsToRootOnly(t *testing.T) {
	g, buf := newTestGuard(&fakeRuns{})
	body, _ := json.Marshal(grantReq(idA))
	post := func(p Peer, err error, body []byte) *httptest.ResponseRecorder {
		h := g.ControlHandler(func(context.Context) (Peer, error) { return p, err })
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/reclaim/grants", bytes.NewReader(body)))
		return rec
	}
	if rec := post(Peer{PID: 42, UID: 1000}, nil, body); rec.Code != http.StatusForbidden || strings.Contains(rec.Body.String(), tokenPrefix) {
		t.Errorf("non-root peer: %d %s; want 403 without a token", rec.Code, rec.Body)
	}
	if rec := post(Peer{}, errors.New("no credentials"), body); rec.Code != http.StatusForbidden {
		t.Errorf("unknown peer: %d %s; want 403", rec.Code, rec.Body)
	}
	if rec := post(Peer{PID: 1}, nil, []byte(`{"images":["`+idA+`"],"extra":1}`)); rec.Code != http.StatusBadRequest {
		t.Errorf("unknown field: %d; want 400", rec.Code)
	}
	if rec := post(Peer{PID: 1}, nil, []byte(`{"images":["app:1"],"critical":95,"usage":{"percent":99}}`)); rec.Code != http.StatusBadRequest {
		t.Errorf("a name as an image: %d; want 400", rec.Code)
	}
	rec := post(Peer{PID: 7}, nil, body)
	var ans GrantAnswer
	if err := json.Unmarshal(rec.Body.Bytes(), &ans); rec.Code != http.StatusOK || err != nil || !strings.HasPrefix(ans.Token, tokenPrefix) {
		t.Fatalf("root peer: %d %s", rec.Code, rec.Body)
	}
	if strings.Contains(buf.b.String(), ans.Token) {
		t.Errorf("the token is in the audit log")
	}
	var issued, refused int
	for _, l := range buf.lines(t) {
		switch l["msg"] {
		case "reclaim grant issued":
			issued++
			if l["pid"] != float64(7) || !strings.Contains(l["runs"].(string), "GitLab job 4711") {
				t.Errorf("issued line %v", l)
			}
		case "reclaim grant refused":
			refused++
		}
	}
	if issued != 1 || refused != 3 {
		t.Errorf("audit: %d issued, %d refused; want 1 and 3", issued, refused)
	}
	// The status routes are still served.
	status := httptest.NewRecorder()
	g.ControlHandler(func(context.Context) (Peer, error) { return Peer{}, nil }).ServeHTTP(status, httptest.NewRequest("GET", "/status", nil))
	if status.Code != http.StatusOK {
		t.Errorf("GET /status on the control handler: %d", status.Code)
	}
}
