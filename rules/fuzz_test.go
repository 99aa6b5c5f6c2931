package rules

import (
	"net/http"
	"reflect"
	"testing"
)

// FuzzClassify checks that classification never panics on any plugin call
// and keeps its fail-closed promises: a doubted reading is always the most
// destructive one, and only POST and DELETE can ever be destructive.
func FuzzClassify(f *testing.F) {
	seeds := []struct{ method, uri, ct, cl, body string }{
		{"POST", "/v1.41/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D", "text/plain", "0", ""},
		{"POST", "/images/prune?filters=%7B%22dangling%22%3A%5B%22true%22%5D%7D", "", "", ""},
		{"POST", "http://h/v1.41/images/%70rune", "application/x-www-form-urlencoded", "", ""},
		{"DELETE", "/v1.41/images/registry.example:5000/a/b@sha256:00", "", "", ""},
		{"POST", "/v1.43/volumes/prune?filters=%7B%22all%22%3A%7B%22true%22%3Atrue%7D%7D", "", "", ""},
		{"POST", "/build/prune?all=0&all=1", "application/json", "10", `{"a":1}`},
		{"POST", "/v1.41/plugins/prune-guard/disable", "", "", ""},
		{"GET", "/v1.41/containers/json", "", "", ""},
		{"POST", "//images/prune", "", "", ""},
		{"POST", "/v1.51/networks/prune?filters=%7B%22label%22%3A%7B%2261626364656667%22%3Atrue%7D%7D", "", "", ""},
		{"POST", "/v1.41/images/prune?filters=%7B%22dangling%22%3A%5B%22false%22%5D%2C%22label%22%3A%5B%22com.gitlab.gitlab-runner.managed%3Dtrue%22%5D%7D", "", "", ""},
		{"POST", "/v1.45/containers/prune?filters=%7B%22label%22%3A%7B%22a!%3Db%22%3Atrue%7D%7D", "", "", ""},
		{"", "", "", "", ""},
	}
	for _, s := range seeds {
		f.Add(s.method, s.uri, s.ct, s.cl, []byte(s.body))
	}
	c := NewClassifier()
	f.Fuzz(func(t *testing.T, method, uri, ct, cl string, body []byte) {
		h := map[string]string{}
		if ct != "" {
			h["Content-Type"] = ct
		}
		if cl != "" {
			h["Content-Length"] = cl
		}
		r := Request{Method: method, URI: uri, Headers: h}
		if len(body) > 0 {
			r.Body = BodyForwarded
		}
		got := c.Classify(r)
		if again := c.Classify(r); !reflect.DeepEqual(again, got) {
			t.Fatalf("classification is not deterministic: %+v then %+v", got, again)
		}
		if got.Op.Destructive() && got.Op != OpUnknown && method != http.MethodPost && method != http.MethodDelete {
			t.Fatalf("%s %q classified %v, but only POST and DELETE routes destroy", method, uri, got.Op)
		}
		if got.Doubt != "" && got.Scope != nil {
			t.Fatalf("a doubted reading must not be scoped: %+v", got)
		}
		if got.Doubt != "" {
			switch got.Op {
			case OpUnknown, OpImagePruneAll, OpBuildPruneAll, OpVolumePruneAll,
				// No parameter makes these remove more; a doubt only
				// drops their label scope.
				OpContainerPrune, OpNetworkPrune:
			default:
				t.Fatalf("doubted reading %v is not the most destructive one (%s)", got.Op, got.Doubt)
			}
		}
		if got.Op == OpOther && got.Doubt != "" {
			t.Fatalf("a doubt must never end in an allow-by-default operation")
		}
	})
}
