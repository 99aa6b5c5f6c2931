package main

import "os"

// Defaults the commands share. A managed plugin or a systemd unit sets flags
// through the environment, so every default that has a variable reads it
// here, in one place.

// pluginSocket is where dockerd finds the plugin named prune-guard
// (/run/docker/plugins/NAME.sock).
const pluginSocket = "/run/docker/plugins/prune-guard.sock"

// envOr returns the environment variable's value, or def when it is unset.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// defaultDockerHost is the engine's address: $DOCKER_HOST, else dockerd's
// default socket.
func defaultDockerHost() string { return envOr("DOCKER_HOST", "unix:///var/run/docker.sock") }

// defaultSocket is the plugin's socket: $PRUNE_GUARD_SOCKET, else
// pluginSocket.
func defaultSocket() string { return envOr("PRUNE_GUARD_SOCKET", pluginSocket) }
