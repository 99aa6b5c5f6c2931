// Package policy loads prune-guard policy files: YAML (and therefore JSON,
// which Nix generates) describing the rules and the settings they use (run
// labels, protected images and plugins, audit level).
//
// Loading is all-or-nothing: a file with any error yields no Config, and the
// error names the file, the line and the valid choices, so a bad edit can
// never half-apply. The package reads files; it never decides requests.
package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/prune-guard/prune-guard/rules"
)

// AuditLevel says which decisions are audited.
type AuditLevel uint8

const (
	// AuditDestructive audits destructive requests and every denial.
	AuditDestructive AuditLevel = iota
	// AuditAll audits every request.
	AuditAll
)

func (a AuditLevel) String() string {
	if a == AuditAll {
		return "all"
	}
	return "destructive"
}

// Config is a loaded policy: the rules and their settings.
type Config struct {
	Policy *rules.Policy
	// Run is how CI jobs are recognised, as configured; Detection is it
	// compiled. Change Run only through WithRun, which keeps the two in
	// step.
	Run       rules.DetectionSettings
	Detection rules.Detection
	Protect   rules.Protection
	Audit     AuditLevel
	// Reclaim are "prune-guard reclaim"'s settings; the plugin ignores
	// them.
	Reclaim ReclaimSettings
	// Source is the file the policy came from, or "built-in default".
	Source string
	// Hash is the SHA-256 of the source bytes (of the rendered default
	// for the built-in policy), so audit lines can say which policy
	// decided.
	Hash string
}

// BuiltIn is the Source of the default policy.
const BuiltIn = "built-in default"

// Default returns the built-in policy, the one in force with no file.
func Default() *Config {
	return &Config{
		Policy:    rules.Default(),
		Run:       rules.DefaultDetectionSettings(),
		Detection: rules.MustDetection(rules.DefaultDetectionSettings()),
		Protect:   DefaultProtection(),
		Audit:     AuditDestructive,
		Reclaim:   DefaultReclaim(),
		Source:    BuiltIn,
		Hash:      hash([]byte(DefaultYAML())),
	}
}

// DefaultProtection is what the built-in policy protects: images labelled
// prune-guard.keep=true, and prune-guard's own plugin.
func DefaultProtection() rules.Protection {
	return rules.Protection{
		Labels:  []string{"prune-guard.keep=true"},
		Plugins: []string{"prune-guard"},
	}
}

// WithRun returns a copy of c whose job detection is built from s (the
// command line's --run-label, --run-grace and --detector overriding a
// file's run settings).
func (c *Config) WithRun(s rules.DetectionSettings) (*Config, error) {
	d, err := rules.NewDetection(s)
	if err != nil {
		return nil, err
	}
	next := *c
	next.Run, next.Detection = s, d
	return &next, nil
}

// ShortHash is the first 12 hex digits of the hash, for humans.
func (c *Config) ShortHash() string {
	if len(c.Hash) < 12 {
		return c.Hash
	}
	return c.Hash[:12]
}

// Load reads and parses the policy file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	return Parse(path, data)
}

// Parse parses a policy document; name is used in errors and as Source.
// A document without a rules key keeps the built-in rules, so a file that
// only sets protected images still denies prune --all.
func Parse(name string, data []byte) (*Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, fmt.Errorf("%s: the policy file is empty; start from 'prune-guard policy default'", name)
	}
	p := &parser{file: name}
	c := &Config{
		Policy:  &rules.Policy{Rules: rules.DefaultRules()},
		Run:     rules.DefaultDetectionSettings(),
		Protect: DefaultProtection(),
		Reclaim: DefaultReclaim(),
		Source:  name,
		Hash:    hash(data),
	}
	var reclaimNode *yaml.Node
	var runNode *yaml.Node
	p.mapping(doc.Content[0], "the policy", map[string]func(*yaml.Node){
		"mode": func(n *yaml.Node) {
			if s, ok := p.scalar(n, "mode"); ok {
				m, err := rules.ParseMode(s)
				p.check(n, err)
				c.Policy.Mode = m
			}
		},
		"run": func(n *yaml.Node) {
			runNode = n
			p.run(n, &c.Run)
		},
		"protect": func(n *yaml.Node) {
			// Naming a protect key replaces that default list, so an
			// operator can also drop the default label.
			p.mapping(n, "protect", map[string]func(*yaml.Node){
				"images": func(n *yaml.Node) {
					c.Protect.Images = p.list(n, "protect.images")
					p.check(n, rules.Protection{Images: c.Protect.Images}.Validate())
				},
				"labels": func(n *yaml.Node) {
					c.Protect.Labels = p.list(n, "protect.labels")
					p.check(n, rules.Protection{Labels: c.Protect.Labels}.Validate())
				},
				"plugins": func(n *yaml.Node) {
					c.Protect.Plugins = p.list(n, "protect.plugins")
					p.check(n, rules.Protection{Plugins: c.Protect.Plugins}.Validate())
				},
			})
		},
		"audit": func(n *yaml.Node) {
			if s, ok := p.scalar(n, "audit"); ok {
				switch s {
				case "destructive":
					c.Audit = AuditDestructive
				case "all":
					c.Audit = AuditAll
				default:
					p.errorf(n, "unknown audit level %q (valid: destructive, all)", s)
				}
			}
		},
		"rules": func(n *yaml.Node) { c.Policy.Rules = p.rules(n) },
		"reclaim": func(n *yaml.Node) {
			reclaimNode = n
			p.reclaim(n, &c.Reclaim)
		},
	})
	if reclaimNode != nil && len(p.errs) == 0 {
		p.check(reclaimNode, c.Reclaim.Validate())
	}
	if len(p.errs) == 0 {
		d, err := rules.NewDetection(c.Run)
		if runNode == nil {
			runNode = doc.Content[0]
		}
		p.check(runNode, err)
		c.Detection = d
	}
	if err := errors.Join(p.errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// run parses the run section: how CI jobs are recognised.
func (p *parser) run(n *yaml.Node, s *rules.DetectionSettings) {
	p.mapping(n, "run", map[string]func(*yaml.Node){
		"labels": func(n *yaml.Node) {
			s.Labels = p.list(n, "run.labels")
			p.check(n, rules.ValidateRunLabels(s.Labels))
		},
		"grace": func(n *yaml.Node) {
			if v, ok := p.scalar(n, "run.grace"); ok {
				d, err := time.ParseDuration(v)
				switch {
				case err != nil:
					p.errorf(n, "run.grace %q is not a duration (e.g. 2m, 90s; 0 turns the grace off)", v)
				case d < 0:
					p.errorf(n, "run.grace %q is negative", v)
				}
				s.Grace = d
			}
		},
		"detectors": func(n *yaml.Node) {
			if n.Kind != yaml.MappingNode {
				p.errorf(n, "run.detectors must be a mapping of detector names to on, off or (opt-in detectors) a value pattern")
				return
			}
			s.Switches = map[string]string{}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				val, ok := p.scalar(v, "run.detectors."+k.Value)
				if !ok {
					continue
				}
				val = onOff(val)
				if _, dup := s.Switches[k.Value]; dup {
					p.errorf(k, "detector %q is already switched", k.Value)
				}
				s.Switches[k.Value] = val
				if err := rules.ValidateSwitch(k.Value, val); err != nil {
					p.errorf(k, "%v", err)
				}
			}
		},
		"selectors": func(n *yaml.Node) {
			if n.Kind != yaml.SequenceNode {
				p.errorf(n, "run.selectors must be a list of selectors")
				return
			}
			for _, sn := range n.Content {
				sel := p.selector(sn)
				if err := sel.Validate(); err != nil {
					p.errorf(sn, "%v", err)
				}
				s.Selectors = append(s.Selectors, sel)
			}
		},
	})
}

// onOff reads YAML's spellings of a switch: true/false as well as on/off.
func onOff(v string) string {
	switch strings.ToLower(v) {
	case "on", "true", "yes":
		return "on"
	case "off", "false", "no":
		return "off"
	}
	return v
}

func (p *parser) selector(n *yaml.Node) rules.Selector {
	var sel rules.Selector
	str := func(dst *string, what string) func(*yaml.Node) {
		return func(n *yaml.Node) {
			if v, ok := p.scalar(n, what); ok {
				*dst = v
			}
		}
	}
	p.mapping(n, "a selector", map[string]func(*yaml.Node){
		"name":        str(&sel.Name, "name"),
		"system":      str(&sel.System, "system"),
		"label":       str(&sel.Label, "label"),
		"label-key":   str(&sel.KeyPattern, "label-key"),
		"label-value": str(&sel.ValuePattern, "label-value"),
		"name-prefix": str(&sel.NamePrefix, "name-prefix"),
		"services": func(n *yaml.Node) {
			if v, ok := p.scalar(n, "services"); ok {
				switch onOff(v) {
				case "on":
					sel.Services = true
				case "off":
				default:
					p.errorf(n, "services must be true or false, not %q", v)
				}
			}
		},
	})
	return sel
}

func hash(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// parser walks a YAML node tree, collecting every error with its line.
type parser struct {
	file string
	errs []error
}

func (p *parser) errorf(n *yaml.Node, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s:%d: %s", p.file, n.Line, fmt.Sprintf(format, args...)))
}

func (p *parser) check(n *yaml.Node, err error) {
	if err != nil {
		p.errorf(n, "%v", err)
	}
}

// mapping calls the handler of each key in n, and reports keys it does not
// know with the valid ones.
func (p *parser) mapping(n *yaml.Node, what string, keys map[string]func(*yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "%s must be a mapping of keys (valid keys: %s)", what, validKeys(keys))
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if line, dup := seen[k.Value]; dup {
			p.errorf(k, "key %q is already defined on line %d", k.Value, line)
			continue
		}
		seen[k.Value] = k.Line
		h, ok := keys[k.Value]
		if !ok {
			p.errorf(k, "unknown key %q in %s (valid keys: %s)", k.Value, what, validKeys(keys))
			continue
		}
		h(v)
	}
}

func validKeys(keys map[string]func(*yaml.Node)) string {
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func (p *parser) scalar(n *yaml.Node, what string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.errorf(n, "%s must be a single value", what)
		return "", false
	}
	return n.Value, true
}

func (p *parser) list(n *yaml.Node, what string) []string {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "%s must be a list, e.g. [a, b]", what)
		return nil
	}
	var out []string
	for _, e := range n.Content {
		if s, ok := p.scalar(e, "each entry of "+what); ok {
			out = append(out, s)
		}
	}
	return out
}

var ruleName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

func (p *parser) rules(n *yaml.Node) []rules.Rule {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "rules must be a list of rules, first match wins")
		return nil
	}
	seen := map[string]int{}
	out := make([]rules.Rule, 0, len(n.Content))
	for _, rn := range n.Content {
		r := rules.Rule{When: rules.Always, Action: rules.Deny}
		var hasName, hasMatch bool
		var methods *yaml.Node
		p.mapping(rn, "a rule", map[string]func(*yaml.Node){
			"name": func(n *yaml.Node) {
				s, ok := p.scalar(n, "name")
				if !ok {
					return
				}
				hasName = true
				r.Name = s
				switch {
				case !ruleName.MatchString(s):
					p.errorf(n, "rule name %q: use lower-case letters, digits, '.', '_' and '-'", s)
				case s == rules.FailClosedRule:
					p.errorf(n, "rule name %q is reserved for the built-in rule that refuses unclassifiable requests", s)
				case seen[s] != 0:
					p.errorf(n, "rule name %q is already used on line %d", s, seen[s])
				default:
					seen[s] = n.Line
				}
			},
			"match": func(n *yaml.Node) {
				hasMatch = true
				ops := p.list(n, "match")
				if len(ops) == 0 && n.Kind == yaml.SequenceNode {
					p.errorf(n, "match lists no operation (valid: %s)", strings.Join(rules.OperationNames(), ", "))
				}
				for _, o := range ops {
					s, err := rules.ParseOperation(o)
					p.check(n, err)
					r.Match |= s
				}
			},
			"methods": func(n *yaml.Node) {
				methods = n
				r.Methods = p.list(n, "methods")
				if r.Methods == nil && n.Kind == yaml.SequenceNode {
					r.Methods = []string{} // methods: [] is an error, not "every method"
				}
			},
			"when": func(n *yaml.Node) {
				if s, ok := p.scalar(n, "when"); ok {
					c, err := rules.ParseCondition(s)
					p.check(n, err)
					r.When = c
				}
			},
			"action": func(n *yaml.Node) {
				if s, ok := p.scalar(n, "action"); ok {
					a, err := rules.ParseAction(s)
					p.check(n, err)
					r.Action = a
				}
			},
			"message": func(n *yaml.Node) {
				if s, ok := p.scalar(n, "message"); ok {
					r.Message = s
				}
			},
		})
		if rn.Kind != yaml.MappingNode {
			continue
		}
		if !hasName {
			p.errorf(rn, "a rule needs a name")
		}
		if !hasMatch {
			p.errorf(rn, "rule %q needs match: a list of operations (valid: %s)", r.Name, strings.Join(rules.OperationNames(), ", "))
		}
		if methods != nil {
			p.check(methods, rules.ValidateMethods(r.Match, r.Methods))
		}
		out = append(out, r)
	}
	return out
}
