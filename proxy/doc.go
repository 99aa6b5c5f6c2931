// Package proxy serves the Docker Engine API on the socket clients use and
// forwards it to the engine's own socket, asking a Decider about every
// request first: each request on a kept HTTP/1.1 connection, each HTTP/2
// stream (Docker 29.2 and later answer HTTP/2 with prior knowledge, gRPC
// included), and each gRPC call inside BuildKit's POST /grpc tunnel.
//
// It is a transport: it knows nothing of prune-guard's policy, the engine's
// state or the audit log, and must never import them. It must never forward
// a request whose framing the engine could read differently, never buffer a
// body or a stream (a build context, an image, logs -f, an attach), never
// let one client's connection hold up another's, and never answer a
// request the Decider refused with anything but a refusal that says why.
package proxy
