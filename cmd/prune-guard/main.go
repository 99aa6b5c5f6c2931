// Command prune-guard is a guard in front of the Docker Engine that keeps a
// CI host's image cache alive: it refuses prunes that evict tagged images,
// and prunes and image deletes that could touch an active CI job.
//
// Run it with "prune-guard proxy" in front of dockerd's own socket, or with
// "prune-guard serve" as dockerd's authorization plugin. "prune-guard
// --help" lists the rest.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/prune-guard/prune-guard/buildinfo"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "prune-guard:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "prune-guard",
		Short: "A guard in front of the Docker Engine that keeps a CI host's image cache from being pruned",
		Long: `prune-guard sits in dockerd's request path and refuses the requests that destroy a CI
host's warm image cache. It gets there one of two ways:

  prune-guard proxy   owns the socket clients use and forwards to dockerd's own socket;
                      it sees everything, BuildKit's gRPC included (docker builder prune)
  prune-guard serve   an authorization plugin (dockerd --authorization-plugin=prune-guard);
                      no socket moves, but BuildKit's gRPC passes it unseen

It refuses:

  - image prunes that remove tagged images (docker image prune -a, docker system prune -a)
    unless a label filter scopes them;
  - build-cache prunes with --all, and volume prunes that remove named volumes;
  - while a CI job is active, every prune that could touch it and every image delete,
    and image deletes and prunes for a teardown grace after it ends.

CI jobs are recognised out of the box for GitLab Runner, GitHub Actions runners,
Buildkite, Drone, Woodpecker, Jenkins, Testcontainers and Gitea/Forgejo runners
('prune-guard policy default' lists the detectors). Everything else passes through untouched. Every destructive request and every
denial is written to a JSON-lines audit log.`,
		Version:       buildinfo.Version() + " (" + buildinfo.GoVersion() + ")",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCmd(), newProxyCmd(), newPolicyCmd(), newCheckCmd(), newExplainCmd(), newStatusCmd())
	root.AddCommand(newReclaimCmd())
	root.AddCommand(newAuditCmd())
	return root
}
