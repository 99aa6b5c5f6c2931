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
	"github.com/spf13/pflag"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/engine"
	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/metrics"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/redact"
	"github.com/prune-guard/prune-guard/resolve"
	"github.com/prune-guard/prune-guard/rules"
	"github.com/prune-guard/prune-guard/runs"
)

// guardFlags are the settings of the decision, which serve and proxy share:
// the policy, the engine asked for facts, job detection, the audit log,
// metrics and logging.
type guardFlags struct {
	dockerHost     string
	auditLog       string
	auditGroup     string
	policyFile     string
	policyOptional bool
	run            runFlags
	engineTimeout  time.Duration
	watchInterval  time.Duration
	metricsAddr    string
	webConfig      string
	logLevel       string
}

// register adds the flags; engineUsage says what the engine is to the
// command.
func (o *guardFlags) register(f *pflag.FlagSet, engineDefault, engineUsage string) {
	f.StringVar(&o.dockerHost, "docker-host", engineDefault, engineUsage)
	f.StringVar(&o.auditLog, "audit-log", "-", "JSON-lines audit file, appended to and created 0600; - for standard output")
	f.StringVar(&o.auditGroup, "audit-group", "", "group that may read the audit file (mode 0640 instead of 0600)")
	f.StringVar(&o.policyFile, "policy", "", "policy file (YAML or JSON; see 'prune-guard policy default'); default: the built-in policy")
	f.BoolVar(&o.policyOptional, "policy-optional", false, "a missing --policy file means the built-in policy until the file appears")
	o.run.register(f)
	f.DurationVar(&o.engineTimeout, "engine-timeout", 3*time.Second, "how long a decision may wait for the engine; past it the state is unknown and destructive requests are refused")
	f.DurationVar(&o.watchInterval, "policy-poll", 2*time.Second, "how often to check the policy file for changes")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at /metrics on a loopback address ("+exampleMetricsAddr+"), a unix socket (unix:/run/prune-guard/metrics.sock), or, with --web-config, any address (:"+exampleMetricsPort+"); off by default")
	f.StringVar(&o.webConfig, "web-config", "", webConfigUsage)
	f.StringVar(&o.logLevel, "log-level", "info", "operational log level on stderr: debug, info, warn, error")
}

// guardEnv are the guard flags' environment variables, for bindEnv.
func guardEnv(engine envVar) []envVar {
	return append([]envVar{
		engine,
		{name: "PRUNE_GUARD_AUDIT_LOG", flag: "audit-log"},
		{name: "PRUNE_GUARD_AUDIT_GROUP", flag: "audit-group"},
		{name: "PRUNE_GUARD_POLICY", flag: "policy"},
		{name: "PRUNE_GUARD_POLICY_OPTIONAL", flag: "policy-optional"},
		{name: "PRUNE_GUARD_METRICS_ADDR", flag: "metrics-addr"},
		{name: "PRUNE_GUARD_WEB_CONFIG", flag: "web-config"},
	}, runEnv...)
}

// check validates the options that need no I/O and returns the operational
// log they configure.
func (o guardFlags) check() (*logrus.Logger, error) {
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

// decider is a running guard and what it needs: the engine client, the run
// tracker, the audit log. close releases them.
type decider struct {
	g       *guard.Guard
	log     *logrus.Logger
	al      *audit.Log
	ec      *engine.Client
	tracker *runs.Tracker
}

// startGuard checks the flags, loads the policy, opens the engine client
// and the audit log and starts the guard with what follows it (policy
// reloads, the engine's events, the metrics listener) until ctx ends.
func startGuard(ctx context.Context, o guardFlags, t guard.Transport) (*decider, error) {
	log, err := o.check()
	if err != nil {
		return nil, err
	}
	cfg, lastPolicy, err := o.loadPolicy()
	if err != nil {
		return nil, err
	}
	ec, err := engine.Open(o.dockerHost)
	if err != nil {
		return nil, err
	}
	al, err := o.openAudit(log)
	if err != nil {
		ec.Close()
		return nil, err
	}
	d := &decider{log: log, al: al, ec: ec, tracker: runs.New(ec, o.engineTimeout)}
	d.g = guard.New(cfg, d.tracker, resolve.New(ec, o.engineTimeout), al, log)
	d.g.SetTransport(t)
	if err := d.serveMetrics(ctx, o.metricsAddr, o.webConfig); err != nil {
		d.close()
		return nil, err
	}
	o.followPolicy(ctx, lastPolicy, d.g, al, log)
	go d.tracker.Watch(ctx, func() rules.Detection { return d.g.Config().Detection })
	return d, nil
}

func (d *decider) close() {
	d.al.Close()
	d.ec.Close()
}

// serveMetrics serves the guard's metrics on addr, if one is given.
func (d *decider) serveMetrics(ctx context.Context, addr, webConfig string) error {
	if addr == "" {
		if webConfig != "" {
			return errors.New("--web-config configures the --metrics-addr listener: give --metrics-addr too")
		}
		return nil
	}
	ml, err := listenMetrics(addr, webConfig)
	if err != nil {
		return err
	}
	d.log.WithFields(logrus.Fields{"address": ml.Addr().String(), "web_config": webConfig}).Info("serving metrics")
	go func() {
		if err := metrics.Serve(ctx, ml, d.g.MetricsHandler(), webConfig, time.Second, d.log.WriterLevel(logrus.WarnLevel)); err != nil {
			d.log.WithError(err).Error("metrics listener stopped")
		}
	}()
	return nil
}

// loadPolicy returns the policy to start with (the file's, or the built-in
// one) with the run flags applied, and the file's bytes for the watcher.
func (o guardFlags) loadPolicy() (*policy.Config, []byte, error) {
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
func (o guardFlags) openAudit(log *logrus.Logger) (*audit.Log, error) {
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

// followPolicy reloads the policy file on SIGHUP and whenever its content
// changes, until ctx ends. A file that does not load is rejected, loudly,
// and the policy in force stays.
func (o guardFlags) followPolicy(ctx context.Context, last []byte, g *guard.Guard, al *audit.Log, log *logrus.Logger) {
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
func (d *decider) logStart(o guardFlags, listening string) {
	if ok, why := d.tracker.HostVisible(); !ok {
		d.log.WithField("reason", why).Warn("host processes are not visible: process detectors (github-actions-host, gitlab-shell, buildkite-agent) are inactive")
	} else {
		d.log.Info("host processes are visible: process detectors are active")
	}
	cfg := d.g.Config()
	mode := d.g.Transport().Mode
	d.log.WithFields(logrus.Fields{"transport": mode, "socket": listening, "docker_host": redact.String(o.dockerHost), "detectors": cfg.Detection.Names(),
		"run_grace": cfg.Detection.Grace.String(), "policy_source": cfg.Source, "policy": cfg.ShortHash(), "mode": cfg.Policy.Mode}).
		Info("prune-guard serving")
	d.al.Event("prune-guard started", map[string]any{"transport": mode, "socket": listening, "source": cfg.Source, "policy": cfg.Hash})
}
