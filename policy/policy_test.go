package policy

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/rules"
)

func TestDefaultRendersToAFileThatParsesBackToTheDefault(t *testing.T) {
	c, err := Parse("default.yaml", []byte(DefaultYAML()))
	if err != nil {
		t.Fatalf("the rendered default does not parse: %v\n%s", err, DefaultYAML())
	}
	d := Default()
	if !reflect.DeepEqual(c.Policy, d.Policy) || !reflect.DeepEqual(c.Run.Labels, d.Run.Labels) || c.Run.Grace != d.Run.Grace ||
		!reflect.DeepEqual(c.Detection.Names(), d.Detection.Names()) ||
		!reflect.DeepEqual(c.Protect, d.Protect) || c.Audit != d.Audit || c.Reclaim != d.Reclaim {
		t.Errorf("parsed default differs:\n got %+v\nwant %+v", c, d)
	}
	if c.Hash != d.Hash {
		t.Errorf("hash of the rendered default %s != built-in %s", c.Hash, d.Hash)
	}
}

func TestIssueExampleParses(t *testing.T) {
	src := `
mode: enforce                      # enforce | warn
run:
  labels: [prune-guard.run]        # key or key=value
protect:
  images: ["docker.io/library/*", "registry.example/base/*"]
  labels: [prune-guard.keep=true]
  plugins: [prune-guard]
audit: destructive                 # destructive | all
rules:                             # first match wins; no match = allow
  - name: no-prune-all
    match: [image-prune-all]
    action: deny                   # deny | warn | allow
    message: "..."                 # optional; shown to the client
  - name: keep-protected
    match: [image-delete]
    when: image-protected          # always | run-active | image-protected
    action: deny
`
	c, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Policy.Rules) != 2 || c.Policy.Rules[1].When != rules.ImageProtected || c.Protect.Images[1] != "registry.example/base/*" {
		t.Errorf("parsed %+v", c.Policy.Rules)
	}
}

func TestJSONIsAPolicyToo(t *testing.T) {
	src := `{"mode":"warn","run":{"labels":["ci.job=1"]},"audit":"all","rules":[{"name":"r","match":["any-prune"],"when":"run-active","action":"warn"}]}`
	c, err := Parse("nix.json", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy.Mode != rules.WarnOnly || c.Audit != AuditAll || c.Run.Labels[0] != "ci.job=1" || !c.Policy.Rules[0].Match.Has(rules.OpVolumePrune) {
		t.Errorf("parsed %+v %+v", c, c.Policy.Rules)
	}
}

func TestAFileWithoutRulesKeepsTheBuiltInRules(t *testing.T) {
	c, err := Parse("p.yaml", []byte("protect:\n  images: [\"registry.example/base/*\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Policy.Rules, rules.DefaultRules()) {
		t.Error("rules were not the built-in ones")
	}
	if !reflect.DeepEqual(c.Protect.Labels, DefaultProtection().Labels) {
		t.Error("an unnamed protect key should keep its default")
	}
}

func TestErrorsNameFileLineAndValidChoices(t *testing.T) {
	tests := []struct {
		name, src string
		want      []string
	}{
		{"unknown top-level key", "mdoe: warn\n", []string{"p.yaml:1:", `unknown key "mdoe"`, "valid keys: audit, mode, protect, reclaim, rules, run"}},
		{"unknown mode", "mode: strict\n", []string{"p.yaml:1:", "valid: enforce, warn"}},
		{"unknown operation", "rules:\n  - name: a\n    match: [image-prune-everything]\n", []string{"p.yaml:3:", `unknown operation "image-prune-everything"`, "image-prune-all"}},
		{"unknown condition", "rules:\n  - name: a\n    match: [image-delete]\n    when: sometimes\n", []string{"p.yaml:4:", "run-active"}},
		{"unknown action", "rules:\n  - name: a\n    match: [image-delete]\n    action: block\n", []string{"p.yaml:4:", "valid: deny, warn, allow"}},
		{"unknown rule key", "rules:\n  - name: a\n    match: [image-delete]\n    actoin: deny\n", []string{"p.yaml:4:", `unknown key "actoin" in a rule`}},
		{"bad pattern", "protect:\n  images: [\"registry.example/[base\"]\n", []string{"p.yaml:2:", "syntax error in pattern"}},
		{"bad run label", "run:\n  labels: [\"=x\"]\n", []string{"p.yaml:2:", "KEY or KEY=VALUE"}},
		{"no run labels", "run:\n  labels: []\n", []string{"p.yaml:2:", "no run labels"}},
		{"rule without name", "rules:\n  - match: [image-delete]\n", []string{"p.yaml:2:", "needs a name"}},
		{"rule without match", "rules:\n  - name: a\n", []string{"p.yaml:2:", "needs match"}},
		{"duplicate rule name", "rules:\n  - name: a\n    match: [image-delete]\n  - name: a\n    match: [image-delete]\n", []string{"p.yaml:4:", "already used on line 2"}},
		{"reserved rule name", "rules:\n  - name: fail-closed\n    match: [image-delete]\n", []string{"reserved"}},
		{"scalar where a list belongs", "protect:\n  images: docker.io/library/*\n", []string{"p.yaml:2:", "must be a list"}},
		{"list where a mapping belongs", "run: [a]\n", []string{"p.yaml:1:", "must be a mapping"}},
		{"unknown audit level", "audit: everything\n", []string{"valid: destructive, all"}},
		{"not YAML", "rules: [\n", []string{"p.yaml"}},
		{"empty file", "", []string{"empty"}},
		{"duplicate key", "mode: warn\nmode: enforce\n", []string{"already defined"}},
		{"empty methods", "rules:\n  - name: a\n    match: [grpc-unknown]\n    methods: []\n", []string{"p.yaml:4:", "lists no pattern"}},
		{"method pattern without its service", "rules:\n  - name: a\n    match: [grpc-unknown]\n    methods: [\"/Prune\"]\n", []string{"p.yaml:4:", "/package.Service/Method"}},
		{"bad method pattern", "rules:\n  - name: a\n    match: [grpc-unknown]\n    methods: [\"/a.B/[x\"]\n", []string{"p.yaml:4:", "syntax error in pattern"}},
		{"methods on a REST operation", "rules:\n  - name: a\n    match: [image-prune-all, grpc-unknown]\n    methods: [\"/a.B/*\"]\n", []string{"p.yaml:4:", "no gRPC call is image-prune-all", "grpc-unknown"}},
		{"methods as a scalar", "rules:\n  - name: a\n    match: [grpc-unknown]\n    methods: /a.B/*\n", []string{"p.yaml:4:", "must be a list"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.src))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestEveryErrorIsReportedAtOnce(t *testing.T) {
	_, err := Parse("p.yaml", []byte("mode: x\naudit: y\n"))
	if err == nil || !strings.Contains(err.Error(), "p.yaml:1:") || !strings.Contains(err.Error(), "p.yaml:2:") {
		t.Errorf("want both errors, got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(DefaultYAML()))
	f.Add([]byte(`{"rules":[{"name":"a","match":["any-prune"]}]}`))
	f.Add([]byte("rules:\n  - name: a\n    match: [grpc-unknown]\n    methods: [\"/moby.extensions.v1.*/*\"]\n    action: allow\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.yaml", data)
		if err == nil && (c.Policy == nil || len(c.Run.Labels) == 0) {
			t.Fatalf("accepted a policy without rules or run labels: %+v", c)
		}
	})
}

func TestRuleMethodsRenderAndParseBack(t *testing.T) {
	src := `rules:
  - name: allow-volumes-extension
    match: [grpc-unknown]
    methods: ["/moby.extensions.v1.Volumes/*", "/com.example.*/List"]
    action: allow
`
	c, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/moby.extensions.v1.Volumes/*", "/com.example.*/List"}
	if r := c.Policy.Rules[0]; !reflect.DeepEqual(r.Methods, want) || r.Action != rules.Allow {
		t.Fatalf("parsed %+v", r)
	}
	again, err := Parse("rendered.yaml", []byte(Render(c)))
	if err != nil {
		t.Fatalf("the rendered policy does not parse: %v\n%s", err, Render(c))
	}
	if !reflect.DeepEqual(again.Policy, c.Policy) {
		t.Errorf("rendered and parsed back:\n got %+v\nwant %+v", again.Policy.Rules, c.Policy.Rules)
	}
}

func TestReclaimSettingsParseRenderAndRefuse(t *testing.T) {
	c, err := Parse("p.yaml", []byte("reclaim:\n  high: 70\n  low: 60%\n  critical: 90\n  min-age: 30m\n  min-free: 20GB\n  target-free: 25GiB\n  min-free-inodes: 10000\n  keep-per-repo: 3\n  build-cache-max: 10GiB\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := ReclaimSettings{High: 70, Low: 60, Critical: 90, MinAge: 30 * time.Minute, MinFree: 20_000_000_000, TargetFree: 25 << 30,
		MinFreeInodes: 10000, KeepPerRepo: 3, BuildCacheMax: 10 << 30}
	if c.Reclaim != want {
		t.Errorf("reclaim %+v; want %+v", c.Reclaim, want)
	}
	// Unnamed keys keep their built-in values; the rendering reads back.
	c, err = Parse("p.yaml", []byte("reclaim:\n  keep-per-repo: 2\n"))
	if err != nil || c.Reclaim.High != 85 || c.Reclaim.Critical != 95 || c.Reclaim.KeepPerRepo != 2 {
		t.Errorf("partial reclaim section: %+v, %v", c.Reclaim, err)
	}
	r := Default()
	r.Reclaim = want
	back, err := Parse("r.yaml", []byte(Render(r)))
	if err != nil || back.Reclaim != want {
		t.Errorf("rendered reclaim reads back as %+v, %v", back.Reclaim, err)
	}
	for src, msg := range map[string]string{
		"reclaim:\n  high: 80\n  low: 90\n":                 "want 0 <= low < high",
		"reclaim:\n  min-free: 20XB\n":                      "invalid suffix",
		"reclaim:\n  min-free: 20GB\n  target-free: 10GB\n": "below min-free",
		"reclaim:\n  keep-per-repo: -1\n":                   "reclaim.keep-per-repo",
		"reclaim:\n  min-age: soon\n":                       "reclaim.min-age",
		"reclaim:\n  high: 120\n":                           "reclaim.high",
		"reclaim:\n  mni-age: 1h\n":                         "unknown key \"mni-age\" in reclaim",
	} {
		if _, err := Parse("p.yaml", []byte(src)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: error %v; want it to say %q", src, err, msg)
		}
	}
}
