package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/client"
	"github.com/sirupsen/logrus"

	"github.com/prune-guard/prune-guard/audit"
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
	if compareAPI(v.APIVersion, "1.53") >= 0 {
		w = append(w, fmt.Sprintf("engine %s (API %s) answers gRPC on its API socket itself: BuildKit's control API, "+
			"build-cache prune included, reaches it without passing prune-guard or any authorization plugin "+
			"(see docs/threat-model.md, \"Native gRPC on Docker 29.2 and later\")", v.Version, v.APIVersion))
	}
	// dockerd calls authorization plugins before it checks the request's
	// API version: on 29.0 to 29.2.1 (minimum API 1.44) a /v1.41/ request
	// is decided, and audited, and then refused by the daemon.
	if v.MinAPIVersion != "" && compareAPI(v.MinAPIVersion, "1.41") > 0 {
		w = append(w, fmt.Sprintf("engine %s refuses API versions below %s after prune-guard has decided on them: "+
			"audit lines for such requests record decisions the engine never carried out", v.Version, v.MinAPIVersion))
	}
	return w
}

// compareAPI compares dotted API versions numerically per component, as
// dockerd does ("1.041" equals "1.41"): -1, 0 or 1.
func compareAPI(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(as), len(bs)) {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// askEngineVersion asks the engine at host for its version.
func askEngineVersion(ctx context.Context, host string, timeout time.Duration) (engineVersion, error) {
	c, err := client.New(client.WithHost(host))
	if err != nil {
		return engineVersion{}, fmt.Errorf("engine client for %s: %w", audit.Redact(host), err)
	}
	defer c.Close()
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
func warnAboutEngine(ctx context.Context, host string, timeout time.Duration, log *logrus.Logger, al *audit.Log) {
	for range engineCheckTries {
		v, err := askEngineVersion(ctx, host, timeout)
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
