package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/prune-guard/prune-guard/authz"
	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/listener"
)

type serveOptions struct {
	socket        string
	socketGroup   string
	controlSocket string
	// controlSet: --control-socket (or its variable) was given.
	controlSet  bool
	connPerCall bool
	guardFlags
}

func newServeCmd() *cobra.Command {
	o := serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the authorization plugin on a unix socket (authz mode)",
		Long: `Serve the Docker authorization plugin protocol on a unix socket.

dockerd finds a plugin named NAME at /run/docker/plugins/NAME.sock, so with the
default socket start dockerd with --authorization-plugin=prune-guard (or
"authorization-plugins": ["prune-guard"] in daemon.json). Start prune-guard
first: dockerd refuses to start while its authorization plugin is missing.
Under systemd socket activation the socket systemd passes is used instead.

An authorization plugin sees every REST call, but not BuildKit's gRPC: with
buildx, 'docker builder prune' runs inside the POST /grpc tunnel, and Docker
29.2 and later answer gRPC on their socket past every plugin. On Docker 29.5
and later any authorization plugin breaks BuildKit builds whose context is the
request body. 'prune-guard proxy' guards all of that (docs/install.md says how
to choose).

A second, root-only socket (--control-socket, mode 0600) answers GET /status,
GET /metrics and POST /reclaim/grants: 'prune-guard reclaim' asks there for
leave to remove the images it names while a CI job holds image deletes, when
the disk is at or above its --critical mark (docs/cache.md). Only a root
process gets a grant, and only the deletes it names pass with it.

With no --policy the built-in default policy applies (docs/policy.md). A policy
file is reloaded on SIGHUP and whenever its content changes; a file that does
not load is rejected with an error in the log and the audit log, and the policy
in force stays.`,
		Example: `  prune-guard serve
  prune-guard serve --policy /etc/prune-guard/policy.yaml --policy-optional
  prune-guard serve --audit-log /var/log/prune-guard/audit.jsonl --audit-group adm --run-label ci.run-id`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.controlSet = cmd.Flags().Changed("control-socket")
			return runServe(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.socket, "socket", pluginSocket, "unix socket to listen on, unless systemd passes one (socket activation); dockerd finds plugin NAME at /run/docker/plugins/NAME.sock")
	f.StringVar(&o.socketGroup, "socket-group", "", "group that may connect to the socket (mode 0660); default: the owner's group (root)")
	f.StringVar(&o.controlSocket, "control-socket", controlSocket, controlUsage)
	o.guardFlags.register(f, defaultDockerHost, "engine to ask which CI runs are active and what names refer to")
	f.BoolVar(&o.connPerCall, "conn-per-call", false, "answer every call with Connection: close, so a docker call racing a prune-guard restart never fails (costs about 20% of dockerd's API throughput)")
	bindEnv(cmd, append([]envVar{socketEnv, {name: "PRUNE_GUARD_SOCKET_GROUP", flag: "socket-group"}, controlEnv}, guardEnv(dockerHostEnv)...)...)
	return cmd
}

func runServe(ctx context.Context, o serveOptions) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := startGuard(ctx, o.guardFlags, guard.Transport{Mode: guard.ModeAuthz, Engine: o.dockerHost})
	if err != nil {
		return err
	}
	defer d.close()
	ctl, err := openControl(o.controlSocket, o.controlSet, d.log)
	if err != nil {
		return err
	}
	l, listening, err := listen(o.socket, o.socketGroup, "--socket")
	if err != nil {
		ctl.close()
		return err
	}
	if listening == o.socket {
		// Only a socket prune-guard created is its to remove; an inherited
		// one belongs to systemd and must outlive this process.
		defer os.Remove(o.socket)
	}
	ctl.serve(ctx, d)
	go d.warnAboutEngine(ctx, o.engineTimeout)
	d.logStart(o.guardFlags, listening)
	err = authz.Serve(ctx, l, authzDecider{d.g}, d.g.Handler(), authz.Options{
		Headers: guard.ReadHeaders(), Drain: 10 * time.Second, ConnPerCall: o.connPerCall, Log: d.log})
	stop() // ends the control socket too, however the clients' server ended
	ctl.wait()
	d.al.Event("prune-guard stopped", nil)
	return err
}

// listen returns the socket systemd passed, or listens on path; where says
// which, for the log. flag names the path's flag for errors.
func listen(path, group, flag string) (l net.Listener, where string, err error) {
	if l, err = listener.Inherited(); err != nil || l != nil {
		return l, "inherited socket (socket activation)", err
	}
	gid, err := lookupGroup(group)
	if err != nil {
		return nil, "", fmt.Errorf("--socket-group: %w", err)
	}
	if l, err = listener.Unix(path, gid); err != nil {
		return nil, "", fmt.Errorf("%s: %w", flag, err)
	}
	return l, path, nil
}
