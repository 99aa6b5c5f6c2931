package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// The proxy-mode files in packaging/systemd, as installed:
// /etc/systemd/system and its drop-in directories.
var systemdProxyFiles = map[string]string{
	"/etc/systemd/system/prune-guard-proxy.service":                   "../packaging/systemd/prune-guard-proxy.service",
	"/etc/systemd/system/docker.socket.d/prune-guard-proxy.conf":      "../packaging/systemd/docker.socket.d/prune-guard-proxy.conf",
	"/etc/systemd/system/docker.service.d/prune-guard-proxy.conf":     "../packaging/systemd/docker.service.d/prune-guard-proxy.conf",
	"/etc/systemd/system/pg-vendor-docker.service.d/prune-guard.conf": "../packaging/systemd/docker.service.d/prune-guard-proxy.conf",
}

// Debian's docker.io units, which the proxy units are written for: the
// host's own, in the container's /usr.
const (
	vendorDockerService = "/usr/lib/systemd/system/docker.service"
	vendorDockerSocket  = "/usr/lib/systemd/system/docker.socket"
)

// The proxy-mode units in packaging/systemd under a real systemd (the
// container e2e/systemd_test.go boots), with Debian's own docker.socket
// and docker.service: the drop-in hands docker.socket to
// prune-guard-proxy.service, whose first client starts dockerd's unit and
// then the sandboxed proxy, which forwards to dockerd's own socket at
// /run/docker/engine.sock and refuses what the policy refuses; after a
// crash systemd restarts the proxy while calls wait on the socket.
// dockerd itself runs outside (the test engine, its socket linked to
// /run/docker/engine.sock); inside, a stand-in keeps Debian's
// docker.service's dependencies and runs nothing. The docker.service
// drop-in is checked on a copy of Debian's unit: systemd's reading of
// its ExecStart= has no -H fd://.
func TestSystemdProxyUnitsTakeDockerSocketAndGuardDockerd(t *testing.T) {
	t.Parallel()
	for _, f := range []string{vendorDockerService, vendorDockerSocket} {
		if _, err := os.Stat(f); err != nil {
			enginetest.Unavailable(t, "Debian's docker.io units are needed (apt-get install docker.io): %v", err)
		}
	}
	bin := enginetest.BuildBinary(t)
	e := enginetest.Prepare(t)

	files := map[string]string{
		// dockerd's own socket is the test engine's, bound below.
		"/etc/tmpfiles.d/pg-engine.conf": "L /run/docker/engine.sock - - - - /run/pg-engine/d.sock\n",
		// Stand-in for dockerd, after the packaged drop-in (files are
		// read in name order): the engine runs outside.
		"/etc/systemd/system/docker.service.d/zz-pg-stand-in.conf": "[Service]\nType=exec\nExecStart=\nExecStart=/bin/sleep infinity\nRestart=no\n",
	}
	for dst, rel := range systemdProxyFiles {
		b, err := os.ReadFile(rel)
		if err != nil {
			t.Fatal(err)
		}
		files[dst] = string(b)
	}
	vendor, err := os.ReadFile(vendorDockerService)
	if err != nil {
		t.Fatal(err)
	}
	// Debian's docker.service under another name, with only the packaged
	// drop-in: what systemd makes of its ExecStart=.
	files["/etc/systemd/system/pg-vendor-docker.service"] = string(vendor)

	sd := enginetest.BootSystemd(t, enginetest.SystemdOptions{
		Unmask: []string{"docker.service", "docker.socket"},
		Usr:    map[string]string{"local/bin/prune-guard": bin},
		Files:  files,
		Binds:  map[string]string{"/run/pg-engine": e.Dir()},
	})

	t.Run("systemd-analyze verify reports nothing", func(t *testing.T) {
		out, err := sd.Exec(t, "systemd-analyze", "verify", "/etc/systemd/system/prune-guard-proxy.service", vendorDockerSocket)
		// Debian's docker.service itself draws a warning about its
		// KillMode=process from systemd 252; nothing else may be
		// reported.
		var other []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if l != "" && !strings.HasPrefix(l, "docker.service: Unit configured to use KillMode=process.") {
				other = append(other, l)
			}
		}
		if err != nil || len(other) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	})
	t.Run("systemd-analyze security rates the proxy's exposure at most 2.0", func(t *testing.T) {
		out := sd.MustExec(t, "systemd-analyze", "security", "--no-pager", "prune-guard-proxy.service")
		m := regexp.MustCompile(`Overall exposure level for prune-guard-proxy\.service: ([0-9.]+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no overall exposure level in:\n%s", out)
		}
		t.Logf("  exposure level %s", m[1])
		if level, err := strconv.ParseFloat(m[1], 64); err != nil || level > 2.0 {
			t.Errorf("exposure level %s; want at most 2.0\n%s", m[1], out)
		}
	})
	t.Run("the drop-in takes -H fd:// out of Debian's dockerd command line", func(t *testing.T) {
		argv := busExecStart(t, sd, "pg-vendor-docker.service")
		want := []string{"/usr/sbin/dockerd", "--containerd=/run/containerd/containerd.sock", "$DOCKER_OPTS"}
		if !slices.Equal(argv, want) {
			t.Errorf("ExecStart argv (D-Bus) = %q; want %q", argv, want)
		}
	})

	// Debian's docker.io enables docker.socket from sockets.target; the
	// host's /usr, where it is, appears only when the container boots.
	sd.MustExec(t, "systemctl", "start", "docker.socket")
	t.Run("docker.socket listens on /run/docker.sock for the proxy", func(t *testing.T) {
		if got := sd.Show(t, "docker.socket", "Triggers"); got != "prune-guard-proxy.service" {
			t.Errorf("docker.socket triggers %q; want prune-guard-proxy.service", got)
		}
		if got := sd.Show(t, "docker.socket", "Listen"); got != "/run/docker.sock (Stream)" {
			t.Errorf("docker.socket listens on %q; want /run/docker.sock alone", got)
		}
		st := sd.MustExec(t, "stat", "-c", "%a %U %G", "/run/docker.sock")
		if strings.TrimSpace(st) != "660 root docker" {
			t.Errorf("/run/docker.sock: %s; want 660 root docker", strings.TrimSpace(st))
		}
		if got := sd.Show(t, "docker.socket", "ActiveState"); got != "active" {
			t.Errorf("docker.socket is %s; want active (listening)", got)
		}
		for _, u := range []string{"prune-guard-proxy.service", "docker.service"} {
			if got := sd.Show(t, u, "ActiveState"); got != "inactive" {
				t.Errorf("%s is %s before any client; want inactive", u, got)
			}
		}
	})

	e.Run(t, enginetest.Options{})
	n := enginetest.Nonce(t)
	base, spare := "pg-base:"+n, "pg-spare:"+n
	e.BuildImage(t, base, nil, nil)
	e.BuildImage(t, spare, map[string]string{"spare": n}, nil)

	// The docker CLI inside the container, on the socket clients use.
	docker := func(t *testing.T, args ...string) (string, error) {
		t.Helper()
		return sd.Exec(t, append([]string{"docker"}, args...)...)
	}
	deny := func(t *testing.T, args []string, want ...string) {
		t.Helper()
		out, err := docker(t, args...)
		const prefix = "Error response from daemon: authorization denied by plugin prune-guard: prune-guard: "
		if err == nil || !strings.Contains(out, prefix) {
			t.Fatalf("docker %s: %v; want a denial by the proxy\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("  %s", strings.TrimSpace(out))
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("docker %s: denial does not mention %q:\n%s", strings.Join(args, " "), w, out)
			}
		}
	}

	t.Run("the first client starts dockerd's unit, then the proxy", func(t *testing.T) {
		out, err := docker(t, "version", "--format", "{{.Server.Version}}")
		if err != nil || strings.TrimSpace(out) != e.Identity().Version {
			t.Fatalf("docker version through the proxy: %v\n%s\nwant server %s", err, out, e.Identity().Version)
		}
		for _, u := range []string{"docker.service", "prune-guard-proxy.service"} {
			if got := sd.Show(t, u, "ActiveState"); got != "active" {
				t.Errorf("%s is %s; want active", u, got)
			}
		}
		engine, _ := strconv.ParseUint(sd.Show(t, "docker.service", "ActiveEnterTimestampMonotonic"), 10, 64)
		proxy, _ := strconv.ParseUint(sd.Show(t, "prune-guard-proxy.service", "ExecMainStartTimestampMonotonic"), 10, 64)
		if engine == 0 || proxy < engine {
			t.Errorf("the proxy started at %d µs, dockerd's unit was up at %d µs; want the engine first", proxy, engine)
		}
	})
	t.Run("docker image prune -af and docker builder prune -af are refused", func(t *testing.T) {
		deny(t, []string{"image", "prune", "--all", "--force"}, "(rule no-prune-all)")
		deny(t, []string{"builder", "prune", "--all", "--force"}, "(rule no-build-prune-all)")
	})
	runID, run := "ci-"+n, "pg-run-"+n
	e.MustDocker(t, "run", "--detach", "--label", runLabel+"="+runID, "--name", run, base)
	t.Run("the sandboxed proxy asks dockerd about runs and audits", func(t *testing.T) {
		deny(t, []string{"rmi", spare}, "(rule no-delete-during-run)", runID, run)
		line := waitAuditLine(t, sd.Path("var/log/prune-guard/audit.jsonl"), map[string]string{
			"decision": "deny", "rule": "no-delete-during-run",
		})
		if runs := auditRuns(t, line); !anyContains(runs, runID) {
			t.Errorf("audit runs = %q, want %s", runs, runID)
		}
	})
	t.Run("prune-guard status reports proxy mode from the control socket", func(t *testing.T) {
		out := sd.MustExec(t, "/usr/local/bin/prune-guard", "status")
		if !strings.Contains(out, "Mode: proxy (clients use /run/docker.sock; the engine's own socket is unix:///run/docker/engine.sock)") {
			t.Errorf("prune-guard status does not report proxy mode:\n%s", out)
		}
		// The engine's socket is in its private directory (0700), which
		// the link at /run/docker/engine.sock does not open.
		if strings.Contains(out, "WARNING: the engine's own socket") {
			t.Errorf("prune-guard status warns about a root-only engine socket:\n%s", out)
		}
	})

	t.Run("after a crash systemd restarts the proxy and calls made meanwhile wait", func(t *testing.T) {
		before := sd.Show(t, "prune-guard-proxy.service", "MainPID")
		sd.MustExec(t, "systemctl", "kill", "--signal=SIGKILL", "prune-guard-proxy.service")
		deny(t, []string{"image", "prune", "--all", "--force"}, "(rule no-prune-all)")
		deadline := time.Now().Add(restartTimeout)
		for {
			restarts, _ := strconv.Atoi(sd.Show(t, "prune-guard-proxy.service", "NRestarts"))
			pid := sd.Show(t, "prune-guard-proxy.service", "MainPID")
			if restarts >= 1 && pid != "0" && pid != before {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("prune-guard-proxy.service not restarted within %v: NRestarts=%d MainPID=%s (was %s)", restartTimeout, restarts, pid, before)
			}
			time.Sleep(100 * time.Millisecond)
		}
		deny(t, []string{"rmi", spare}, "(rule no-delete-during-run)", runID)
	})

	t.Run("systemctl reload applies a new /etc/prune-guard/policy.yaml", func(t *testing.T) {
		policy := sd.Path("etc/prune-guard/policy.yaml")
		if err := os.MkdirAll(filepath.Dir(policy), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(policy, []byte("run:\n  grace: 1m\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		sd.MustExec(t, "systemctl", "reload", "prune-guard-proxy.service")
		waitAuditLine(t, sd.Path("var/log/prune-guard/audit.jsonl"), map[string]string{
			"msg": "policy loaded", "source": "/etc/prune-guard/policy.yaml",
		})
	})

	for _, ref := range []string{base, spare} {
		if !e.ImageExists(t, ref) {
			t.Errorf("image %s is gone; the proxy should have kept it", ref)
		}
	}
}
