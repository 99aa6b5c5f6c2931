package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/rules"
)

// runFlags are the command-line settings of how CI jobs are recognised,
// shared by serve and reclaim so that both see the same jobs. A flag given
// (or its environment variable set) replaces the policy file's setting.
type runFlags struct {
	labels    []string
	grace     time.Duration
	detectors []string
	flags     *pflag.FlagSet
}

func (r *runFlags) register(f *pflag.FlagSet) {
	r.flags = f
	labels := []string{rules.DefaultRunLabel}
	if v := os.Getenv("PRUNE_GUARD_RUN_LABELS"); v != "" {
		labels = strings.Split(v, ",")
	}
	grace := rules.DefaultGrace
	if v := os.Getenv("PRUNE_GUARD_RUN_GRACE"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			grace = d
		}
	}
	var detectors []string
	if v := os.Getenv("PRUNE_GUARD_DETECTORS"); v != "" {
		detectors = strings.Split(v, ",")
	}
	f.StringArrayVar(&r.labels, "run-label", labels, "label KEY or KEY=VALUE that marks a container or service as part of an active CI run, for the prune-guard detector (repeatable; replaces the policy's run.labels)")
	f.DurationVar(&r.grace, "run-grace", grace, "how long image deletes and image prunes stay refused after a job's last container, service or process is gone, so a teardown cannot take its images (0: off; replaces the policy's run.grace)")
	f.StringArrayVar(&r.detectors, "detector", detectors, "switch a built-in job detector: NAME=on, NAME=off, or NAME=PATTERN for opt-in ones such as compose=ci-* (repeatable; 'prune-guard policy default' lists them)")
}

// set reports whether the flag was given or its environment variable set.
func (r *runFlags) set(name, env string) bool {
	return r.flags.Changed(name) || os.Getenv(env) != ""
}

// validate checks the flags on their own, before any policy is read, so a
// mistyped flag is reported as the flag's error.
func (r *runFlags) validate() error {
	if v := os.Getenv("PRUNE_GUARD_RUN_GRACE"); v != "" && !r.flags.Changed("run-grace") {
		if _, err := time.ParseDuration(v); err != nil {
			return fmt.Errorf("PRUNE_GUARD_RUN_GRACE=%q is not a duration (e.g. 2m)", v)
		}
	}
	if r.grace < 0 {
		return fmt.Errorf("--run-grace %v: want 0 (off) or a positive duration", r.grace)
	}
	if r.set("run-label", "PRUNE_GUARD_RUN_LABELS") {
		if err := rules.ValidateRunLabels(r.labels); err != nil {
			return fmt.Errorf("--run-label: %w", err)
		}
	}
	for _, d := range r.detectors {
		name, value, ok := strings.Cut(d, "=")
		if !ok {
			return fmt.Errorf("--detector %q: want NAME=on, NAME=off or NAME=PATTERN", d)
		}
		if err := rules.ValidateSwitch(name, value); err != nil {
			return fmt.Errorf("--detector: %w", err)
		}
	}
	return nil
}

// apply returns cfg with the flags that were given replacing its run
// settings.
func (r *runFlags) apply(cfg *policy.Config) (*policy.Config, error) {
	s := cfg.Run
	if r.set("run-label", "PRUNE_GUARD_RUN_LABELS") {
		s.Labels = r.labels
	}
	if r.set("run-grace", "PRUNE_GUARD_RUN_GRACE") {
		s.Grace = r.grace
	}
	if len(r.detectors) > 0 {
		sw := make(map[string]string, len(s.Switches)+len(r.detectors))
		for k, v := range s.Switches {
			sw[k] = v
		}
		for _, d := range r.detectors {
			name, value, _ := strings.Cut(d, "=")
			sw[name] = value
		}
		s.Switches = sw
	}
	next, err := cfg.WithRun(s)
	if err != nil {
		return nil, fmt.Errorf("run detection from the flags and %s: %w", cfg.Source, err)
	}
	return next, nil
}
