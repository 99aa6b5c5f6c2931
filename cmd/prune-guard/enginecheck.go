package main

import (
	"context"
	"fmt"
	"time"

	"github.com/moby/moby/client"
	"github.com/sirupsen/logrus"

	"github.com/prune-guard/prune-guard/guard"
	"github.com/prune-guard/prune-guard/rules"
)

// engineVersion is what GET /version says about the engine.
type engineVersion struct {
	Version, APIVersion, MinAPIVersion string
}

// engineWarnings returns what an operator must know about an engine that
// prune-guard, in the given mode, cannot fully guard or would break. It is
// pure: the facts come from docs/threat-model.md and moby's source.
func engineWarnings(v engineVersion, mode guard.Mode) []string {
	var w []string
	// Docker 29.2.0 (maximum API 1.53) and later hand HTTP/2 requests with
	// Content-Type application/grpc to the daemon's gRPC server before the
	// router and every authorization plugin (moby
	// daemon/command/httphandler.go, commit d210449d85). The proxy sees
	// them: it owns the socket.
	if mode == guard.ModeAuthz && rules.CompareVersions(v.APIVersion, "1.53") >= 0 {
		w = append(w, fmt.Sprintf("engine %s (API %s) answers gRPC on its API socket itself: BuildKit's control API, "+
			"build-cache prune included, reaches it without passing prune-guard or any authorization plugin; "+
			"'prune-guard proxy' guards it (docs/threat-model.md, \"Native gRPC on Docker 29.2 and later\")", v.Version, v.APIVersion))
	}
	// Docker 29.5.0 and later ask for full duplex on the build route
	// (commit 70ac493e97), which the authorization middleware's response
	// writer cannot give: with any plugin registered, a BuildKit build
	// whose context is the request body fails.
	if mode == guard.ModeAuthz && fullDuplexBuilds(v) {
		w = append(w, fmt.Sprintf("engine %s breaks BuildKit builds whose context is the request body under any "+
			"authorization plugin (\"failed to read downloaded context\"): testcontainers-node withBuildkit(), dockerode "+
			"with version \"2\", bollard's BuildKit mode and Go SDK users who choose BuildKit fail; the docker CLI, "+
			"buildx and compose do not; 'prune-guard proxy' breaks none of them (docs/threat-model.md)", v.Version))
	}
	// dockerd checks the request's API version after its authorization
	// plugins, and the proxy decides before dockerd sees a request at all:
	// on 29.0 to 29.2.1 (minimum API 1.44) a /v1.41/ request is decided,
	// and audited, and then refused by the daemon.
	if v.MinAPIVersion != "" && rules.CompareVersions(v.MinAPIVersion, "1.41") > 0 {
		w = append(w, fmt.Sprintf("engine %s refuses API versions below %s after prune-guard has decided on them: "+
			"audit lines for such requests record decisions the engine never carried out", v.Version, v.MinAPIVersion))
	}
	return w
}

// fullDuplexBuilds reports whether the engine's build route asks for full
// duplex: Docker 29.5.0 and later. A release version says so directly;
// builds of moby's module (2.0.0-beta.N) are judged by their API version,
// 1.54 being 29.5.0's.
func fullDuplexBuilds(v engineVersion) bool {
	var major, minor int
	if n, _ := fmt.Sscanf(v.Version, "%d.%d", &major, &minor); n == 2 && major >= 17 {
		return major > 29 || major == 29 && minor >= 5
	}
	return rules.CompareVersions(v.APIVersion, "1.54") >= 0
}

// versionAsker is what the engine check asks; *engine.Client is the real
// one.
type versionAsker interface {
	ServerVersion(ctx context.Context, options client.ServerVersionOptions) (client.ServerVersionResult, error)
}

// askEngineVersion asks the engine for its version.
func askEngineVersion(ctx context.Context, c versionAsker, timeout time.Duration) (engineVersion, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	v, err := c.ServerVersion(ctx, client.ServerVersionOptions{})
	if err != nil {
		return engineVersion{}, fmt.Errorf("ask the engine its version: %w", err)
	}
	return engineVersion{Version: v.Version, APIVersion: v.APIVersion, MinAPIVersion: v.MinAPIVersion}, nil
}

// engineCheckTries and engineCheckEvery bound how long serve waits for the
// engine to answer: dockerd starts after its authorization plugin.
const (
	engineCheckTries = 60
	engineCheckEvery = 5 * time.Second
)

// warnAboutEngine asks the engine its version once it answers (in authz
// mode it starts after prune-guard) and logs, audits and keeps for status
// each warning, with those about how the engine is exposed in proxy mode.
// It gives up quietly after engineCheckTries: the engine is not
// prune-guard's to wait for.
func (d *decider) warnAboutEngine(ctx context.Context, timeout time.Duration) {
	for range engineCheckTries {
		v, err := askEngineVersion(ctx, d.ec, timeout)
		if err == nil {
			d.log.WithFields(logrus.Fields{"engine": v.Version, "api": v.APIVersion}).Info("engine answered")
			warnings := engineWarnings(v, d.g.Transport().Mode)
			if d.g.Transport().Mode == guard.ModeProxy {
				warnings = append(warnings, exposureWarnings(ctx, d.g.Transport().Engine)...)
			}
			for _, w := range warnings {
				d.log.WithFields(logrus.Fields{"engine": v.Version, "api": v.APIVersion}).Warn(w)
				d.al.Event("engine warning", map[string]any{"engine": v.Version, "api": v.APIVersion, "warning": w})
			}
			d.g.SetWarnings(warnings)
			return
		}
		d.log.WithError(err).Debug("engine not answering yet; will ask its version again")
		select {
		case <-ctx.Done():
			return
		case <-time.After(engineCheckEvery):
		}
	}
}
