package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/prune-guard/prune-guard/policy"
	"github.com/prune-guard/prune-guard/rules"
)

// runFlags are the command-line settings of how CI jobs are recognised,
// shared by serve and reclaim so that both see the same jobs. A flag given
// (or set through its environment variable, runEnv) replaces the policy
// file's setting.
type runFlags struct {
	labels    []string
	grace     time.Duration
	detectors []string
	flags     *pflag.FlagSet
}

// runEnv are the run flags' environment variables, for bindEnv.
var runEnv = []envVar{
	{name: "PRUNE_GUARD_RUN_LABELS", flag: "run-label", list: true},
	{name: "PRUNE_GUARD_RUN_GRACE", flag: "run-grace"},
	{name: "PRUNE_GUARD_DETECTORS", flag: "detector", list: true},
}

func (r *runFlags) register(f *pflag.FlagSet) {
	r.flags = f
	f.StringArrayVar(&r.labels, "run-label", []string{rules.DefaultRunLabel}, "label KEY or KEY=VALUE that marks a container or service as part of an active CI run, for the prune-guard detector (repeatable; replaces the policy's run.labels)")
	f.DurationVar(&r.grace, "run-grace", rules.DefaultGrace, "how long image deletes and image prunes stay refused after a job's last container, service or process is gone, so a teardown cannot take its images (0: off; replaces the policy's run.grace)")
	f.StringArrayVar(&r.detectors, "detector", nil, "switch a built-in job detector: NAME=on, NAME=off, or NAME=PATTERN for opt-in ones such as compose=ci-* (repeatable; 'prune-guard policy default' lists them)")
}

// validate checks the flags on their own, before any policy is read, so a
// mistyped flag is reported as the flag's error.
func (r *runFlags) validate() error {
	if r.grace < 0 {
		return fmt.Errorf("--run-grace %v: want 0 (off) or a positive duration", r.grace)
	}
	if r.flags.Changed("run-label") {
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
	if r.flags.Changed("run-label") {
		s.Labels = r.labels
	}
	if r.flags.Changed("run-grace") {
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
