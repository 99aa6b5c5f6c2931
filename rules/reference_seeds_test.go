package rules

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// referenceSeed is one interesting request for FuzzClassifyAgainstReference,
// with what the reference must say the daemon does with it (its first call),
// so that the reference itself is checked against the daemon behaviour the
// end-to-end suite proves on a real dockerd (e2e/adversarial_test.go).
type referenceSeed struct {
	name    string
	method  string
	target  string
	headers string // "Key: value" lines; keys may repeat
	body    string
	framing byte // 0 Content-Length, 1 chunked, 2 none
	// daemon is what the reference must find the daemon doing; OpOther for
	// nothing guarded, and noCall when no handler is reached at all.
	daemon Operation
	noCall bool
}

// fj URL-encodes a filters JSON value the way the docker CLI does.
func fj(s string) string { return url.QueryEscape(s) }

var (
	qFalse = "filters=" + fj(`{"dangling":{"false":true}}`)
	qTrue  = "filters=" + fj(`{"dangling":{"true":true}}`)
	cliCT  = "Content-Type: text/plain" // what the docker CLI sends, with an empty body
	formCT = "Content-Type: application/x-www-form-urlencoded"
)

var referenceSeeds = []referenceSeed{
	// What the CLI sends.
	{name: "cli-image-prune-all", method: "POST", target: "/v1.41/images/prune?" + qFalse, headers: cliCT, daemon: OpImagePruneAll},
	{name: "cli-image-prune-dangling", method: "POST", target: "/v1.41/images/prune?" + qTrue, headers: cliCT, daemon: OpImagePrune},
	{name: "image-prune-no-filters", method: "POST", target: "/v1.41/images/prune", daemon: OpImagePrune},
	// Path encodings and version prefixes.
	{name: "bare-path", method: "POST", target: "/images/prune?" + qFalse, daemon: OpImagePruneAll},
	{name: "percent-70rune", method: "POST", target: "/v1.41/images/%70rune?" + qFalse, daemon: OpImagePruneAll},
	{name: "percent-2F-slash", method: "POST", target: "/v1.41/images%2Fprune?" + qFalse, daemon: OpImagePruneAll},
	{name: "percent-2f-lower-case", method: "POST", target: "/v1.41%2fimages%2fprune?" + qFalse, daemon: OpImagePruneAll},
	{name: "percent-encoded-everything", method: "POST", target: "/%76%31%2E%34%31/%69%6D%61%67%65%73/%70%72%75%6E%65?" + qFalse, daemon: OpImagePruneAll},
	{name: "double-encoded-2570-does-not-route", method: "POST", target: "/v1.41/images/%2570rune?" + qFalse, noCall: true},
	{name: "encoded-question-mark-does-not-route", method: "POST", target: "/v1.41/images/prune%3F" + qFalse, noCall: true},
	{name: "version-leading-zeros", method: "POST", target: "/v1.041/images/prune?" + qFalse, daemon: OpImagePruneAll},
	{name: "version-lowest-served", method: "POST", target: "/v1.12/images/prune?" + qFalse, daemon: OpImagePruneAll},
	{name: "version-trailing-dot-is-too-old", method: "POST", target: "/v1./images/prune?" + qFalse, daemon: OpOther},
	{name: "version-dots-only-is-too-old", method: "POST", target: "/v./images/prune?" + qFalse, daemon: OpOther},
	{name: "version-too-new-for-20.10-served-by-newer", method: "POST", target: "/v1.99/images/prune?" + qFalse, daemon: OpImagePruneAll},
	{name: "double-slash-redirects", method: "POST", target: "//v1.41/images/prune?" + qFalse, noCall: true},
	{name: "dot-segment-redirects", method: "POST", target: "/v1.41/x/../images/prune?" + qFalse, noCall: true},
	{name: "trailing-slash-no-route", method: "POST", target: "/v1.41/images/prune/?" + qFalse, noCall: true},
	{name: "lower-case-method-no-route", method: "post", target: "/v1.41/images/prune?" + qFalse, noCall: true},
	// Request-target forms.
	{name: "absolute-form", method: "POST", target: "http://docker/v1.41/images/prune?" + qFalse, daemon: OpImagePruneAll},
	{name: "absolute-form-userinfo", method: "POST", target: "http://user:s3cret@docker/v1.41/images/prune?" + qFalse, daemon: OpImagePruneAll},
	{name: "absolute-form-other-scheme", method: "POST", target: "ftp://x:1/v1.41/images/prune?" + qFalse, daemon: OpImagePruneAll},
	{name: "absolute-form-no-authority", method: "POST", target: "http:/v1.41/images/prune?" + qFalse, daemon: OpImagePruneAll},
	{name: "absolute-form-empty-host", method: "POST", target: "unix:///v1.41/images/prune?" + qFalse, daemon: OpImagePruneAll},
	// Query parameters.
	{name: "repeated-filters-first-wins-false", method: "POST", target: "/v1.41/images/prune?" + qFalse + "&" + qTrue, daemon: OpImagePruneAll},
	{name: "repeated-filters-first-wins-true", method: "POST", target: "/v1.41/images/prune?" + qTrue + "&" + qFalse, daemon: OpImagePrune},
	{name: "encoded-parameter-name", method: "POST", target: "/v1.41/images/prune?%66ilters=" + fj(`{"dangling":{"false":true}}`), daemon: OpImagePruneAll},
	{name: "semicolon-in-query-refused", method: "POST", target: "/v1.41/images/prune?x=1;" + qFalse, daemon: OpOther},
	// Filter JSON forms and edge cases.
	{name: "legacy-list-false", method: "POST", target: "/v1.41/images/prune?filters=" + fj(`{"dangling":["false"]}`), daemon: OpImagePruneAll},
	{name: "dangling-zero", method: "POST", target: "/v1.41/images/prune?filters=" + fj(`{"dangling":{"0":true}}`), daemon: OpImagePruneAll},
	{name: "dangling-empty-object", method: "POST", target: "/v1.41/images/prune?filters=" + fj(`{"dangling":{}}`), daemon: OpImagePruneAll},
	{name: "dangling-null", method: "POST", target: "/v1.41/images/prune?filters=" + fj(`{"dangling":null}`), daemon: OpImagePruneAll},
	{name: "dangling-empty-list", method: "POST", target: "/v1.41/images/prune?filters=" + fj(`{"dangling":[]}`), daemon: OpImagePruneAll},
	{name: "dangling-true-and-false", method: "POST", target: "/v1.41/images/prune?filters=" + fj(`{"dangling":{"true":true,"false":true}}`), daemon: OpImagePruneAll},
	{name: "dangling-false-mapped-false", method: "POST", target: "/v1.41/images/prune?filters=" + fj(`{"dangling":{"false":false,"true":true}}`), daemon: OpImagePrune},
	{name: "duplicate-key-last-false-wins", method: "POST", target: "/v1.41/images/prune?filters=" + fj(`{"dangling":{"true":true},"dangling":{"false":true}}`), daemon: OpImagePruneAll},
	{name: "unicode-escaped-key", method: "POST", target: "/v1.41/images/prune?filters=" + fj(`{"\u0064angling":{"f\u0061lse":true}}`), daemon: OpImagePruneAll},
	{name: "json-whitespace", method: "POST", target: "/v1.41/images/prune?filters=" + fj(" {\n\t\"dangling\" : { \"false\" :\ttrue } }\r\n"), daemon: OpImagePruneAll},
	{name: "filters-null", method: "POST", target: "/v1.41/images/prune?filters=null", daemon: OpImagePrune},
	{name: "filters-empty-object", method: "POST", target: "/v1.41/images/prune?filters=%7B%7D", daemon: OpImagePrune},
	{name: "filters-invalid-json-refused", method: "POST", target: "/v1.41/images/prune?filters=%7Bnope", daemon: OpOther},
	{name: "unknown-filter-key-refused", method: "POST", target: "/v1.41/images/prune?filters=" + fj(`{"dangling":{"false":true},"nope":{"x":true}}`), daemon: OpOther},
	// Bodies the plugin cannot see.
	{name: "form-body-before-query", method: "POST", target: "/v1.41/images/prune?" + qTrue, headers: formCT, body: qFalse, daemon: OpImagePruneAll},
	{name: "form-body-chunked", method: "POST", target: "/v1.41/images/prune?" + qTrue, headers: formCT, body: qFalse, framing: 1, daemon: OpImagePruneAll},
	{name: "form-body-chunked-with-content-length-zero", method: "POST", target: "/v1.41/images/prune?" + qTrue, headers: formCT + "\nContent-Length: 0", body: qFalse, framing: 1, daemon: OpImagePruneAll},
	{name: "repeated-content-type-form-then-json", method: "POST", target: "/v1.41/images/prune?" + qTrue, headers: formCT + "\nContent-Type: application/json", body: qFalse, daemon: OpImagePruneAll},
	{name: "repeated-content-type-form-then-json-chunked", method: "POST", target: "/v1.41/images/prune?" + qTrue, headers: formCT + "\nContent-Type: application/json", body: qFalse, framing: 1, daemon: OpImagePruneAll},
	{name: "form-content-type-bad-parameter", method: "POST", target: "/v1.41/images/prune?" + qTrue, headers: formCT + "; foo", body: qFalse, daemon: OpImagePruneAll},
	{name: "form-content-type-odd-case", method: "POST", target: "/v1.41/images/prune?" + qTrue, headers: "content-type: Application/X-WWW-Form-URLencoded", body: qFalse, daemon: OpImagePruneAll},
	{name: "form-body-expect-continue", method: "POST", target: "/v1.41/images/prune?" + qTrue, headers: formCT + "\nExpect: 100-continue", body: qFalse, daemon: OpImagePruneAll},
	{name: "form-looking-body-without-content-type", method: "POST", target: "/v1.41/images/prune?" + qTrue, body: qFalse, daemon: OpImagePrune},
	{name: "json-body-is-not-form", method: "POST", target: "/v1.41/images/prune?" + qTrue, headers: "Content-Type: application/json", body: `{"filters":"x"}`, daemon: OpImagePrune},
	{name: "pipelined-second-request", method: "POST", target: "/v1.41/images/prune?" + qTrue, headers: "Content-Length: 0",
		body: "POST /v1.41/images/prune?" + qFalse + " HTTP/1.1\r\nHost: d\r\n\r\n", framing: 2, daemon: OpImagePrune},
	// Build prune booleans.
	{name: "build-prune-all-1", method: "POST", target: "/v1.41/build/prune?all=1", daemon: OpBuildPruneAll},
	{name: "build-prune-all-yes", method: "POST", target: "/v1.41/build/prune?all=yes", daemon: OpBuildPruneAll},
	{name: "build-prune-all-TRUE", method: "POST", target: "/v1.41/build/prune?all=TRUE", daemon: OpBuildPruneAll},
	{name: "build-prune-all-spaced-1", method: "POST", target: "/v1.41/build/prune?all=%201%20", daemon: OpBuildPruneAll},
	{name: "build-prune-all-maybe", method: "POST", target: "/v1.41/build/prune?all=maybe", daemon: OpBuildPruneAll},
	{name: "build-prune-all-none", method: "POST", target: "/v1.41/build/prune?all=none", daemon: OpBuildPrune},
	{name: "build-prune-all-spaced-FALSE", method: "POST", target: "/v1.41/build/prune?all=%20FALSE", daemon: OpBuildPrune},
	{name: "build-prune-all-first-wins", method: "POST", target: "/v1.41/build/prune?all=0&all=1", daemon: OpBuildPrune},
	{name: "build-prune-all-in-form-body", method: "POST", target: "/v1.41/build/prune", headers: formCT, body: "all=1", daemon: OpBuildPruneAll},
	{name: "build-prune-bad-keep-storage-refused", method: "POST", target: "/v1.41/build/prune?all=1&keep-storage=x", daemon: OpOther},
	// Volume prune and API versions.
	{name: "volume-prune-1.41", method: "POST", target: "/v1.41/volumes/prune", daemon: OpVolumePruneAll},
	{name: "volume-prune-bare", method: "POST", target: "/volumes/prune", daemon: OpVolumePruneAll},
	{name: "volume-prune-1.42-anonymous", method: "POST", target: "/v1.42/volumes/prune", daemon: OpVolumePrune},
	{name: "volume-prune-1.43-all-true", method: "POST", target: "/v1.43/volumes/prune?filters=" + fj(`{"all":{"true":true}}`), daemon: OpVolumePruneAll},
	{name: "volume-prune-1.43-all-1-mapped-false", method: "POST", target: "/v1.43/volumes/prune?filters=" + fj(`{"all":{"1":false}}`), daemon: OpVolumePruneAll},
	{name: "volume-prune-1.43-all-two-keys", method: "POST", target: "/v1.43/volumes/prune?filters=" + fj(`{"all":["true","false"]}`), daemon: OpOther},
	{name: "volume-prune-1.41-all-null-refused", method: "POST", target: "/v1.41/volumes/prune?filters=" + fj(`{"all":null}`), daemon: OpOther},
	{name: "volume-prune-1.042", method: "POST", target: "/v1.042/volumes/prune", daemon: OpVolumePrune},
	// Image deletes.
	{name: "delete-registry-name", method: "DELETE", target: "/v1.41/images/registry.example:5000/team/app:v1", daemon: OpImageDelete},
	{name: "delete-encoded-slashes", method: "DELETE", target: "/v1.41/images/registry.example:5000%2Fteam%2Fapp%3Av1", daemon: OpImageDelete},
	{name: "delete-digest", method: "DELETE", target: "/v1.41/images/team/app@sha256:" + strings.Repeat("ab", 32), daemon: OpImageDelete},
	{name: "delete-image-named-prune", method: "DELETE", target: "/v1.41/images/prune", daemon: OpImageDelete},
	{name: "delete-blank-name", method: "DELETE", target: "/v1.41/images/", daemon: OpOther},
	{name: "delete-absolute-form", method: "DELETE", target: "http://u:p@h/images/alpine?force=1", daemon: OpImageDelete},
	{name: "delete-double-encoded", method: "DELETE", target: "/v1.41/images/pg%2570", daemon: OpImageDelete},
	// Plugins and BuildKit.
	{name: "plugin-disable", method: "POST", target: "/v1.41/plugins/prune-guard:latest/disable?force=1", daemon: OpPluginChange},
	{name: "plugin-remove-encoded", method: "DELETE", target: "/v1.41/plugins/prune%2Dguard", daemon: OpPluginChange},
	{name: "plugin-set", method: "POST", target: "/plugins/prune-guard/set", headers: "Content-Type: application/json", body: `["DEBUG=1"]`, daemon: OpPluginChange},
	{name: "plugin-upgrade", method: "POST", target: "/v1.41/plugins/prune-guard/upgrade?remote=x", daemon: OpPluginChange},
	{name: "grpc", method: "POST", target: "/grpc", headers: "Upgrade: h2c\nConnection: Upgrade", daemon: OpBuildKitStream},
	{name: "session", method: "POST", target: "/v1.41/session", headers: "Upgrade: h2c\nConnection: Upgrade", daemon: OpBuildKitStream},
	// Other prunes.
	{name: "container-prune-encoded", method: "POST", target: "/v1.41/containers/%70rune", daemon: OpContainerPrune},
	{name: "network-prune-absolute", method: "POST", target: "http://x/networks/prune", daemon: OpNetworkPrune},
	// Pulls: counted exactly when the daemon pulls, naming what it pulls.
	{name: "cli-pull", method: "POST", target: "/v1.41/images/create?fromImage=docker.io%2Flibrary%2Falpine&tag=3.20", headers: cliCT, daemon: OpImagePull},
	{name: "pull-familiar-name", method: "POST", target: "/v1.41/images/create?fromImage=alpine&tag=3.20", daemon: OpImagePull},
	{name: "pull-tag-in-fromImage", method: "POST", target: "/v1.41/images/create?fromImage=alpine:3.20", daemon: OpImagePull},
	{name: "pull-all-tags-trailing-colon", method: "POST", target: "/images/create?fromImage=alpine:", daemon: OpImagePull},
	{name: "pull-digest-in-tag", method: "POST", target: "/v1.41/images/create?fromImage=alpine&tag=sha256:" + strings.Repeat("ab", 32), daemon: OpImagePull},
	{name: "pull-registry-port", method: "POST", target: "/v1.41/images/create?fromImage=registry.example:5000%2Fteam%2Fapp&tag=v1", daemon: OpImagePull},
	{name: "pull-encoded-path", method: "POST", target: "/v1.41/images/%63reate?fromImage=alpine&tag=1", daemon: OpImagePull},
	{name: "pull-first-fromImage-wins", method: "POST", target: "/v1.41/images/create?fromImage=alpine&fromImage=busybox&tag=1", daemon: OpImagePull},
	{name: "pull-fromImage-in-form-body", method: "POST", target: "/v1.41/images/create?tag=1", headers: formCT, body: "fromImage=alpine", daemon: OpImagePull},
	{name: "pull-upper-case-refused", method: "POST", target: "/v1.41/images/create?fromImage=Alpine&tag=1", daemon: OpOther},
	{name: "pull-scratch-refused", method: "POST", target: "/v1.41/images/create?fromImage=scratch", daemon: OpOther},
	{name: "pull-bad-tag-refused", method: "POST", target: "/v1.41/images/create?fromImage=alpine&tag=a%20b", daemon: OpOther},
	{name: "pull-semicolon-refused", method: "POST", target: "/v1.41/images/create?fromImage=alpine&tag=1;x", daemon: OpOther},
	{name: "import-from-stdin", method: "POST", target: "/v1.41/images/create?fromSrc=-&repo=pg-import&tag=1", headers: "Content-Type: application/x-tar", body: "not a tar", daemon: OpOther},
	{name: "import-empty-first-fromImage", method: "POST", target: "/v1.41/images/create?fromImage=&fromImage=alpine&tag=1", daemon: OpOther},
	// Label scopes (GitHub container hooks, GitLab clear-docker-cache).
	{name: "hooks-network-prune-scoped", method: "POST", target: "/v1.41/networks/prune?filters=" + fj(`{"label":{"72756e6e65722d31":true}}`), daemon: OpNetworkPrune},
	{name: "gitlab-image-prune-all-scoped", method: "POST", target: "/v1.41/images/prune?filters=" + fj(`{"dangling":{"false":true},"label":{"com.gitlab.gitlab-runner.managed=true":true}}`), headers: cliCT, daemon: OpImagePruneAll},
	{name: "container-prune-scoped-legacy-list", method: "POST", target: "/v1.41/containers/prune?filters=" + fj(`{"label":["a=1","b"]}`), daemon: OpContainerPrune},
	{name: "container-prune-negated-key-in-label", method: "POST", target: "/v1.41/containers/prune?filters=" + fj(`{"label":{"a!=1":true}}`), daemon: OpContainerPrune},
	{name: "network-prune-scope-in-form-body", method: "POST", target: "/v1.41/networks/prune?filters=" + fj(`{"label":{"a":true}}`), headers: formCT, body: "filters=" + fj(`{}`), daemon: OpNetworkPrune},
	{name: "volume-prune-scoped-anonymous", method: "POST", target: "/v1.43/volumes/prune?filters=" + fj(`{"label":{"ci":true}}`), daemon: OpVolumePrune},
}

// seedFile renders a seed in the format of go test's fuzz corpus files.
func (s referenceSeed) seedFile() []byte {
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	fmt.Fprintf(&b, "string(%q)\n", s.method)
	fmt.Fprintf(&b, "string(%q)\n", s.target)
	fmt.Fprintf(&b, "string(%q)\n", s.headers)
	fmt.Fprintf(&b, "[]byte(%q)\n", s.body)
	fmt.Fprintf(&b, "byte(%q)\n", s.framing)
	return b.Bytes()
}

const corpusDir = "testdata/fuzz/FuzzClassifyAgainstReference"

// TestReferenceCorpusIsCurrent keeps the seed corpus in testdata in step
// with referenceSeeds, so that plain "go test" fuzzes from every seed.
// PG_UPDATE_CORPUS=1 rewrites the seed files.
func TestReferenceCorpusIsCurrent(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range referenceSeeds {
		if seen[s.name] {
			t.Fatalf("duplicate seed name %q", s.name)
		}
		seen[s.name] = true
		path := filepath.Join(corpusDir, "seed-"+s.name)
		want := s.seedFile()
		if os.Getenv("PG_UPDATE_CORPUS") == "1" {
			if err := os.MkdirAll(corpusDir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is missing or stale; run PG_UPDATE_CORPUS=1 go test ./rules -run TestReferenceCorpusIsCurrent", path)
		}
	}
	// Seed files whose seed was removed from the table are stale too;
	// other files are inputs the fuzzer found and stay.
	ents, _ := os.ReadDir(corpusDir)
	for _, e := range ents {
		if name, ok := strings.CutPrefix(e.Name(), "seed-"); ok && !seen[name] {
			t.Errorf("%s has no seed in referenceSeeds; delete it", filepath.Join(corpusDir, e.Name()))
		}
	}
}

// TestReferenceModelsTheDaemon checks the reference itself: each seed must
// reach the handler it names, with the outcome dockerd has (the end-to-end
// suite establishes the 20.10 ones on a real daemon), or no handler at all.
// A reference that silently records nothing would make the fuzz target
// pass vacuously.
func TestReferenceModelsTheDaemon(t *testing.T) {
	ref := startReference(t)
	for _, s := range referenceSeeds {
		t.Run(s.name, func(t *testing.T) {
			calls := ref.do(t, rawRequest(s.method, s.target, s.headers, []byte(s.body), s.framing))
			if s.noCall {
				if len(calls) != 0 {
					t.Fatalf("reached %s (%s); want no handler, no plugin call", calls[0].verdict.route, calls[0].verdict.why)
				}
				return
			}
			if len(calls) == 0 {
				t.Fatalf("no handler reached; want one that performs %s", s.daemon)
			}
			if got := calls[0].verdict; got.op != s.daemon {
				t.Errorf("reference says the daemon performs %s (%s); want %s", got.op, got.why, s.daemon)
			}
		})
	}
}

// TestClassifierAgreesWithReferenceOnSeeds states the fuzz property on the
// seeds by name, so a regression names the encoding it lets through.
func TestClassifierAgreesWithReferenceOnSeeds(t *testing.T) {
	ref := startReference(t)
	c := NewClassifier()
	var overDenied []string
	for _, s := range referenceSeeds {
		t.Run(s.name, func(t *testing.T) {
			for _, call := range ref.do(t, rawRequest(s.method, s.target, s.headers, []byte(s.body), s.framing)) {
				got := c.Classify(call.view)
				if msg := violation(got, call.verdict); msg != "" {
					t.Errorf("%s; plugin sees %s %q headers %q body %q; daemon: %s", msg,
						call.view.Method, call.view.URI, call.view.Headers, call.view.Body, call.verdict.why)
				}
				if call.verdict.op == OpOther && got.Op.Destructive() {
					overDenied = append(overDenied, fmt.Sprintf("%s: classified %s, daemon performs nothing guarded (%s)", s.name, got.Op, call.verdict.why))
				}
			}
		})
	}
	// Reading more than the daemon does is the fail-closed design, not a
	// failure; list it so that a change in it is visible.
	sort.Strings(overDenied)
	for _, o := range overDenied {
		t.Logf("classified as more destructive than the daemon acts: %s", o)
	}
}
