package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// The shipped units, as installed: /etc/systemd/system.
var systemdUnits = map[string]string{
	"prune-guard.socket":          "../packaging/systemd/prune-guard.socket",
	"prune-guard.service":         "../packaging/systemd/prune-guard.service",
	"prune-guard-reclaim.service": "../packaging/systemd/prune-guard-reclaim.service",
	"prune-guard-reclaim.timer":   "../packaging/systemd/prune-guard-reclaim.timer",
}

// restartTimeout bounds systemd restarting prune-guard (RestartSec=1s).
const restartTimeout = 15 * time.Second

// The units in packaging/systemd, installed in a container that boots a
// real systemd (this machine's own /usr; the binary at the path ExecStart
// names) and enabled as an operator would: the socket listens from boot,
// dockerd started with the plugin activates the service through it, the
// sandboxed service reaches dockerd and writes its audit log, and after a
// crash systemd restarts it while dockerd's calls wait on the socket.
func TestSystemdUnitsServeDockerdFromBootAndSurviveACrash(t *testing.T) {
	t.Parallel()
	bin := enginetest.BuildBinary(t)
	e := enginetest.Prepare(t)
	plugins, err := os.MkdirTemp("/tmp", "pgsp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(plugins) })

	units := map[string]string{}
	for name, rel := range systemdUnits {
		abs, err := filepath.Abs(rel)
		if err != nil {
			t.Fatal(err)
		}
		units[name] = abs
	}
	sd := enginetest.BootSystemd(t, enginetest.SystemdOptions{
		Units:  units,
		Enable: []string{"prune-guard.socket"},
		Usr:    map[string]string{"local/bin/prune-guard": bin},
		Files: map[string]string{
			// The service's optional environment file, pointing it at
			// the test engine (bound below) instead of /run/docker.sock.
			"/etc/default/prune-guard": "DOCKER_HOST=unix:///run/pg-engine/d.sock\n",
		},
		Binds: map[string]string{
			"/run/docker/plugins": plugins,
			"/run/pg-engine":      e.Dir(),
		},
	})

	t.Run("systemd-analyze verify reports nothing", func(t *testing.T) {
		out, err := sd.Exec(t, "systemd-analyze", "verify", "/etc/systemd/system/prune-guard.socket", "/etc/systemd/system/prune-guard.service")
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	})
	t.Run("systemd-analyze verify accepts reclaim's service and timer", func(t *testing.T) { verifyReclaimUnits(t, sd) })
	t.Run("systemd-analyze security rates the service's exposure at most 2.0", func(t *testing.T) {
		out := sd.MustExec(t, "systemd-analyze", "security", "--no-pager", "prune-guard.service")
		// "→ Overall exposure level for prune-guard.service: 1.7 OK :-)"
		m := regexp.MustCompile(`Overall exposure level for prune-guard\.service: ([0-9.]+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no overall exposure level in:\n%s", out)
		}
		t.Logf("  exposure level %s", m[1])
		if level, err := strconv.ParseFloat(m[1], 64); err != nil || level > 2.0 {
			t.Errorf("exposure level %s; want at most 2.0\n%s", m[1], out)
		}
	})
	t.Run("enabling the socket hooks it to sockets.target and docker.service", func(t *testing.T) {
		for _, link := range []string{"sockets.target.wants/prune-guard.socket", "docker.service.wants/prune-guard.socket"} {
			if _, err := os.Lstat(sd.Path("etc/systemd/system/" + link)); err != nil {
				t.Errorf("systemctl enable prune-guard.socket made no %s: %v", link, err)
			}
		}
	})
	if got := sd.Show(t, "prune-guard.socket", "ActiveState"); got != "active" {
		t.Fatalf("prune-guard.socket is %s after boot; want active (listening)", got)
	}
	if got := sd.Show(t, "prune-guard.service", "ActiveState"); got != "inactive" {
		t.Errorf("prune-guard.service is %s before dockerd asked for it; want inactive (socket activation)", got)
	}

	// dockerd finds plugin NAME at /run/docker/plugins/NAME.sock; the
	// container's socket is on the host in plugins/.
	name := fmt.Sprintf("pgsd-%d-%s", os.Getpid(), enginetest.Nonce(t))
	link := filepath.Join("/run/docker/plugins", name+".sock")
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(plugins, "prune-guard.sock"), link); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(link) })
	e.Run(t, enginetest.Options{ExtraArgs: []string{"--authorization-plugin=" + name}})
	deny := func(t *testing.T, args []string, want ...string) {
		t.Helper()
		stdout, stderr, err := e.Docker(t, args...)
		prefix := "Error response from daemon: authorization denied by plugin " + name + ": prune-guard: "
		if err == nil || !strings.Contains(stderr, prefix) {
			t.Fatalf("docker %s: %v; want a denial by %s\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, name, stdout, stderr)
		}
		t.Logf("  %s", strings.TrimSpace(stderr))
		for _, w := range want {
			if !strings.Contains(stderr, w) {
				t.Errorf("docker %s: denial does not mention %q:\n%s", strings.Join(args, " "), w, stderr)
			}
		}
	}

	t.Run("dockerd's start activated the service", func(t *testing.T) {
		if got := sd.Show(t, "prune-guard.service", "ActiveState"); got != "active" {
			t.Errorf("prune-guard.service is %s; want active", got)
		}
	})

	n := enginetest.Nonce(t)
	base, spare := "pg-base:"+n, "pg-spare:"+n
	e.BuildImage(t, base, nil, nil)
	e.BuildImage(t, spare, map[string]string{"spare": n}, nil)

	t.Run("docker image prune -af is denied", func(t *testing.T) {
		deny(t, []string{"image", "prune", "--all", "--force"}, "(rule no-prune-all)")
	})
	runID, run := "ci-"+n, "pg-run-"+n
	e.MustDocker(t, "run", "--detach", "--label", runLabel+"="+runID, "--name", run, base)
	t.Run("the sandboxed service reaches dockerd and names the run", func(t *testing.T) {
		deny(t, []string{"rmi", spare}, "(rule no-delete-during-run)", runID, run)
	})
	t.Run("the audit log is written to /var/log/prune-guard", func(t *testing.T) {
		line := waitAuditLine(t, sd.Path("var/log/prune-guard/audit.jsonl"), map[string]string{
			"decision": "deny", "rule": "no-delete-during-run",
		})
		if runs := auditRuns(t, line); !anyContains(runs, runID) {
			t.Errorf("audit runs = %q, want %s", runs, runID)
		}
	})

	t.Run("after a crash systemd restarts it and calls made meanwhile wait", func(t *testing.T) {
		before := sd.Show(t, "prune-guard.service", "MainPID")
		sd.MustExec(t, "systemctl", "kill", "--signal=SIGKILL", "prune-guard.service")
		// Sent at once, while prune-guard is down or restarting: it must
		// be answered by prune-guard, not fail on a missing plugin.
		deny(t, []string{"image", "prune", "--all", "--force"}, "(rule no-prune-all)")
		deadline := time.Now().Add(restartTimeout)
		for {
			restarts, _ := strconv.Atoi(sd.Show(t, "prune-guard.service", "NRestarts"))
			pid := sd.Show(t, "prune-guard.service", "MainPID")
			if restarts >= 1 && pid != "0" && pid != before {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("prune-guard.service not restarted within %v: NRestarts=%d MainPID=%s (was %s)", restartTimeout, restarts, pid, before)
			}
			time.Sleep(100 * time.Millisecond)
		}
		deny(t, []string{"rmi", spare}, "(rule no-delete-during-run)", runID)
	})

	t.Run("systemctl reload applies a new /etc/prune-guard/policy.yaml", func(t *testing.T) {
		e.MustDocker(t, "rm", "--force", run)
		job := "pg-job-" + n
		e.MustDocker(t, "run", "--detach", "--label", "ci.job=job-"+n, "--name", job, base)
		policy := sd.Path("etc/prune-guard/policy.yaml")
		if err := os.MkdirAll(filepath.Dir(policy), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(policy, []byte("run:\n  labels: [\"ci.job\"]\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		sd.MustExec(t, "systemctl", "reload", "prune-guard.service")
		waitAuditLine(t, sd.Path("var/log/prune-guard/audit.jsonl"), map[string]string{
			"msg": "policy loaded", "source": "/etc/prune-guard/policy.yaml",
		})
		deny(t, []string{"rmi", spare}, "(rule no-delete-during-run)", "job-"+n, job)
	})

	for _, ref := range []string{base, spare} {
		if !e.ImageExists(t, ref) {
			t.Errorf("image %s is gone; prune-guard should have kept it", ref)
		}
	}
}

// verifyReclaimUnits checks the packaged reclaim units as systemd reads
// them. docker.service is masked in the container, so the Requires= on it
// is reported; nothing else may be.
func verifyReclaimUnits(t *testing.T, sd *enginetest.Systemd) {
	out, err := sd.Exec(t, "systemd-analyze", "verify", "/etc/systemd/system/prune-guard-reclaim.service", "/etc/systemd/system/prune-guard-reclaim.timer")
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" && !strings.Contains(l, "Unit docker.service is masked") {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
			break
		}
	}
	if got := sd.Show(t, "prune-guard-reclaim.service", "EnvironmentFiles"); !strings.Contains(got, "/etc/default/prune-guard-reclaim") {
		t.Errorf("reclaim's EnvironmentFiles = %q; want /etc/default/prune-guard-reclaim", got)
	}
}
