package policy

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/prune-guard/prune-guard/rules"
)

// DefaultYAML renders the built-in policy as a file to start from.
func DefaultYAML() string {
	return Render(&Config{
		Policy:  rules.Default(),
		Run:     rules.DefaultDetectionSettings(),
		Protect: DefaultProtection(),
		Audit:   AuditDestructive,
		Reclaim: DefaultReclaim(),
	})
}

// Render writes c as a policy file that Parse reads back to the same policy.
func Render(c *Config) string {
	var b strings.Builder
	b.WriteString(`# prune-guard policy. Rules are tried in order; the first that matches decides.
# A request no rule matches is allowed. Reference: docs/policy.md.
#
# operations: ` + strings.Join(rules.OperationNames(), ", ") + `
# when:       ` + strings.Join(rules.ConditionNames(), ", ") + `
# action:     deny, warn (allow, audit would-deny), allow
`)
	fmt.Fprintf(&b, "mode: %s                      # enforce | warn (every deny becomes would-deny)\n", c.Policy.Mode)
	renderRun(&b, c.Run)
	b.WriteString("protect:\n")
	fmt.Fprintf(&b, "  images: %s                     # reference patterns, e.g. \"docker.io/library/*\", \"registry.example/base/*:*\"\n", flow(c.Protect.Images))
	fmt.Fprintf(&b, "  labels: %s\n", flow(c.Protect.Labels))
	fmt.Fprintf(&b, "  plugins: %s\n", flow(c.Protect.Plugins))
	fmt.Fprintf(&b, "audit: %s               # destructive | all\n", c.Audit)
	renderReclaim(&b, c.Reclaim)
	b.WriteString("rules:\n")
	for _, r := range c.Policy.Rules {
		fmt.Fprintf(&b, "  - name: %s\n", r.Name)
		fmt.Fprintf(&b, "    match: %s\n", flow(opNames(r.Match)))
		if len(r.Methods) > 0 {
			fmt.Fprintf(&b, "    methods: %s\n", flow(r.Methods))
		}
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

// renderRun writes the run section with every built-in detector, so that
// 'policy default' shows what is recognised and how to switch it.
func renderRun(b *strings.Builder, s rules.DetectionSettings) {
	b.WriteString("run:\n")
	fmt.Fprintf(b, "  labels: %s        # KEY or KEY=VALUE: the prune-guard detector's run labels\n", flow(s.Labels))
	fmt.Fprintf(b, "  grace: %s                     # image deletes and prunes wait this long after a job's last container, service or process\n", s.Grace)
	b.WriteString("  detectors:                    # on | off; opt-in detectors take a value pattern, e.g. compose: \"ci-*\"\n")
	for _, d := range rules.Builtins() {
		state := d.Default
		if sw, ok := s.Switches[d.Name]; ok {
			state = sw
		}
		fmt.Fprintf(b, "    %s: %s    # %s: %s\n", d.Name, strconv.Quote(state), d.System, d.Looks)
	}
	if len(s.Selectors) == 0 {
		b.WriteString("  selectors: []                 # your own: {name, system, label | label-key [+ label-value] | name-prefix, services}\n")
		return
	}
	b.WriteString("  selectors:\n")
	for _, sel := range s.Selectors {
		fmt.Fprintf(b, "    - name: %s\n", strconv.Quote(sel.Name))
		for _, kv := range [][2]string{{"system", sel.System}, {"label", sel.Label}, {"label-key", sel.KeyPattern},
			{"label-value", sel.ValuePattern}, {"name-prefix", sel.NamePrefix}} {
			if kv[1] != "" {
				fmt.Fprintf(b, "      %s: %s\n", kv[0], strconv.Quote(kv[1]))
			}
		}
		if sel.Services {
			b.WriteString("      services: true\n")
		}
	}
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
