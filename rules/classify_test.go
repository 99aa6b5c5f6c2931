package rules

import (
	"net/url"
	"strings"
	"testing"
)

// q URL-encodes a filters JSON value the way the docker CLI does.
func q(filtersJSON string) string { return url.QueryEscape(filtersJSON) }

func TestClassify(t *testing.T) {
	noBody := map[string]string{"Content-Type": "text/plain", "Content-Length": "0"}
	tests := []struct {
		name    string
		req     Request
		want    Operation
		target  string
		force   bool
		doubted bool
	}{
		// Reads never destroy, and cost nothing.
		{name: "GET container list is other", req: Request{Method: "GET", URI: "/v1.41/containers/json"}, want: OpOther},
		{name: "HEAD ping is other", req: Request{Method: "HEAD", URI: "/_ping"}, want: OpOther},
		{name: "GET on a prune path is other (mux matches methods exactly)", req: Request{Method: "GET", URI: "/v1.41/images/prune"}, want: OpOther},
		{name: "lower-case post matches no daemon route", req: Request{Method: "post", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"false":true}}`)}, want: OpOther},

		// Image prune: what the CLI sends.
		{name: "docker image prune -a is image-prune-all", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"false":true}}`), Headers: noBody}, want: OpImagePruneAll},
		{name: "docker image prune is dangling-only", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"true":true}}`), Headers: noBody}, want: OpImagePrune},
		{name: "image prune without filters is dangling-only", req: Request{Method: "POST", URI: "/v1.41/images/prune"}, want: OpImagePrune},
		{name: "image prune with label filter only is dangling-only", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"label":{"a=b":true}}`)}, want: OpImagePrune},
		// Image prune: filter JSON forms and boolean spellings.
		{name: "legacy list form dangling false is prune-all", req: Request{Method: "POST", URI: "/images/prune?filters=" + q(`{"dangling":["false"]}`)}, want: OpImagePruneAll},
		{name: "legacy list form dangling true is dangling-only", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":["true"]}`)}, want: OpImagePrune},
		{name: "dangling 0 is prune-all", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"0":true}}`)}, want: OpImagePruneAll},
		{name: "dangling 1 is dangling-only", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"1":true}}`)}, want: OpImagePrune},
		{name: "dangling true and false together is prune-all (ExactMatch daemons)", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"true":true,"false":true}}`)}, want: OpImagePruneAll},
		{name: "empty dangling value is prune-all (ExactMatch daemons)", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{}}`)}, want: OpImagePruneAll},
		{name: "null dangling value is prune-all", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":null}`)}, want: OpImagePruneAll},
		{name: "empty legacy dangling list is prune-all", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":[]}`)}, want: OpImagePruneAll},
		{name: "dangling true mapped to false is not a true value", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"true":false}}`)}, want: OpImagePruneAll},
		{name: "duplicate JSON key: the last occurrence wins", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"true":true},"dangling":{"false":true}}`)}, want: OpImagePruneAll},
		{name: "duplicate JSON key: last true wins", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"false":true},"dangling":{"true":true}}`)}, want: OpImagePrune},
		{name: "unicode-escaped key decodes to dangling", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"\u0064angling":{"f\u0061lse":true}}`)}, want: OpImagePruneAll},
		{name: "capitalised Dangling is another key (daemon rejects it)", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"Dangling":{"false":true}}`)}, want: OpImagePrune},
		{name: "filters null is dangling-only", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=null"}, want: OpImagePrune},
		{name: "invalid filters JSON is read as prune-all", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=%7Bnope"}, want: OpImagePruneAll, doubted: true},
		// Image prune: where the daemon reads parameters.
		{name: "repeated filters: the first one wins", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"false":true}}`) + "&filters=" + q(`{"dangling":{"true":true}}`)}, want: OpImagePruneAll},
		{name: "repeated filters: a later prune-all does not count", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"true":true}}`) + "&filters=" + q(`{"dangling":{"false":true}}`)}, want: OpImagePrune},
		{name: "percent-encoded parameter name is filters", req: Request{Method: "POST", URI: "/v1.41/images/prune?%66ilters=" + q(`{"dangling":{"false":true}}`)}, want: OpImagePruneAll},
		{name: "semicolon in query is doubted", req: Request{Method: "POST", URI: "/v1.41/images/prune?x=1;filters=" + q(`{"dangling":{"false":true}}`)}, want: OpImagePruneAll, doubted: true},
		{name: "bad escape in query is doubted", req: Request{Method: "POST", URI: "/v1.41/images/prune?x=%zz&filters=" + q(`{"dangling":{"true":true}}`)}, want: OpImagePruneAll, doubted: true},
		{name: "form body the plugin cannot see is doubted", req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"true":true}}`), Headers: map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "40"}}, want: OpImagePruneAll, doubted: true},
		{name: "chunked form body (no Content-Length) is doubted", req: Request{Method: "POST", URI: "/v1.41/images/prune", Headers: map[string]string{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}}, want: OpImagePruneAll, doubted: true},
		{name: "body under a non-form last Content-Type may hide a form Content-Type", req: Request{Method: "POST", URI: "/v1.41/images/prune", Headers: map[string]string{"Content-Type": "text/plain", "Content-Length": "12"}}, want: OpImagePruneAll, doubted: true},
		{name: "forwarded JSON body means the daemon reads the query only", req: Request{Method: "POST", URI: "/v1.41/images/prune", Headers: map[string]string{"Content-Type": "application/json"}, Body: BodyForwarded}, want: OpImagePrune},
		{name: "no Content-Type means no form body", req: Request{Method: "POST", URI: "/v1.41/images/prune", Headers: map[string]string{"Content-Length": "30"}}, want: OpImagePrune},
		{name: "lower-case header keys from a non-dockerd caller are still read", req: Request{Method: "POST", URI: "/v1.41/images/prune", Headers: map[string]string{"content-type": "application/x-www-form-urlencoded"}}, want: OpImagePruneAll, doubted: true},
		// Routing as dockerd's mux does it.
		{name: "bare path routes", req: Request{Method: "POST", URI: "/images/prune?filters=" + q(`{"dangling":{"false":true}}`)}, want: OpImagePruneAll},
		{name: "percent-encoded path routes after decoding", req: Request{Method: "POST", URI: "/v1.41/images/%70rune?filters=" + q(`{"dangling":{"false":true}}`)}, want: OpImagePruneAll},
		{name: "absolute-form request target routes", req: Request{Method: "POST", URI: "http://docker/v1.41/images/prune?filters=" + q(`{"dangling":{"false":true}}`)}, want: OpImagePruneAll},
		{name: "absolute-form with another scheme routes too", req: Request{Method: "POST", URI: "x://h/images/prune?filters=" + q(`{"dangling":{"false":true}}`)}, want: OpImagePruneAll},
		{name: "odd version with leading zeros routes", req: Request{Method: "POST", URI: "/v1.041/images/prune?filters=" + q(`{"dangling":{"false":true}}`)}, want: OpImagePruneAll},
		{name: "version of dots only routes", req: Request{Method: "POST", URI: "/v./images/prune?filters=" + q(`{"dangling":{"false":true}}`)}, want: OpImagePruneAll},
		{name: "double slash is redirected, runs nothing", req: Request{Method: "POST", URI: "//images/prune?filters=" + q(`{"dangling":{"false":true}}`)}, want: OpOther},
		{name: "dot segment is redirected, runs nothing", req: Request{Method: "POST", URI: "/v1.41/x/../images/prune"}, want: OpOther},
		{name: "trailing slash does not match", req: Request{Method: "POST", URI: "/v1.41/images/prune/"}, want: OpOther},
		{name: "case differs, no route", req: Request{Method: "POST", URI: "/v1.41/Images/prune"}, want: OpOther},
		{name: "letters in version, no route", req: Request{Method: "POST", URI: "/v1.41a/images/prune"}, want: OpOther},
		{name: "tag route for an image named prune is other", req: Request{Method: "POST", URI: "/v1.41/images/prune/tag?repo=x"}, want: OpOther},
		{name: "container create is other", req: Request{Method: "POST", URI: "/v1.41/containers/create"}, want: OpOther},
		{name: "image push is other", req: Request{Method: "POST", URI: "/v1.41/images/alpine/push"}, want: OpOther},

		// Image delete.
		{name: "docker rmi is image-delete", req: Request{Method: "DELETE", URI: "/v1.41/images/alpine:3.19"}, want: OpImageDelete, target: "alpine:3.19"},
		{name: "docker rmi -f sets force", req: Request{Method: "DELETE", URI: "/v1.41/images/alpine?force=1"}, want: OpImageDelete, target: "alpine", force: true},
		{name: "force=maybe is true (BoolValue)", req: Request{Method: "DELETE", URI: "/v1.41/images/alpine?force=maybe"}, want: OpImageDelete, target: "alpine", force: true},
		{name: "force=NONE is false", req: Request{Method: "DELETE", URI: "/v1.41/images/alpine?force=%20NONE%20"}, want: OpImageDelete, target: "alpine"},
		{name: "name with registry, path and tag", req: Request{Method: "DELETE", URI: "/v1.41/images/registry.example:5000/base/node:20"}, want: OpImageDelete, target: "registry.example:5000/base/node:20"},
		{name: "encoded slash in name decodes", req: Request{Method: "DELETE", URI: "/images/library%2Fbusybox"}, want: OpImageDelete, target: "library/busybox"},
		{name: "digest reference", req: Request{Method: "DELETE", URI: "/v1.41/images/busybox@sha256:abc"}, want: OpImageDelete, target: "busybox@sha256:abc"},
		{name: "DELETE /images/prune deletes an image named prune", req: Request{Method: "DELETE", URI: "/v1.41/images/prune"}, want: OpImageDelete, target: "prune"},
		{name: "container delete is other", req: Request{Method: "DELETE", URI: "/v1.41/containers/abc?force=1"}, want: OpOther},

		// Build cache.
		{name: "builder prune is build-prune", req: Request{Method: "POST", URI: "/v1.41/build/prune", Headers: noBody}, want: OpBuildPrune},
		{name: "builder prune -a is build-prune-all", req: Request{Method: "POST", URI: "/v1.41/build/prune?all=1", Headers: noBody}, want: OpBuildPruneAll},
		{name: "all=yes is true (BoolValue)", req: Request{Method: "POST", URI: "/v1.41/build/prune?all=yes"}, want: OpBuildPruneAll},
		{name: "all=false is false", req: Request{Method: "POST", URI: "/v1.41/build/prune?all=false"}, want: OpBuildPrune},
		{name: "all=0 then all=1: the first wins", req: Request{Method: "POST", URI: "/v1.41/build/prune?all=0&all=1"}, want: OpBuildPrune},
		{name: "invalid filters on build prune are doubted", req: Request{Method: "POST", URI: "/v1.41/build/prune?filters=%5B"}, want: OpBuildPruneAll, doubted: true},
		{name: "hidden form body on build prune is doubted", req: Request{Method: "POST", URI: "/v1.41/build/prune", Headers: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}}, want: OpBuildPruneAll, doubted: true},

		// Containers and networks.
		{name: "container prune", req: Request{Method: "POST", URI: "/v1.41/containers/prune"}, want: OpContainerPrune},
		{name: "network prune", req: Request{Method: "POST", URI: "/v1.41/networks/prune?filters=" + q(`{"until":{"24h":true}}`)}, want: OpNetworkPrune},

		// Volumes: API-version-dependent default.
		{name: "volume prune at API 1.41 prunes named volumes", req: Request{Method: "POST", URI: "/v1.41/volumes/prune"}, want: OpVolumePruneAll},
		{name: "volume prune at API 1.42 is anonymous only", req: Request{Method: "POST", URI: "/v1.42/volumes/prune"}, want: OpVolumePrune},
		{name: "volume prune at API 1.42 with all=true prunes named volumes", req: Request{Method: "POST", URI: "/v1.43/volumes/prune?filters=" + q(`{"all":{"true":true}}`)}, want: OpVolumePruneAll},
		{name: "volume all filter key counts whatever its bool", req: Request{Method: "POST", URI: "/v1.43/volumes/prune?filters=" + q(`{"all":{"1":false}}`)}, want: OpVolumePruneAll},
		{name: "volume all=false is anonymous only", req: Request{Method: "POST", URI: "/v1.43/volumes/prune?filters=" + q(`{"all":["false"]}`)}, want: OpVolumePrune},
		{name: "volume all with two values is rejected by the daemon", req: Request{Method: "POST", URI: "/v1.43/volumes/prune?filters=" + q(`{"all":["true","false"]}`)}, want: OpVolumePrune},
		{name: "volume version 1.41.9 is below 1.42", req: Request{Method: "POST", URI: "/v1.41.9/volumes/prune"}, want: OpVolumePruneAll},
		{name: "volume version with leading zeros compares numerically", req: Request{Method: "POST", URI: "/v1.042/volumes/prune"}, want: OpVolumePrune},
		{name: "volume version component overflowing int saturates like strconv.Atoi", req: Request{Method: "POST", URI: "/v1.99999999999999999999/volumes/prune"}, want: OpVolumePrune},
		{name: "bare volume prune path is doubted (daemon default version)", req: Request{Method: "POST", URI: "/volumes/prune"}, want: OpVolumePruneAll, doubted: true},

		// Plugins and BuildKit.
		{name: "plugin disable names the plugin", req: Request{Method: "POST", URI: "/v1.41/plugins/prune-guard:latest/disable"}, want: OpPluginChange, target: "prune-guard:latest"},
		{name: "plugin remove", req: Request{Method: "DELETE", URI: "/v1.41/plugins/prune-guard?force=1"}, want: OpPluginChange, target: "prune-guard"},
		{name: "plugin set", req: Request{Method: "POST", URI: "/v1.41/plugins/prune-guard/set"}, want: OpPluginChange, target: "prune-guard"},
		{name: "plugin upgrade", req: Request{Method: "POST", URI: "/v1.41/plugins/prune-guard/upgrade?remote=x"}, want: OpPluginChange, target: "prune-guard"},
		{name: "plugin pull takes its name from the query", req: Request{Method: "POST", URI: "/v1.41/plugins/pull?remote=r&name=pg"}, want: OpPluginChange, target: "pg"},
		{name: "plugin push is other", req: Request{Method: "POST", URI: "/v1.41/plugins/pg/push"}, want: OpOther},
		{name: "grpc is a BuildKit stream", req: Request{Method: "POST", URI: "/grpc"}, want: OpBuildKitStream},
		{name: "session is a BuildKit stream", req: Request{Method: "POST", URI: "/v1.41/session"}, want: OpBuildKitStream},

		// Malformed plugin calls.
		{name: "empty call is unknown", req: Request{}, want: OpUnknown, doubted: true},
		{name: "method without URI is unknown", req: Request{Method: "DELETE"}, want: OpUnknown, doubted: true},
		{name: "URI without method is unknown", req: Request{URI: "/v1.41/images/prune"}, want: OpUnknown, doubted: true},
		{name: "unparsable URI on a POST is unknown", req: Request{Method: "POST", URI: "images/prune"}, want: OpUnknown, doubted: true},
		{name: "bad path escape on a DELETE is unknown", req: Request{Method: "DELETE", URI: "/images/%zz"}, want: OpUnknown, doubted: true},
	}
	c := NewClassifier()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := c.Classify(tt.req)
			if got.Op != tt.want {
				t.Errorf("Op = %v, want %v (doubt %q)", got.Op, tt.want, got.Doubt)
			}
			if got.Target != tt.target {
				t.Errorf("Target = %q, want %q", got.Target, tt.target)
			}
			if got.Force != tt.force {
				t.Errorf("Force = %v, want %v", got.Force, tt.force)
			}
			if (got.Doubt != "") != tt.doubted {
				t.Errorf("Doubt = %q, want doubted=%v", got.Doubt, tt.doubted)
			}
		})
	}
}

// POST /images/create is a pull (image-pull, with the reference dockerd
// pulls) exactly when postImagesCreate pulls; an import, and a name the
// daemon refuses, are no pull. Counted, never decided.
func TestClassifyReadsAPullAsTheDaemonDoes(t *testing.T) {
	noBody := map[string]string{"Content-Type": "text/plain", "Content-Length": "0"}
	tests := []struct {
		name    string
		req     Request
		want    Operation
		target  string
		doubted bool
	}{
		{name: "docker pull sends the full name and the tag", req: Request{Method: "POST", URI: "/v1.51/images/create?fromImage=docker.io%2Flibrary%2Falpine&tag=3.20", Headers: noBody}, want: OpImagePull, target: "docker.io/library/alpine:3.20"},
		{name: "a familiar name is normalized", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=alpine&tag=3.20"}, want: OpImagePull, target: "docker.io/library/alpine:3.20"},
		{name: "a tag in fromImage without a tag parameter", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=alpine:3.20"}, want: OpImagePull, target: "docker.io/library/alpine:3.20"},
		{name: "the tag parameter replaces a tag in fromImage", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=alpine:3.19&tag=3.20"}, want: OpImagePull, target: "docker.io/library/alpine:3.20"},
		{name: "a digest in the tag parameter pins the reference", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=alpine&tag=sha256:" + strings.Repeat("ab", 32)}, want: OpImagePull, target: "docker.io/library/alpine@sha256:" + strings.Repeat("ab", 32)},
		{name: "a registry with a port", req: Request{Method: "POST", URI: "/images/create?fromImage=registry.example:5000%2Fteam%2Fapp&tag=v1"}, want: OpImagePull, target: "registry.example:5000/team/app:v1"},
		{name: "index.docker.io is Docker Hub", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=index.docker.io%2Flibrary%2Falpine&tag=3"}, want: OpImagePull, target: "docker.io/library/alpine:3"},
		{name: "no tag pulls every tag (docker pull -a)", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=alpine"}, want: OpImagePull, target: "docker.io/library/alpine"},
		{name: "pull -a's trailing colon is dropped", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=alpine:"}, want: OpImagePull, target: "docker.io/library/alpine"},
		{name: "the first fromImage wins", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=alpine&fromImage=busybox&tag=1"}, want: OpImagePull, target: "docker.io/library/alpine:1"},
		{name: "an encoded path routes to the pull", req: Request{Method: "POST", URI: "/v1.41/images/%63reate?fromImage=alpine&tag=1"}, want: OpImagePull, target: "docker.io/library/alpine:1"},
		{name: "an upper-case name is refused by the daemon: no pull", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=Alpine&tag=1"}, want: OpOther},
		{name: "scratch is reserved: no pull", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=scratch&tag=latest"}, want: OpOther},
		{name: "an invalid tag is refused: no pull", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=alpine&tag=a%20b"}, want: OpOther},
		{name: "an import (fromSrc) is no pull", req: Request{Method: "POST", URI: "/v1.41/images/create?fromSrc=-&repo=x&tag=1", Headers: map[string]string{"Content-Type": "application/x-tar", "Content-Length": "512"}, Body: BodyProxied}, want: OpOther},
		{name: "an empty first fromImage imports", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=&fromImage=alpine&tag=1"}, want: OpOther},
		{name: "GET images/create is no route", req: Request{Method: "GET", URI: "/v1.41/images/create?fromImage=alpine"}, want: OpOther},
		{name: "a form body may name another image: a pull of an unknown reference", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=alpine&tag=1", Headers: map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "20"}, Body: BodyProxied}, want: OpImagePull, doubted: true},
		{name: "a query that does not parse cleanly: a pull of an unknown reference", req: Request{Method: "POST", URI: "/v1.41/images/create?fromImage=alpine&x=%zz"}, want: OpImagePull, doubted: true},
	}
	c := NewClassifier()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := c.Classify(tt.req)
			if got.Op != tt.want || got.Target != tt.target || (got.Doubt != "") != tt.doubted {
				t.Errorf("Classify = %v %q (doubt %q), want %v %q doubted=%v", got.Op, got.Target, got.Doubt, tt.want, tt.target, tt.doubted)
			}
		})
	}
}

func TestClassifyReadsAllocateNothing(t *testing.T) {
	c := NewClassifier()
	r := Request{Method: "GET", URI: "/v1.41/containers/json?all=1", Headers: map[string]string{"User-Agent": "x"}}
	if n := testing.AllocsPerRun(100, func() { c.Classify(r) }); n != 0 {
		t.Errorf("Classify(GET) allocates %v times, want 0", n)
	}
}

func TestVersionCompareFollowsMoby(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"1.41", "1.42", -1},
		{"1.42", "1.42", 0},
		{"1.042", "1.42", 0},
		{"1.43", "1.42", 1},
		{"2", "1.42", 1},
		{"1.41.9", "1.42", -1},
		{"", "1.42", -1},
		{".", "1.42", -1},
		{"1.99999999999999999999", "1.42", 1}, // Atoi saturates on overflow
		{"1.x", "1.42", -1},                   // and a non-number counts as 0
	}
	for _, tt := range tests {
		if got := CompareVersions(tt.a, tt.b); got != tt.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestOperationNamesRoundTrip(t *testing.T) {
	for op := OpImagePrune; op < numOperations; op++ {
		if op == OpImagePull {
			continue
		}
		s, err := ParseOperation(op.String())
		if err != nil || !s.Has(op) {
			t.Errorf("ParseOperation(%q) = %v, %v", op, s, err)
		}
	}
	if _, err := ParseOperation("image-prune-everything"); err == nil || !strings.Contains(err.Error(), "image-prune-all") {
		t.Errorf("unknown operation error should list valid names, got %v", err)
	}
	if _, err := ParseOperation("unknown"); err == nil {
		t.Error("a policy must not be able to name unknown: fail-closed always refuses it")
	}
	if _, err := ParseOperation("image-pull"); err == nil || !strings.Contains(err.Error(), "never decided") {
		t.Errorf("a policy must not be able to name image-pull: pulls are counted, never refused; got %v", err)
	}
	if s, _ := ParseOperation("any-prune"); !s.Has(OpVolumePrune) || s.Has(OpImageDelete) {
		t.Errorf("any-prune = %v", s)
	}
}

func TestClassifyReadsTheLabelScopeAsTheDaemonFiltersIt(t *testing.T) {
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	tests := []struct {
		name  string
		req   Request
		op    Operation
		scope string // comma-joined; "" for none
	}{
		{name: "the GitHub hooks' network prune is scoped to the runner's key",
			req: Request{Method: "POST", URI: "/v1.41/networks/prune?filters=" + q(`{"label":{"72756e6e6572":true}}`)}, op: OpNetworkPrune, scope: "72756e6e6572"},
		{name: "GitLab's clear-docker-cache image prune -a is scoped to the managed label",
			req: Request{Method: "POST", URI: "/v1.51/images/prune?filters=" + q(`{"dangling":{"false":true},"label":{"com.gitlab.gitlab-runner.managed=true":true}}`)},
			op:  OpImagePruneAll, scope: "com.gitlab.gitlab-runner.managed=true"},
		{name: "the legacy list form scopes too",
			req: Request{Method: "POST", URI: "/v1.41/containers/prune?filters=" + q(`{"label":["b=2","a"]}`)}, op: OpContainerPrune, scope: "a,b=2"},
		{name: "a false map value still filters (MatchKVList ignores the bools)",
			req: Request{Method: "POST", URI: "/v1.41/containers/prune?filters=" + q(`{"label":{"a":false}}`)}, op: OpContainerPrune, scope: "a"},
		{name: "an empty label set is no filter",
			req: Request{Method: "POST", URI: "/v1.41/containers/prune?filters=" + q(`{"label":{}}`)}, op: OpContainerPrune},
		{name: "label! never scopes",
			req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"false":true},"label!":{"keep":true}}`)}, op: OpImagePruneAll},
		{name: "until never scopes",
			req: Request{Method: "POST", URI: "/v1.41/images/prune?filters=" + q(`{"dangling":{"false":true},"until":{"4h":true}}`)}, op: OpImagePruneAll},
		{name: "a KEY!=VALUE under label is a negation on the containerd store and scopes nothing",
			req: Request{Method: "POST", URI: "/v1.51/images/prune?filters=" + q(`{"dangling":{"false":true},"label":{"keep!=yes":true}}`)}, op: OpImagePruneAll},
		{name: "a build prune's label filter is ignored by the daemon and scopes nothing",
			req: Request{Method: "POST", URI: "/v1.41/build/prune?all=1&filters=" + q(`{"label":{"a":true}}`)}, op: OpBuildPruneAll},
		{name: "the first of repeated filters is the one the daemon reads",
			req: Request{Method: "POST", URI: "/v1.41/networks/prune?filters=" + q(`{}`) + "&filters=" + q(`{"label":{"a":true}}`)}, op: OpNetworkPrune},
		{name: "a form body the plugin cannot see drops the scope",
			req: Request{Method: "POST", URI: "/v1.41/networks/prune?filters=" + q(`{"label":{"a":true}}`), Headers: form}, op: OpNetworkPrune},
		{name: "invalid filter JSON drops the scope",
			req: Request{Method: "POST", URI: "/v1.41/containers/prune?filters=" + q(`{"label":`)}, op: OpContainerPrune},
		{name: "a query that does not parse cleanly drops the scope",
			req: Request{Method: "POST", URI: "/v1.41/containers/prune?filters=" + q(`{"label":{"a":true}}`) + ";x=1"}, op: OpContainerPrune},
	}
	c := NewClassifier()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := c.Classify(tt.req)
			if got.Op != tt.op || strings.Join(got.Scope, ",") != tt.scope {
				t.Errorf("Classify = %v scope %q (doubt %q), want %v scope %q", got.Op, got.Scope, got.Doubt, tt.op, tt.scope)
			}
		})
	}
}

func TestEveryGuardedRouteGetsPastTheFragmentFilter(t *testing.T) {
	// A concrete path for each template, bare and versioned: if the filter
	// turned one away, its request would be allowed without reaching the
	// router.
	for _, r := range guardedRoutes {
		concrete := strings.NewReplacer("{name:.*}", "x/y:z").Replace(r.path)
		for _, p := range []string{concrete, "/v1.41" + concrete} {
			if !mayBeGuarded(p) {
				t.Errorf("%s %s (template %s) does not pass the fragment filter %q", r.method, p, r.path, guardedFragments)
			}
		}
	}
}
