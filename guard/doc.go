// Package guard decides Docker Engine API requests for every transport that
// puts prune-guard in the daemon's request path (the authorization plugin
// protocol, the socket proxy): it has the rules package classify a request,
// asks the engine for the facts a rule needs (active CI runs, what a name
// refers to) only when a rule asks, evaluates the policy in force, writes
// the audit log and counts decisions. It owns the status and metrics that
// describe those decisions.
//
// It knows no transport. It must never allow a destructive request it could
// not classify or decide, never let a panic escape a decision, and never add
// work to requests that destroy nothing: those are answered before any
// engine query, lock or audit write. Pulls alone are counted (cache
// accounting): one image inspect before the pull, a pull record, never a
// refusal.
package guard
