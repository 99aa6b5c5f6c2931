package guard

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/resolve"
)

// countingNames is a NameSource that counts image inspects and can fail
// or panic.
type countingNames struct {
	fakeNames
	inspected atomic.Int64
	panic     bool
}

func (c *countingNames) Image(ctx context.Context, name string) (resolve.Image, bool, error) {
	c.inspected.Add(1)
	if c.panic {
		panic("engine client exploded")
	}
	return c.fakeNames.Image(ctx, name)
}

func newPullGuard(t *testing.T, names *countingNames) (*Guard, *syncBuffer) {
	t.Helper()
	g, buf := newTestGuardWith(policy.Default(), &fakeRuns{}, &names.fakeNames)
	g.names = names
	return g, buf
}

const alpine = "docker.io/library/alpine:3.20"

// pullURI is what the docker CLI sends for "docker pull alpine:3.20".
const pullURI = "/v1.51/images/create?fromImage=docker.io%2Flibrary%2Falpine&tag=3.20"

func TestPullsAreAllowedCountedAndRecordedWithOneEngineQueryAtMost(t *testing.T) {
	local := map[string]resolve.Image{alpine: {ID: "sha256:a"}}
	tests := []struct {
		name      string
		uri       string
		names     *countingNames
		result    string
		registry  string
		inspected int64
		engineErr int64
	}{
		{name: "a local reference is a hit", uri: pullURI, names: &countingNames{fakeNames: fakeNames{images: local}},
			result: "hit", registry: "docker.io", inspected: 1},
		{name: "a reference that is not local is a miss", uri: "/v1.41/images/create?fromImage=registry.example:5000%2Fteam%2Fapp&tag=v1",
			names: &countingNames{fakeNames: fakeNames{images: local}}, result: "miss", registry: "registry.example:5000", inspected: 1},
		{name: "an engine that does not answer makes it unknown, never a refusal", uri: pullURI,
			names:  &countingNames{fakeNames: fakeNames{err: errors.New("inspect image: context deadline exceeded")}},
			result: "unknown", registry: "docker.io", inspected: 1, engineErr: 1},
		{name: "a panic while asking makes it unknown, never a refusal", uri: pullURI, names: &countingNames{panic: true},
			result: "unknown", registry: "docker.io", inspected: 1},
		{name: "pull -a names every tag: unknown, no query", uri: "/v1.41/images/create?fromImage=alpine",
			names: &countingNames{}, result: "unknown", registry: "docker.io"},
		{name: "a reference in doubt: unknown registry, no query", uri: pullURI + "&x=%zz",
			names: &countingNames{}, result: "unknown", registry: UnknownRegistry},
		{name: "an upper-case registry host is counted in lower case", uri: "/v1.41/images/create?fromImage=Registry.Example%2Fapp&tag=1",
			names: &countingNames{}, result: "miss", registry: "registry.example", inspected: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, buf := newPullGuard(t, tt.names)
			v := g.Decide(ctx, Request{Method: "POST", URI: tt.uri, User: "ci"})
			if !v.Allow || v.Pull != nil {
				t.Fatalf("Decide = %+v; want an allow with the record written at once", v)
			}
			if n := tt.names.inspected.Load(); n != tt.inspected {
				t.Errorf("the engine was asked %d times, want %d", n, tt.inspected)
			}
			lines := buf.lines(t)
			if len(lines) != 1 {
				t.Fatalf("want one pull record, got %v", lines)
			}
			l := lines[0]
			p, _ := l["pull"].(map[string]any)
			if _, ok := l["decision"]; ok || l["msg"] != "image pull" || l["operation"] != "image-pull" || l["user"] != "ci" {
				t.Errorf("not a pull record: %v", l)
			}
			if p["result"] != tt.result || p["registry"] != tt.registry {
				t.Errorf("pull = %v, want result %s registry %s", p, tt.result, tt.registry)
			}
			if _, ok := p["progress"]; ok {
				t.Errorf("progress recorded without a relayed stream: %v", p)
			}
			if !strings.HasPrefix(l["reason"].(string), tt.result+": ") {
				t.Errorf("reason %q does not say %s and why", l["reason"], tt.result)
			}
			s := g.Stats().Snapshot()
			if s.Pulls[tt.registry][tt.result] != 1 || s.EngineErrors != tt.engineErr {
				t.Errorf("stats pulls %v, engine errors %d", s.Pulls, s.EngineErrors)
			}
			if s.Total("allow")+s.Reads != 0 {
				t.Errorf("a pull was counted as a decision or a read: %+v", s)
			}
		})
	}
}

// In proxy mode the record waits for the pull's end, and carries what its
// progress stream said.
func TestARelayedPullIsRecordedWhenItEndsWithItsLayersAndBytes(t *testing.T) {
	g, buf := newPullGuard(t, &countingNames{})
	v := g.Decide(ctx, Request{Method: "POST", URI: pullURI, RelaysResponse: true})
	if !v.Allow || v.Pull == nil {
		t.Fatalf("Decide = %+v; want an allow that observes the response", v)
	}
	if lines := buf.lines(t); len(lines) != 0 {
		t.Fatalf("recorded before the pull ended: %v", lines)
	}
	stream := "{\"status\":\"Already exists\",\"id\":\"aaaaaaaaaaaa\"}\r\n" +
		"{\"status\":\"Downloading\",\"progressDetail\":{\"current\":100,\"total\":4096},\"id\":\"bbbbbbbbbbbb\"}\r\n" +
		"{\"status\":\"Download complete\",\"id\":\"bbbbbbbbbbbb\"}\r\n{\"status\":\"Pull complete\",\"id\":\"bbbbbbbbbbbb\"}\r\n"
	v.Pull.Response(200)
	for i := 0; i < len(stream); i += 7 {
		v.Pull.Body([]byte(stream[i:min(i+7, len(stream))]))
	}
	v.Pull.Done(nil)
	v.Pull.Done(errors.New("called twice"))
	lines := buf.lines(t)
	if len(lines) != 1 {
		t.Fatalf("want one record, got %v", lines)
	}
	p := lines[0]["pull"].(map[string]any)
	prog, _ := p["progress"].(map[string]any)
	if p["result"] != "miss" || prog["layers_reused"] != 1.0 || prog["layers_downloaded"] != 1.0 || prog["bytes_downloaded"] != 4096.0 {
		t.Errorf("pull = %v", p)
	}
	if _, ok := p["error"]; ok {
		t.Errorf("a complete pull has an error: %v", p)
	}
	s := g.Stats().Snapshot()
	if s.Pulls["docker.io"]["miss"] != 1 || s.PullLayersReused != 1 || s.PullLayersDownloaded != 1 || s.PullBytes != 4096 {
		t.Errorf("stats %+v", s)
	}
}

func TestARelayedPullThatFailsRecordsWhy(t *testing.T) {
	tests := []struct {
		name   string
		drive  func(p *Pull)
		want   string
		counts bool // layers and bytes counted
	}{
		{"the engine refused it", func(p *Pull) {
			p.Response(404)
			p.Body([]byte(`{"message":"pull access denied for nope, repository does not exist or may require 'docker login'"}` + "\n"))
			p.Done(nil)
		}, "the engine answered 404: pull access denied for nope", false},
		{"the engine never answered", func(p *Pull) { p.Done(errors.New("dial unix /run/docker/engine.sock: connect refused")) },
			"the engine did not answer: dial unix", false},
		{"the stream reported an error", func(p *Pull) {
			p.Response(200)
			p.Body([]byte(`{"errorDetail":{"message":"unexpected EOF"},"error":"unexpected EOF"}` + "\r\n"))
			p.Done(nil)
		}, "unexpected EOF", true},
		{"the stream was cut off", func(p *Pull) {
			p.Response(200)
			p.Body([]byte(`{"status":"Downloading","progressDetail":{"current":10,"total":99},"id":"b"}` + "\r\n"))
			p.Done(errors.New("write: broken pipe"))
		}, "the pull's stream was cut off: write: broken pipe", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, buf := newPullGuard(t, &countingNames{})
			v := g.Decide(ctx, Request{Method: "POST", URI: pullURI, RelaysResponse: true})
			tt.drive(v.Pull)
			lines := buf.lines(t)
			if len(lines) != 1 {
				t.Fatalf("want one record, got %v", lines)
			}
			p := lines[0]["pull"].(map[string]any)
			if e, _ := p["error"].(string); !strings.HasPrefix(e, tt.want) {
				t.Errorf("error %q, want it to start %q", e, tt.want)
			}
			if _, ok := p["progress"]; ok != tt.counts {
				t.Errorf("progress recorded %v, want %v: %v", ok, tt.counts, p)
			}
			if g.Stats().Snapshot().Pulls["docker.io"]["miss"] != 1 {
				t.Errorf("a failed pull is still a pull the engine was asked for")
			}
		})
	}
}

func TestRegistryOfNormalizesAsMetricsCountIt(t *testing.T) {
	for ref, want := range map[string]string{
		"docker.io/library/alpine:3":         "docker.io",
		"index.docker.io/library/alpine":     "docker.io",
		"alpine":                             "docker.io",
		"ghcr.io/org/app@sha256:" + hex64():  "ghcr.io",
		"127.0.0.1:5000/pg/app:1":            "127.0.0.1:5000",
		"[::1]:5000/pg/app:1":                "[::1]:5000",
		"Registry.Example:5000/app":          "registry.example:5000",
		"":                                   UnknownRegistry,
		"Not A Reference":                    UnknownRegistry,
		"localhost/app":                      "localhost",
		"registry.example/team/sub/app:v1.2": "registry.example",
	} {
		if got := RegistryOf(ref); got != want {
			t.Errorf("RegistryOf(%q) = %q, want %q", ref, got, want)
		}
	}
}

func hex64() string { return strings.Repeat("0123456789abcdef", 4) }

func TestPullCountsHoldABoundedNumberOfRegistries(t *testing.T) {
	g, _ := newPullGuard(t, &countingNames{})
	for i := range maxRegistries + 20 {
		g.Decide(ctx, Request{Method: "POST", URI: "/v1.41/images/create?fromImage=r" + itoa(i) + ".example%2Fapp&tag=1"})
	}
	s := g.Stats().Snapshot()
	if len(s.Pulls) != maxRegistries+1 || s.Pulls[OtherRegistry]["miss"] != 20 {
		t.Errorf("%d registries, %v under %s", len(s.Pulls), s.Pulls[OtherRegistry], OtherRegistry)
	}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}
