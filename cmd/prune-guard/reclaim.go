package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/bytesize"
	"github.com/prune-guard/prune-guard/engine"
	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/reclaim"
	"github.com/prune-guard/prune-guard/redact"
)

type reclaimOptions struct {
	dockerHost    string
	high, low     float64
	critical      float64
	minAge        time.Duration
	maxUnused     time.Duration
	minFree       int64
	targetFree    int64
	minFreeInodes uint64
	keepPerRepo   int
	buildCacheMax int64
	controlSocket string
	dryRun        bool
	watch         time.Duration
	state         string
	auditLog      string
	policyFile    string
	policyOpt     bool
	run           runFlags
	protectImages []string
	protectLabels []string
	engineTimeout time.Duration
	metrics       reclaimMetrics
}

func newReclaimCmd() *cobra.Command {
	cmd, _ := reclaimCommand()
	return cmd
}

// reclaimCommand is the reclaim command and the options its flags set.
func reclaimCommand() (*cobra.Command, *reclaimOptions) {
	o := &reclaimOptions{}
	def := policy.Default()
	cmd := &cobra.Command{
		Use:   "reclaim",
		Short: "Free disk under pressure by removing unused images, least recently used first",
		Long: `Free disk on a CI host without throwing its image cache away: the sanctioned
replacement for "docker image prune -af" and "docker system prune -af".

reclaim measures the filesystem that holds the engine's data root (the engine's
DockerRootDir, measured with statfs, so run it on the engine's host). It acts
when usage is at or above --high percent, when less than --min-free is free, or
when fewer than --min-free-inodes inodes are; it then removes images one at a
time until usage is at most --low percent, at least --target-free (default
--min-free) is free and the inode floor holds:

  1. dangling images (no tag, no digest) first;
  2. then tagged images, least recently used first;
  3. an image always after the images built on it.

It never removes an image that a container uses (in any state, stopped ones
included), a protected image (--protect-image, --protect-label, or the policy
file's protect settings; by default images labelled prune-guard.keep=true), an
image first seen, pulled, tagged or used less than --min-age ago, or one of the
--keep-per-repo most recently used tags of its repository.

CI jobs: while a job is active or in its teardown grace (a container or swarm
service carries a --run-label, or another detector recognises it), reclaim
waits for it and says so, or refuses when the engine cannot say whether one is.
At or above --critical percent (95; 0 turns it off) it acts during the jobs
instead, down to its targets: it also spares every image an active or
grace-held job's containers use, the images those are built on and images
used within the grace, and asks the running prune-guard (--control-socket,
root-only) for a grant naming each image it is about to remove, so that
those deletes, and no others, pass the guard during the job. A plain
'docker rmi' stays refused.

Sizes are written as operators write them: 20GB (SI, 20×10⁹ bytes), 20GiB
(binary), 512MiB, or bytes.

--build-cache-max SIZE keeps BuildKit's build cache at or under SIZE on every
pass, with or without disk pressure and before any image, through dockerd's own
budgeted build prune (keep-storage below API 1.48, max-used-space from it; never
--all, never during a CI job). Records an image shares, and BuildKit's internal
ones, stay: only a prune --all removes those.

Last use comes from the engine's events (container create, start and exit; image
pull and tag), kept in --state between runs. Events can be lost, so every run
also resyncs from the container list. An image reclaim has never seen counts as
first seen now, never by its build date: on a new host nothing is removed until
--min-age has passed.

Images are removed by ID, without force, through the engine's API, so
prune-guard's authorization policy applies to them like to any other client.
An image that gained a container or a child meanwhile (a conflict) or that the
policy refuses (a denial) is skipped and reported. reclaim never calls an image
prune and never touches volumes, containers or networks.

Every setting can come from the policy file's reclaim section (--policy; see
'prune-guard policy default'); a flag, or its environment variable, replaces
that setting alone. --max-unused AGE also removes images unused for longer than
AGE when there is no pressure (off by default). Every removal, skip and run
goes to the audit log with its figures; the summary says what was freed, how
long it took, and usage before and after.

Without --watch, reclaim runs once and exits (for a systemd timer): 0 when it
did what was due or waits for CI jobs; 1 on an engine error, when a target is
still unmet after all it may remove, or when a pass at --critical got no grant.`,
		Example: `  # What would go now, and why (removes nothing):
  prune-guard reclaim --dry-run

  # From a systemd timer every 10 minutes, auditing to prune-guard's log:
  prune-guard reclaim --audit-log /var/log/prune-guard/audit.jsonl

  # As a long-running service, with the same policy file as the plugin:
  prune-guard reclaim --watch 5m --policy /etc/prune-guard/policy.yaml

  # Keep base images, and drop anything unused for a week even without pressure:
  prune-guard reclaim --protect-image 'registry.example/base/*' --max-unused 168h

  # A busy runner: keep 20GB free, act during jobs at 95%, keep 3 tags a
  # repository and at most 10GiB of build cache:
  prune-guard reclaim --min-free 20GB --target-free 30GB --keep-per-repo 3 --build-cache-max 10GiB`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.config(cmd)
			if err != nil {
				return err
			}
			return runReclaim(cmd.Context(), *o, cfg, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.register(cmd.Flags(), def.Reclaim)
	bindEnv(cmd, append(append(append([]envVar{dockerHostEnv}, reclaimEnv...), reclaimMetricsEnv...), runEnv...)...)
	return cmd, o
}

// reclaimEnv are reclaim's own variables, for a systemd timer's
// EnvironmentFile (packaging/systemd/prune-guard-reclaim.service).
var reclaimEnv = []envVar{
	{name: "PRUNE_GUARD_POLICY", flag: "policy"},
	{name: "PRUNE_GUARD_POLICY_OPTIONAL", flag: "policy-optional"},
	{name: "PRUNE_GUARD_AUDIT_LOG", flag: "audit-log"},
	controlEnv,
	{name: "PRUNE_GUARD_RECLAIM_STATE", flag: "state"},
	{name: "PRUNE_GUARD_RECLAIM_HIGH", flag: "high"},
	{name: "PRUNE_GUARD_RECLAIM_LOW", flag: "low"},
	{name: "PRUNE_GUARD_RECLAIM_CRITICAL", flag: "critical"},
	{name: "PRUNE_GUARD_RECLAIM_MIN_AGE", flag: "min-age"},
	{name: "PRUNE_GUARD_RECLAIM_MAX_UNUSED", flag: "max-unused"},
	{name: "PRUNE_GUARD_RECLAIM_MIN_FREE", flag: "min-free"},
	{name: "PRUNE_GUARD_RECLAIM_TARGET_FREE", flag: "target-free"},
	{name: "PRUNE_GUARD_RECLAIM_MIN_FREE_INODES", flag: "min-free-inodes"},
	{name: "PRUNE_GUARD_RECLAIM_KEEP_PER_REPO", flag: "keep-per-repo"},
	{name: "PRUNE_GUARD_RECLAIM_BUILD_CACHE_MAX", flag: "build-cache-max"},
}

// register adds reclaim's flags; def are the built-in reclaim settings,
// shown as the defaults.
func (o *reclaimOptions) register(f *pflag.FlagSet, def policy.ReclaimSettings) {
	dp := policy.Default().Protect
	o.minFree, o.targetFree, o.buildCacheMax = def.MinFree, def.TargetFree, def.BuildCacheMax
	f.StringVar(&o.dockerHost, "docker-host", defaultDockerHost, "engine to reclaim disk on; its data root must be visible at the same path here")
	f.Float64Var(&o.high, "high", def.High, "act when the data root's filesystem is at least this many percent used")
	f.Float64Var(&o.low, "low", def.Low, "once acting, remove images until usage is at most this many percent (and the byte and inode targets hold)")
	f.Float64Var(&o.critical, "critical", def.Critical, "at or above this many percent, act even while CI jobs run or sit in their teardown grace, sparing their images; between --high and this, wait for them; below --high, every pass acts during them (0: never act during jobs)")
	f.DurationVar(&o.minAge, "min-age", def.MinAge, "never remove an image first seen, pulled, tagged or used less than this long ago")
	f.DurationVar(&o.maxUnused, "max-unused", def.MaxUnused, "also remove images unused for longer than this, even below --high (0: off)")
	f.Var(bytesize.NewValue(&o.minFree), "min-free", "also act when less than SIZE is free on the data root's filesystem (20GB is SI, 20GiB binary; 0: off)")
	f.Var(bytesize.NewValue(&o.targetFree), "target-free", "once acting, free until at least SIZE is free (default: --min-free; 0: off)")
	f.Uint64Var(&o.minFreeInodes, "min-free-inodes", def.MinFreeInodes, "also act when fewer than N inodes are free, and free until N are (0: off)")
	f.IntVar(&o.keepPerRepo, "keep-per-repo", def.KeepPerRepo, "never remove the N most recently used tags of each repository (0: off)")
	f.Var(bytesize.NewValue(&o.buildCacheMax), "build-cache-max", "keep BuildKit's build cache at or under SIZE on every pass, before any image, with dockerd's budgeted build prune (never --all, never during a CI job; 0: off)")
	f.StringVar(&o.controlSocket, "control-socket", controlSocket, "the running prune-guard's control socket, asked for grants for the deletes a pass at or above --critical makes during CI jobs (\"\": ask none; the deletes then go as any client's)")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the plan (what would go, in order, and why the rest stays) and remove nothing")
	f.DurationVar(&o.watch, "watch", 0, "keep running, with a pass every INTERVAL and engine events followed in between (0: run once)")
	f.StringVar(&o.state, "state", "/var/lib/prune-guard/reclaim-state.json", "state file: when each image was first seen and last used (written atomically, 0600)")
	f.StringVar(&o.auditLog, "audit-log", "-", "JSON-lines audit file, appended to and created 0600; - for standard output")
	f.StringVar(&o.policyFile, "policy", "", "policy file shared with 'prune-guard serve': its reclaim, run and protect settings apply; flags override them one by one")
	f.BoolVar(&o.policyOpt, "policy-optional", false, "a missing --policy file means the built-in policy")
	o.run.register(f)
	f.StringArrayVar(&o.protectImages, "protect-image", dp.Images, "reference pattern (path.Match syntax, e.g. 'registry.example/base/*') of images never to remove (repeatable; replaces the policy's protect.images)")
	f.StringArrayVar(&o.protectLabels, "protect-label", dp.Labels, "image label KEY or KEY=VALUE that protects an image (repeatable; replaces the policy's protect.labels)")
	f.DurationVar(&o.engineTimeout, "engine-timeout", time.Minute, "bound on each engine request")
	o.metrics.register(f)
}

// config merges the policy file (or the built-in policy) with the flags:
// a flag given on the command line replaces the policy's setting.
func (o reclaimOptions) config(cmd *cobra.Command) (reclaim.Config, error) {
	pol := policy.Default()
	if o.policyFile != "" {
		var err error
		if pol, _, err = policy.LoadOptional(o.policyFile, o.policyOpt); err != nil {
			return reclaim.Config{}, fmt.Errorf("--policy: %w", err)
		}
	}
	changed := cmd.Flags().Changed
	cfg := reclaim.Config{
		Options:       o.options(changed, pol.Reclaim),
		StatePath:     o.state,
		DryRun:        o.dryRun,
		EngineTimeout: o.engineTimeout,
		BuildCacheMax: pick(changed("build-cache-max"), o.buildCacheMax, pol.Reclaim.BuildCacheMax),
	}
	cfg.Protect = pol.Protect
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
	if err := o.metrics.validate(o.watch); err != nil {
		return reclaim.Config{}, err
	}
	return cfg, nil
}

// options are the reclaim settings: each flag given (or set through its
// variable) over the policy file's reclaim section.
func (o reclaimOptions) options(changed func(string) bool, s policy.ReclaimSettings) reclaim.Options {
	return reclaim.Options{
		High:          pick(changed("high"), o.high, s.High),
		Low:           pick(changed("low"), o.low, s.Low),
		Critical:      pick(changed("critical"), o.critical, s.Critical),
		MinAge:        pick(changed("min-age"), o.minAge, s.MinAge),
		MaxUnused:     pick(changed("max-unused"), o.maxUnused, s.MaxUnused),
		MinFree:       pick(changed("min-free"), o.minFree, s.MinFree),
		TargetFree:    pick(changed("target-free"), o.targetFree, s.TargetFree),
		MinFreeInodes: pick(changed("min-free-inodes"), o.minFreeInodes, s.MinFreeInodes),
		KeepPerRepo:   pick(changed("keep-per-repo"), o.keepPerRepo, s.KeepPerRepo),
	}
}

// pick is the flag's value when it was given, the policy's otherwise.
func pick[T any](given bool, flag, file T) T {
	if given {
		return flag
	}
	return file
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
	if o.controlSocket != "" {
		cfg.Grants = newControlGranter(o.controlSocket)
	}
	r, err := reclaim.New(cfg, c, al)
	if err != nil {
		return fmt.Errorf("reclaim settings: %w", err)
	}

	exp := o.metrics.exporter(r, cfg, o.watch, errOut)

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.watch == 0 {
		_, err := r.Once(ctx)
		return errors.Join(err, o.metrics.afterOnce(exp, err))
	}
	// The metrics outlive the signal: the follower's last write comes
	// after Watch has counted the pass the signal cut short.
	mctx, mstop := context.WithCancel(context.WithoutCancel(ctx))
	waitMetrics, err := o.metrics.serve(mctx, exp, errOut)
	if err != nil {
		mstop()
		return err
	}
	defer func() { mstop(); waitMetrics() }()
	al.Event("reclaim watching", map[string]any{"component": "reclaim", "interval": o.watch.String(), "docker_host": redact.String(o.dockerHost),
		"high": cfg.High, "low": cfg.Low, "critical": cfg.Critical, "min_age": cfg.MinAge.String(), "max_unused": cfg.MaxUnused.String(),
		"min_free": cfg.MinFree, "target_free": cfg.TargetFree, "min_free_inodes": cfg.MinFreeInodes, "keep_per_repo": cfg.KeepPerRepo,
		"build_cache_max": cfg.BuildCacheMax, "dry_run": cfg.DryRun})
	err = r.Watch(ctx, o.watch, errOut)
	al.Event("reclaim stopped", map[string]any{"component": "reclaim"})
	return err
}
