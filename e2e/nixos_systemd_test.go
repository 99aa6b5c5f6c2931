package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prune-guard/prune-guard/internal/enginetest"
)

// The units nix/module.nix renders, loaded by a real systemd (the
// container e2e/systemd_test.go boots) with an audit log whose directory
// does not exist and whose path has a space, a specifier and a variable:
// the tmpfiles rule the module adds creates the directory at boot, the
// service starts, and the arguments systemd hands prune-guard are the
// operator's values, one each. Without the directory the unit would not
// start (226/NAMESPACE), which is why the rule exists; running the rule
// again (as systemd-tmpfiles-resetup.service does on switch) fixes it.
func TestNixOSModuleUnitsStartUnderSystemdWithTheAuditFolderMissing(t *testing.T) {
	t.Parallel()
	bin := enginetest.BuildBinary(t)
	const auditLog = "/srv/pg audit %h $USER/audit.jsonl"
	auditDir := filepath.Dir(auditLog)
	out := evalNixModule(t, map[string]any{"prune-guard": map[string]any{
		"enable": true, "package": "/usr/local", "auditLog": auditLog,
		"reclaim": map[string]any{"enable": true, "minAge": "1h30m"},
	}})
	if len(out.FailedAssertions) > 0 {
		t.Fatalf("failed assertions: %q", out.FailedAssertions)
	}

	dir := t.TempDir()
	units := map[string]string{}
	var names []string
	for _, name := range []string{"prune-guard.socket", "prune-guard.service", "prune-guard-reclaim.service", "prune-guard-reclaim.timer"} {
		text := out.UnitTexts[name]
		if text == nil {
			t.Fatalf("the module renders no %s: %s", name, out.raw)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(*text), 0o644); err != nil {
			t.Fatal(err)
		}
		units[name] = p
		names = append(names, "/etc/systemd/system/"+name)
	}
	slices.Sort(names)
	// What systemd must run, read by the Go rules (execArgv); the real
	// systemd is compared with it below.
	serveArgv, reclaimArgv := execArgv(t, out.Service), execArgv(t, out.Reclaim)
	if len(serveArgv) != 6 || serveArgv[5] != auditLog {
		t.Fatalf("serve argv %q; want --audit-log %q", serveArgv, auditLog)
	}
	// The stub's store path for the policy holds the policy's text.
	policyPath := serveArgv[3]
	_, policyText, _ := strings.Cut(policyPath, "#")

	sd := enginetest.BootSystemd(t, enginetest.SystemdOptions{
		Units:  units,
		Enable: []string{"prune-guard.socket"},
		Usr:    map[string]string{"local/bin/prune-guard": bin},
		Files: map[string]string{
			// NixOS writes systemd.tmpfiles.rules to this file, one a line.
			"/etc/tmpfiles.d/00-nixos.conf": strings.Join(out.TmpfilesRules, "\n") + "\n",
			policyPath:                      policyText,
		},
	})

	t.Run("systemd-analyze verify accepts the socket, service and timer", func(t *testing.T) {
		args := append([]string{"systemd-analyze", "verify"}, names...)
		o, err := sd.Exec(t, args...)
		// docker.service is masked in the container, so reclaim's
		// Requires= on it is reported; nothing else may be.
		var other []string
		for _, l := range strings.Split(strings.TrimSpace(o), "\n") {
			if l != "" && l != "prune-guard-reclaim.service: Failed to create prune-guard-reclaim.service/start: Unit docker.service is masked." {
				other = append(other, l)
			}
		}
		if len(other) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, o)
		}
	})

	t.Run("systemd-tmpfiles created the audit folder at boot", func(t *testing.T) {
		st, err := os.Stat(sd.Path(auditDir))
		if err != nil {
			t.Fatalf("%s: %v", auditDir, err)
		}
		if !st.IsDir() || st.Mode().Perm() != 0o750 {
			t.Errorf("%s: mode %v; want a directory 0750", auditDir, st.Mode())
		}
	})

	sd.MustExec(t, "systemctl", "start", "prune-guard.service")
	t.Run("the service starts and writes its audit log there, with the policy it was given", func(t *testing.T) {
		if got := sd.Show(t, "prune-guard.service", "ActiveState"); got != "active" {
			t.Fatalf("prune-guard.service is %s; want active", got)
		}
		waitAuditLine(t, sd.Path(auditLog), map[string]string{"msg": "prune-guard started", "source": policyPath})
	})

	t.Run("prune-guard serve runs with the operator's values, one argument each", func(t *testing.T) {
		pid := sd.Show(t, "prune-guard.service", "MainPID")
		cmdline := sd.MustExec(t, "cat", "/proc/"+pid+"/cmdline")
		got := strings.Split(strings.TrimSuffix(cmdline, "\x00"), "\x00")
		want := append([]string{"/usr/local/bin/prune-guard"}, serveArgv[1:]...)
		if !slices.Equal(got, want) {
			t.Errorf("argv = %q; want %q", got, want)
		}
	})

	// reclaim needs dockerd, which does not run here; systemd's own
	// reading of its ExecStart= is the argv it stores for the unit. $$
	// stays $$ there: systemd turns it into $ when it runs the command, as
	// serve's argv above shows.
	t.Run("systemd reads reclaim's ExecStart as the operator's values", func(t *testing.T) {
		for unit, want := range map[string][]string{"prune-guard.service": serveArgv, "prune-guard-reclaim.service": reclaimArgv} {
			got := busExecStart(t, sd, unit)
			want = append([]string{"/usr/local/bin/prune-guard"}, want[1:]...)
			for i := range want {
				want[i] = strings.ReplaceAll(want[i], "$", "$$")
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s ExecStart argv (D-Bus) = %q; want %q", unit, got, want)
			}
		}
	})

	t.Run("without the folder the unit fails with 226/NAMESPACE, and the tmpfiles rule fixes it", func(t *testing.T) {
		sd.MustExec(t, "systemctl", "stop", "prune-guard.service")
		if err := os.RemoveAll(sd.Path(auditDir)); err != nil {
			t.Fatal(err)
		}
		if o, err := sd.Exec(t, "systemctl", "start", "prune-guard.service"); err == nil {
			t.Fatalf("prune-guard.service started without %s; want a failure\n%s", auditDir, o)
		}
		if got := sd.Show(t, "prune-guard.service", "ExecMainStatus"); got != "226" {
			t.Errorf("ExecMainStatus = %s; want 226 (NAMESPACE)", got)
		}
		sd.MustExec(t, "systemctl", "stop", "prune-guard.service")
		sd.MustExec(t, "systemctl", "reset-failed", "prune-guard.service")
		sd.MustExec(t, "systemd-tmpfiles", "--create", "/etc/tmpfiles.d/00-nixos.conf")
		sd.MustExec(t, "systemctl", "start", "prune-guard.service")
		if got := sd.Show(t, "prune-guard.service", "ActiveState"); got != "active" {
			t.Errorf("prune-guard.service is %s after systemd-tmpfiles --create; want active", got)
		}
	})
}

// busExecStart is the argv systemd stored for a unit's ExecStart=, read
// over D-Bus (Service.ExecStart, a(sasbttttuii)): no text parsing of
// "systemctl show" output, whose argv[] is joined by spaces.
func busExecStart(t *testing.T, sd *enginetest.Systemd, unit string) []string {
	t.Helper()
	var path struct {
		Data []string `json:"data"`
	}
	o := sd.MustExec(t, "busctl", "--json=short", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
		"org.freedesktop.systemd1.Manager", "LoadUnit", "s", unit)
	if err := json.Unmarshal([]byte(o), &path); err != nil || len(path.Data) != 1 {
		t.Fatalf("LoadUnit %s: %v\n%s", unit, err, o)
	}
	var prop struct {
		Data [][]json.RawMessage `json:"data"`
	}
	o = sd.MustExec(t, "busctl", "--json=short", "get-property", "org.freedesktop.systemd1", path.Data[0],
		"org.freedesktop.systemd1.Service", "ExecStart")
	if err := json.Unmarshal([]byte(o), &prop); err != nil || len(prop.Data) != 1 || len(prop.Data[0]) < 2 {
		t.Fatalf("%s ExecStart: %v\n%s", unit, err, o)
	}
	var argv []string
	if err := json.Unmarshal(prop.Data[0][1], &argv); err != nil {
		t.Fatalf("%s ExecStart argv: %v\n%s", unit, err, o)
	}
	return argv
}

// The units nix/module.nix renders in proxy mode, with nixpkgs' docker.socket
// and docker.service as the evaluator merges them, loaded by a real systemd:
// docker.socket listens from boot on /run/docker.sock and starts the proxy,
// after dockerd's unit, with the configuration's arguments; the proxy
// forwards to dockerd's own socket and refuses what the policy refuses.
// dockerd runs outside (the test engine, linked to /run/docker/engine.sock);
// inside, a drop-in stands in for it in nixpkgs' docker.service.
func TestNixOSModuleProxyUnitsServeDockerClientsUnderSystemd(t *testing.T) {
	t.Parallel()
	bin := enginetest.BuildBinary(t)
	e := enginetest.Prepare(t)
	const auditLog = "/srv/pg audit/audit.jsonl"
	out := evalNixModule(t, map[string]any{"prune-guard": map[string]any{
		"enable": true, "package": "/usr/local", "mode": "proxy", "auditLog": auditLog,
	}})
	if len(out.FailedAssertions) > 0 {
		t.Fatalf("failed assertions: %q", out.FailedAssertions)
	}
	argv := proxyArgv(t, out, "/usr/local/bin/prune-guard", "/run/docker.sock")
	policyPath := argv[7]
	_, policyText, _ := strings.Cut(policyPath, "#")

	dir := t.TempDir()
	units := map[string]string{}
	for _, name := range []string{"prune-guard-proxy.service", "docker.socket", "docker.service"} {
		text := out.UnitTexts[name]
		if text == nil {
			t.Fatalf("the module renders no %s: %s", name, out.raw)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(*text), 0o644); err != nil {
			t.Fatal(err)
		}
		units[name] = p
	}
	sd := enginetest.BootSystemd(t, enginetest.SystemdOptions{
		Units:  units,
		Enable: []string{"docker.socket"},
		Usr:    map[string]string{"local/bin/prune-guard": bin},
		Files: map[string]string{
			"/etc/tmpfiles.d/00-nixos.conf": strings.Join(append(out.TmpfilesRules,
				// dockerd's own socket is the test engine's, bound below.
				"L /run/docker/engine.sock - - - - /run/pg-engine/d.sock"), "\n") + "\n",
			policyPath: policyText,
			// Stand-in for dockerd: the engine runs outside.
			"/etc/systemd/system/docker.service.d/zz-pg-stand-in.conf": "[Service]\nType=exec\nExecStart=/bin/sleep infinity\n",
		},
		Binds: map[string]string{"/run/pg-engine": e.Dir()},
	})

	t.Run("systemd-analyze verify accepts the proxy and docker.socket", func(t *testing.T) {
		o, err := sd.Exec(t, "systemd-analyze", "verify", "/etc/systemd/system/prune-guard-proxy.service", "/etc/systemd/system/docker.socket")
		if err != nil || strings.TrimSpace(o) != "" {
			t.Errorf("systemd-analyze verify: %v\n%s", err, o)
		}
	})
	t.Run("docker.socket listens from boot and triggers the proxy", func(t *testing.T) {
		if got := sd.Show(t, "docker.socket", "ActiveState"); got != "active" {
			t.Errorf("docker.socket is %s after boot; want active", got)
		}
		if got := sd.Show(t, "docker.socket", "Triggers"); got != "prune-guard-proxy.service" {
			t.Errorf("docker.socket triggers %q; want prune-guard-proxy.service", got)
		}
		if got := sd.Show(t, "prune-guard-proxy.service", "ActiveState"); got != "inactive" {
			t.Errorf("prune-guard-proxy.service is %s before any client; want inactive", got)
		}
	})

	e.Run(t, enginetest.Options{})
	t.Run("a client starts dockerd's unit, then the proxy with the configuration's arguments", func(t *testing.T) {
		o, err := sd.Exec(t, "docker", "version", "--format", "{{.Server.Version}}")
		if err != nil || strings.TrimSpace(o) != e.Identity().Version {
			t.Fatalf("docker version through the proxy: %v\n%s\nwant server %s", err, o, e.Identity().Version)
		}
		engine, _ := strconv.ParseUint(sd.Show(t, "docker.service", "ActiveEnterTimestampMonotonic"), 10, 64)
		proxy, _ := strconv.ParseUint(sd.Show(t, "prune-guard-proxy.service", "ExecMainStartTimestampMonotonic"), 10, 64)
		if engine == 0 || proxy < engine {
			t.Errorf("the proxy started at %d µs, dockerd's unit was up at %d µs; want the engine first", proxy, engine)
		}
		pid := sd.Show(t, "prune-guard-proxy.service", "MainPID")
		cmdline := sd.MustExec(t, "cat", "/proc/"+pid+"/cmdline")
		if got := strings.Split(strings.TrimSuffix(cmdline, "\x00"), "\x00"); !slices.Equal(got, argv) {
			t.Errorf("argv = %q; want %q", got, argv)
		}
	})
	t.Run("docker image prune -af is refused and audited where auditLog says", func(t *testing.T) {
		o, err := sd.Exec(t, "docker", "image", "prune", "--all", "--force")
		if err == nil || !strings.Contains(o, "authorization denied by plugin prune-guard: prune-guard: image prune --all is blocked (rule no-prune-all)") {
			t.Errorf("docker image prune -af: %v; want a denial by the proxy\n%s", err, o)
		}
		waitAuditLine(t, sd.Path(auditLog), map[string]string{"decision": "deny", "rule": "no-prune-all"})
	})
}
