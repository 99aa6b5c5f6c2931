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
