package rules

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// Action is what a matching rule does with a request.
type Action uint8

const (
	// Deny refuses the request with the rule's message.
	Deny Action = iota
	// Warn lets the request through and audits that the rule would have
	// denied it, so a new rule can be rolled out safely.
	Warn
	// Allow lets the request through and stops rule evaluation.
	Allow
)

func (a Action) String() string {
	switch a {
	case Deny:
		return "deny"
	case Warn:
		return "warn"
	case Allow:
		return "allow"
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// Condition is when a rule applies to a request it matches.
type Condition uint8

const (
	// Always applies the rule to every request it matches.
	Always Condition = iota
	// RunActive applies the rule only while a CI job is active (for
	// operations that remove images, also during a job's teardown grace).
	RunActive
	// RunInScope is RunActive, except that a scopable prune whose positive
	// label filter selects none of the active jobs' objects passes: it
	// cannot touch them.
	RunInScope
	// Unscoped applies the rule only to a request with no positive label
	// filter (an image prune --all with one removes only images whose own
	// configuration carries the labels).
	Unscoped
	// ImageProtected applies the rule only when the image a request names
	// is protected (by reference pattern or label).
	ImageProtected
	// PluginProtected applies the rule only when the plugin a request
	// names is protected.
	PluginProtected

	numConditions
)

var conditionNames = [numConditions]string{
	Always:          "always",
	RunActive:       "run-active",
	RunInScope:      "run-in-scope",
	Unscoped:        "unscoped",
	ImageProtected:  "image-protected",
	PluginProtected: "plugin-protected",
}

func (c Condition) String() string {
	if c < numConditions {
		return conditionNames[c]
	}
	return fmt.Sprintf("Condition(%d)", uint8(c))
}

// ParseCondition returns the condition a policy names.
func ParseCondition(name string) (Condition, error) {
	for c, n := range conditionNames {
		if n == name {
			return Condition(c), nil
		}
	}
	return 0, fmt.Errorf("unknown condition %q (valid: %s)", name, strings.Join(conditionNames[:], ", "))
}

// ConditionNames lists the conditions a policy may name.
func ConditionNames() []string { return conditionNames[:] }

// ParseAction returns the action a policy names.
func ParseAction(name string) (Action, error) {
	for _, a := range []Action{Deny, Warn, Allow} {
		if a.String() == name {
			return a, nil
		}
	}
	return 0, fmt.Errorf("unknown action %q (valid: deny, warn, allow)", name)
}

// Mode is how a policy's deny rules act.
type Mode uint8

const (
	// Enforce denies what deny rules match.
	Enforce Mode = iota
	// WarnOnly turns every deny rule into a warn rule: requests pass and
	// are audited as would-deny. For rolling out a new policy.
	WarnOnly
)

func (m Mode) String() string {
	if m == WarnOnly {
		return "warn"
	}
	return "enforce"
}

// ParseMode returns the mode a policy names.
func ParseMode(name string) (Mode, error) {
	switch name {
	case "enforce":
		return Enforce, nil
	case "warn":
		return WarnOnly, nil
	}
	return 0, fmt.Errorf("unknown mode %q (valid: enforce, warn)", name)
}

// Rule is one entry of a policy. The first rule that matches a request
// decides it.
type Rule struct {
	Name  string
	Match OpSet
	// Methods, when set, limits the rule to gRPC calls whose method
	// (Classification.GRPCMethod, /package.Service/Method) matches one of
	// these path.Match patterns ('*' does not cross '/'), so that a policy
	// can allow one extension's service rather than every unknown method.
	// Such a rule never matches a REST request. ValidateMethods checks
	// them.
	Methods []string
	When    Condition
	Action  Action
	// Message explains the rule to the client that was refused: why, and
	// what is safe to do instead.
	Message string
}

// matches reports whether the rule's operations and gRPC method patterns
// select a request classified as op (a gRPC call to method, or REST with
// method ""); its condition is the caller's.
func (r *Rule) matches(op Operation, method string) bool {
	if !r.Match.Has(op) {
		return false
	}
	if len(r.Methods) == 0 {
		return true
	}
	for _, p := range r.Methods {
		if ok, _ := path.Match(p, method); ok {
			return true
		}
	}
	return false
}

// ValidateMethods checks a rule's gRPC method patterns: each one a valid
// pattern of the form /package.Service/Method, and the rule's operations
// ones a gRPC call can be (GRPCOps), since the patterns match nothing
// else.
func ValidateMethods(match OpSet, methods []string) error {
	if methods == nil {
		return nil
	}
	if len(methods) == 0 {
		return errors.New("methods lists no pattern; leave it out to match every method")
	}
	for _, p := range methods {
		if !strings.HasPrefix(p, "/") || strings.Count(p, "/") != 2 {
			return fmt.Errorf("gRPC method pattern %q: write /package.Service/Method, e.g. \"/moby.extensions.v1.*/*\" ('*' does not cross '/')", p)
		}
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("gRPC method pattern %q: %v", p, err)
		}
	}
	if other := match &^ GRPCOps; other != 0 {
		return fmt.Errorf("methods limits a rule to gRPC calls, and no gRPC call is %s; match only %s", other, GRPCOps)
	}
	return nil
}

// Policy is an ordered list of rules; a request no rule matches is allowed.
type Policy struct {
	Mode  Mode
	Rules []Rule
}

// Default is the built-in policy, the one that applies with no policy file.
// docs/policy.md documents it rule by rule; keep the two in step.
func Default() *Policy {
	return &Policy{Rules: DefaultRules()}
}

// DefaultRules returns the built-in rules, first match wins.
func DefaultRules() []Rule {
	return []Rule{
		{
			Name:    "protect-self",
			Match:   Ops(OpPluginChange),
			When:    PluginProtected,
			Action:  Deny,
			Message: "prune-guard protects itself; take it out of dockerd's authorization plugins (daemon.json, then reload dockerd) before changing it",
		},
		{
			Name:    "no-prune-all",
			Match:   Ops(OpImagePruneAll),
			When:    Unscoped,
			Action:  Deny,
			Message: "it evicts cached base images; use 'docker image prune' (dangling only), scope it with --filter label=KEY, or let 'prune-guard reclaim' free disk",
		},
		{
			Name:    "no-build-prune-all",
			Match:   Ops(OpBuildPruneAll),
			When:    Always,
			Action:  Deny,
			Message: "it drops the whole build cache; use 'docker builder prune' (dangling cache only)",
		},
		{
			Name:    "no-volume-prune-all",
			Match:   Ops(OpVolumePruneAll),
			When:    Always,
			Action:  Deny,
			Message: "it removes named volumes; remove a volume you mean to lose with 'docker volume rm NAME'",
		},
		{
			Name:    "keep-protected",
			Match:   Ops(OpImageDelete, OpImagePruneAll),
			When:    ImageProtected,
			Action:  Deny,
			Message: "protected images are never deleted; change the policy's protect settings if it must go",
		},
		{
			Name:    "no-prune-during-run",
			Match:   AnyPrune,
			When:    RunInScope,
			Action:  Deny,
			Message: "retry after the job ends",
		},
		{
			Name:    "no-delete-during-run",
			Match:   Ops(OpImageDelete),
			When:    RunActive,
			Action:  Deny,
			Message: "retry after the job ends",
		},
		{
			// Only a proxy sees gRPC calls; an authorization plugin
			// never gets one to decide.
			Name:    "no-unknown-grpc",
			Match:   Ops(OpGRPCUnknown),
			When:    Always,
			Action:  Deny,
			Message: "prune-guard does not know this method, so it cannot tell what it removes; if it removes nothing you keep, allow it with a rule matching grpc-unknown, with methods: naming its service, placed before no-unknown-grpc (docs/policy.md)",
		},
	}
}

// String renders a rule for logs and explanations.
func (r Rule) String() string {
	methods := ""
	if len(r.Methods) > 0 {
		methods = " methods " + strings.Join(r.Methods, ",")
	}
	return fmt.Sprintf("%s: %s %s%s when %s", r.Name, r.Action, r.Match, methods, r.When)
}
