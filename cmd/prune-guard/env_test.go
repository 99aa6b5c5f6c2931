package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// boundEnv is every variable a command reads, as its help must name them.
var boundEnv = map[string][]string{
	"serve": {"PRUNE_GUARD_SOCKET", "PRUNE_GUARD_SOCKET_GROUP", "DOCKER_HOST", "PRUNE_GUARD_AUDIT_LOG", "PRUNE_GUARD_AUDIT_GROUP",
		"PRUNE_GUARD_POLICY", "PRUNE_GUARD_POLICY_OPTIONAL", "PRUNE_GUARD_METRICS_ADDR", "PRUNE_GUARD_WEB_CONFIG",
		"PRUNE_GUARD_RUN_LABELS", "PRUNE_GUARD_RUN_GRACE", "PRUNE_GUARD_DETECTORS", "PRUNE_GUARD_CONTROL_SOCKET"},
	"reclaim": {"DOCKER_HOST", "PRUNE_GUARD_RUN_LABELS", "PRUNE_GUARD_RUN_GRACE", "PRUNE_GUARD_DETECTORS",
		"PRUNE_GUARD_POLICY", "PRUNE_GUARD_POLICY_OPTIONAL", "PRUNE_GUARD_AUDIT_LOG", "PRUNE_GUARD_CONTROL_SOCKET", "PRUNE_GUARD_RECLAIM_STATE",
		"PRUNE_GUARD_RECLAIM_HIGH", "PRUNE_GUARD_RECLAIM_LOW", "PRUNE_GUARD_RECLAIM_CRITICAL", "PRUNE_GUARD_RECLAIM_MIN_AGE",
		"PRUNE_GUARD_RECLAIM_MAX_UNUSED", "PRUNE_GUARD_RECLAIM_MIN_FREE", "PRUNE_GUARD_RECLAIM_TARGET_FREE",
		"PRUNE_GUARD_RECLAIM_MIN_FREE_INODES", "PRUNE_GUARD_RECLAIM_KEEP_PER_REPO", "PRUNE_GUARD_RECLAIM_BUILD_CACHE_MAX",
		"PRUNE_GUARD_RECLAIM_METRICS_ADDR", "PRUNE_GUARD_RECLAIM_METRICS_TEXTFILE", "PRUNE_GUARD_WEB_CONFIG"},
	"status": {"PRUNE_GUARD_SOCKET", "DOCKER_HOST"},
}

// clearEnv unsets, for the test, every variable a command reads, so the
// environment the tests run in does not leak into them; then sets env.
func clearEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, vars := range boundEnv {
		for _, v := range vars {
			t.Setenv(v, "") // empty counts as unset
		}
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
}

func TestAVariableItsFlagWouldRefuseStopsTheCommandAndIsNamed(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "policy.yaml")
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string
	}{
		{
			name:    "serve refuses a PRUNE_GUARD_POLICY_OPTIONAL that is not a boolean",
			env:     map[string]string{"PRUNE_GUARD_POLICY_OPTIONAL": "maybe"},
			args:    []string{"serve", "--policy", missing},
			wantErr: `PRUNE_GUARD_POLICY_OPTIONAL="maybe" (for --policy-optional): strconv.ParseBool: parsing "maybe": invalid syntax`,
		},
		{
			name:    "serve refuses a PRUNE_GUARD_RUN_GRACE that is not a duration",
			env:     map[string]string{"PRUNE_GUARD_RUN_GRACE": "soon"},
			args:    []string{"serve"},
			wantErr: `PRUNE_GUARD_RUN_GRACE="soon" (for --run-grace): time: invalid duration "soon"`,
		},
		{
			name:    "reclaim refuses a PRUNE_GUARD_RUN_GRACE that is not a duration",
			env:     map[string]string{"PRUNE_GUARD_RUN_GRACE": "soon"},
			args:    []string{"reclaim", "--dry-run"},
			wantErr: `PRUNE_GUARD_RUN_GRACE="soon" (for --run-grace): time: invalid duration "soon"`,
		},
		{
			// The engine's address is the first thing serve gets to that
			// can fail without I/O: reaching it means the policy loaded.
			name:    "a PRUNE_GUARD_POLICY_OPTIONAL of 1 makes a missing policy file the built-in policy",
			env:     map[string]string{"PRUNE_GUARD_POLICY_OPTIONAL": "1"},
			args:    []string{"serve", "--policy", missing, "--docker-host", "not-a-host"},
			wantErr: "engine client for not-a-host",
		},
		{
			name:    "a PRUNE_GUARD_POLICY_OPTIONAL of false makes a missing policy file an error",
			env:     map[string]string{"PRUNE_GUARD_POLICY_OPTIONAL": "false"},
			args:    []string{"serve", "--policy", missing, "--docker-host", "not-a-host"},
			wantErr: "--policy: open " + missing,
		},
		{
			name:    "a flag given on the command line wins over its variable, even a bad one",
			env:     map[string]string{"PRUNE_GUARD_RUN_GRACE": "soon", "PRUNE_GUARD_POLICY_OPTIONAL": "maybe"},
			args:    []string{"serve", "--run-grace", "1m", "--policy-optional=true", "--policy", missing, "--docker-host", "not-a-host"},
			wantErr: "engine client for not-a-host",
		},
		{
			name:    "DOCKER_HOST sets --docker-host",
			env:     map[string]string{"DOCKER_HOST": "from-the-environment"},
			args:    []string{"reclaim"},
			wantErr: "engine client for from-the-environment",
		},
		{
			name:    "a negative PRUNE_GUARD_RUN_GRACE parses, and is refused as --run-grace would be",
			env:     map[string]string{"PRUNE_GUARD_RUN_GRACE": "-1s"},
			args:    []string{"serve"},
			wantErr: "--run-grace -1s: want 0 (off) or a positive duration",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t, tt.env)
			_, err := run(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("prune-guard %s: got error %v, want one containing %q", strings.Join(tt.args, " "), err, tt.wantErr)
			}
		})
	}
}

func TestVariablesSetTheFlagsTheyNameUnlessTheFlagIsGiven(t *testing.T) {
	tests := []struct {
		name        string
		cmd         func() *cobra.Command
		env         map[string]string
		args        []string
		flag        string
		want        string
		wantChanged bool // what the run flags read as "replaces the policy's setting"
	}{
		{name: "PRUNE_GUARD_POLICY_OPTIONAL=1 is true", cmd: newServeCmd, env: map[string]string{"PRUNE_GUARD_POLICY_OPTIONAL": "1"}, flag: "policy-optional", want: "true", wantChanged: true},
		{name: "PRUNE_GUARD_RUN_GRACE is a duration", cmd: newServeCmd, env: map[string]string{"PRUNE_GUARD_RUN_GRACE": "90s"}, flag: "run-grace", want: "1m30s", wantChanged: true},
		{name: "PRUNE_GUARD_RUN_GRACE=0 turns the grace off", cmd: newReclaimCmd, env: map[string]string{"PRUNE_GUARD_RUN_GRACE": "0"}, flag: "run-grace", want: "0s", wantChanged: true},
		{name: "--run-grace wins over PRUNE_GUARD_RUN_GRACE", cmd: newServeCmd, env: map[string]string{"PRUNE_GUARD_RUN_GRACE": "90s"}, args: []string{"--run-grace", "1m"}, flag: "run-grace", want: "1m0s", wantChanged: true},
		{name: "an empty PRUNE_GUARD_RUN_GRACE leaves the policy's grace", cmd: newServeCmd, env: map[string]string{"PRUNE_GUARD_RUN_GRACE": ""}, flag: "run-grace", want: "2m0s"},
		{name: "PRUNE_GUARD_RUN_LABELS is comma-separated", cmd: newServeCmd, env: map[string]string{"PRUNE_GUARD_RUN_LABELS": "ci.job,prune-guard.run"}, flag: "run-label", want: "[ci.job,prune-guard.run]", wantChanged: true},
		{name: "--run-label replaces PRUNE_GUARD_RUN_LABELS, not adds to it", cmd: newReclaimCmd, env: map[string]string{"PRUNE_GUARD_RUN_LABELS": "ci.job"}, args: []string{"--run-label", "a", "--run-label", "b"}, flag: "run-label", want: "[a,b]", wantChanged: true},
		{name: "PRUNE_GUARD_DETECTORS is comma-separated", cmd: newReclaimCmd, env: map[string]string{"PRUNE_GUARD_DETECTORS": "compose=ci-*,github-actions-host=off"}, flag: "detector", want: "[compose=ci-*,github-actions-host=off]", wantChanged: true},
		{name: "DOCKER_HOST sets reclaim's engine", cmd: newReclaimCmd, env: map[string]string{"DOCKER_HOST": "unix:///run/pg.sock"}, flag: "docker-host", want: "unix:///run/pg.sock", wantChanged: true},
		{name: "PRUNE_GUARD_SOCKET sets status's socket", cmd: newStatusCmd, env: map[string]string{"PRUNE_GUARD_SOCKET": "/run/pg.sock"}, flag: "socket", want: "/run/pg.sock", wantChanged: true},
		{name: "an empty PRUNE_GUARD_AUDIT_LOG leaves standard output", cmd: newServeCmd, env: map[string]string{"PRUNE_GUARD_AUDIT_LOG": ""}, flag: "audit-log", want: "-"},
		{name: "PRUNE_GUARD_METRICS_ADDR sets --metrics-addr", cmd: newServeCmd, env: map[string]string{"PRUNE_GUARD_METRICS_ADDR": "127.0.0.1:9709"}, flag: "metrics-addr", want: "127.0.0.1:9709", wantChanged: true},
		{name: "PRUNE_GUARD_RECLAIM_MIN_FREE is a size", cmd: newReclaimCmd, env: map[string]string{"PRUNE_GUARD_RECLAIM_MIN_FREE": "20GB"}, flag: "min-free", want: "20GB", wantChanged: true},
		{name: "PRUNE_GUARD_RECLAIM_BUILD_CACHE_MAX reads binary units", cmd: newReclaimCmd, env: map[string]string{"PRUNE_GUARD_RECLAIM_BUILD_CACHE_MAX": "10 GiB"}, flag: "build-cache-max", want: "10GiB", wantChanged: true},
		{name: "PRUNE_GUARD_RECLAIM_CRITICAL=0 turns acting during jobs off", cmd: newReclaimCmd, env: map[string]string{"PRUNE_GUARD_RECLAIM_CRITICAL": "0"}, flag: "critical", want: "0", wantChanged: true},
		{name: "PRUNE_GUARD_CONTROL_SOCKET sets reclaim's control socket", cmd: newReclaimCmd, env: map[string]string{"PRUNE_GUARD_CONTROL_SOCKET": "/run/pg/c.sock"}, flag: "control-socket", want: "/run/pg/c.sock", wantChanged: true},
		{name: "PRUNE_GUARD_CONTROL_SOCKET sets serve's control socket", cmd: newServeCmd, env: map[string]string{"PRUNE_GUARD_CONTROL_SOCKET": "/run/pg/c.sock"}, flag: "control-socket", want: "/run/pg/c.sock", wantChanged: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t, tt.env)
			cmd := tt.cmd()
			if err := cmd.ParseFlags(tt.args); err != nil {
				t.Fatal(err)
			}
			if err := cmd.PreRunE(cmd, nil); err != nil {
				t.Fatal(err)
			}
			f := cmd.Flags().Lookup(tt.flag)
			if got := f.Value.String(); got != tt.want || f.Changed != tt.wantChanged {
				t.Errorf("--%s = %s (changed %v), want %s (changed %v)", tt.flag, got, f.Changed, tt.want, tt.wantChanged)
			}
		})
	}
}

// TestTheManagedPluginsSettingsAreServesVariables keeps config.json and
// serve in step: every setting the managed plugin declares is a variable
// serve reads, and its default value is one serve accepts.
func TestTheManagedPluginsSettingsAreServesVariables(t *testing.T) {
	data, err := os.ReadFile("../../config.json")
	if err != nil {
		t.Fatal(err)
	}
	var config struct {
		Env []struct{ Name, Value string }
	}
	if err := json.Unmarshal(data, &config); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, e := range config.Env {
		if !slices.Contains(boundEnv["serve"], e.Name) {
			t.Errorf("config.json declares %s, which serve does not read", e.Name)
		}
		env[e.Name] = e.Value
	}
	clearEnv(t, env)
	cmd := newServeCmd()
	if err := cmd.ParseFlags(nil); err != nil {
		t.Fatal(err)
	}
	if err := cmd.PreRunE(cmd, nil); err != nil {
		t.Errorf("config.json's defaults: %v", err)
	}
}

func TestHelpNamesEveryVariableAndShowsItsValueAsTheDefault(t *testing.T) {
	clearEnv(t, map[string]string{"PRUNE_GUARD_RUN_GRACE": "90s", "PRUNE_GUARD_RUN_LABELS": "ci.job,prune-guard.run", "DOCKER_HOST": "unix:///run/pg.sock"})
	for command, vars := range boundEnv {
		out, err := run(t, command, "--help")
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vars {
			if !strings.Contains(out, "\n  "+v+" ") || !strings.Contains(out, "[$"+v+"]") {
				t.Errorf("%s --help does not list %s among its variables and by its flag:\n%s", command, v, out)
			}
		}
		if !strings.Contains(out, `[$DOCKER_HOST] (default "unix:///run/pg.sock")`) {
			t.Errorf("%s --help does not show DOCKER_HOST's value as --docker-host's default:\n%s", command, out)
		}
	}
	out, _ := run(t, "reclaim", "--help")
	for _, want := range []string{"[$PRUNE_GUARD_RUN_GRACE] (default 90s)", "[$PRUNE_GUARD_RUN_LABELS] (default [ci.job,prune-guard.run])"} {
		if !strings.Contains(out, want) {
			t.Errorf("reclaim --help lacks %q:\n%s", want, out)
		}
	}
}
