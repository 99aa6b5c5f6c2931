package authz

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/docker/go-plugins-helpers/authorization"
)

// testDecider stands for prune-guard's guard: it refuses image prunes and
// image deletes, allows the rest, and remembers what it was asked.
type testDecider struct {
	mu   sync.Mutex
	last []Request
}

func (d *testDecider) Decide(_ context.Context, r Request) authorization.Response {
	d.mu.Lock()
	d.last = append(d.last, r)
	d.mu.Unlock()
	switch {
	case r.Method == "POST" && strings.Contains(r.URI, "/images/prune"):
		return authorization.Response{Msg: "prune-guard: image prune --all is blocked (rule no-prune-all)"}
	case r.Method == "DELETE":
		return authorization.Response{Msg: "prune-guard: image delete is blocked"}
	}
	return authorization.Response{Allow: true}
}

func (d *testDecider) asked() []Request {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Request(nil), d.last...)
}

// statusHandler stands for the guard's status and metrics endpoints.
var statusHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/status" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`{"policy":{}}`))
})

const pruneAllURI = "/v1.41/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D"

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

func TestActivateAnnouncesAuthz(t *testing.T) {
	rec := httptest.NewRecorder()
	newHandler(&testDecider{}, nil, nil).ServeHTTP(rec, httptest.NewRequest("POST", "/Plugin.Activate", nil))
	if got := strings.TrimSpace(rec.Body.String()); got != `{"Implements":["authz"]}` {
		t.Errorf("Activate = %s", got)
	}
}

func TestCallsThatDoNotDecodeAreDeniedWithAReasonBeforeTheDecider(t *testing.T) {
	d := &testDecider{}
	h := newHandler(d, nil, nil)
	for name, body := range map[string][]byte{
		"empty body":       nil,
		"not JSON":         []byte("DELETE /images/x"),
		"wrong field type": []byte(`{"RequestMethod":7,"RequestUri":"/images/x"}`),
		"trailing data":    []byte(`{"RequestMethod":"GET","RequestUri":"/_ping"} {"x":1}`),
		"bad base64 body":  []byte(`{"RequestMethod":"POST","RequestUri":"/images/prune","RequestBody":"!!"}`),
		"oversized call":   append(append([]byte(`{"RequestMethod":"DELETE","RequestUri":"/images/x","RequestBody":"`), bytes.Repeat([]byte("A"), maxCallSize)...), []byte(`"}`)...),
	} {
		t.Run(name, func(t *testing.T) {
			resp := post(t, h, "/AuthZPlugin.AuthZReq", body)
			if resp.Allow || !strings.HasPrefix(resp.Msg, "prune-guard: malformed authorization call refused: ") {
				t.Errorf("got %+v, want a deny that says why", resp)
			}
		})
	}
	if asked := d.asked(); len(asked) != 0 {
		t.Errorf("the decider was asked about calls that did not decode: %+v", asked)
	}
}

func TestDeciderIsGivenWhatTheCallSays(t *testing.T) {
	d := &testDecider{}
	h := newHandler(d, nil, []string{"Content-Type", "Content-Length"})
	body := mustJSON(t, authorization.Request{User: "alice", RequestMethod: "POST", RequestURI: "/v1.41/containers/create",
		RequestHeaders: map[string]string{"Content-Type": "application/json", "User-Agent": "x"}, RequestBody: []byte(`{"Image":"x"}`)})
	if resp := post(t, h, "/AuthZPlugin.AuthZReq", body); !resp.Allow {
		t.Fatalf("got %+v", resp)
	}
	want := Request{User: "alice", Method: "POST", URI: "/v1.41/containers/create",
		Headers: map[string]string{"Content-Type": "application/json"}, BodyForwarded: true}
	if got := d.asked(); len(got) != 1 || got[0].User != want.User || got[0].Method != want.Method || got[0].URI != want.URI ||
		got[0].BodyForwarded != want.BodyForwarded || len(got[0].Headers) != 1 || got[0].Headers["Content-Type"] != "application/json" {
		t.Errorf("decider asked %+v, want %+v", got, want)
	}
}

func TestBogusPeerCertificateDoesNotCrash(t *testing.T) {
	body := []byte(`{"RequestMethod":"GET","RequestUri":"/_ping","RequestPeerCertificates":["bm90IGEgY2VydA=="]}`)
	if resp := post(t, newHandler(&testDecider{}, nil, nil), "/AuthZPlugin.AuthZReq", body); !resp.Allow {
		t.Errorf("a read with a bogus certificate should pass: %+v", resp)
	}
}

func TestResponsePhaseAlwaysAllows(t *testing.T) {
	d := &testDecider{}
	h := newHandler(d, nil, nil)
	for _, body := range [][]byte{nil, []byte("junk"), mustJSON(t, authorization.Request{RequestMethod: "POST", RequestURI: pruneAllURI})} {
		if resp := post(t, h, "/AuthZPlugin.AuthZRes", body); !resp.Allow {
			t.Errorf("AuthZRes(%q) = %+v", body, resp)
		}
	}
	if asked := d.asked(); len(asked) != 0 {
		t.Errorf("the response phase asked the decider: %+v", asked)
	}
}

func TestOtherPathsGoToTheExtraHandler(t *testing.T) {
	for _, tc := range []struct {
		extra http.Handler
		code  int
	}{{statusHandler, http.StatusOK}, {nil, http.StatusNotFound}} {
		rec := httptest.NewRecorder()
		newHandler(&testDecider{}, tc.extra, nil).ServeHTTP(rec, httptest.NewRequest("GET", "/status", nil))
		if rec.Code != tc.code {
			t.Errorf("GET /status with extra=%v: %d, want %d", tc.extra != nil, rec.Code, tc.code)
		}
	}
}

func BenchmarkHandlerRead(b *testing.B) {
	body, _ := json.Marshal(authorization.Request{RequestMethod: "GET", RequestURI: "/v1.41/containers/json",
		RequestHeaders: map[string]string{"User-Agent": "Docker-Client/28.2.2 (linux)", "Accept": "*/*"}})
	h := newHandler(allowAll{}, nil, []string{"Content-Type", "Content-Length"})
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/AuthZPlugin.AuthZReq", bytes.NewReader(body)))
	}
}

// allowAll allows everything without remembering it, for benchmarks.
type allowAll struct{}

func (allowAll) Decide(context.Context, Request) authorization.Response {
	return authorization.Response{Allow: true}
}
