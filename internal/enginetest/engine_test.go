package enginetest

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestEngineLeavesNothingBehind drives a plain engine (no plugin) through
// every helper, then checks that its cleanup removed its directory, mounts
// and processes, containers and swarm included.
func TestEngineLeavesNothingBehind(t *testing.T) {
	var root, bridge string
	t.Run("engine", func(t *testing.T) {
		e := Start(t, Options{})
		root = e.root
		if n := len(e.sock); n >= 108 {
			t.Fatalf("socket path %q is %d bytes, too long for a unix socket", e.sock, n)
		}

		id := e.BuildImage(t, "pg-self:1", map[string]string{"etc/extra.txt": "x"}, map[string]string{"pg.test": "yes"})
		if !e.ImageExists(t, "pg-self:1") || !e.ImageExists(t, id) {
			t.Fatalf("built image %s not found", id)
		}
		if e.ImageExists(t, "pg-self:missing") {
			t.Fatal("ImageExists reports a tag that was never built")
		}
		// docker compose v2 runs as a plugin of the engine's own CLI.
		if out, stderr, err := e.Compose(t, "version"); err != nil || !strings.Contains(out, "Docker Compose version v2") && !strings.Contains(out, "Docker Compose version 2") {
			t.Fatalf("docker compose version = %q, %v\n%s", out, err, stderr)
		}
		dangling := e.MakeDangling(t)
		if ids := e.ImageIDs(t); !slices.Contains(ids, id) || !slices.Contains(ids, dangling) {
			t.Fatalf("ImageIDs = %v, want %s and %s among them", ids, id, dangling)
		}

		// The request line reaches dockerd as written: %70 decodes to
		// "p" only on the daemon's side.
		if status, body := e.HTTP(t, "GET", "/_%70ing", nil, nil); status != 200 || body != "OK" {
			t.Fatalf("GET /_%%70ing = %d %q, want 200 OK", status, body)
		}
		if status, _ := e.HTTP(t, "POST", "/v1.41/images/pg-self:1/tag?repo=pg-self&tag=2", map[string]string{"Content-Type": "application/json"}, []byte{}); status != 201 {
			t.Fatalf("tagging through raw HTTP: status %d, want 201", status)
		}
		if !e.ImageExists(t, "pg-self:2") {
			t.Fatal("tag made through raw HTTP not found")
		}

		// Left for cleanup to remove: a network (its bridge is on the
		// host), a running and a paused container and a swarm with a
		// service.
		netID := strings.TrimSpace(e.MustDocker(t, "network", "create", "pg-self-net"))
		bridge = "/sys/class/net/br-" + netID[:min(12, len(netID))]
		if _, err := os.Stat(bridge); err != nil {
			t.Logf("network pg-self-net has no bridge at %s (%v)", bridge, err)
			bridge = ""
		}
		e.MustDocker(t, "run", "-d", "--label", "pg.test=running", "pg-self:1")
		paused := strings.TrimSpace(e.MustDocker(t, "run", "-d", "pg-self:1"))
		if _, _, err := e.Docker(t, "pause", paused); err != nil {
			t.Logf("pause unsupported here: %v", err)
		}
		e.SwarmInit(t)
		e.MustDocker(t, "service", "create", "--detach", "--no-resolve-image", "--replicas", "0",
			"--label", "pg.test=service", "--name", "pg-self", "pg-self:1")
	})
	if root == "" {
		t.Fatal("engine subtest did not start an engine")
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("engine directory %s still exists after cleanup (stat: %v)", root, err)
	}
	if bridge != "" {
		if _, err := os.Stat(bridge); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the network's bridge %s is still on the host after cleanup (stat: %v)", bridge, err)
		}
	}
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(root+"/")) {
			t.Errorf("process %s still refers to the engine: %q", filepath.Dir(p), bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(mounts, []byte(root)) {
		t.Errorf("mounts under %s remain after cleanup", root)
	}
}

func TestIdentityAtLeastDocker29(t *testing.T) {
	for _, tc := range []struct {
		version, api string
		minor        int
		want         bool
	}{
		{"20.10.24+dfsg1", "1.41", 0, false},
		{"28.5.2+dfsg4", "1.51", 0, false},
		{"29.4.1", "1.54", 5, false},
		{"29.5.0", "1.54", 5, true},
		{"29.7.2", "1.55", 2, true},
		{"30.0.0", "1.60", 5, true},
		{"2.0.0-beta.24", "1.56", 5, true},   // API newer than 29.4's 1.54
		{"2.0.0-beta.9", "1.54", 5, false},   // as new as 29.3 and 29.4: counts as older
		{"library-import", "1.56", 2, false}, // no version to read
	} {
		id := Identity{Version: tc.version, APIVersion: tc.api}
		if got := id.AtLeastDocker29(tc.minor); got != tc.want {
			t.Errorf("Identity{%s, API %s}.AtLeastDocker29(%d) = %v; want %v", tc.version, tc.api, tc.minor, got, tc.want)
		}
	}
}
