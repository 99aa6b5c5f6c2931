package enginetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/prune-guard/prune-guard/rules"
)

// The engine a test process runs on is chosen by the environment, so that
// .ci/run can run the same suite once per engine of its matrix.
const (
	// EngineEnv names a provisioned engine (scripts/engines.sh provision
	// NAME): "20.10", "26.1", "28.5", "28.5-containerd" or "29". Unset, the
	// engine is the system's: dockerd, containerd, runc and docker as found
	// on PATH and in the system binary directories.
	EngineEnv = "PG_ENGINE"
	// CacheEnv is the folder scripts/engines.sh provisions engines in.
	CacheEnv = "PG_CACHE"
	// ComposeEnv is the path of a docker compose v2 CLI plugin binary. Unset,
	// the engine's own (its folder's cli-plugins/docker-compose) is used, and
	// for the system engine the one scripts/engines.sh provisions.
	ComposeEnv = "PG_COMPOSE"
	// BuildxEnv is the path of a docker buildx CLI plugin binary, for tests
	// that opt in (Options.Buildx). Unset, the engine's own (its folder's
	// opt-in-plugins/docker-buildx) is used, and for the system engine the
	// one scripts/engines.sh provisions.
	BuildxEnv = "PG_BUILDX"

	defaultCache = "/var/cache/prune-guard-ci"
)

// cacheDir is the folder engines are provisioned in.
func cacheDir() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	return defaultCache
}

// selectedEngine returns the engine PG_ENGINE names, or "" for the system's.
func selectedEngine() string { return strings.TrimSpace(os.Getenv(EngineEnv)) }

// provisionedTools returns the binaries of the provisioned engine name,
// from the folder scripts/engines.sh made: bin/ holds every binary dockerd
// runs (it goes first on dockerd's PATH) and the CLI, daemon.json what the
// engine's own daemon.json starts from.
func provisionedTools(name string) (tools, error) {
	dir := filepath.Join(cacheDir(), "engines", name)
	tl := tools{
		name:    name,
		binDir:  filepath.Join(dir, "bin"),
		dockerd: filepath.Join(dir, "bin", "dockerd"),
		docker:  filepath.Join(dir, "bin", "docker"),
	}
	for _, b := range []string{"dockerd", "containerd", "containerd-shim-runc-v2", "runc", "docker"} {
		p := filepath.Join(tl.binDir, b)
		if _, err := os.Stat(p); err != nil {
			return tools{}, fmt.Errorf("engine %s is not provisioned (sudo bash scripts/engines.sh provision %s): %w", name, name, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "daemon.json"))
	if err != nil {
		return tools{}, fmt.Errorf("engine %s: %w", name, err)
	}
	tl.daemonJSON = b
	tl.compose = composeFor(filepath.Join(dir, "cli-plugins", "docker-compose"))
	// buildx is kept apart from cli-plugins/: only a test that asks for it
	// (Options.Buildx) gets it.
	tl.buildx = buildxFor(filepath.Join(dir, "opt-in-plugins", "docker-buildx"))
	return tl, nil
}

// composeFor returns the compose plugin to use: PG_COMPOSE, else own if it
// exists, else "" (none).
func composeFor(own string) string { return cliPluginFor(ComposeEnv, "compose", own) }

// buildxFor returns the buildx plugin to use: PG_BUILDX, else own if it
// exists, else "" (none).
func buildxFor(own string) string { return cliPluginFor(BuildxEnv, "buildx", own) }

// cliPluginFor returns the CLI plugin docker-NAME to use: the one the
// environment variable env names, else own if it exists, else "" (none).
// An own of "" (the system engine) is the newest scripts/engines.sh
// provisioned under PG_CACHE/NAME.
func cliPluginFor(env, name, own string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	if own == "" {
		matches, _ := filepath.Glob(filepath.Join(cacheDir(), name, "*", "docker-"+name))
		if len(matches) == 0 {
			return ""
		}
		own = matches[len(matches)-1]
	}
	if _, err := os.Stat(own); err != nil {
		return ""
	}
	return own
}

// Identity is what the engine says it is, for expectations that depend on
// the engine: read from GET /version and GET /info once it is ready.
type Identity struct {
	Name            string // PG_ENGINE, or "system"
	Version         string // /version Version, e.g. "28.5.2+dfsg4"
	APIVersion      string // /version ApiVersion: the engine's maximum
	MinAPIVersion   string // /version MinAPIVersion
	Driver          string // /info Driver
	ContainerdStore bool   // /info DriverStatus has driver-type io.containerd.snapshotter.v1
}

// String is a short description for logs.
func (id Identity) String() string {
	store := "graph driver " + id.Driver
	if id.ContainerdStore {
		store = "containerd image store (" + id.Driver + ")"
	}
	return fmt.Sprintf("%s: dockerd %s, API %s (min %s), %s", id.Name, id.Version, id.APIVersion, id.MinAPIVersion, store)
}

// APIAtLeast reports whether the engine's maximum API version is v or later.
func (id Identity) APIAtLeast(v string) bool { return CompareAPIVersions(id.APIVersion, v) >= 0 }

// Accepts reports whether the engine accepts requests at API version v:
// between its minimum and its maximum.
func (id Identity) Accepts(v string) bool {
	return CompareAPIVersions(v, id.MinAPIVersion) >= 0 && CompareAPIVersions(v, id.APIVersion) <= 0
}

// ServesNativeGRPC reports whether the engine answers gRPC on its API
// socket itself, past the router and every authorization plugin: dockerd
// 29.2.0 and later (moby commit d210449d85, daemon/command/httphandler.go),
// whose maximum API version is 1.53 or later.
func (id Identity) ServesNativeGRPC() bool { return id.APIAtLeast("1.53") }

// CompareAPIVersions compares dotted API versions as dockerd does; it is
// rules.CompareVersions, the one implementation.
func CompareAPIVersions(a, b string) int { return rules.CompareVersions(a, b) }

// Identity returns what the engine is. It is asked once, when the engine is
// ready.
func (e *Engine) Identity() Identity { return e.id }

// identify asks the engine what it is.
func (e *Engine) identify(ctx context.Context) (Identity, error) {
	id := Identity{Name: e.name}
	var v struct{ Version, ApiVersion, MinAPIVersion string }
	resp, err := e.api(ctx, "GET", "/version")
	if err != nil {
		return id, fmt.Errorf("GET /version: %w", err)
	}
	if err := decodeJSON(resp, &v); err != nil {
		return id, fmt.Errorf("GET /version: %w", err)
	}
	id.Version, id.APIVersion, id.MinAPIVersion = v.Version, v.ApiVersion, v.MinAPIVersion
	var info struct {
		Driver       string
		DriverStatus [][2]string
	}
	resp, err = e.api(ctx, "GET", "/info")
	if err != nil {
		return id, fmt.Errorf("GET /info: %w", err)
	}
	if err := decodeJSON(resp, &info); err != nil {
		return id, fmt.Errorf("GET /info: %w", err)
	}
	id.Driver = info.Driver
	for _, kv := range info.DriverStatus {
		if kv[0] == "driver-type" && kv[1] == "io.containerd.snapshotter.v1" {
			id.ContainerdStore = true
		}
	}
	if id.Version == "" || id.APIVersion == "" {
		return id, errors.New("GET /version: no Version or ApiVersion")
	}
	return id, nil
}

// ComposePath returns the docker compose v2 CLI plugin the engine's CLI
// runs as "docker compose", or skips t (fails it under CI) when there is
// none.
func (e *Engine) ComposePath(t testing.TB) string {
	t.Helper()
	if e.compose == "" {
		Unavailable(t, "no docker compose v2 plugin: set %s or run 'sudo bash scripts/engines.sh provision' (it provisions Debian forky's docker-compose under %s/compose)", ComposeEnv, cacheDir())
	}
	return e.compose
}

// BuildxPath returns the docker buildx CLI plugin a test that opts in
// (Options.Buildx) gets, or skips t (fails it under CI) when there is none.
func (e *Engine) BuildxPath(t testing.TB) string {
	t.Helper()
	if e.buildx == "" {
		Unavailable(t, "no docker buildx plugin: set %s or run 'sudo bash scripts/engines.sh provision' (it provisions Debian forky's docker-buildx under %s/buildx)", BuildxEnv, cacheDir())
	}
	return e.buildx
}

// Compose runs "docker compose args..." with the engine's CLI and compose
// v2 plugin and returns what it printed, as Docker does. It skips t (fails
// it under CI) when there is no compose plugin.
func (e *Engine) Compose(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	e.ComposePath(t)
	return e.Docker(t, append([]string{"compose"}, args...)...)
}

// CLIAPIVersion returns the API version the engine's docker CLI speaks to
// it: the CLI negotiates down to the engine's maximum, so it is the lower of
// the two. Which requests the CLI sends depends on it (below 1.42 dockerd
// itself makes every volume prune remove named volumes).
func (e *Engine) CLIAPIVersion(t testing.TB) string {
	t.Helper()
	e.cli.once.Do(func() {
		out, stderr, err := e.Docker(t, "version", "--format", "{{.Client.DefaultAPIVersion}}")
		if err != nil {
			e.cli.err = fmt.Errorf("%v: %s", err, stderr)
			return
		}
		v := strings.TrimSpace(out)
		if CompareAPIVersions(v, e.id.APIVersion) > 0 {
			v = e.id.APIVersion
		}
		e.cli.version = v
	})
	if e.cli.err != nil {
		t.Fatalf("enginetest: the CLI's API version: %v", e.cli.err)
	}
	return e.cli.version
}

// cliAPI caches CLIAPIVersion.
type cliAPI struct {
	once    sync.Once
	version string
	err     error
}

// docker29MaxAPI is the maximum API version of each Docker 29 minor
// release (config.MaxAPIVersion at the docker-v29.N.0 tags).
var docker29MaxAPI = []string{"1.52", "1.52", "1.53", "1.54", "1.54", "1.54", "1.55", "1.55"}

// AtLeastDocker29 reports whether the engine is Docker 29.minor or later.
// Releases say so in their Version ("29.5.1"). Builds of moby's v2 module
// carry the module's version instead ("2.0.0-beta.24"); for them the API
// version decides, and only when it is newer than every 29.(minor-1)
// release's, so an ambiguous build counts as older.
func (id Identity) AtLeastDocker29(minor int) bool {
	major, m, ok := majorMinor(id.Version)
	switch {
	case !ok:
		return false
	case major >= 29:
		return major > 29 || m >= minor
	case major > 2:
		return false // 20.10, 26.1, 28.5, ...
	case minor == 0:
		return true
	case minor-1 >= len(docker29MaxAPI):
		return false
	}
	return CompareAPIVersions(id.APIVersion, docker29MaxAPI[minor-1]) > 0
}

func majorMinor(v string) (major, minor int, ok bool) {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimLeft(parts[1], "v"))
	return major, minor, err1 == nil && err2 == nil
}
