package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/listener"
	"github.com/prune-guard/prune-guard/proxy"
	"github.com/prune-guard/prune-guard/rules"
)

const (
	// clientSocket is where clients find the engine by default, and so
	// where the proxy listens.
	clientSocket = "/var/run/docker.sock"
	// engineSocket is the engine's own socket in proxy mode, by default: a
	// root-only directory of dockerd's own.
	engineSocket = "unix:///run/docker/engine.sock"
)

type proxyOptions struct {
	listen        string
	socketGroup   string
	controlSocket string
	// controlSet: --control-socket (or its variable) was given.
	controlSet bool
	guardFlags
}

func newProxyCmd() *cobra.Command {
	o := proxyOptions{}
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Guard the engine by owning the socket clients use (proxy mode)",
		Long: `Listen on the socket Docker clients use and forward each request to the engine's
own socket, deciding every request first: every REST call, HTTP/2 (Docker 29.2
and later serve gRPC on their socket), and each gRPC call inside BuildKit's
/grpc tunnel, so 'docker builder prune' with buildx is guarded too. dockerd
runs with no authorization plugin and listens only on --docker-host, a socket
only root can reach; docs/install.md says how to move it, and how to go back.

Refused requests get the answer dockerd gives for a plugin's denial (403, and
"authorization denied by plugin prune-guard: …"), refused gRPC calls
PERMISSION_DENIED with the reason. Everything else passes as it came: streams,
attach and exec, full-duplex builds, keep-alive.

The policy, detectors, teardown grace, protection, audit log, metrics and hot
reload are those of 'prune-guard serve'. 'prune-guard status' reads the state
from --control-socket. Under systemd socket activation the socket systemd
passes is used instead of --listen.`,
		Example: `  prune-guard proxy --docker-host unix:///run/docker/engine.sock
  prune-guard proxy --listen /var/run/docker.sock --socket-group docker --audit-log /var/log/prune-guard/audit.jsonl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.controlSet = cmd.Flags().Changed("control-socket")
			return runProxy(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", clientSocket, "unix socket clients use, unless systemd passes one (socket activation)")
	f.StringVar(&o.socketGroup, "socket-group", "docker", "group that may connect to --listen (mode 0660); root's alone if the group does not exist")
	f.StringVar(&o.controlSocket, "control-socket", controlSocket, controlUsage)
	o.guardFlags.register(f, engineSocket, "the engine's own socket, which only root should reach; requests are forwarded there and facts asked there")
	bindEnv(cmd, append([]envVar{
		{name: "PRUNE_GUARD_LISTEN", flag: "listen"},
		{name: "PRUNE_GUARD_SOCKET_GROUP", flag: "socket-group"},
		controlEnv,
	}, guardEnv(envVar{name: "PRUNE_GUARD_DOCKER_HOST", flag: "docker-host"})...)...)
	return cmd
}

func runProxy(ctx context.Context, o proxyOptions) error {
	engine, err := unixPath(o.dockerHost)
	if err != nil {
		return fmt.Errorf("--docker-host: %w (proxy mode forwards to a unix socket)", err)
	}
	if filepath.Clean(engine) == filepath.Clean(o.listen) {
		return fmt.Errorf("--docker-host %s is --listen: the proxy would forward to itself; move dockerd to its own socket (docs/install.md)", o.dockerHost)
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := startGuard(ctx, o.guardFlags, guard.Transport{Mode: guard.ModeProxy, Listen: o.listen, Engine: o.dockerHost})
	if err != nil {
		return err
	}
	defer d.close()
	ctl, err := openControl(o.controlSocket, o.controlSet, d.log)
	if err != nil {
		return err
	}
	l, listening, err := o.listenClients()
	if err != nil {
		ctl.close()
		return err
	}
	if listening == o.listen {
		defer os.Remove(o.listen)
	}
	ctl.serve(ctx, d)
	go d.warnAboutEngine(ctx, o.engineTimeout)
	d.logStart(o.guardFlags, listening)
	p := proxy.New(proxyDecider{d.g}, proxy.Options{
		Engine: engine, Headers: guard.ReadHeaders(), ReadsMessage: rules.GRPCReadsMessage,
		Drain: 10 * time.Second, DialTimeout: o.engineTimeout, Log: d.log,
	})
	err = p.Serve(ctx, l)
	stop() // ends the control socket too, however the clients' server ended
	ctl.wait()
	d.al.Event("prune-guard stopped", nil)
	return err
}

// listenClients opens the socket clients use. A socket dockerd still
// serves is the usual mistake, and the error says what to do.
func (o proxyOptions) listenClients() (net.Listener, string, error) {
	group := o.socketGroup
	if group == "docker" {
		if _, err := user.LookupGroup(group); err != nil {
			// dockerd does the same with its default group.
			group = ""
		}
	}
	l, where, err := listen(o.listen, group, "--listen")
	if err != nil && errors.Is(err, listener.ErrServed) {
		return nil, "", fmt.Errorf("%w: if dockerd listens there, move it to %s first (docs/install.md, proxy mode)", err, o.dockerHost)
	}
	return l, where, err
}
