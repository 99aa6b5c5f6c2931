package enginetest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Bounds on the systemd container.
const (
	bootTimeout     = 60 * time.Second // systemd reaching its boot target
	poweroffTimeout = 30 * time.Second // the container halting after SIGTERM to systemd-nspawn
	execTimeout     = 30 * time.Second // one command inside the container
)

// SystemdOptions configures a container booted by BootSystemd.
type SystemdOptions struct {
	// Units are copied into the container's /etc/systemd/system: unit
	// file name => host path.
	Units map[string]string
	// Enable are units enabled before boot, as "systemctl enable" would
	// (from their [Install] sections).
	Enable []string
	// Usr overlays host files on the container's /usr: path below /usr
	// (for example "local/bin/prune-guard") => host path.
	Usr map[string]string
	// Files are written into the container's root before boot: absolute
	// path => content.
	Files map[string]string
	// Binds are host directories bind-mounted into the container:
	// container path => host path.
	Binds map[string]string
	// Unmask are the host's docker.service, docker.socket and
	// containerd.service to leave as they are (from the host's /usr);
	// the others are masked, and so are these unless named here or
	// given in Units.
	Unmask []string
	// UsrWritable lets the container write to /usr (into a throwaway
	// layer over the host's), for a test that installs into it.
	UsrWritable bool
}

// Systemd is systemd running as PID 1 of a throwaway container
// (systemd-nspawn) built from this machine's own /usr and a copy of its
// /etc, for testing unit files under a real service manager on a machine
// where none runs. Only vendor units, the given units and what they pull in
// start: the host's enabled services (dockerd among them) do not.
type Systemd struct {
	root    string // the container's root directory
	machine string
	log     string // systemd-nspawn's output: the container's console

	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// BootSystemd boots a container with opts and waits until systemd has
// reached basic.target. A t.Cleanup powers it off and removes it. Register
// it before anything that must stop while the container still runs.
func BootSystemd(t testing.TB, opts SystemdOptions) *Systemd {
	t.Helper()
	requireEngine(t) // Linux and root
	nspawn, err := lookPath("systemd-nspawn")
	if err != nil {
		Unavailable(t, "systemd-nspawn not found (Debian: apt-get install systemd-container): %v", err)
	}
	if _, err := lookPath("nsenter"); err != nil {
		Unavailable(t, "nsenter not found: %v", err)
	}
	dir, err := os.MkdirTemp("/tmp", "pgsd")
	if err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	s := &Systemd{
		root:    filepath.Join(dir, "root"),
		machine: filepath.Base(dir),
		log:     filepath.Join(dir, "console.log"),
		exited:  make(chan struct{}),
	}
	t.Cleanup(func() {
		t.Helper()
		s.poweroff(t)
		for _, err := range unmountUnder(dir) {
			t.Errorf("enginetest: %v", err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("enginetest: removing container directory: %v", err)
		}
		// systemd-nspawn leaves this (empty) directory on the host.
		os.Remove(filepath.Join("/run/systemd/nspawn/propagate", s.machine))
	})
	upper := filepath.Join(dir, "usr")
	if err := s.prepare(upper, opts); err != nil {
		t.Fatalf("enginetest: preparing the systemd container: %v", err)
	}

	args := []string{
		"--directory", s.root,
		"--machine", s.machine,
		// No machined, no host systemd: run in our own process tree.
		"--register=no", "--keep-unit", "--link-journal=no", "--quiet",
		// The host's /usr, with opts.Usr on top, read-only.
		"--overlay-ro=/usr:" + upper + ":/usr",
	}
	if opts.UsrWritable {
		args[len(args)-1] = "--overlay=/usr:" + upper + ":/usr"
	}
	for _, c := range sortedKeys(opts.Binds) {
		args = append(args, "--bind="+opts.Binds[c]+":"+c)
	}
	args = append(args, "--boot", "systemd.unit=basic.target")
	s.cmd = exec.Command(nspawn, args...)
	s.cmd.SysProcAttr = deathSignal(syscall.SIGKILL)
	logf, err := os.Create(s.log)
	if err != nil {
		t.Fatalf("enginetest: %v", err)
	}
	defer logf.Close()
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("enginetest: starting %s: %v", nspawn, err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.exited)
	}()

	began := time.Now()
	if err := s.waitBooted(); err != nil {
		t.Fatalf("enginetest: systemd container: %v\n%s", err, tail(s.log, "container console"))
	}
	t.Logf("enginetest: systemd booted in a container in %v", time.Since(began).Round(time.Millisecond))
	return s
}

// prepare lays out the container's root: merged-/usr symlinks, a copy of
// the host's /etc without its enabled units, opts' files and units.
func (s *Systemd) prepare(upper string, opts SystemdOptions) error {
	for _, d := range []string{"etc", "usr", "var/log", "run", "tmp", "root", "home", "dev", "proc", "sys"} {
		if err := os.MkdirAll(filepath.Join(s.root, d), 0o755); err != nil {
			return err
		}
	}
	for _, d := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+d, filepath.Join(s.root, d)); err != nil {
			return err
		}
	}
	if err := os.Symlink("../run", filepath.Join(s.root, "var/run")); err != nil {
		return err
	}
	// systemd-nspawn looks for os-release before it mounts /usr, to which
	// /etc/os-release links; the overlay hides this copy afterwards.
	if err := os.MkdirAll(filepath.Join(s.root, "usr/lib"), 0o755); err != nil {
		return err
	}
	if err := copyFileMode(filepath.Join(s.root, "usr/lib/os-release"), "/usr/lib/os-release", 0o644); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", "/etc/.", filepath.Join(s.root, "etc")).CombinedOutput(); err != nil {
		return fmt.Errorf("copying /etc: %v: %s", err, out)
	}
	// The host's enabled units stay off; systemd makes up a machine ID.
	unitDir := filepath.Join(s.root, "etc/systemd/system")
	if err := os.RemoveAll(unitDir); err != nil {
		return err
	}
	if err := os.MkdirAll(unitDir, 0o755); err != nil {
		return err
	}
	os.Remove(filepath.Join(s.root, "etc/machine-id"))
	// Whatever is enabled, no dockerd starts inside, unless a test
	// gives a unit of that name or keeps the host's.
	for _, u := range []string{"docker.service", "docker.socket", "containerd.service"} {
		if _, given := opts.Units[u]; given || slices.Contains(opts.Unmask, u) {
			continue
		}
		if err := os.Symlink("/dev/null", filepath.Join(unitDir, u)); err != nil {
			return err
		}
	}
	for name, src := range opts.Units {
		if err := copyFileMode(filepath.Join(unitDir, name), src, 0o644); err != nil {
			return err
		}
	}
	for p, content := range opts.Files {
		dst := filepath.Join(s.root, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(dst, []byte(content), 0o644); err != nil {
			return err
		}
	}
	for p, src := range opts.Usr {
		dst := filepath.Join(upper, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := copyFileMode(dst, src, 0o755); err != nil {
			return err
		}
	}
	for c := range opts.Binds {
		if err := os.MkdirAll(filepath.Join(s.root, c), 0o755); err != nil {
			return err
		}
	}
	if len(opts.Enable) > 0 {
		// Offline, from the [Install] sections, as a package would.
		args := append([]string{"--root=" + s.root, "enable"}, opts.Enable...)
		if out, err := exec.Command("systemctl", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("systemctl %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// waitBooted waits until systemd in the container reports basic.target
// active.
func (s *Systemd) waitBooted() error {
	deadline := time.Now().Add(bootTimeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("systemd-nspawn exited: %v", s.err)
		default:
		}
		out, err := s.exec(context.Background(), "systemctl", "is-active", "basic.target")
		if err == nil && strings.TrimSpace(out) == "active" {
			return nil
		}
		last = fmt.Errorf("%v: %s", err, strings.TrimSpace(out))
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("basic.target not active after %v: %v", bootTimeout, last)
}

// Exec runs a command inside the container (all its namespaces) and returns
// its combined output; err is non-nil when it fails.
func (s *Systemd) Exec(t testing.TB, args ...string) (string, error) {
	t.Helper()
	out, err := s.exec(context.Background(), args...)
	t.Logf("container$ %s => %s", strings.Join(args, " "), exitText(err))
	return out, err
}

// MustExec is Exec for commands that must succeed.
func (s *Systemd) MustExec(t testing.TB, args ...string) string {
	t.Helper()
	out, err := s.Exec(t, args...)
	if err != nil {
		t.Fatalf("container$ %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (s *Systemd) exec(ctx context.Context, args ...string) (string, error) {
	pid, err := s.initPID()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, execTimeout)
	defer cancel()
	nsenter := append([]string{"--target", strconv.Itoa(pid), "--mount", "--uts", "--ipc", "--net", "--pid", "--"}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", nsenter...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// initPID is the host PID of the container's systemd: systemd-nspawn's
// only child.
func (s *Systemd) initPID() (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", s.cmd.Process.Pid, s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		return 0, fmt.Errorf("systemd-nspawn has children %q, want one", f)
	}
	return strconv.Atoi(f[0])
}

// Path is the host path of a path inside the container's root file system
// (not of a bind mount).
func (s *Systemd) Path(p string) string { return filepath.Join(s.root, p) }

// Show returns a unit's property, as "systemctl show --property" prints it.
func (s *Systemd) Show(t testing.TB, unit, property string) string {
	t.Helper()
	out := s.MustExec(t, "systemctl", "show", "--value", "--property", property, unit)
	return strings.TrimSpace(out)
}

// ConsoleTail returns the end of the container's console, for failure
// messages.
func (s *Systemd) ConsoleTail() string { return tail(s.log, "container console") }

// poweroff halts the container: systemd-nspawn turns SIGTERM into a clean
// shutdown; SIGKILL after poweroffTimeout.
func (s *Systemd) poweroff(t testing.TB) {
	t.Helper()
	if s.cmd == nil || s.cmd.Process == nil {
		return // it never started: preparing its root failed
	}
	if t.Failed() {
		if out, err := s.exec(context.Background(), "journalctl", "--no-pager", "-n", "60"); err == nil {
			t.Logf("--- container journal:\n%s", out)
		}
		t.Logf("%s", s.ConsoleTail())
	}
	select {
	case <-s.exited:
		t.Errorf("enginetest: the systemd container exited during the test: %v", s.err)
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	if !waitClosed(s.exited, poweroffTimeout) {
		t.Errorf("enginetest: systemd container still running %v after SIGTERM; killing it", poweroffTimeout)
		_ = s.cmd.Process.Kill()
		if !waitClosed(s.exited, killTimeout) {
			t.Errorf("enginetest: systemd-nspawn (pid %d) survived SIGKILL", s.cmd.Process.Pid)
		}
	}
}

func copyFileMode(dst, src string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}
