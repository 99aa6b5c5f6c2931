package main

import (
	"context"
	"fmt"
	"time"

	"github.com/moby/moby/client"
	"github.com/sirupsen/logrus"

	"github.com/prune-guard/prune-guard/audit"
	"github.com/prune-guard/prune-guard/rules"
)

// engineVersion is what GET /version says about the engine.
type engineVersion struct {
	Version, APIVersion, MinAPIVersion string
}

// engineWarnings returns what an operator must know about an engine that
// prune-guard cannot fully guard. It is pure: the facts come from
// docs/threat-model.md and moby's source.
func engineWarnings(v engineVersion) []string {
	var w []string
	// Docker 29.2.0 (maximum API 1.53) and later hand HTTP/2 requests with
	// Content-Type application/grpc to the daemon's gRPC server before the
	// router and every authorization plugin (moby
	// daemon/command/httphandler.go, commit d210449d85).
	if rules.CompareVersions(v.APIVersion, "1.53") >= 0 {
		w = append(w, fmt.Sprintf("engine %s (API %s) answers gRPC on its API socket itself: BuildKit's control API, "+
			"build-cache prune included, reaches it without passing prune-guard or any authorization plugin "+
			"(see docs/threat-model.md, \"Native gRPC on Docker 29.2 and later\")", v.Version, v.APIVersion))
	}
	// dockerd calls authorization plugins before it checks the request's
	// API version: on 29.0 to 29.2.1 (minimum API 1.44) a /v1.41/ request
	// is decided, and audited, and then refused by the daemon.
	if v.MinAPIVersion != "" && rules.CompareVersions(v.MinAPIVersion, "1.41") > 0 {
		w = append(w, fmt.Sprintf("engine %s refuses API versions below %s after prune-guard has decided on them: "+
			"audit lines for such requests record decisions the engine never carried out", v.Version, v.MinAPIVersion))
	}
	return w
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

// warnAboutEngine asks the engine its version once it answers (it starts
// after prune-guard) and logs and audits each warning. It gives up quietly
// after engineCheckTries: the engine is not prune-guard's to wait for.
func warnAboutEngine(ctx context.Context, c versionAsker, timeout time.Duration, log *logrus.Logger, al *audit.Log) {
	for range engineCheckTries {
		v, err := askEngineVersion(ctx, c, timeout)
		if err == nil {
			for _, w := range engineWarnings(v) {
				log.WithFields(logrus.Fields{"engine": v.Version, "api": v.APIVersion}).Warn(w)
				al.Event("engine warning", map[string]any{"engine": v.Version, "api": v.APIVersion, "warning": w})
			}
			return
		}
		log.WithError(err).Debug("engine not answering yet; will ask its version again")
		select {
		case <-ctx.Done():
			return
		case <-time.After(engineCheckEvery):
		}
	}
}
