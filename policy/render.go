package policy

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/prune-guard/prune-guard/rules"
	"github.com/prune-guard/prune-guard/runs"
)

// DefaultYAML renders the built-in policy as a file to start from.
func DefaultYAML() string {
	return Render(&Config{
		Policy:    rules.Default(),
		RunLabels: []string{runs.DefaultLabel},
		Protect:   DefaultProtection(),
		Audit:     AuditDestructive,
	})
}

// Render writes c as a policy file that Parse reads back to the same policy.
func Render(c *Config) string {
	var b strings.Builder
	b.WriteString(`# prune-guard policy. Rules are tried in order; the first that matches decides.
# A request no rule matches is allowed. Reference: docs/policy.md.
#
# operations: ` + strings.Join(rules.OperationNames(), ", ") + `
# when:       always, run-active, image-protected, plugin-protected
# action:     deny, warn (allow, audit would-deny), allow
`)
	fmt.Fprintf(&b, "mode: %s                      # enforce | warn (every deny becomes would-deny)\n", c.Policy.Mode)
	b.WriteString("run:\n")
	fmt.Fprintf(&b, "  labels: %s        # KEY or KEY=VALUE on containers/services marks an active CI run\n", flow(c.RunLabels))
	b.WriteString("protect:\n")
	fmt.Fprintf(&b, "  images: %s                     # reference patterns, e.g. \"docker.io/library/*\", \"registry.example/base/*:*\"\n", flow(c.Protect.Images))
	fmt.Fprintf(&b, "  labels: %s\n", flow(c.Protect.Labels))
	fmt.Fprintf(&b, "  plugins: %s\n", flow(c.Protect.Plugins))
	fmt.Fprintf(&b, "audit: %s               # destructive | all\n", c.Audit)
	b.WriteString("rules:\n")
	for _, r := range c.Policy.Rules {
		fmt.Fprintf(&b, "  - name: %s\n", r.Name)
		fmt.Fprintf(&b, "    match: %s\n", flow(opNames(r.Match)))
		if r.When != rules.Always {
			fmt.Fprintf(&b, "    when: %s\n", r.When)
		}
		fmt.Fprintf(&b, "    action: %s\n", r.Action)
		if r.Message != "" {
			fmt.Fprintf(&b, "    message: %s\n", strconv.Quote(r.Message))
		}
	}
	return b.String()
}

// opNames names a rule's operations, using any-prune where it fits.
func opNames(s rules.OpSet) []string {
	if s == rules.AnyPrune {
		return []string{"any-prune"}
	}
	if s.String() == "" {
		return nil
	}
	return strings.Split(s.String(), ",")
}

// flow renders a YAML flow sequence of quoted strings.
func flow(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
