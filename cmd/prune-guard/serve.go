package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/authz"
	"github.com/prune-guard/prune-guard/engine"
	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/listener"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/redact"
	"github.com/prune-guard/prune-guard/resolve"
	"github.com/prune-guard/prune-guard/rules"
	"github.com/prune-guard/prune-guard/runs"
)

type serveOptions struct {
	socket         string
	socketGroup    string
	dockerHost     string
	auditLog       string
	auditGroup     string
	policyFile     string
	policyOptional bool
	run            runFlags
	engineTimeout  time.Duration
	watchInterval  time.Duration
	metricsAddr    string
	connPerCall    bool
	logLevel       string
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
Under systemd socket activation the socket systemd passes is used instead.

With no --policy the built-in default policy applies (docs/policy.md). A policy
file is reloaded on SIGHUP and whenever its content changes; a file that does
not load is rejected with an error in the log and the audit log, and the policy
in force stays.`,
		Example: `  prune-guard serve
  prune-guard serve --policy /etc/prune-guard/policy.yaml --policy-optional
  prune-guard serve --audit-log /var/log/prune-guard/audit.jsonl --audit-group adm --run-label ci.run-id`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.socket, "socket", pluginSocket, "unix socket to listen on, unless systemd passes one (socket activation); dockerd finds plugin NAME at /run/docker/plugins/NAME.sock")
	f.StringVar(&o.socketGroup, "socket-group", "", "group that may connect to the socket (mode 0660); default: the owner's group (root)")
	f.StringVar(&o.dockerHost, "docker-host", defaultDockerHost, "engine to ask which CI runs are active and what names refer to")
	f.StringVar(&o.auditLog, "audit-log", "-", "JSON-lines audit file, appended to and created 0600; - for standard output")
	f.StringVar(&o.auditGroup, "audit-group", "", "group that may read the audit file (mode 0640 instead of 0600)")
	f.StringVar(&o.policyFile, "policy", "", "policy file (YAML or JSON; see 'prune-guard policy default'); default: the built-in policy")
	f.BoolVar(&o.policyOptional, "policy-optional", false, "a missing --policy file means the built-in policy until the file appears")
	o.run.register(f)
	f.DurationVar(&o.engineTimeout, "engine-timeout", 3*time.Second, "how long a decision may wait for the engine; past it the state is unknown and destructive requests are refused")
	f.DurationVar(&o.watchInterval, "policy-poll", 2*time.Second, "how often to check the policy file for changes")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at /metrics on a loopback address (127.0.0.1:9323) or a unix socket (unix:/run/prune-guard/metrics.sock); off by default")
	f.BoolVar(&o.connPerCall, "conn-per-call", false, "answer every call with Connection: close, so a docker call racing a prune-guard restart never fails (costs about 20% of dockerd's API throughput)")
	f.StringVar(&o.logLevel, "log-level", "info", "operational log level on stderr: debug, info, warn, error")
	bindEnv(cmd, append([]envVar{
		socketEnv,
		{name: "PRUNE_GUARD_SOCKET_GROUP", flag: "socket-group"},
		dockerHostEnv,
		{name: "PRUNE_GUARD_AUDIT_LOG", flag: "audit-log"},
		{name: "PRUNE_GUARD_AUDIT_GROUP", flag: "audit-group"},
		{name: "PRUNE_GUARD_POLICY", flag: "policy"},
		{name: "PRUNE_GUARD_POLICY_OPTIONAL", flag: "policy-optional"},
		{name: "PRUNE_GUARD_METRICS_ADDR", flag: "metrics-addr"},
	}, runEnv...)...)
	return cmd
}

func runServe(ctx context.Context, o serveOptions) error {
	log, err := o.check()
	if err != nil {
		return err
	}
	cfg, lastPolicy, err := o.loadPolicy()
	if err != nil {
		return err
	}
	ec, err := engine.Open(o.dockerHost)
	if err != nil {
		return err
	}
	defer ec.Close()
	tracker := runs.New(ec, o.engineTimeout)

	al, err := o.openAudit(log)
	if err != nil {
		return err
	}
	defer al.Close()
	l, listening, err := o.listen()
	if err != nil {
		return err
	}
	if listening == o.socket {
		// Only a socket prune-guard created is its to remove; an inherited
		// one belongs to systemd and must outlive this process.
		defer os.Remove(o.socket)
	}

	g := guard.New(cfg, tracker, resolve.New(ec, o.engineTimeout), al, log)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	o.followPolicy(ctx, lastPolicy, g, al, log)
	go tracker.Watch(ctx, func() rules.Detection { return g.Config().Detection })
	go warnAboutEngine(ctx, ec, o.engineTimeout, log, al)
	logStart(log, al, o, cfg, listening, tracker)
	if o.metricsAddr != "" {
		ml, err := listenMetrics(o.metricsAddr)
		if err != nil {
			return err
		}
		go func() {
			if err := serveHTTP(ctx, ml, g.MetricsHandler(), time.Second); err != nil {
				log.WithError(err).Error("metrics listener stopped")
			}
		}()
	}
	err = authz.Serve(ctx, l, authzDecider{g}, g.Handler(), authz.Options{
		Headers: rules.ReadHeaders(), Drain: 10 * time.Second, ConnPerCall: o.connPerCall, Log: log})
	al.Event("prune-guard stopped", nil)
	return err
}

// check validates the options that need no I/O and returns the operational
// log they configure.
func (o serveOptions) check() (*logrus.Logger, error) {
	log := logrus.New()
	log.SetOutput(os.Stderr)
	lvl, err := logrus.ParseLevel(o.logLevel)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	log.SetLevel(lvl)
	if o.engineTimeout <= 0 || o.watchInterval <= 0 {
		return nil, errors.New("--engine-timeout and --policy-poll must be positive")
	}
	return log, o.run.validate()
}

// loadPolicy returns the policy to start with (the file's, or the built-in
// one) with the run flags applied, and the file's bytes for the watcher.
func (o serveOptions) loadPolicy() (*policy.Config, []byte, error) {
	cfg, data := policy.Default(), []byte(nil)
	if o.policyFile != "" {
		var err error
		if cfg, data, err = policy.LoadOptional(o.policyFile, o.policyOptional); err != nil {
			return nil, nil, fmt.Errorf("--policy: %w", err)
		}
	}
	cfg, err := o.run.apply(cfg)
	return cfg, data, err
}

// openAudit opens the audit log and reports its write failures loudly.
func (o serveOptions) openAudit(log *logrus.Logger) (*audit.Log, error) {
	gid, err := lookupGroup(o.auditGroup)
	if err != nil {
		return nil, fmt.Errorf("--audit-group: %w", err)
	}
	al, err := audit.Open(o.auditLog, gid)
	if err != nil {
		return nil, err
	}
	al.OnError(func(err error, failures int64) {
		log.WithError(err).WithField("failures", failures).
			Error("AUDIT LOG WRITE FAILED: decisions continue under the policy, but are not being recorded; free space or fix the audit file")
	})
	return al, nil
}

// listen returns the socket systemd passed, or listens on --socket; where
// says which, for the log.
func (o serveOptions) listen() (l net.Listener, where string, err error) {
	if l, err = listener.Inherited(); err != nil || l != nil {
		return l, "inherited socket (socket activation)", err
	}
	gid, err := lookupGroup(o.socketGroup)
	if err != nil {
		return nil, "", fmt.Errorf("--socket-group: %w", err)
	}
	if l, err = listener.Unix(o.socket, gid); err != nil {
		return nil, "", err
	}
	return l, o.socket, nil
}

// followPolicy reloads the policy file on SIGHUP and whenever its content
// changes, until ctx ends. A file that does not load is rejected, loudly,
// and the policy in force stays.
func (o serveOptions) followPolicy(ctx context.Context, last []byte, g *guard.Guard, al *audit.Log, log *logrus.Logger) {
	if o.policyFile == "" {
		// Nothing to reload, but a SIGHUP (systemctl reload) must not end
		// the process either.
		go func() {
			for range reloadOnSIGHUP(ctx) {
				log.Info("SIGHUP: no --policy file to reload; the built-in policy stays")
			}
		}()
		return
	}
	apply := func(next *policy.Config, err error) {
		if err == nil {
			next, err = o.run.apply(next)
		}
		if err != nil {
			g.Stats().PolicyRejected()
			log.WithField("error", redact.String(err.Error())).Error("policy rejected; the policy in force stays")
			al.Event("policy rejected", map[string]any{"error": err.Error(), "policy": g.Config().ShortHash()})
			return
		}
		g.SetConfig(next)
		g.Stats().PolicyLoaded()
		log.WithFields(logrus.Fields{"source": next.Source, "policy": next.ShortHash()}).Info("policy loaded")
		al.Event("policy loaded", map[string]any{"source": next.Source, "policy": next.Hash})
	}
	go policy.Watch(ctx, o.policyFile, o.policyOptional, o.watchInterval, last, reloadOnSIGHUP(ctx), apply)
}

// reloadOnSIGHUP returns a channel that asks for a reload on every SIGHUP
// until ctx ends. It only asks: reading and applying the file stay on
// policy.Watch's one goroutine, so a reload and a poll never race. The
// handler is installed before it returns, so a SIGHUP sent once serve is
// up reloads instead of ending the process.
func reloadOnSIGHUP(ctx context.Context) <-chan struct{} {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{})
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			// Signals that arrive while this waits are coalesced in hup's
			// buffer: the reload taken after them reads the file anew.
			select {
			case <-ctx.Done():
				return
			case reload <- struct{}{}:
			}
		}
	}()
	return reload
}

// logStart says what is being served, and whether host-process detectors can
// see anything.
func logStart(log *logrus.Logger, al *audit.Log, o serveOptions, cfg *policy.Config, listening string, tracker *runs.Tracker) {
	if ok, why := tracker.HostVisible(); !ok {
		log.WithField("reason", why).Warn("host processes are not visible: process detectors (github-actions-host, gitlab-shell, buildkite-agent) are inactive")
	} else {
		log.Info("host processes are visible: process detectors are active")
	}
	log.WithFields(logrus.Fields{"socket": listening, "docker_host": redact.String(o.dockerHost), "detectors": cfg.Detection.Names(),
		"run_grace": cfg.Detection.Grace.String(), "policy_source": cfg.Source, "policy": cfg.ShortHash(), "mode": cfg.Policy.Mode}).
		Info("prune-guard serving")
	al.Event("prune-guard started", map[string]any{"socket": listening, "source": cfg.Source, "policy": cfg.Hash})
}
