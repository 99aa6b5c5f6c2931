package rules

import (
	"net/http"
	"net/url"
	"reflect"
	"strings"
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
		{"POST", "/v1.51/images/create?fromImage=docker.io%2Flibrary%2Falpine&tag=3.20", "text/plain", "0", ""},
		{"POST", "/images/create?fromImage=alpine:&tag=sha256:" + strings.Repeat("0", 64), "", "", ""},
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
				OpContainerPrune, OpNetworkPrune,
				// A pull removes nothing; its doubt is which image.
				OpImagePull:
			default:
				t.Fatalf("doubted reading %v is not the most destructive one (%s)", got.Op, got.Doubt)
			}
		}
		if got.Op == OpOther && got.Doubt != "" {
			t.Fatalf("a doubt must never end in an allow-by-default operation")
		}
		if got.Op == OpImagePull && got.Doubt == "" {
			if _, ok := PullReference(got.Target, ""); !ok || !strings.Contains(got.Target, "/") {
				t.Fatalf("a pull names %q, which is not a fully qualified reference", got.Target)
			}
		}
	})
}

// FuzzClassifyGRPC checks that classifying a gRPC call never panics, that
// the proxy (GRPCReadsMessage) and the classifier agree on which calls need
// their first message, that the method is the path grpc-go routes by, and
// that a Control/Prune's reading holds against both decoders dockerd runs
// (pruneVerdict): a PruneRequest it accepts, protobuf-go and gogo both
// accept and read the same all from; one they reject or read apart is
// refused.
func FuzzClassifyGRPC(f *testing.F) {
	const prune = "/moby.buildkit.v1.Control/Prune"
	seeds := []struct {
		uri    string
		msg    string // hex
		read   bool
		unread string
	}{
		{prune, "0a 00 10 01", true, ""},
		{prune, "0a 00", true, ""},
		{prune, "0a 00 18 80 80 bc 8a c9 d2 13", true, ""},
		{prune, "0a 00 10 01 20 80 80 80 80 04", true, ""},
		{prune, "0a 00 28 80 80 80 80 04 30 80 80 80 80 08", true, ""},
		{prune, "", true, ""},
		{prune, "10 01 10 00 3a 02 10 01", true, ""},
		{prune, "10 80 80 80 80 80 80 80 80 80 02", true, ""},
		{prune, "12 01 01", true, ""},
		{prune, "3b 44 10 01", true, ""},
		{prune, "0a 00 10 01", true, "grpc-encoding zstd is not supported"},
		{prune, "", false, ""},
		{"/moby.buildkit.v1.Control/%50rune?x", "10 01", true, ""},
		{"http://docker/moby.buildkit.v1.Control/Prune", "10 01", true, ""},
		{"//moby.buildkit.v1.Control/Prune", "10 01", true, ""},
		{"/moby.buildkit.v1.Control/Session", "", false, ""},
		{"/moby.buildkit.v1.Control/UpdateBuildHistory", "", false, ""},
		{"/moby.extensions.v1.Volumes/Prune", "", false, ""},
		{"/moby.buildkit.v1.Control/%zz", "", false, ""},
		{"", "", false, ""},
	}
	for _, s := range seeds {
		f.Add(s.uri, hx(s.msg), s.read, s.unread)
	}
	c := NewClassifier()
	f.Fuzz(func(t *testing.T, uri string, msg []byte, read bool, unread string) {
		call := &GRPCCall{Unread: unread}
		if read {
			call.Message = append([]byte{}, msg...) // non-nil, even empty
		}
		r := Request{Method: "POST", URI: uri, GRPC: call}
		got := c.Classify(r)
		if again := c.Classify(r); !reflect.DeepEqual(again, got) {
			t.Fatalf("classification is not deterministic: %+v then %+v", got, again)
		}
		if (got.Doubt != "") != (got.Op == OpUnknown) {
			t.Fatalf("%+v: a gRPC call is doubted exactly when it is unknown", got)
		}
		u, err := url.ParseRequestURI(uri)
		if plainPath(uri) && (err != nil || u.Path != uri) {
			t.Fatalf("plainPath(%q), but ParseRequestURI = %v, %v", uri, u, err)
		}
		if err != nil {
			if got.Op != OpUnknown || got.GRPCMethod != "" {
				t.Fatalf("%q does not parse (%v), yet classified %+v", uri, err, got)
			}
			return
		}
		if got.GRPCMethod != u.Path {
			t.Fatalf("GRPCMethod = %q, want the decoded path %q", got.GRPCMethod, u.Path)
		}
		needs := GRPCReadsMessage(uri)
		if needs != (u.Path == prune) {
			t.Fatalf("GRPCReadsMessage(%q) = %v for the path %q", uri, needs, u.Path)
		}
		switch {
		case !needs:
			if got.Op != OpOther && got.Op != OpBuildKitStream && got.Op != OpBuildKitHistory && got.Op != OpGRPCUnknown {
				t.Fatalf("%s classified %v", u.Path, got.Op)
			}
		case unread != "" || !read:
			if got.Op != OpUnknown {
				t.Fatalf("a Control/Prune whose message was not read classified %v", got.Op)
			}
		case got.Op != OpBuildPrune && got.Op != OpBuildPruneAll && got.Op != OpUnknown:
			t.Fatalf("a Control/Prune classified %v", got.Op)
		default:
			if why := pruneVerdict(msg, got.Op != OpUnknown, got.Op == OpBuildPruneAll); why != "" {
				t.Fatalf("PruneRequest %x: %s", msg, why)
			}
		}
	})
}
