package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prune-guard/prune-guard/internal/enginetest"
	"github.com/prune-guard/prune-guard/policy"
)

// evalModule evaluates nix/module.nix without nixpkgs, which cannot be
// fetched here: a stub lib and pkgs provide what the module uses, and a
// small evaluator applies option defaults, user settings, mkIf and mkMerge
// as the module system does for this module. What the NixOS options mean
// (systemd.sockets.*.listenStreams and so on) is beyond it; what the
// module computes from its own options is not.
//
// The stub writeText puts the file's text after '#' in its store path, so
// that the test can read the policy a unit points at.
const evalModule = `
{ modulePath, settings }:
let
  user = builtins.fromJSON settings;

  update = l: r: l // builtins.mapAttrs (k: rv:
    if builtins.isAttrs rv && !(rv ? _type) && l ? ${k} && builtins.isAttrs l.${k}
    then update l.${k} rv else rv) r;

  lib = rec {
    types = { package = "package"; str = "str"; listOf = t: "listOf"; ints.between = lo: hi: "int"; };
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = name: mkOption { default = false; description = "Whether to enable ${name}."; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    recursiveUpdate = update;
    any = builtins.any;
    optional = c: x: if c then [ x ] else [ ];
    hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
    # Enough for the infixes the module looks for (no regex metacharacters).
    hasInfix = i: s: builtins.match ".*${i}.*" s != null;
  };

  pkgs = {
    formats.json = _: { type = "json"; };
    writeText = name: text: "/nix/store/stub-${name}#${text}";
    coreutils = "/nix/store/stub-coreutils";
  };

  defaults = o: if o ? _type then o.default else builtins.mapAttrs (_: defaults) o;
  resolve = v:
    if builtins.isAttrs v && v ? _type then
      if v._type == "if" then (if v.condition then resolve v.content else { })
      else if v._type == "merge" then builtins.foldl' (acc: c: update acc (resolve c)) { } v.contents
      else v
    else if builtins.isAttrs v then builtins.mapAttrs (_: resolve) v
    else v;

  module = import modulePath;
  eval = module { inherit lib pkgs; config = cfg; };
  cfg = {
    services.prune-guard = update (defaults eval.options.services.prune-guard) (user.prune-guard or { });
    virtualisation.docker = update { enable = true; extraOptions = ""; autoPrune = { enable = false; flags = [ ]; }; } (user.docker or { });
  };
  out = resolve eval.config;
in {
  authorizationPlugins = out.virtualisation.docker.daemon.settings."authorization-plugins" or null;
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) (out.assertions or [ ]));
  socket = out.systemd.sockets.prune-guard or null;
  service = out.systemd.services.prune-guard or null;
  docker = out.systemd.services.docker or null;
  reclaim = out.systemd.services.prune-guard-reclaim or null;
  reclaimTimer = out.systemd.timers.prune-guard-reclaim or null;
}
`

// nixUnit is a NixOS systemd unit definition as the module computes it.
type nixUnit struct {
	WantedBy      []string       `json:"wantedBy"`
	Wants         []string       `json:"wants"`
	Requires      []string       `json:"requires"`
	After         []string       `json:"after"`
	Before        []string       `json:"before"`
	ListenStreams []string       `json:"listenStreams"`
	SocketConfig  map[string]any `json:"socketConfig"`
	ServiceConfig map[string]any `json:"serviceConfig"`
	TimerConfig   map[string]any `json:"timerConfig"`
}

type nixModuleOut struct {
	AuthorizationPlugins []string `json:"authorizationPlugins"`
	FailedAssertions     []string `json:"failedAssertions"`
	Socket               *nixUnit `json:"socket"`
	Service              *nixUnit `json:"service"`
	Docker               *nixUnit `json:"docker"`
	Reclaim              *nixUnit `json:"reclaim"`
	ReclaimTimer         *nixUnit `json:"reclaimTimer"`

	raw []byte // the evaluator's JSON, for failure messages
}

// evalNixModule evaluates nix/module.nix with settings: {"prune-guard":
// {...services.prune-guard...}, "docker": {...virtualisation.docker...}}.
func evalNixModule(t *testing.T, settings map[string]any) nixModuleOut {
	t.Helper()
	nix, err := exec.LookPath("nix-instantiate")
	if err != nil {
		enginetest.Unavailable(t, "nix-instantiate not found (Debian: apt-get install nix-bin): %v", err)
	}
	module, err := filepath.Abs("../nix/module.nix")
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(settings)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, nix, "--eval", "--strict", "--json",
		"--arg", "modulePath", module, "--argstr", "settings", string(js), "-E", evalModule)
	// No nixbld group on a Debian host without the Nix daemon; evaluation
	// builds nothing.
	cmd.Env = append(os.Environ(), "NIX_CONFIG=build-users-group =")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("evaluating nix/module.nix with %s: %v\n%s", js, err, stderr.String())
	}
	var out nixModuleOut
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("decoding the evaluation: %v\n%s", err, stdout.String())
	}
	out.raw = stdout.Bytes()
	return out
}

var fakePackage = map[string]any{"package": "/nix/store/fake-prune-guard"}

func enabled(extra map[string]any) map[string]any {
	pg := map[string]any{"enable": true, "package": "/nix/store/fake-prune-guard"}
	for k, v := range extra {
		pg[k] = v
	}
	return pg
}

var execStartRE = regexp.MustCompile(`^/nix/store/fake-prune-guard/bin/prune-guard serve --policy /nix/store/stub-prune-guard-policy\.json#(.*) --audit-log (\S+)$`)

func TestNixOSModuleParses(t *testing.T) {
	nix, err := exec.LookPath("nix-instantiate")
	if err != nil {
		enginetest.Unavailable(t, "nix-instantiate not found (Debian: apt-get install nix-bin): %v", err)
	}
	cmd := exec.Command(nix, "--parse", "../nix/module.nix")
	cmd.Env = append(os.Environ(), "NIX_CONFIG=build-users-group =")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nix-instantiate --parse nix/module.nix: %v\n%s", err, out)
	}
}

func TestNixOSModuleWithDefaultsGuardsDockerFromASocketThatListensFirst(t *testing.T) {
	out := evalNixModule(t, map[string]any{"prune-guard": enabled(nil)})
	if len(out.FailedAssertions) > 0 {
		t.Errorf("failed assertions: %q", out.FailedAssertions)
	}
	if !slices.Equal(out.AuthorizationPlugins, []string{"prune-guard"}) {
		t.Errorf(`daemon.settings."authorization-plugins" = %q; want [prune-guard]`, out.AuthorizationPlugins)
	}
	if out.Socket == nil || out.Service == nil || out.Docker == nil {
		t.Fatalf("missing units: %s", out.raw)
	}
	if !slices.Equal(out.Socket.ListenStreams, []string{"/run/docker/plugins/prune-guard.sock"}) ||
		!slices.Contains(out.Socket.WantedBy, "sockets.target") || !slices.Contains(out.Socket.Before, "docker.service") {
		t.Errorf("socket unit = %+v; want /run/docker/plugins/prune-guard.sock, wanted by sockets.target, before docker.service", *out.Socket)
	}
	if out.Socket.SocketConfig["SocketMode"] != "0660" {
		t.Errorf("SocketMode = %v; want 0660", out.Socket.SocketConfig["SocketMode"])
	}
	if !slices.Contains(out.Docker.Wants, "prune-guard.socket") || !slices.Contains(out.Docker.After, "prune-guard.socket") {
		t.Errorf("docker.service wants %q after %q; want prune-guard.socket in both", out.Docker.Wants, out.Docker.After)
	}
	svc := out.Service
	if !slices.Contains(svc.Requires, "prune-guard.socket") || !slices.Contains(svc.Before, "docker.service") {
		t.Errorf("prune-guard.service requires %q before %q; want prune-guard.socket and docker.service", svc.Requires, svc.Before)
	}
	for k, want := range map[string]any{"Restart": "on-failure", "ProtectSystem": "strict", "NoNewPrivileges": true, "PrivateTmp": true, "ProtectHome": true, "LogsDirectory": "prune-guard"} {
		if svc.ServiceConfig[k] != want {
			t.Errorf("serviceConfig.%s = %v; want %v", k, svc.ServiceConfig[k], want)
		}
	}
	m := execStartRE.FindStringSubmatch(svc.ServiceConfig["ExecStart"].(string))
	if m == nil {
		t.Fatalf("ExecStart = %q; want prune-guard serve --policy STORE-FILE --audit-log PATH", svc.ServiceConfig["ExecStart"])
	}
	if m[2] != "/var/log/prune-guard/audit.jsonl" {
		t.Errorf("--audit-log %s; want /var/log/prune-guard/audit.jsonl", m[2])
	}
	// The policy the module writes loads in prune-guard itself.
	cfg, err := policy.Parse("module policy", []byte(m[1]))
	if err != nil {
		t.Fatalf("prune-guard rejects the module's policy %s: %v", m[1], err)
	}
	if !slices.Equal(cfg.Run.Labels, []string{"prune-guard.run"}) || len(cfg.Protect.Images) != 0 {
		t.Errorf("policy %s: run labels %q, protected images %q; want [prune-guard.run] and none", m[1], cfg.Run.Labels, cfg.Protect.Images)
	}
	if out.Reclaim != nil || out.ReclaimTimer != nil {
		t.Errorf("reclaim units exist without reclaim.enable: %s", out.raw)
	}
}

func TestNixOSModuleDisabledChangesNothing(t *testing.T) {
	out := evalNixModule(t, map[string]any{"prune-guard": fakePackage})
	if out.AuthorizationPlugins != nil || out.Socket != nil || out.Service != nil || out.Docker != nil || len(out.FailedAssertions) > 0 {
		t.Errorf("disabled module still configures: %s", out.raw)
	}
}

func TestNixOSModulePolicyOptionsReachThePolicyFile(t *testing.T) {
	out := evalNixModule(t, map[string]any{"prune-guard": enabled(map[string]any{
		"policy":          map[string]any{"mode": "warn", "run": map[string]any{"labels": []string{"overridden"}}},
		"runLabels":       []string{"ci.job", "prune-guard.run=nightly"},
		"protectedImages": []string{"docker.io/library/*"},
		"auditLog":        "/srv/audit/prune-guard.jsonl",
	})})
	m := execStartRE.FindStringSubmatch(out.Service.ServiceConfig["ExecStart"].(string))
	if m == nil {
		t.Fatalf("ExecStart = %q", out.Service.ServiceConfig["ExecStart"])
	}
	cfg, err := policy.Parse("module policy", []byte(m[1]))
	if err != nil {
		t.Fatalf("prune-guard rejects the module's policy %s: %v", m[1], err)
	}
	if !slices.Equal(cfg.Run.Labels, []string{"ci.job", "prune-guard.run=nightly"}) {
		t.Errorf("run labels %q; want runLabels to win over policy.run.labels", cfg.Run.Labels)
	}
	if !slices.Equal(cfg.Protect.Images, []string{"docker.io/library/*"}) {
		t.Errorf("protected images %q; want protectedImages", cfg.Protect.Images)
	}
	if !strings.Contains(m[1], `"mode":"warn"`) {
		t.Errorf("policy %s lost the policy option's mode", m[1])
	}
	if m[2] != "/srv/audit/prune-guard.jsonl" {
		t.Errorf("--audit-log %s; want the auditLog option", m[2])
	}
	if rw, _ := out.Service.ServiceConfig["ReadWritePaths"].([]any); !slices.Equal(rw, []any{"/srv/audit"}) {
		t.Errorf("ReadWritePaths = %v; want the audit log's directory, which the sandbox otherwise keeps read-only", out.Service.ServiceConfig["ReadWritePaths"])
	}
}

func TestNixOSModuleRefusesAutoPruneAllAndAFlagGivenTwice(t *testing.T) {
	for _, tc := range []struct {
		name   string
		docker map[string]any
		want   string // in the failed assertion's message; "" for none
	}{
		{"autoPrune --all", map[string]any{"autoPrune": map[string]any{"enable": true, "flags": []string{"--all"}}}, "services.prune-guard.reclaim"},
		{"autoPrune -a", map[string]any{"autoPrune": map[string]any{"enable": true, "flags": []string{"-a"}}}, "services.prune-guard.reclaim"},
		{"autoPrune -af", map[string]any{"autoPrune": map[string]any{"enable": true, "flags": []string{"-af"}}}, "services.prune-guard.reclaim"},
		{"autoPrune --all=true", map[string]any{"autoPrune": map[string]any{"enable": true, "flags": []string{"--all=true"}}}, "services.prune-guard.reclaim"},
		{"autoPrune dangling only", map[string]any{"autoPrune": map[string]any{"enable": true, "flags": []string{"--filter", "until=24h"}}}, ""},
		{"autoPrune --all while disabled", map[string]any{"autoPrune": map[string]any{"enable": false, "flags": []string{"--all"}}}, ""},
		{"--authorization-plugin in extraOptions", map[string]any{"extraOptions": "--authorization-plugin=other"}, "extraOptions"},
		{"docker not enabled", map[string]any{"enable": false}, "virtualisation.docker.enable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := evalNixModule(t, map[string]any{"prune-guard": enabled(nil), "docker": tc.docker})
			switch {
			case tc.want == "" && len(out.FailedAssertions) > 0:
				t.Errorf("failed assertions %q; want none", out.FailedAssertions)
			case tc.want != "" && (len(out.FailedAssertions) != 1 || !strings.Contains(out.FailedAssertions[0], tc.want)):
				t.Errorf("failed assertions %q; want one that mentions %q", out.FailedAssertions, tc.want)
			}
		})
	}
}

func TestNixOSModuleReclaimRunsFromATimer(t *testing.T) {
	out := evalNixModule(t, map[string]any{"prune-guard": enabled(map[string]any{
		"reclaim": map[string]any{"enable": true, "highPercent": 90, "lowPercent": 70, "minAge": "24h", "dates": "*:0/15"},
	})})
	if len(out.FailedAssertions) > 0 {
		t.Errorf("failed assertions: %q", out.FailedAssertions)
	}
	if out.Reclaim == nil || out.ReclaimTimer == nil {
		t.Fatalf("no reclaim service or timer: %s", out.raw)
	}
	re := regexp.MustCompile(`^/nix/store/fake-prune-guard/bin/prune-guard reclaim --policy /nix/store/stub-prune-guard-policy\.json#.* --audit-log /var/log/prune-guard/audit\.jsonl --high 90 --low 70 --min-age 24h$`)
	if got, _ := out.Reclaim.ServiceConfig["ExecStart"].(string); !re.MatchString(got) {
		t.Errorf("reclaim ExecStart = %q; want it to match %s", got, re)
	}
	sc := out.Reclaim.ServiceConfig
	if sc["Type"] != "oneshot" || !slices.Contains(out.Reclaim.After, "docker.service") {
		t.Errorf("reclaim service = %+v; want a oneshot after docker.service", *out.Reclaim)
	}
	// Its state file and the audit log are the only places it writes.
	if sc["StateDirectory"] != "prune-guard" || sc["LogsDirectory"] != "prune-guard" || sc["ProtectSystem"] != "strict" {
		t.Errorf("reclaim sandbox: StateDirectory %v, LogsDirectory %v, ProtectSystem %v; want prune-guard, prune-guard, strict",
			sc["StateDirectory"], sc["LogsDirectory"], sc["ProtectSystem"])
	}
	if out.ReclaimTimer.TimerConfig["OnCalendar"] != "*:0/15" || !slices.Contains(out.ReclaimTimer.WantedBy, "timers.target") {
		t.Errorf("reclaim timer = %+v; want OnCalendar *:0/15, wanted by timers.target", *out.ReclaimTimer)
	}

	bad := evalNixModule(t, map[string]any{"prune-guard": enabled(map[string]any{
		"reclaim": map[string]any{"enable": true, "highPercent": 80, "lowPercent": 80},
	})})
	if len(bad.FailedAssertions) != 1 || !strings.Contains(bad.FailedAssertions[0], "lowPercent") {
		t.Errorf("lowPercent = highPercent: failed assertions %q; want one about lowPercent", bad.FailedAssertions)
	}
}
