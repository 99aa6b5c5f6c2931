// Package plugin serves prune-guard over the Docker authorization plugin
// protocol (docker.authz/1.0): it decodes dockerd's AuthZReq and AuthZRes
// calls, has the rules package classify and decide each request, asks the
// engine about active runs only when a rule needs to know, and writes the
// audit log.
//
// It must never allow a destructive request it could not decode or decide,
// never let a panic take the server down, and never add work to requests
// that destroy nothing: those are answered before any engine query, lock or
// audit write.
package plugin
