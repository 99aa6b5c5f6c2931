// Package promtool runs Prometheus's promtool (Debian's prometheus package)
// on what prune-guard writes, for tests: the exposition linter and the rule
// checker. Without promtool a test is skipped, and fails under CI=true,
// where .ci/run installs it.
package promtool

import (
	"bytes"
	"os"
	"os/exec"
	"testing"
)

// path finds promtool, or skips t (fails it under CI).
func path(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("promtool: %v (apt-get install prometheus)", err)
		}
		t.Skipf("promtool: %v (apt-get install prometheus)", err)
	}
	return p
}

// CheckMetrics runs "promtool check metrics" on text, an exposition in the
// text format, and fails t if it finds anything to say.
func CheckMetrics(t testing.TB, text []byte) {
	t.Helper()
	cmd := exec.Command(path(t), "check", "metrics")
	cmd.Stdin = bytes.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s\non:\n%s", err, out, text)
	}
}

// CheckRules runs "promtool check rules" on a rules file.
func CheckRules(t testing.TB, file string) {
	t.Helper()
	out, err := exec.Command(path(t), "check", "rules", file).CombinedOutput()
	if err != nil {
		t.Errorf("promtool check rules %s: %v\n%s", file, err, out)
	}
	t.Logf("promtool check rules %s:\n%s", file, out)
}

// TestRules runs "promtool test rules" on a rule test file.
func TestRules(t testing.TB, file string) {
	t.Helper()
	out, err := exec.Command(path(t), "test", "rules", file).CombinedOutput()
	if err != nil {
		t.Errorf("promtool test rules %s: %v\n%s", file, err, out)
	}
}
