package rules

import "fmt"

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
	// RunActive applies the rule only while a CI run is active.
	RunActive
)

func (c Condition) String() string {
	switch c {
	case Always:
		return "always"
	case RunActive:
		return "run-active"
	}
	return fmt.Sprintf("Condition(%d)", uint8(c))
}

// Rule is one entry of a policy. The first rule that matches a request
// decides it.
type Rule struct {
	Name   string
	Match  OpSet
	When   Condition
	Action Action
	// Message explains the rule to the client that was refused: why, and
	// what is safe to do instead.
	Message string
}

// Policy is an ordered list of rules; a request no rule matches is allowed.
type Policy struct {
	Rules []Rule
}

// Default is the built-in policy, the one that applies with no policy file.
// docs/policy.md documents it rule by rule; keep the two in step.
func Default() *Policy {
	return &Policy{Rules: []Rule{
		{
			Name:    "no-prune-all",
			Match:   Ops(OpImagePruneAll),
			When:    Always,
			Action:  Deny,
			Message: "it evicts cached base images; use 'docker image prune' (dangling only)",
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
			Name:    "no-prune-during-run",
			Match:   AnyPrune,
			When:    RunActive,
			Action:  Deny,
			Message: "retry after the run ends",
		},
		{
			Name:    "no-delete-during-run",
			Match:   Ops(OpImageDelete),
			When:    RunActive,
			Action:  Deny,
			Message: "retry after the run ends",
		},
	}}
}

// String renders a rule for logs and explanations.
func (r Rule) String() string {
	return fmt.Sprintf("%s: %s %s when %s", r.Name, r.Action, r.Match, r.When)
}
