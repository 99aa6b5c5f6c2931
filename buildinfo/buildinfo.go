// Package buildinfo says which build of prune-guard is running: the version
// a release stamps with -ldflags, or else the one the Go toolchain recorded
// (a module version, or a pseudo-version from the checkout's commit).
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// version is set by a release build:
//
//	go build -ldflags "-X github.com/prune-guard/prune-guard/buildinfo.version=v1.2.3" ./cmd/prune-guard
var version string

// Version is this build's version: the -ldflags value if a release set one,
// else the main module's version as the toolchain recorded it ("v1.2.3"
// when installed with go install …@v1.2.3, a pseudo-version with the
// commit when built in a checkout), else "(devel)".
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// GoVersion is the Go release this binary was built with.
func GoVersion() string { return runtime.Version() }
