package policy

import (
	"os"
	"regexp"
	"testing"
)

// TestDocumentedPoliciesLoad keeps docs/policy.md honest: every YAML example
// in it must be a policy that loads.
func TestDocumentedPoliciesLoad(t *testing.T) {
	doc, err := os.ReadFile("../docs/policy.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllSubmatch(doc, -1)
	if len(blocks) == 0 {
		t.Fatal("docs/policy.md has no yaml examples")
	}
	for i, b := range blocks {
		if _, err := Parse("docs/policy.md example", b[1]); err != nil {
			t.Errorf("example %d does not load: %v\n%s", i+1, err, b[1])
		}
	}
}
