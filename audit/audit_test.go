package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRedactRemovesCredentials(t *testing.T) {
	tests := []struct {
		name, in, secret string
	}{
		{"password query parameter", "/v1.41/auth?username=bob&password=hunter2", "hunter2"},
		{"encoded parameter name", "/x?pass%77ord=hunter2", "hunter2"},
		{"registry auth in query", "/v1.41/images/create?X-Registry-Auth=eyJ1c2VybmFtZSI6ImJvYiJ9", "eyJ1c2VybmFtZSI6ImJvYiJ9"},
		{"token parameter", "/plugins/pull?remote=x&access_token=abc123def", "abc123def"},
		{"userinfo in absolute-form target", "http://bob:hunter2@docker/v1.41/images/prune", "hunter2"},
		{"JWT anywhere", "DELETE /images/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"},
		{"GitHub token", "/images/ghp_0123456789abcdefghijABCDEFGHIJ", "ghp_0123456789abcdefghijABCDEFGHIJ"},
		{"AWS key", "key AKIAABCDEFGHIJKLMNOP in a message", "AKIAABCDEFGHIJKLMNOP"},
		{"bearer header text", "Authorization: Bearer abc.def.ghi-123", "abc.def.ghi-123"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Redact(tt.in)
			if strings.Contains(got, tt.secret) {
				t.Errorf("Redact(%q) = %q still holds the secret", tt.in, got)
			}
		})
	}
}

func TestRedactKeepsOrdinaryRequestsReadable(t *testing.T) {
	for _, s := range []string{
		"/v1.41/images/prune?filters=%7B%22dangling%22%3A%7B%22false%22%3Atrue%7D%7D",
		"/v1.41/images/registry.example:5000/base/node@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"prune-guard.run=build-42 (container web-1)",
	} {
		if got := Redact(s); got != s {
			t.Errorf("Redact(%q) = %q, want it unchanged", s, got)
		}
	}
}

func FuzzRedact(f *testing.F) {
	f.Add("/auth?password=x")
	f.Add("http://u:p@h/x?token=y&a=b")
	f.Fuzz(func(t *testing.T, s string) {
		once := Redact(s)
		if twice := Redact(once); twice != once {
			t.Fatalf("Redact is not idempotent: %q -> %q -> %q", s, once, twice)
		}
	})
}

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
