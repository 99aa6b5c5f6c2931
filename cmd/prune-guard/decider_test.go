package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/sirupsen/logrus"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/authz"
	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/proxy"
	"github.com/prune-guard/prune-guard/rules"
)

const pruneAllURI = "/v1.41/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D"

// pluginHandler is the plugin protocol wired to a guard as serve wires it.
func pluginHandler(t *testing.T) http.Handler {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	g := guard.New(policy.Default(), fixedRuns{}, noNames{}, audit.New(io.Discard, nil), log)
	return authz.Handler(authzDecider{g}, g.Handler(), authz.Options{Headers: rules.ReadHeaders()})
}

func call(t *testing.T, h http.Handler, body []byte) authorization.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/AuthZPlugin.AuthZReq", bytes.NewReader(body)))
	var resp authorization.Response
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &resp) != nil {
		t.Fatalf("answer %d: %q", rec.Code, rec.Body)
	}
	return resp
}

// Whatever part of the way a malformed call fails (the protocol's decoder,
// or the guard's classifier), the answer is a deny that says why.
func TestMalformedCallsAreDeniedWithAReason(t *testing.T) {
	h := pluginHandler(t)
	for name, body := range map[string][]byte{
		"empty body":          nil,
		"not JSON":            []byte("DELETE /images/x"),
		"wrong field type":    []byte(`{"RequestMethod":7,"RequestUri":"/images/x"}`),
		"trailing data":       []byte(`{"RequestMethod":"GET","RequestUri":"/_ping"} {"x":1}`),
		"empty object":        []byte(`{}`),
		"null":                []byte(`null`),
		"bad base64 body":     []byte(`{"RequestMethod":"POST","RequestUri":"/images/prune","RequestBody":"!!"}`),
		"method only, delete": []byte(`{"RequestMethod":"DELETE"}`),
	} {
		t.Run(name, func(t *testing.T) {
			if resp := call(t, h, body); resp.Allow || !strings.HasPrefix(resp.Msg, "prune-guard: ") {
				t.Errorf("got %+v, want a deny that says why", resp)
			}
		})
	}
}

// The headers the classifier reads reach it through the protocol, and a
// forwarded body is told apart from a hidden one.
func TestTheClassifiersHeadersAndBodyReachTheGuard(t *testing.T) {
	h := pluginHandler(t)
	prune := func(headers map[string]string, body []byte) authorization.Response {
		b, _ := json.Marshal(authorization.Request{RequestMethod: "POST", RequestURI: "/v1.41/images/prune",
			RequestHeaders: headers, RequestBody: body})
		return call(t, h, b)
	}
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "20"}
	if resp := prune(form, nil); resp.Allow || !strings.Contains(resp.Msg, "form body") {
		t.Errorf("a dangling prune with a hidden form body: %+v, want the form doubted", resp)
	}
	json := map[string]string{"Content-Type": "application/json", "Content-Length": "2"}
	if resp := prune(json, []byte("{}")); !resp.Allow {
		t.Errorf("a dangling prune with a forwarded JSON body: %+v, want it allowed", resp)
	}
	if resp := prune(map[string]string{"Content-Type": "application/json", "Content-Length": "0"}, nil); !resp.Allow {
		t.Errorf("a dangling prune with an empty body: %+v, want it allowed", resp)
	}
}

// A pull is recorded at once in authz mode, which never sees the response;
// in proxy mode the verdict observes the response and the record waits for
// the pull's end, with its layers.
func TestPullsAreRecordedByEachTransportAsItCan(t *testing.T) {
	const uri = "/v1.51/images/create?fromImage=docker.io%2Flibrary%2Falpine&tag=3.20"
	newGuard := func() (*guard.Guard, *bytes.Buffer) {
		var buf bytes.Buffer
		log := logrus.New()
		log.SetOutput(io.Discard)
		return guard.New(policy.Default(), fixedRuns{}, noNames{}, audit.New(&buf, nil), log), &buf
	}

	g, buf := newGuard()
	b, _ := json.Marshal(authorization.Request{RequestMethod: "POST", RequestURI: uri,
		RequestHeaders: map[string]string{"Content-Type": "text/plain", "Content-Length": "0"}})
	h := authz.Handler(authzDecider{g}, g.Handler(), authz.Options{Headers: rules.ReadHeaders()})
	if resp := call(t, h, b); !resp.Allow {
		t.Fatalf("authz: a pull was refused: %+v", resp)
	}
	if !strings.Contains(buf.String(), `"result":"miss"`) || strings.Contains(buf.String(), `"progress"`) {
		t.Errorf("authz: pull record %s", buf.String())
	}

	g, buf = newGuard()
	v := proxyDecider{g}.Decide(t.Context(), proxy.Request{Method: "POST", URI: uri})
	if !v.Allow || v.Observe == nil || buf.Len() != 0 {
		t.Fatalf("proxy: verdict %+v, record %q; want an observed allow, not yet recorded", v, buf.String())
	}
	v.Observe.Response(200)
	v.Observe.Body([]byte(`{"status":"Already exists","id":"a"}` + "\r\n"))
	v.Observe.Done(nil)
	if !strings.Contains(buf.String(), `"progress":{"layers_reused":1,"layers_downloaded":0,"bytes_downloaded":0}`) {
		t.Errorf("proxy: pull record %s", buf.String())
	}
	if v := (proxyDecider{g}).Decide(t.Context(), proxy.Request{Method: "GET", URI: "/v1.51/images/json"}); v.Observe != nil {
		t.Errorf("a read is observed: %+v", v)
	}
}
