// Package authz serves the Docker authorization plugin protocol
// (docker.authz/1.0) on a listener: it answers Plugin.Activate, decodes
// dockerd's AuthZReq calls and asks a Decider about each, and allows every
// AuthZRes call. Everything else on the socket (GET /status, GET /metrics)
// goes to a handler the caller supplies.
//
// It is a transport: it knows nothing of prune-guard's policy, the engine,
// CI runs or the audit log, and must never import them. It must never
// allow a call it could not decode, never let a panic take the server down,
// never close a kept connection dockerd may be about to reuse, and never add
// work to a call beyond decoding it.
package authz
