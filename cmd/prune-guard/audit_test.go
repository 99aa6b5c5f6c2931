package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prune-guard/prune-guard/auditlog"
	"github.com/prune-guard/prune-guard/policy"
)

// sampleAuditLog is a log as serve writes it: an event, a denial, an allowed
// delete, and one line cut short by a crash.
const sampleAuditLog = `{"level":"info","msg":"prune-guard started","policy":"aaaa","source":"built-in default","time":"2026-11-26T09:00:00Z"}
{"decision":"deny","level":"warning","method":"POST","msg":"request denied","operation":"image-prune-all","reason":"…","rule":"no-prune-all","runs":null,"time":"2026-11-26T09:10:00Z","uri":"/v1.43/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D","user":""}
{"decision":"allow","level":"info","method":"DELETE","msg":"request allowed","operation":"image-delete","reason":"no rule matched","rule":"","runs":null,"time":"2026-11-26T09:20:00Z","uri":"/v1.43/images/alpine:3","user":""}
{"decision":"deny","level":"warn
`

// runAudit runs the prune-guard command line with stdin and returns its
// standard output, standard error and error.
func runAudit(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

func writeAuditFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestAuditCommandReadsAFileOrStandardInput(t *testing.T) {
	file := writeAuditFile(t, "audit.jsonl", sampleAuditLog)
	tests := []struct {
		name  string
		stdin string
		args  []string
		want  []string
		not   []string
	}{
		{"a file: lines, then the summary", "", []string{"audit", file}, []string{
			"2026-11-26T09:10:00Z deny       no-prune-all         image-prune-all  POST /v1.43/images/prune?filters={\"dangling\":{\"false\":true}}\n",
			"summary: 2 decisions (1 allow, 1 deny, 0 would-deny) and 1 event in 3 of 4 lines",
			"1 line was not a JSON audit record (skipped; the first is line 4)",
			"(local)",
		}, nil},
		{"standard input as -", sampleAuditLog, []string{"audit", "-"}, []string{"summary: 2 decisions"}, nil},
		{"--denied --since", "", []string{"audit", "--denied", "--since", "2026-11-26T09:05:00Z", file},
			[]string{"summary: 1 decision (0 allow, 1 deny, 0 would-deny) and 0 events in 1 of 4 lines", "selected: since 2026-11-26T09:05:00Z, deny and would-deny only"},
			[]string{"alpine", "prune-guard started"}},
		{"--summary leaves the lines out", "", []string{"audit", "--summary", file}, []string{"summary: "}, []string{"2026-11-26T09:20:00Z allow"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := runAudit(t, tt.stdin, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(out, n) {
					t.Errorf("output holds %q:\n%s", n, out)
				}
			}
		})
	}
}

func TestAuditJSONPrintsLinesThenASummaryAndWarnsOnStderr(t *testing.T) {
	out, errOut, err := runAudit(t, sampleAuditLog, "audit", "--json", "-")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	in := strings.Split(sampleAuditLog, "\n")
	if len(got) != 4 || got[0] != in[0] || got[1] != in[1] || got[2] != in[2] {
		t.Fatalf("want the 3 good lines unchanged and a summary, got:\n%s", out)
	}
	var last struct {
		Summary struct {
			NotJSON   int            `json:"not_json"`
			Decisions map[string]int `json:"decisions"`
		} `json:"summary"`
	}
	if err := json.Unmarshal([]byte(got[3]), &last); err != nil || last.Summary.NotJSON != 1 || last.Summary.Decisions["deny"] != 1 {
		t.Errorf("summary line %s: %v", got[3], err)
	}
	if !strings.Contains(errOut, "1 line was not a JSON audit record") {
		t.Errorf("stderr = %q, want the skipped line reported", errOut)
	}
}

func TestAuditFailsOnUnreadableInputAndBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing file", []string{"audit", filepath.Join(t.TempDir(), "none.jsonl")}, "no such file"},
		{"a directory", []string{"audit", t.TempDir()}, "is a directory"},
		{"--since in days", []string{"audit", "--since", "7d", "-"}, "168h"},
		{"two files", []string{"audit", "a", "b"}, "accepts at most 1 arg"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := runAudit(t, "", tt.args...); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestAuditReplayReportsChangesAndExitsZero(t *testing.T) {
	log := writeAuditFile(t, "audit.jsonl", sampleAuditLog)
	strict := writeAuditFile(t, "strict.yaml", "rules:\n  - name: no-rmi\n    match: [image-delete]\n  - name: no-prune-all\n    match: [image-prune-all]\n")
	loose := writeAuditFile(t, "loose.yaml", "rules: []\n")
	tests := []struct {
		name   string
		policy string
		want   []string
	}{
		{"stricter", strict, []string{"allow -> deny", "(no rule) -> no-rmi", "DELETE /v1.43/images/alpine:3  (line 3)", "1 would change"}},
		{"looser", loose, []string{"deny -> allow", "no-prune-all -> (no rule)", "1 would change"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := runAudit(t, "", "audit", "replay", "--policy", tt.policy, log)
			if err != nil {
				t.Fatalf("replay finding changes must exit 0: %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestAuditReplayKnowsProtectionWhateverTheRuleIsNamed(t *testing.T) {
	renamed := writeAuditFile(t, "renamed.yaml", `protect:
  images: ["registry.example/base/*"]
rules:
  - name: dont-touch-base-images
    match: [image-delete]
    when: image-protected
`)
	builtIn := writeAuditFile(t, "default.yaml", policy.DefaultYAML())
	cfg, err := policy.Load(renamed)
	if err != nil {
		t.Fatal(err)
	}
	log := writeAuditFile(t, "audit.jsonl",
		`{"decision":"deny","level":"warning","method":"DELETE","msg":"request denied","operation":"image-delete","policy":"`+cfg.ShortHash()+`","protected":"registry.example/base/node:20 matches the protected pattern registry.example/base/*","reason":"…","rule":"dont-touch-base-images","runs":[],"target":"registry.example/base/node:20","time":"2026-12-04T09:00:00Z","uri":"/v1.47/images/registry.example/base/node:20","user":""}
{"decision":"deny","level":"warning","method":"DELETE","msg":"request denied","operation":"image-delete","policy":"`+cfg.ShortHash()+`","reason":"…","rule":"dont-touch-base-images","runs":[],"target":"registry.example/base/go:1","time":"2026-12-04T09:01:00Z","uri":"/v1.47/images/registry.example/base/go:1","user":""}
`)
	tests := []struct {
		name   string
		policy string
		want   []string
	}{
		{"under the policy that wrote it, the recorded field and the recorded rule's condition agree: nothing changes",
			renamed, []string{"replayed 2 decisions against " + renamed + " (policy " + cfg.ShortHash() + "): none would change\n"}},
		{"under the built-in rules, the recorded field holds; the old line of a policy replay does not know replays as unprotected",
			builtIn, []string{"deny -> allow", "dont-touch-base-images -> (no rule)", "(line 2)", "1 would change", "1 decision stays the same under another rule"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := runAudit(t, "", "audit", "replay", "--policy", tt.policy, log)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestAuditReplayFailsOnAnInvalidPolicyOrUnreadableInput(t *testing.T) {
	log := writeAuditFile(t, "audit.jsonl", sampleAuditLog)
	bad := writeAuditFile(t, "bad.yaml", "rules:\n  - name: x\n    match: [image-prune-everything]\n")
	good := writeAuditFile(t, "good.yaml", "rules: []\n")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no --policy", []string{"audit", "replay", log}, `required flag(s) "policy" not set`},
		{"an invalid policy", []string{"audit", "replay", "--policy", bad, log}, "bad.yaml:3:"},
		{"a missing policy", []string{"audit", "replay", "--policy", bad + ".none", log}, "no such file"},
		{"a missing log", []string{"audit", "replay", "--policy", good, log + ".none"}, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := runAudit(t, "", tt.args...); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func TestAuditHelpTeachesTheFlagsWithExamples(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"audit", "--help"}, []string{"/var/log/prune-guard/audit.jsonl", "--since 24h --denied", "would-deny",
			`{"summary": {...}}`, "(local)", "Examples:", "replay"}},
		{[]string{"audit", "replay", "--help"}, []string{"cannot ask the engine", "keep-protected or", "protect-self",
			"run labels of NEW are not evaluated", "Exit status: 0", "Examples:"}},
		{[]string{"audit", "cache", "--help"}, []string{"100 pulls for unauthenticated users", "200 for a Docker Personal account",
			"docs.docker.com/docker-hub/usage/pulls/", "--hub-limit", "--min-age", "--keep-per-repo", "protect.images", "evicted too early", "Examples:"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, _, err := runAudit(t, "", tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("help lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestDocumentedAuditExamplesRun keeps docs/audit.md honest: its example log
// and policy files are written out, and each "$ prune-guard ..." block must
// print exactly what the document shows.
func TestDocumentedAuditExamplesRun(t *testing.T) {
	doc, err := os.ReadFile("../../docs/audit.md")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	logs := regexp.MustCompile("(?s)```jsonl\n(.*?)```").FindAllSubmatch(doc, -1)
	if len(logs) != 1 {
		t.Fatalf("docs/audit.md has %d jsonl examples, want the one example log", len(logs))
	}
	if err := os.WriteFile(filepath.Join(dir, "audit.jsonl"), logs[0][1], 0o600); err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile("(?s)```yaml\n# ([a-z.-]+)\n(.*?)```").FindAllSubmatch(doc, -1) {
		content := append([]byte("# "+string(m[1])+"\n"), m[2]...)
		if err := os.WriteFile(filepath.Join(dir, string(m[1])), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir)
	runs := regexp.MustCompile("(?s)```text\n\\$ prune-guard ([^\n]*)\n(.*?)```").FindAllSubmatch(doc, -1)
	if len(runs) < 2 {
		t.Fatalf("docs/audit.md has %d command examples, want the audit and the replay one", len(runs))
	}
	for _, m := range runs {
		t.Run(string(m[1]), func(t *testing.T) {
			out, _, err := runAudit(t, "", strings.Fields(string(m[1]))...)
			if err != nil {
				t.Fatal(err)
			}
			if out != string(m[2]) {
				t.Errorf("docs/audit.md shows\n%s\nthe command prints\n%s", m[2], out)
			}
		})
	}
}

func TestAuditCacheReadsTheLogAndRefusesBadFlags(t *testing.T) {
	path := writeAuditFile(t, "audit.jsonl", sampleAuditLog+`{"level":"info","method":"POST","msg":"image pull","operation":"image-pull","pull":{"registry":"docker.io","result":"hit"},"reason":"hit","rule":"","runs":[],"target":"docker.io/library/alpine:3","time":"2026-11-26T09:30:00Z","uri":"/v1.51/images/create?fromImage=alpine\u0026tag=3","user":""}`+"\n")
	out, _, err := runAudit(t, "", "audit", "cache", "--at", "2026-11-26T10:00:00Z", "--hub-limit", "1", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"cache: 1 pull in 5 lines", "1       1       0        0     100.0%  docker.io", "Docker Hub: 1 pull in the 6 hours to 2026-11-26T10:00:00Z, against a limit of 1 (100%): close to the limit"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, errOut, err := runAudit(t, sampleAuditLog, "audit", "cache", "--json", "-")
	var j map[string]any
	if err != nil || json.Unmarshal([]byte(out), &j) != nil || !strings.Contains(errOut, "1 line was not a JSON audit record") {
		t.Errorf("--json from standard input: %v\n%s\nstderr: %s", err, out, errOut)
	}
	for _, args := range [][]string{{"--at", "yesterday"}, {"--hub-limit", "-1"}, {"--since", "7d"}} {
		if _, _, err := runAudit(t, "", append([]string{"audit", "cache"}, append(args, path)...)...); err == nil {
			t.Errorf("audit cache %v succeeded", args)
		}
	}
}

// Every single-line example in docs/audit.md (```json) is an audit record the
// reader takes: a decision, or a pull record with its pull fields.
func TestDocumentedAuditRecordsParse(t *testing.T) {
	doc, err := os.ReadFile("../../docs/audit.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```json\n(.*?)```").FindAllSubmatch(doc, -1)
	pulls := 0
	for _, b := range blocks {
		r := auditlog.NewReader(bytes.NewReader(b[1]))
		for {
			l, err := r.Next()
			if err != nil {
				break
			}
			if l.Pull != nil {
				pulls++
				if l.IsDecision || l.Pull.Registry == "" || l.Pull.Result == "" || l.Target == "" {
					t.Errorf("pull record example lacks its fields: %s", l.Raw)
				}
			} else if !l.IsDecision {
				t.Errorf("example is neither a decision nor a pull record: %s", l.Raw)
			}
		}
		if r.Skipped > 0 {
			t.Errorf("an example in docs/audit.md is not an audit record:\n%s", b[1])
		}
	}
	if len(blocks) < 3 || pulls == 0 {
		t.Errorf("%d json examples, %d pull records; want the decisions and a pull record", len(blocks), pulls)
	}
}
