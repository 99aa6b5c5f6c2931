// Package rules is prune-guard's pure policy core: it classifies a Docker
// Engine API request exactly as dockerd would route and parse it, and decides
// it against a policy.
//
// Classification follows the daemon, not a reading of the URL: the same
// gorilla/mux route templates dockerd registers, the decoded path, Go's
// form-parsing order, moby's filter JSON forms and boolean rules, and the
// API-version-dependent defaults. Where the daemon could read a parameter from
// a place an authorization plugin cannot see (a form body, a repeated header),
// the classifier assumes the most destructive reading and says why, so the
// policy denies instead of guessing.
//
// This package must never do I/O, keep global mutable state, or panic on
// input. Facts that need the engine (which CI runs are active) are supplied
// by the caller through the Facts interface, and only when a rule asks.
package rules
