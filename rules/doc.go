// Package rules is prune-guard's pure policy core: it classifies a Docker
// Engine API request exactly as dockerd would route and parse it (and a gRPC
// call a proxy sees as dockerd's gRPC server would route and decode it), and
// decides it against a policy.
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
//
// # Adding a guarded operation
//
// Read the handler at every daemon tag users run first (the parameters it
// reads, and how), then:
//
//  1. operation.go: the Operation constant and its row in operations (its
//     name, its words, destructive, prune group, teardown grace, label
//     scope). Policy names, the any-prune group and the audit name follow.
//  2. routes.go: the daemon's route template in guardedRoutes, with a
//     routeKind if the handler is new. The fragment filter is derived from
//     the templates, so nothing else there needs to change.
//  3. classify.go: the kind's case in Classify, reading the parameters as
//     the handler does, and its worst reading when in doubt.
//  4. policy.go: a default rule, if the built-in policy should refuse it.
//
// Then the tests: rows in classify_test.go, the handler in the reference
// daemon (reference_test.go: refRoutes and daemonModel) with seeds in
// reference_seeds_test.go, and a case in e2e/adversarial_test.go judged by
// a real engine's state; and the docs: docs/policy.md's operations table,
// and docs/threat-model.md if the plugin cannot see all of what it does.
//
// A gRPC method (only a proxy sees them; an unknown one is grpc-unknown,
// refused by default): its row in grpcServices (grpc.go), read from the
// .proto and the Register call of every BuildKit the engines vendor. If its
// first request message decides what it removes, make GRPCReadsMessage say
// so and read the message with protowire as both of dockerd's decoders
// (gogo before BuildKit v0.17, protobuf-go since) read it, refusing where
// they part ways; hold the reading to them in grpc_reference_test.go and
// FuzzClassifyGRPC. Then rows in grpc_test.go and docs/policy.md's gRPC
// table.
package rules
