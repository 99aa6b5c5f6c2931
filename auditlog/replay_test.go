package auditlog

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/rules"
)

// recorded is a log the built-in policy wrote: each decision is the one the
// default rules take given the runs and protection recorded on its line.
var recorded = lines(
	event("2026-11-26T09:00:00Z", "prune-guard started"),
	decision("2026-11-26T09:01:00Z", "deny", "no-prune-all", "image-prune-all", "POST", pruneAll),
	decision("2026-11-26T09:02:00Z", "allow", "", "image-prune", "POST", "/v1.43/images/prune"),
	decision("2026-11-26T09:03:00Z", "allow", "", "image-delete", "DELETE", "/v1.43/images/alpine:3"),
	decision("2026-11-26T09:04:00Z", "deny", "no-delete-during-run", "image-delete", "DELETE", "/v1.43/images/node:20",
		"runs", []string{"prune-guard.run=42 (container build)"}),
	decision("2026-11-26T09:05:00Z", "deny", "no-prune-during-run", "container-prune", "POST", "/v1.43/containers/prune",
		"runs", []string{"unknown: cannot ask the engine which runs are active: dial unix: no such file"}),
	decision("2026-11-26T09:06:00Z", "deny", "keep-protected", "image-delete", "DELETE", "/v1.43/images/base:1"),
	decision("2026-11-26T09:07:00Z", "deny", "protect-self", "plugin-change", "POST", "/v1.43/plugins/prune-guard/disable"),
	// A prune read as --all because of a form body the log does not keep:
	// its URI alone reads as a dangling-only prune.
	decision("2026-11-26T09:08:00Z", "deny", "no-prune-all", "image-prune-all", "POST", "/v1.43/images/prune",
		"doubt", "the daemon may read a form body the plugin cannot see"),
	decision("2026-11-26T09:09:00Z", "allow", "", "plugin-change", "POST", "/v1.43/plugins/other/enable"),
	// A fail-closed decision on an empty call: nothing to replay.
	decision("2026-11-26T09:10:00Z", "deny", "fail-closed", "unknown", "", ""),
)

func writePolicy(t *testing.T, yaml string) *policy.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.Load(path)
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	return cfg
}

// change is a Change reduced to what the tests check.
type change struct{ uri, old, oldRule, new, newRule string }

func TestReplayListsTheDecisionsAnotherPolicyWouldChange(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		want   []change
	}{
		{
			name:   "the policy that wrote the log changes nothing, runs and protection taken from the record",
			policy: policy.DefaultYAML(),
		},
		{
			name: "a stricter policy denies what was allowed",
			policy: `rules:
  - name: no-rmi
    match: [image-delete]
  - name: no-prune
    match: [any-prune]
  - name: no-plugin-change
    match: [plugin-change]
`,
			want: []change{
				{"/v1.43/images/prune", "allow", "", "deny", "no-prune"},
				{"/v1.43/images/alpine:3", "allow", "", "deny", "no-rmi"},
				{"/v1.43/plugins/other/enable", "allow", "", "deny", "no-plugin-change"},
			},
		},
		{
			name: "a looser policy allows what was denied",
			policy: `rules:
  - name: keep-protected
    match: [image-delete]
    when: image-protected
`,
			want: []change{
				{pruneAll, "deny", "no-prune-all", "allow", ""},
				{"/v1.43/images/node:20", "deny", "no-delete-during-run", "allow", ""},
				{"/v1.43/containers/prune", "deny", "no-prune-during-run", "allow", ""},
				{"/v1.43/plugins/prune-guard/disable", "deny", "protect-self", "allow", ""},
				{"/v1.43/images/prune", "deny", "no-prune-all", "allow", ""},
			},
		},
		{
			name:   "warn mode turns every denial into would-deny",
			policy: "mode: warn\n",
			want: []change{
				{pruneAll, "deny", "no-prune-all", "would-deny", "no-prune-all"},
				{"/v1.43/images/node:20", "deny", "no-delete-during-run", "would-deny", "no-delete-during-run"},
				{"/v1.43/containers/prune", "deny", "no-prune-during-run", "would-deny", "no-prune-during-run"},
				{"/v1.43/images/base:1", "deny", "keep-protected", "would-deny", "keep-protected"},
				{"/v1.43/plugins/prune-guard/disable", "deny", "protect-self", "would-deny", "protect-self"},
				{"/v1.43/images/prune", "deny", "no-prune-all", "would-deny", "no-prune-all"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := writePolicy(t, tt.policy)
			var out bytes.Buffer
			res, err := Replay(strings.NewReader(recorded), &out, cfg.Policy, ReplayOptions{JSON: true})
			if err != nil {
				t.Fatal(err)
			}
			var got []change
			outLines := strings.Split(strings.TrimSpace(out.String()), "\n")
			for _, l := range outLines[:len(outLines)-1] {
				var c struct {
					URI      string
					Old, New struct{ Decision, Rule string }
				}
				if err := json.Unmarshal([]byte(l), &c); err != nil {
					t.Fatalf("change %q: %v", l, err)
				}
				got = append(got, change{c.URI, c.Old.Decision, c.Old.Rule, c.New.Decision, c.New.Rule})
			}
			if len(got) != len(tt.want) {
				t.Fatalf("changes:\n%s\nwant %d: %+v", out.String(), len(tt.want), tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("change %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
			if res.Decisions != 9 || res.Events != 1 || res.NoRequest != 1 || res.Changed() != int64(len(tt.want)) {
				t.Errorf("counts = %+v", res)
			}
			if !strings.HasPrefix(outLines[len(outLines)-1], `{"summary":{`) {
				t.Errorf("last line = %s, want the summary object", outLines[len(outLines)-1])
			}
		})
	}
}

func TestReplayTextNamesOldAndNewRuleAndCountsByTransition(t *testing.T) {
	cfg := writePolicy(t, `rules:
  - name: no-rmi
    match: [image-delete]
  - name: no-prune
    match: [any-prune]
`)
	var out bytes.Buffer
	if _, err := Replay(strings.NewReader(recorded+"garbage\n"), &out, cfg.Policy, ReplayOptions{PolicyName: "strict.yaml"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"2026-11-26T09:03:00Z allow -> deny ",
		"(no rule) -> no-rmi ",
		"image-delete     DELETE /v1.43/images/alpine:3  (line 4)\n",
		"replayed 9 decisions against strict.yaml: 3 would change\n",
		"       2  allow -> deny\n",
		"       1  deny -> allow\n",
		"5 decisions stay the same under another rule\n",
		"passed over: 1 event, 1 decision without a method and URI\n",
		"1 line was not a JSON audit record (skipped; the first is line 12)\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestReplaySinceSkipsOlderDecisions(t *testing.T) {
	cfg := writePolicy(t, "rules: []\n")
	since, _ := ParseSince("2026-11-26T09:05:00Z", time.Now())
	res, err := Replay(strings.NewReader(recorded), &bytes.Buffer{}, cfg.Policy, ReplayOptions{Since: since})
	if err != nil {
		t.Fatal(err)
	}
	// 09:05 to 09:10: six decisions, one of them without a request.
	if res.Decisions != 5 || res.NoRequest != 1 || res.Events != 0 {
		t.Errorf("counts = %+v", res)
	}
}

// renamedProtection protects base images and prune-guard under rules that
// are not named as the built-in ones are.
const renamedProtection = `protect:
  images: ["registry.example/base/*"]
  plugins: [prune-guard]
rules:
  - name: dont-touch-base-images
    match: [image-delete, image-prune-all]
    when: image-protected
  - name: hands-off-the-guard
    match: [plugin-change]
    when: plugin-protected
`

// scopedPruneAll is "docker image prune -a --filter label=team=a".
const scopedPruneAll = "/v1.43/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%2C%22label%22%3A%7B%22team%3Da%22%3Atrue%7D%7D"

func TestReplayKnowsWhetherTheRecordedDecisionFoundTheTargetProtected(t *testing.T) {
	renamed := writePolicy(t, renamedProtection)
	builtIn := policy.Default()
	// A policy that names a rule keep-protected without conditioning it
	// on protection.
	misnamed := writePolicy(t, "rules:\n  - name: keep-protected\n    match: [image-delete]\n")
	const unknownPolicy = "0123456789ab"
	recorded := map[string]*rules.Policy{renamed.ShortHash(): renamed.Policy, misnamed.ShortHash(): misnamed.Policy}
	deleteBase := func(rule, pol string, kv ...any) string {
		return decision("2026-12-04T09:00:00Z", "deny", rule, "image-delete", "DELETE", "/v1.43/images/registry.example/base/node:20",
			append([]any{"target", "registry.example/base/node:20", "policy", pol}, kv...)...)
	}
	const baseWhy = "registry.example/base/node:20 matches the protected pattern registry.example/base/*"
	tests := []struct {
		name     string
		line     string
		against  *policy.Config
		wantOp   string
		wantRule string // the replayed decision denies under it; "" allows
	}{
		{name: "a line that says why its image was protected replays as protected under a rule of another name",
			line: deleteBase("dont-touch-base-images", unknownPolicy, "protected", baseWhy), against: renamed,
			wantOp: "image-delete", wantRule: "dont-touch-base-images"},
		{name: "and under the built-in rules",
			line: deleteBase("dont-touch-base-images", unknownPolicy, "protected", baseWhy), against: builtIn,
			wantOp: "image-delete", wantRule: "keep-protected"},
		{name: "a scoped prune --all that would have removed a protected image replays as protected",
			line: decision("2026-12-04T09:00:00Z", "deny", "dont-touch-base-images", "image-prune-all", "POST", scopedPruneAll,
				"policy", unknownPolicy, "protected", "it would remove image sha256:aaa: "+baseWhy),
			against: builtIn, wantOp: "image-prune-all", wantRule: "keep-protected"},
		{name: "a protected plugin's change replays as protected",
			line: decision("2026-12-04T09:00:00Z", "deny", "hands-off-the-guard", "plugin-change", "POST", "/v1.43/plugins/prune-guard/disable",
				"target", "prune-guard", "policy", unknownPolicy, "protected", "plugin prune-guard is protected (pattern prune-guard)"),
			against: builtIn, wantOp: "plugin-change", wantRule: "protect-self"},
		{name: "a decision that found nothing protected replays as unprotected",
			line:    decision("2026-12-04T09:00:00Z", "allow", "", "image-delete", "DELETE", "/v1.43/images/app:1", "policy", renamed.ShortHash()),
			against: builtIn, wantOp: "image-delete", wantRule: ""},
		{name: "an old line decided by a rule its known policy conditions on protection replays as protected",
			line: deleteBase("dont-touch-base-images", renamed.ShortHash()), against: builtIn,
			wantOp: "image-delete", wantRule: "keep-protected"},
		{name: "an old line decided by a rule named keep-protected that its known policy does not condition on protection replays as unprotected",
			line: deleteBase("keep-protected", misnamed.ShortHash()), against: renamed,
			wantOp: "image-delete", wantRule: ""},
		{name: "an old line of an unknown policy decided by keep-protected replays as protected, as before",
			line: deleteBase("keep-protected", unknownPolicy), against: renamed,
			wantOp: "image-delete", wantRule: "dont-touch-base-images"},
		{name: "an old line of an unknown policy decided by a renamed protection rule replays as unprotected, as before",
			line: deleteBase("dont-touch-base-images", unknownPolicy), against: builtIn,
			wantOp: "image-delete", wantRule: ""},
		{name: "an old line without a policy decided by protect-self replays as protected, as before",
			line:    decision("2026-12-04T09:00:00Z", "deny", "protect-self", "plugin-change", "POST", "/v1.43/plugins/prune-guard/disable"),
			against: renamed, wantOp: "plugin-change", wantRule: "hands-off-the-guard"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ls := readAll(t, NewReader(strings.NewReader(lines(tt.line))))
			if len(ls) != 1 {
				t.Fatalf("read %d lines from %s", len(ls), tt.line)
			}
			cl, d := decideAgain(rules.NewClassifier(), &ls[0], tt.against.Policy, recorded)
			if cl.Op.String() != tt.wantOp || d.Rule != tt.wantRule || d.Allow != (tt.wantRule == "") {
				t.Errorf("replayed as %s: allow %v, rule %q; want %s under rule %q", cl.Op, d.Allow, d.Rule, tt.wantOp, tt.wantRule)
			}
		})
	}
}

func TestReplayingALogUnderThePolicyThatWroteItChangesNothingWhateverItsRulesAreNamed(t *testing.T) {
	renamed := writePolicy(t, renamedProtection)
	log := lines(
		decision("2026-12-04T09:00:00Z", "deny", "dont-touch-base-images", "image-delete", "DELETE", "/v1.43/images/registry.example/base/node:20",
			"policy", renamed.ShortHash(), "protected", "registry.example/base/node:20 matches the protected pattern registry.example/base/*"),
		decision("2026-12-04T09:01:00Z", "deny", "dont-touch-base-images", "image-prune-all", "POST", scopedPruneAll,
			"policy", renamed.ShortHash(), "protected", "it would remove image sha256:aaa: it carries the protecting label prune-guard.keep=true"),
		decision("2026-12-04T09:02:00Z", "deny", "hands-off-the-guard", "plugin-change", "POST", "/v1.43/plugins/prune-guard/disable",
			"policy", renamed.ShortHash(), "protected", "plugin prune-guard is protected (pattern prune-guard)"),
		// Written before the protected field: its policy tells.
		decision("2026-12-04T09:03:00Z", "deny", "dont-touch-base-images", "image-delete", "DELETE", "/v1.43/images/registry.example/base/go:1",
			"policy", renamed.ShortHash()),
		decision("2026-12-04T09:04:00Z", "allow", "", "image-delete", "DELETE", "/v1.43/images/app:1", "policy", renamed.ShortHash()),
	)
	var out bytes.Buffer
	res, err := Replay(strings.NewReader(log), &out, renamed.Policy, ReplayOptions{
		Recorded: map[string]*rules.Policy{renamed.ShortHash(): renamed.Policy}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Decisions != 5 || res.Changed() != 0 || res.RuleOnly != 0 {
		t.Errorf("replayed %d decisions, %d changed, %d under another rule; want 5, none changed:\n%s", res.Decisions, res.Changed(), res.RuleOnly, out.String())
	}
}
