// Package enginetest starts and drives a private Docker Engine (dockerd) for
// end-to-end tests, optionally with a prune-guard authorization plugin in its
// request chain (StartPlugin, StartGuarded) or with no plugin and "prune-guard
// proxy" in front of it (StartProxy, StartProxied). A proxy's Client is the
// engine as the proxy's clients reach it: an Engine whose docker CLI (compose
// and buildx included), raw HTTP, Host and Env go through the proxy's socket,
// while the Engine itself stays reachable on its own. Engine.Restart stops
// and starts dockerd under whatever is in front of it.
//
// Every engine lives in its own short temporary directory: its own API
// socket, data root, exec root, pidfile and (empty) daemon.json, with
// --iptables=false, --ip-forward=false and --bridge=none, so that it changes
// nothing on the host. The package must never talk to the host's own
// /var/run/docker.sock, use /var/lib/docker, read /etc/docker/daemon.json or
// the user's docker CLI configuration, or leave processes, mounts or
// directories behind: every engine and plugin is stopped, its containers
// removed, and its directory unmounted and deleted, by a t.Cleanup
// registered when it is started. The only shared place it writes to is
// /run/docker/plugins, where dockerd looks for plugin sockets; each plugin
// gets a unique name there and its socket is removed on cleanup.
//
// Which engine: PG_ENGINE names one that scripts/engines.sh provisioned
// under PG_CACHE (default /var/cache/prune-guard-ci): its bin/ folder goes
// first on dockerd's PATH (dockerd, containerd, its shim, runc), its docker
// CLI drives it, its daemon.json (the image store) starts every engine's
// own, and its compose v2 plugin is linked into the CLI's private config
// directory (Engine.Compose; PG_COMPOSE overrides). Its buildx plugin is
// linked there only for a test that asks (Options.Buildx; PG_BUILDX
// overrides): a CLI from 23.0 on with buildx sends "docker builder prune"
// as BuildKit gRPC in POST /grpc, not as POST /build/prune. Without
// PG_ENGINE the binaries on PATH are used. Engine.Identity says what the
// engine is (/version, /info), for expectations that depend on it.
//
// Engines need Linux, root, dockerd, containerd, runc and the docker CLI
// (BuildImage also needs a static busybox). Where they are
// missing the tests are skipped, except under CI (CI=true), where they fail:
// an end-to-end suite that silently skips in CI proves nothing.
package enginetest
