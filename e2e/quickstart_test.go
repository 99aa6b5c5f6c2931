package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// quickstartTimeout bounds scripts/quickstart.sh in the container: a build
// with a cold cache, and dockerd's restart.
const quickstartTimeout = 5 * time.Minute

// scripts/quickstart.sh --proxy run as an operator runs it on a Debian host
// with systemd, then undone as docs/install.md says: a container booted with
// this machine's own systemd, Debian's docker.io units and dockerd (started
// first as the package leaves it: docker.socket, dockerd -H fd://), a copy of
// the repository, and this machine's Go toolchain and module cache, with no
// network. dockerd really runs inside, so the container's daemon.json starts
// with what keeps it off the network it shares with this machine (no bridge,
// no iptables), which the script must keep.
func TestQuickstartProxyUnderSystemdOnDebian(t *testing.T) {
	t.Parallel()
	for _, f := range []string{vendorDockerService, vendorDockerSocket, "/usr/lib/systemd/system/containerd.service", "/usr/sbin/dockerd"} {
		if _, err := os.Stat(f); err != nil {
			enginetest.Unavailable(t, "Debian's docker.io is needed (apt-get install docker.io): %v", err)
		}
	}
	goenv := map[string]string{}
	for _, k := range []string{"GOROOT", "GOMODCACHE", "GOCACHE"} {
		out, err := exec.Command("go", "env", k).Output()
		if err != nil {
			enginetest.Unavailable(t, "go env %s: %v", k, err)
		}
		goenv[k] = strings.TrimSpace(string(out))
	}
	src := copyRepository(t)
	binds := map[string]string{"/src": src, goenv["GOMODCACHE"]: goenv["GOMODCACHE"], goenv["GOCACHE"]: goenv["GOCACHE"]}
	if !strings.HasPrefix(goenv["GOROOT"], "/usr/") {
		binds[goenv["GOROOT"]] = goenv["GOROOT"] // the container has this machine's /usr, not the rest
	}

	const daemonJSON = `{"iptables": false, "ip-forward": false, "bridge": "none"}`
	sd := enginetest.BootSystemd(t, enginetest.SystemdOptions{
		Unmask:      []string{"docker.service", "docker.socket", "containerd.service"},
		UsrWritable: true, // the script installs /usr/local/bin/prune-guard
		Files:       map[string]string{"/etc/docker/daemon.json": daemonJSON + "\n"},
		Binds:       binds,
	})
	sd.MustExec(t, "systemctl", "start", "docker.socket", "docker.service")
	version := strings.TrimSpace(sd.MustExec(t, "docker", "version", "--format", "{{.Server.Version}}"))

	quickstart := func(t *testing.T, unit string) {
		t.Helper()
		sd.MustExec(t, "systemd-run", "--unit="+unit, "--setenv=PATH="+goenv["GOROOT"]+"/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"--setenv=HOME=/root", "--setenv=GOMODCACHE="+goenv["GOMODCACHE"], "--setenv=GOCACHE="+goenv["GOCACHE"],
			"--setenv=GOPROXY=off", "--setenv=GOTOOLCHAIN=local", "/bin/bash", "/src/scripts/quickstart.sh", "--proxy")
		deadline := time.Now().Add(quickstartTimeout)
		for {
			if st := sd.Show(t, unit+".service", "ActiveState"); st != "active" && st != "activating" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("quickstart.sh --proxy still running after %v", quickstartTimeout)
			}
			time.Sleep(time.Second)
		}
		out, _ := sd.Exec(t, "journalctl", "--no-pager", "-o", "cat", "-u", unit)
		if got := sd.Show(t, unit+".service", "Result"); got != "success" || !strings.Contains(out, "prune-guard proxy is guarding the local dockerd") {
			t.Fatalf("quickstart.sh --proxy: %s\n%s", got, out)
		}
	}
	refused := func(t *testing.T, args ...string) {
		t.Helper()
		out, err := sd.Exec(t, append([]string{"docker"}, args...)...)
		if err == nil || !strings.Contains(out, "authorization denied by plugin prune-guard: prune-guard: ") {
			t.Errorf("docker %s: %v; want a refusal by the proxy\n%s", strings.Join(args, " "), err, out)
		}
	}

	quickstart(t, "pg-quickstart")
	t.Run("dockerd listens on its own root-only socket, with daemon.json's other keys kept", func(t *testing.T) {
		var got map[string]any
		if err := json.Unmarshal([]byte(sd.MustExec(t, "cat", "/etc/docker/daemon.json")), &got); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(anyStrings(got["hosts"]), []string{"unix:///run/docker/engine.sock"}) || got["group"] != "root" ||
			got["bridge"] != "none" || got["iptables"] != false || got["authorization-plugins"] != nil {
			t.Errorf("daemon.json = %v", got)
		}
		for path, want := range map[string]string{"/run/docker/engine.sock": "660 root root", "/run/docker.sock": "660 root docker"} {
			if st := strings.TrimSpace(sd.MustExec(t, "stat", "-L", "-c", "%a %U %G", path)); st != want {
				t.Errorf("%s: %s; want %s", path, st, want)
			}
		}
		pid := sd.Show(t, "docker.service", "MainPID")
		cmdline := strings.Split(strings.TrimSuffix(sd.MustExec(t, "cat", "/proc/"+pid+"/cmdline"), "\x00"), "\x00")
		if want := []string{"/usr/sbin/dockerd", "--containerd=/run/containerd/containerd.sock"}; !slices.Equal(cmdline, want) {
			t.Errorf("dockerd runs as %q; want %q (Debian's command line without -H fd://)", cmdline, want)
		}
		if got := sd.Show(t, "docker.socket", "Triggers"); got != "prune-guard-proxy.service" {
			t.Errorf("docker.socket triggers %q; want prune-guard-proxy.service", got)
		}
	})
	t.Run("clients reach dockerd through the proxy, which refuses prunes with -a", func(t *testing.T) {
		if got := strings.TrimSpace(sd.MustExec(t, "docker", "version", "--format", "{{.Server.Version}}")); got != version {
			t.Errorf("docker version through the proxy: %s; want %s", got, version)
		}
		refused(t, "builder", "prune", "-af")
		refused(t, "image", "prune", "-af")
		out := sd.MustExec(t, "/usr/local/bin/prune-guard", "status")
		if !strings.HasPrefix(out, "Mode: proxy (clients use /run/docker.sock; the engine's own socket is unix:///run/docker/engine.sock)") ||
			strings.Contains(out, "WARNING") {
			t.Errorf("prune-guard status: want proxy mode and no way past the proxy\n%s", out)
		}
	})
	t.Run("a restart of dockerd restarts the proxy after it", func(t *testing.T) {
		sd.MustExec(t, "systemctl", "restart", "docker.service")
		refused(t, "image", "prune", "-af")
		if got := sd.Show(t, "prune-guard-proxy.service", "ActiveState"); got != "active" {
			t.Errorf("prune-guard-proxy.service is %s; want active", got)
		}
	})
	t.Run("a second run changes nothing", func(t *testing.T) {
		before := sd.MustExec(t, "cat", "/etc/systemd/system/docker.service.d/prune-guard-proxy.conf", "/etc/docker/daemon.json")
		quickstart(t, "pg-quickstart-again")
		if after := sd.MustExec(t, "cat", "/etc/systemd/system/docker.service.d/prune-guard-proxy.conf", "/etc/docker/daemon.json"); after != before {
			t.Errorf("second run changed the files:\n%s\nto\n%s", before, after)
		}
		refused(t, "image", "prune", "-af")
	})
	t.Run("the rollback in docs/install.md gives dockerd its socket back", func(t *testing.T) {
		sd.MustExec(t, "rm", "/etc/systemd/system/docker.socket.d/prune-guard-proxy.conf", "/etc/systemd/system/docker.service.d/prune-guard-proxy.conf")
		if err := os.WriteFile(sd.Path("etc/docker/daemon.json"), []byte(daemonJSON+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		sd.MustExec(t, "systemctl", "stop", "docker.socket", "docker.service")
		sd.MustExec(t, "systemctl", "daemon-reload")
		sd.MustExec(t, "systemctl", "start", "docker.socket", "docker.service")
		out, err := sd.Exec(t, "docker", "image", "prune", "--all", "--force", "--filter", "label=prune-guard.check=none")
		if err != nil || !strings.Contains(out, "Total reclaimed space: 0B") {
			t.Errorf("the check after the rollback: %v; want it to pass unguarded\n%s", err, out)
		}
		if got := sd.Show(t, "docker.socket", "Triggers"); got != "docker.service" {
			t.Errorf("docker.socket triggers %q; want docker.service again", got)
		}
		if got := sd.Show(t, "prune-guard-proxy.service", "ActiveState"); got != "inactive" {
			t.Errorf("prune-guard-proxy.service is %s; want inactive", got)
		}
	})
}

// copyRepository copies the repository's tracked files to a directory of
// their own, so that what a script writes there (bin/) stays out of the
// checkout.
func copyRepository(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("git", "-C", "..", "ls-files", "-z").Output()
	if err != nil {
		enginetest.Unavailable(t, "git ls-files: %v", err)
	}
	dst := t.TempDir()
	for _, f := range strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00") {
		if f == "" || strings.HasSuffix(f, ".test") {
			continue
		}
		src := filepath.Join("..", f)
		fi, err := os.Lstat(src)
		if err != nil || !fi.Mode().IsRegular() {
			continue // deleted in the work tree, or a link
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dst, filepath.Dir(f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, f), b, fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}
