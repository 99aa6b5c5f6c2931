package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/engine"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/reclaim"
	"github.com/prune-guard/prune-guard/redact"
)

type reclaimOptions struct {
	dockerHost    string
	high, low     float64
	minAge        time.Duration
	maxUnused     time.Duration
	dryRun        bool
	watch         time.Duration
	state         string
	auditLog      string
	policyFile    string
	run           runFlags
	protectImages []string
	protectLabels []string
	engineTimeout time.Duration
}

func newReclaimCmd() *cobra.Command {
	o := reclaimOptions{}
	def := policy.Default()
	cmd := &cobra.Command{
		Use:   "reclaim",
		Short: "Free disk under pressure by removing unused images, least recently used first",
		Long: `Free disk on a CI host without throwing its image cache away: the sanctioned
replacement for "docker image prune -af" and "docker system prune -af".

reclaim measures the filesystem that holds the engine's data root (the engine's
DockerRootDir, measured with statfs, so run it on the engine's host). It acts
only when usage is at or above --high percent, and then removes images one at a
time until usage is at or below --low percent:

  1. dangling images (no tag, no digest) first;
  2. then tagged images, least recently used first;
  3. an image always after the images built on it.

It never removes an image that a container uses (in any state, stopped ones
included), a protected image (--protect-image, --protect-label, or the policy
file's protect settings; by default images labelled prune-guard.keep=true),
or an image first seen or last used less than --min-age ago. While a CI run is
active (a container or swarm service carries a --run-label), or when the engine
cannot say whether one is, it removes nothing and says why.

Last use comes from the engine's events (container create, start and exit; image
pull and tag), kept in --state between runs. Events can be lost, so every run
also resyncs from the container list. An image reclaim has never seen counts as
first seen now, never by its build date: on a new host nothing is removed until
--min-age has passed.

Images are removed by ID, without force, through the engine's API, so
prune-guard's authorization policy applies to them like to any other client.
An image that gained a container or a child meanwhile (a conflict) or that the
policy refuses (a denial) is skipped and reported. reclaim never calls a prune
endpoint and never touches build cache, volumes, containers or networks.

--max-unused AGE also removes images unused for longer than AGE when there is
no pressure (off by default). Every removal, skip and run goes to the audit log;
the summary says what was freed, how long it took, and usage before and after.

Without --watch, reclaim runs once and exits (for a systemd timer): 0 when it
did what was due or refused because a run is active; 1 on an engine error, or
when usage is still at or above --high after all it may remove.`,
		Example: `  # What would go now, and why (removes nothing):
  prune-guard reclaim --dry-run

  # From a systemd timer every 10 minutes, auditing to prune-guard's log:
  prune-guard reclaim --audit-log /var/log/prune-guard/audit.jsonl

  # As a long-running service, with the same policy file as the plugin:
  prune-guard reclaim --watch 5m --policy /etc/prune-guard/policy.yaml

  # Keep base images, and drop anything unused for a week even without pressure:
  prune-guard reclaim --protect-image 'registry.example/base/*' --max-unused 168h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.config(cmd)
			if err != nil {
				return err
			}
			return runReclaim(cmd.Context(), o, cfg, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dockerHost, "docker-host", defaultDockerHost, "engine to reclaim disk on; its data root must be visible at the same path here")
	f.Float64Var(&o.high, "high", 85, "act when the data root's filesystem is at least this many percent used")
	f.Float64Var(&o.low, "low", 80, "once acting, remove images until usage is at most this many percent")
	f.DurationVar(&o.minAge, "min-age", time.Hour, "never remove an image first seen or last used less than this long ago")
	f.DurationVar(&o.maxUnused, "max-unused", 0, "also remove images unused for longer than this, even below --high (0: off)")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the plan (what would go, in order, and why the rest stays) and remove nothing")
	f.DurationVar(&o.watch, "watch", 0, "keep running, with a pass every INTERVAL and engine events followed in between (0: run once)")
	f.StringVar(&o.state, "state", "/var/lib/prune-guard/reclaim-state.json", "state file: when each image was first seen and last used (written atomically, 0600)")
	f.StringVar(&o.auditLog, "audit-log", "-", "JSON-lines audit file, appended to and created 0600; - for standard output")
	f.StringVar(&o.policyFile, "policy", "", "policy file shared with 'prune-guard serve': its run.labels and protect settings apply; flags override them")
	o.run.register(f)
	f.StringArrayVar(&o.protectImages, "protect-image", def.Protect.Images, "reference pattern (path.Match syntax, e.g. 'registry.example/base/*') of images never to remove (repeatable; replaces the policy's protect.images)")
	f.StringArrayVar(&o.protectLabels, "protect-label", def.Protect.Labels, "image label KEY or KEY=VALUE that protects an image (repeatable; replaces the policy's protect.labels)")
	f.DurationVar(&o.engineTimeout, "engine-timeout", time.Minute, "bound on each engine request")
	bindEnv(cmd, append([]envVar{dockerHostEnv}, runEnv...)...)
	return cmd
}

// config merges the policy file (or the built-in policy) with the flags:
// a flag given on the command line replaces the policy's setting.
func (o reclaimOptions) config(cmd *cobra.Command) (reclaim.Config, error) {
	pol := policy.Default()
	if o.policyFile != "" {
		var err error
		if pol, err = policy.Load(o.policyFile); err != nil {
			return reclaim.Config{}, fmt.Errorf("--policy: %w", err)
		}
	}
	changed := cmd.Flags().Changed
	cfg := reclaim.Config{
		Options: reclaim.Options{
			High: o.high, Low: o.low, MinAge: o.minAge, MaxUnused: o.maxUnused, Protect: pol.Protect,
		},
		StatePath:     o.state,
		DryRun:        o.dryRun,
		EngineTimeout: o.engineTimeout,
	}
	if err := o.run.validate(); err != nil {
		return reclaim.Config{}, err
	}
	pol, err := o.run.apply(pol)
	if err != nil {
		return reclaim.Config{}, err
	}
	cfg.Detection = pol.Detection
	if changed("protect-image") {
		cfg.Protect.Images = o.protectImages
	}
	if changed("protect-label") {
		cfg.Protect.Labels = o.protectLabels
	}
	if o.watch < 0 {
		return reclaim.Config{}, fmt.Errorf("--watch %s: want a positive interval, or 0 to run once", o.watch)
	}
	return cfg, nil
}

func runReclaim(ctx context.Context, o reclaimOptions, cfg reclaim.Config, out, errOut io.Writer) error {
	al, err := audit.Open(o.auditLog, -1)
	if err != nil {
		return err
	}
	defer al.Close()
	al.OnError(func(err error, failures int64) {
		fmt.Fprintf(errOut, "prune-guard reclaim: AUDIT LOG WRITE FAILED (%d failures): %v\n", failures, err)
	})
	cfg.Out = out
	c, err := engine.Open(o.dockerHost)
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := reclaim.New(cfg, c, al)
	if err != nil {
		return fmt.Errorf("reclaim settings: %w", err)
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.watch == 0 {
		_, err := r.Once(ctx)
		return err
	}
	al.Event("reclaim watching", map[string]any{"component": "reclaim", "interval": o.watch.String(), "docker_host": redact.String(o.dockerHost),
		"high": cfg.High, "low": cfg.Low, "min_age": cfg.MinAge.String(), "max_unused": cfg.MaxUnused.String(), "dry_run": cfg.DryRun})
	err = r.Watch(ctx, o.watch, errOut)
	al.Event("reclaim stopped", map[string]any{"component": "reclaim"})
	return err
}
