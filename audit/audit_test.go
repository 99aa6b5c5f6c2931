package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestLogFileIsOwnerOnlyAndLinesAreJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	lg, err := Open(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	lg.Write(Record{Decision: Deny, Rule: "r", Operation: "image-prune-all", Method: "POST", URI: "/images/prune?token=s3cr3t", Runs: []string{"a"}})
	lg.Write(Record{Decision: Allow, Operation: "image-prune", Method: "POST", URI: "/images/prune"})
	if err := lg.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("audit log mode = %o, want 600", perm)
	}
	data, _ := os.ReadFile(path)
	if bytes.Contains(data, []byte("s3cr3t")) {
		t.Errorf("audit log holds a secret: %s", data)
	}
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %d", len(lines))
	}
	var m map[string]any
	if err := json.Unmarshal(lines[0], &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"time", "decision", "rule", "operation", "method", "uri", "user", "runs", "reason"} {
		if _, ok := m[k]; !ok {
			t.Errorf("audit line lacks %q: %s", k, lines[0])
		}
	}
}

func TestExistingWorldReadableLogIsNarrowed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	lg, err := Open(path, -1)
	if err != nil {
		t.Fatal(err)
	}
	lg.Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %o, want 600", fi.Mode().Perm())
	}
}

func TestGroupReadableLogWhenAGroupIsConfigured(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	lg, err := Open(path, os.Getgid())
	if err != nil {
		t.Fatal(err)
	}
	lg.Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %o, want 640", fi.Mode().Perm())
	}
}

type brokenWriter struct{}

func (brokenWriter) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

func TestWriteFailuresAreCountedAndReportedNotFatal(t *testing.T) {
	lg := New(brokenWriter{}, nil)
	var reports []int64
	lg.OnError(func(err error, n int64) { reports = append(reports, n) })
	for i := 0; i < 5; i++ {
		lg.Write(Record{Decision: Deny})
	}
	if lg.Failures() != 5 {
		t.Errorf("failures = %d, want 5", lg.Failures())
	}
	if len(reports) != 1 || reports[0] != 1 {
		t.Errorf("reports = %v, want one report, rate-limited", reports)
	}
}

func TestProtectedIsWrittenOnlyWhenADecisionFoundTheTargetProtected(t *testing.T) {
	tests := []struct {
		name      string
		protected string
		want      any // nil: the line has no protected key, as lines always had
	}{
		{name: "a decision that found nothing protected writes the line as before", protected: ""},
		{name: "a decision that found the image protected says why",
			protected: "alpine:3.19 matches the protected pattern docker.io/library/*",
			want:      "alpine:3.19 matches the protected pattern docker.io/library/*"},
		{name: "why is redacted like every recorded string",
			protected: "it carries the protecting label token=ghp_0123456789abcdefghij0123456789abcdef",
			want:      "it carries the protecting label token=[REDACTED]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			New(&buf, nil).Write(Record{Decision: Deny, Rule: "r", Operation: "image-delete", Method: "DELETE", URI: "/images/x", Protected: tt.protected})
			var m map[string]any
			if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
				t.Fatal(err)
			}
			if got, ok := m["protected"]; got != tt.want || ok != (tt.want != nil) {
				t.Errorf("protected = %v (present %v), want %v in %s", got, ok, tt.want, buf.Bytes())
			}
		})
	}
}

// A pull record is no decision: it has no decision field (readers count it
// apart from decisions), its own message, and its error redacted.
func TestPullRecordHasNoDecisionAndARedactedError(t *testing.T) {
	var buf bytes.Buffer
	lg := New(&buf, nil)
	pull := &Pull{Registry: "docker.io", Result: PullMiss, Error: "pull access denied: https://u:hunter2@registry.example/v2/"}
	lg.Write(Record{Decision: Allow, Operation: "image-pull", Method: "POST", URI: "/v1.51/images/create?fromImage=alpine&tag=3",
		Target: "docker.io/library/alpine:3", Pull: pull})
	var m map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(buf.Bytes()), &m); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	if _, ok := m["decision"]; ok {
		t.Errorf("a pull record carries a decision: %s", buf.Bytes())
	}
	if m["msg"] != "image pull" || m["level"] != "info" {
		t.Errorf("msg %v, level %v; want image pull, info", m["msg"], m["level"])
	}
	p, _ := m["pull"].(map[string]any)
	if p["registry"] != "docker.io" || p["result"] != "miss" {
		t.Errorf("pull = %v", m["pull"])
	}
	if _, ok := p["progress"]; ok {
		t.Errorf("a pull no proxy relayed has no progress: %v", p)
	}
	if bytes.Contains(buf.Bytes(), []byte("hunter2")) {
		t.Errorf("the pull's error was not redacted: %s", buf.Bytes())
	}
	if pull.Error == "" || !bytes.Contains([]byte(pull.Error), []byte("hunter2")) {
		t.Errorf("Write changed the caller's record: %+v", pull)
	}
}
