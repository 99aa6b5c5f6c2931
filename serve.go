package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/plugin"
	"github.com/prune-guard/prune-guard/rules"
	"github.com/prune-guard/prune-guard/runs"
)

type serveOptions struct {
	socket        string
	dockerHost    string
	auditLog      string
	runLabels     []string
	engineTimeout time.Duration
	logLevel      string
}

func defaultDockerHost() string {
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		return h
	}
	return "unix:///var/run/docker.sock"
}

func newServeCmd() *cobra.Command {
	o := serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the authorization plugin on a unix socket",
		Long: `Serve the Docker authorization plugin protocol on a unix socket.

dockerd finds a plugin named NAME at /run/docker/plugins/NAME.sock, so with the
default socket start dockerd with --authorization-plugin=prune-guard (or
"authorization-plugins": ["prune-guard"] in daemon.json). Start prune-guard
first: dockerd refuses to start while its authorization plugin is missing.

With no policy file the built-in default policy applies (docs/policy.md).`,
		Example: `  prune-guard serve
  prune-guard serve --audit-log /var/log/prune-guard/audit.jsonl --run-label ci.run-id
  prune-guard serve --socket /run/docker/plugins/prune-guard.sock --docker-host unix:///var/run/docker.sock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.socket, "socket", "/run/docker/plugins/prune-guard.sock", "unix socket to listen on, unless systemd passes one (socket activation); dockerd finds plugin NAME at /run/docker/plugins/NAME.sock")
	f.StringVar(&o.dockerHost, "docker-host", defaultDockerHost(), "engine to ask which CI runs are active ($DOCKER_HOST when set)")
	f.StringVar(&o.auditLog, "audit-log", "-", "JSON-lines audit file, created 0600 and appended to; - for standard output")
	f.StringArrayVar(&o.runLabels, "run-label", []string{runs.DefaultLabel}, "label KEY or KEY=VALUE that marks a container or service as part of an active CI run (repeatable)")
	f.DurationVar(&o.engineTimeout, "engine-timeout", 3*time.Second, "how long a decision may wait for the engine; past it the run state is unknown and destructive requests are refused")
	f.StringVar(&o.logLevel, "log-level", "info", "operational log level on stderr: debug, info, warn, error")
	return cmd
}

func runServe(ctx context.Context, o serveOptions) error {
	log := logrus.New()
	log.SetOutput(os.Stderr)
	lvl, err := logrus.ParseLevel(o.logLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log.SetLevel(lvl)
	if o.engineTimeout <= 0 {
		return errors.New("--engine-timeout must be positive")
	}

	tracker, err := runs.New(o.dockerHost, o.runLabels, o.engineTimeout)
	if err != nil {
		return err
	}
	defer tracker.Close()

	al, err := audit.Open(o.auditLog)
	if err != nil {
		return err
	}
	defer al.Close()

	l, err := plugin.Inherited()
	if err != nil {
		return err
	}
	listening := "inherited socket (socket activation)"
	if l == nil {
		if l, err = plugin.Listen(o.socket); err != nil {
			return err
		}
		// Only a socket prune-guard created is its to remove; an inherited
		// one belongs to systemd and must outlive this process.
		defer os.Remove(o.socket)
		listening = o.socket
	}

	g := plugin.NewGuard(rules.Default(), tracker, al, log)

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.WithFields(logrus.Fields{"socket": listening, "docker_host": o.dockerHost, "run_labels": o.runLabels, "policy": "built-in default"}).
		Info("prune-guard serving")
	al.Event("prune-guard started", map[string]any{"socket": listening, "policy": "built-in default"})
	err = plugin.Serve(ctx, l, plugin.Handler(g), 10*time.Second)
	al.Event("prune-guard stopped", nil)
	return err
}
