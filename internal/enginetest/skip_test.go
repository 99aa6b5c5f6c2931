package enginetest

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Under CI=true an end-to-end test must fail, not skip, when what it needs
// is missing; Unavailable is the one way to skip. A t.Skip written directly
// in an end-to-end test would escape that rule.
func TestEndToEndTestsSkipOnlyThroughUnavailable(t *testing.T) {
	files, err := filepath.Glob("../../e2e/*_test.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no end-to-end test files found: %v", err)
	}
	skip := regexp.MustCompile(`\bt\.Skip(f|Now)?\(`)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(data), "\n") {
			if skip.MatchString(line) {
				t.Errorf("%s:%d skips directly (use enginetest.Unavailable): %s", f, i+1, strings.TrimSpace(line))
			}
		}
	}
}
