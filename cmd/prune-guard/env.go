package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// pluginSocket is where dockerd finds the plugin named prune-guard
// (/run/docker/plugins/NAME.sock).
const pluginSocket = "/run/docker/plugins/prune-guard.sock"

// defaultDockerHost is dockerd's default socket, the engine when neither
// --docker-host nor DOCKER_HOST says otherwise.
const defaultDockerHost = "unix:///var/run/docker.sock"

// envVar ties a flag to the environment variable that sets it when the flag
// is not given. A managed plugin (config.json's env), a systemd
// EnvironmentFile and the NixOS module configure prune-guard that way.
type envVar struct {
	name string // PRUNE_GUARD_RUN_GRACE
	flag string // run-grace
	list bool   // comma-separated; each element is one use of the flag
}

// The variables more than one command reads.
var (
	dockerHostEnv = envVar{name: "DOCKER_HOST", flag: "docker-host"}
	socketEnv     = envVar{name: "PRUNE_GUARD_SOCKET", flag: "socket"}
)

// bindEnv makes cmd's flags read vars when they are not given on the command
// line. Call it once the flags are registered. --help shows each variable,
// with its value as the flag's default when it is set, and the command's
// help lists them.
func bindEnv(cmd *cobra.Command, vars ...envVar) {
	f := cmd.Flags()
	for _, v := range vars {
		fl := f.Lookup(v.flag)
		if fl == nil {
			panic("bindEnv: " + cmd.Name() + " has no flag --" + v.flag)
		}
		fl.Usage += " [$" + v.name + "]"
		if val := os.Getenv(v.name); val != "" {
			// Shown as it is; applyEnv parses it when the command runs,
			// so --help works even with a value the flag would refuse.
			fl.DefValue = val
			if v.list {
				fl.DefValue = "[" + val + "]"
			}
		}
	}
	cmd.Long += envHelp(vars)
	cmd.PreRunE = func(cmd *cobra.Command, _ []string) error {
		return applyEnv(cmd.Flags(), vars)
	}
}

// applyEnv sets each flag that was not given from its variable, through the
// flag's own parser, so a variable means exactly what the flag would mean
// and a value the flag refuses is an error that names the variable. An
// empty variable counts as unset: config.json declares its optional
// settings with empty values.
func applyEnv(f *pflag.FlagSet, vars []envVar) error {
	for _, v := range vars {
		val := os.Getenv(v.name)
		if val == "" || f.Changed(v.flag) {
			continue
		}
		values := []string{val}
		if v.list {
			values = strings.Split(val, ",")
		}
		for _, s := range values {
			if err := f.Set(v.flag, s); err != nil {
				// pflag's message names the flag as if it were given;
				// the parser's own error is what the variable needs.
				var invalid *pflag.InvalidValueError
				if errors.As(err, &invalid) {
					err = invalid.Unwrap()
				}
				return fmt.Errorf("%s=%q (for --%s): %w", v.name, val, v.flag, err)
			}
		}
	}
	return nil
}

// envHelp is the paragraph of a command's help that lists its variables.
func envHelp(vars []envVar) string {
	var b strings.Builder
	b.WriteString("\n\nEnvironment: a variable sets its flag when the flag is not given on the command\n")
	b.WriteString("line, with the flag's own syntax; an empty value counts as unset.\n")
	for _, v := range vars {
		fmt.Fprintf(&b, "\n  %-28s --%s", v.name, v.flag)
		if v.list {
			b.WriteString(", comma-separated")
		}
	}
	return b.String()
}
