package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/prune-guard/prune-guard/internal/enginetest"
	"github.com/prune-guard/prune-guard/policy"
)

// evalModule evaluates nix/module.nix without nixpkgs, which cannot be
// fetched here: a stub lib, pkgs and utils provide what the module uses, and
// a small evaluator applies option defaults, user settings (checked against
// the option's type, as the module system does), mkIf and mkMerge as the
// module system does for this module. What the NixOS options mean
// (systemd.sockets.*.listenStreams and so on) is beyond it; what the
// module computes from its own options is not, and the units are rendered
// to text as NixOS renders them, for a real systemd to load.
//
// Mirrored from nixpkgs, in our own words (same behaviour, not the code):
//   - lib/types.nix: str, bool, strMatching (a string that builtins.match
//     matches whole), singleLineStr (strMatching "[^\n\r]*\n?", one
//     trailing newline removed on merge), listOf, ints.between;
//   - nixos/lib/utils.nix: escapeSystemdExecArg (builtins.toJSON, then % to
//     %% and $ to $$), escapeSystemdExecArgs (joined by spaces);
//   - nixos/lib/systemd-lib.nix: attrsToSection (one KEY=VALUE line per
//     list element, true/false for booleans, keys in attribute order),
//     the [Unit] keys from requires/wants/after/before (space-joined),
//     description and documentation, ListenStream= lines, WantedBy=;
//   - nixos/modules/system/boot/systemd/tmpfiles.nix: rules one per line;
//   - lib/modules.nix: of an option's definitions only those of the
//     highest priority count (mkForce 50, a plain one 100); lists are
//     concatenated, attribute sets merged by key, and other values must
//     be equal ("conflicting definition values");
//   - nixos/modules/virtualisation/docker.nix: what proxy mode builds on,
//     defined at normal priority: daemon.settings group "docker" and hosts
//     [ "fd://" ], docker.socket on listenOptions (default
//     [ "/run/docker.sock" ]) 0660 root:docker from sockets.target, and
//     docker.service requiring it.
//
// Left out: the Environment= lines NixOS adds (PATH, LOCALE_ARCHIVE, TZDIR)
// and X-Restart-Triggers; the module sets neither.
//
// The stub writeText puts the file's text after '#' in its store path, so
// that the test can read the policy a unit points at.
const evalModule = `
{ modulePath, settings, durations ? "[]" }:
let
  user = builtins.fromJSON settings;
  inherit (builtins) concatStringsSep isString isList isAttrs mapAttrs attrValues;
  bt = builtins.fromJSON ''"\u0060"''; # a backquote, which a Go raw string cannot hold

  update = l: r: l // builtins.mapAttrs (k: rv:
    if builtins.isAttrs rv && !(rv ? _type) && l ? ${k} && builtins.isAttrs l.${k}
    then update l.${k} rv else rv) r;

  hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
  removeSuffix = x: s:
    let n = builtins.stringLength s; m = builtins.stringLength x; in
    if n >= m && builtins.substring (n - m) m s == x then builtins.substring 0 (n - m) s else s;

  mkType = name: check: { _type = "option-type"; inherit name check; merge = v: v; };
  types = rec {
    str = mkType "string" isString;
    bool = mkType "boolean" builtins.isBool;
    package = mkType "package" (x: isString x || isAttrs x);
    strMatching = pattern: mkType "string matching the pattern ${pattern}"
      (x: isString x && builtins.match pattern x != null);
    singleLineStr = strMatching "[^\n\r]*\n?" // {
      name = "(optionally newline-terminated) single-line string";
      merge = removeSuffix "\n";
    };
    listOf = t: mkType "list of ${t.name}" (x: isList x && builtins.all t.check x);
    enum = vs: mkType "one of ${concatStringsSep ", " (map builtins.toJSON vs)}" (x: builtins.elem x vs);
    ints.between = lo: hi: mkType "integer between ${toString lo} and ${toString hi} (both inclusive)"
      (x: builtins.isInt x && x >= lo && x <= hi);
    json = mkType "JSON value" (x: true);
  };

  lib = rec {
    inherit types hasPrefix removeSuffix;
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = name: mkOption { type = types.bool; default = false; description = "Whether to enable ${name}."; };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkOverride = priority: content: { _type = "override"; inherit priority content; };
    mkForce = mkOverride 50;
    recursiveUpdate = update;
    any = builtins.any;
    optional = c: x: if c then [ x ] else [ ];
    replaceStrings = builtins.replaceStrings;
    # Enough for the infixes the module looks for (no regex metacharacters).
    hasInfix = i: s: builtins.match ".*${i}.*" s != null;
  };

  utils = rec {
    escapeSystemdExecArg = arg:
      builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (if isString arg then arg else toString arg));
    escapeSystemdExecArgs = args: concatStringsSep " " (map escapeSystemdExecArg args);
  };

  pkgs = {
    formats.json = _: { type = types.json; };
    writeText = name: text: "/nix/store/stub-${name}#${text}";
    # Where kill is on this machine, so that a real systemd finds
    # ExecReload's command.
    coreutils = "/usr";
  };

  isOption = o: isAttrs o && (o._type or "") == "option";
  # Option values: the default, or the user's definition if it is of the
  # option's type (else the module system's error); undeclared ones fail.
  values = path: opts: defs:
    let
      undeclared = builtins.filter (n: !(opts ? ${n})) (builtins.attrNames defs);
      name = n: concatStringsSep "." (path ++ [ n ]);
    in
    if undeclared != [ ] then throw "The option ${bt}${name (builtins.head undeclared)}' does not exist."
    else mapAttrs (n: o:
      if isOption o then
        (if defs ? ${n} then
          (if o.type.check defs.${n} then o.type.merge defs.${n}
           else throw "A definition for option ${bt}${name n}' is not of type ${bt}${o.type.name}'. Definition value: ${builtins.toJSON defs.${n}}")
         else o.default)
      else values (path ++ [ n ]) o (defs.${n} or { })) opts;

  resolve = v:
    if isAttrs v && v ? _type then
      if v._type == "if" then (if v.condition then resolve v.content else { })
      else if v._type == "merge" then builtins.foldl' (acc: c: update acc (resolve c)) { } v.contents
      else v
    else if isAttrs v then mapAttrs (_: resolve) v
    else v;

  module = import modulePath;
  eval = module { inherit lib pkgs utils; config = cfg; };
  cfg = {
    services.prune-guard = values [ "services" "prune-guard" ] eval.options.services.prune-guard (user.prune-guard or { });
    # Without autoPrune.allVolumes, as in nixpkgs before 24.11; a test
    # that sets it plays a newer nixpkgs.
    virtualisation.docker = update {
      enable = true; extraOptions = ""; listenOptions = [ "/run/docker.sock" ];
      autoPrune = { enable = false; flags = [ ]; };
    } (user.docker or { });
  };
  out = resolve eval.config;

  # An option's definitions merged as the module system merges them (see
  # above); mkOverride's wrapper is kept by resolve for this.
  prio = v: if isAttrs v && (v._type or "") == "override" then v.priority else 100;
  strip = v: if isAttrs v && (v._type or "") == "override" then v.content else v;
  mergeDefs = name: defs:
    let
      best = builtins.foldl' (m: v: if prio v < m then prio v else m) 1000 defs;
      kept = map strip (builtins.filter (v: prio v == best) defs);
      first = builtins.head kept;
    in
    if builtins.all isList kept then builtins.concatLists kept
    else if builtins.all (v: isAttrs v && !(v ? _type)) kept then
      builtins.zipAttrsWith (n: vs: mergeDefs "${name}.${n}" vs) kept
    else if builtins.all (v: v == first) kept then first
    else throw "The option ${bt}${name}' has conflicting definition values: ${builtins.toJSON kept}";

  # nixpkgs' docker module, for the definitions proxy mode overrides or
  # adds to.
  nixpkgsDocker = {
    settings = { group = "docker"; hosts = [ "fd://" ]; };
    socket = {
      description = "Docker Socket for the API";
      wantedBy = [ "sockets.target" ];
      socketConfig = {
        ListenStream = cfg.virtualisation.docker.listenOptions;
        SocketMode = "0660";
        SocketUser = "root";
        SocketGroup = "docker";
      };
    };
    service = {
      description = "Docker Application Container Engine";
      after = [ "network.target" "docker.socket" ];
      requires = [ "docker.socket" ];
      serviceConfig.Type = "notify";
    };
  };
  daemonSettings = mergeDefs "virtualisation.docker.daemon.settings"
    [ nixpkgsDocker.settings (out.virtualisation.docker.daemon.settings or { }) ];
  dockerSocket = mergeDefs "systemd.sockets.docker" [ nixpkgsDocker.socket (out.systemd.sockets.docker or { }) ];
  dockerService = mergeDefs "systemd.services.docker" [ nixpkgsDocker.service (out.systemd.services.docker or { }) ];

  toOption = x: if x == true then "true" else if x == false then "false" else toString x;
  section = as: concatStringsSep "" (builtins.concatLists (attrValues (mapAttrs (k: v:
    map (x: "${k}=${toOption x}\n") (if isList v then v else [ v ])) as)));
  listKey = k: l: if l == [ ] then { } else { ${k} = toString l; };
  unitSection = u: "[Unit]\n" + section ({ Description = u.description; }
    // listKey "Documentation" (u.documentation or [ ])
    // listKey "Requires" (u.requires or [ ]) // listKey "Wants" (u.wants or [ ])
    // listKey "After" (u.after or [ ]) // listKey "Before" (u.before or [ ]));
  install = u: if (u.wantedBy or [ ]) == [ ] then "" else "\n[Install]\nWantedBy=${concatStringsSep " " u.wantedBy}\n";
  text = kind: body: u: if u == null then null else
    unitSection u + "\n[${kind}]\n" + section (u.${body} or { })
    + concatStringsSep "" (map (s: "ListenStream=${s}\n") (u.listenStreams or [ ])) + install u;

  service = out.systemd.services.prune-guard or null;
  socket = out.systemd.sockets.prune-guard or null;
  reclaim = out.systemd.services.prune-guard-reclaim or null;
  reclaimTimer = out.systemd.timers.prune-guard-reclaim or null;
  proxy = out.systemd.services.prune-guard-proxy or null;
in {
  authorizationPlugins = out.virtualisation.docker.daemon.settings."authorization-plugins" or null;
  # dockerd's daemon.json as nixpkgs writes it, this module's definitions
  # merged with nixpkgs' docker module's.
  inherit daemonSettings dockerSocket;
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) (out.assertions or [ ]));
  warnings = out.warnings or [ ];
  tmpfilesRules = out.systemd.tmpfiles.rules or [ ];
  inherit socket service reclaim reclaimTimer proxy;
  docker = out.systemd.services.docker or null;
  unitTexts = {
    "prune-guard.socket" = text "Socket" "socketConfig" socket;
    "prune-guard.service" = text "Service" "serviceConfig" service;
    "prune-guard-reclaim.service" = text "Service" "serviceConfig" reclaim;
    "prune-guard-reclaim.timer" = text "Timer" "timerConfig" reclaimTimer;
    "prune-guard-proxy.service" = text "Service" "serviceConfig" proxy;
    # nixpkgs' units with this module's definitions merged in.
    "docker.socket" = text "Socket" "socketConfig" dockerSocket;
    "docker.service" = text "Service" "serviceConfig" dockerService;
  };
  # Whether reclaim.minAge's type accepts each of these strings.
  durationsAccepted = map eval.options.services.prune-guard.reclaim.minAge.type.check (builtins.fromJSON durations);
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
	AuthorizationPlugins []string           `json:"authorizationPlugins"`
	DaemonSettings       map[string]any     `json:"daemonSettings"`
	DockerSocket         *nixUnit           `json:"dockerSocket"`
	Proxy                *nixUnit           `json:"proxy"`
	FailedAssertions     []string           `json:"failedAssertions"`
	Warnings             []string           `json:"warnings"`
	TmpfilesRules        []string           `json:"tmpfilesRules"`
	Socket               *nixUnit           `json:"socket"`
	Service              *nixUnit           `json:"service"`
	Docker               *nixUnit           `json:"docker"`
	Reclaim              *nixUnit           `json:"reclaim"`
	ReclaimTimer         *nixUnit           `json:"reclaimTimer"`
	UnitTexts            map[string]*string `json:"unitTexts"`
	DurationsAccepted    []bool             `json:"durationsAccepted"`

	raw []byte // the evaluator's JSON, for failure messages
}

// evalNixModule evaluates nix/module.nix with settings: {"prune-guard":
// {...services.prune-guard...}, "docker": {...virtualisation.docker...}}.
func evalNixModule(t *testing.T, settings map[string]any) nixModuleOut {
	t.Helper()
	out, err := evalNixModuleWith(t, settings, nil)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// evalNixModuleWith evaluates the module and also asks whether
// reclaim.minAge's type accepts each of durations. The error is the
// evaluation's (a type error, say), with Nix's message.
func evalNixModuleWith(t *testing.T, settings map[string]any, durations []string) (nixModuleOut, error) {
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
	ds, err := json.Marshal(append([]string{}, durations...))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, nix, "--eval", "--strict", "--json",
		"--arg", "modulePath", module, "--argstr", "settings", string(js), "--argstr", "durations", string(ds), "-E", evalModule)
	// No nixbld group on a Debian host without the Nix daemon; evaluation
	// builds nothing.
	cmd.Env = append(os.Environ(), "NIX_CONFIG=build-users-group =")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nixModuleOut{}, fmt.Errorf("evaluating nix/module.nix with %s: %v\n%s", js, err, stderr.String())
	}
	var out nixModuleOut
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("decoding the evaluation: %v\n%s", err, stdout.String())
	}
	out.raw = stdout.Bytes()
	return out, nil
}

var fakePackage = map[string]any{"package": "/nix/store/fake-prune-guard"}

const fakeExe = "/nix/store/fake-prune-guard/bin/prune-guard"

func enabled(extra map[string]any) map[string]any {
	pg := map[string]any{"enable": true, "package": "/nix/store/fake-prune-guard"}
	for k, v := range extra {
		pg[k] = v
	}
	return pg
}

// execArgv is the argument vector systemd runs for a unit's ExecStart=,
// read by the rules of systemd.service(5) "Command lines" as systemd 252
// applies them: the line split into words (double or single quotes,
// C escapes in and out of them), each word's specifiers resolved (%% is
// %; any other specifier is an error here, since the module must expand
// none), then, at exec time, $$ becomes $ ($NAME and ${NAME} are errors
// here for the same reason). The real systemd reads the same units in
// nixos_systemd_test.go.
func execArgv(t *testing.T, u *nixUnit) []string {
	t.Helper()
	if u == nil {
		t.Fatal("no unit")
	}
	line, ok := u.ServiceConfig["ExecStart"].(string)
	if !ok {
		t.Fatalf("ExecStart = %#v; want one command line", u.ServiceConfig["ExecStart"])
	}
	if strings.ContainsAny(line, "\n\r") {
		t.Fatalf("ExecStart %q spans lines: the unit file would be corrupt", line)
	}
	words, err := systemdWords(line)
	if err != nil {
		t.Fatalf("ExecStart %q: %v", line, err)
	}
	for i, w := range words {
		if w, err = resolveSpecifiers(w); err == nil {
			w, err = resolveDollars(w)
		}
		if err != nil {
			t.Fatalf("ExecStart %q, word %d: %v", line, i, err)
		}
		words[i] = w
	}
	return words
}

// pathWords reads a setting that lists paths (ReadWritePaths=) or a
// tmpfiles.d(5) line as systemd does: words as in execArgv, specifiers
// resolved, and $ literal.
func pathWords(t *testing.T, s string) []string {
	t.Helper()
	if strings.ContainsAny(s, "\n\r") {
		t.Fatalf("%q spans lines", s)
	}
	words, err := systemdWords(s)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	for i, w := range words {
		if words[i], err = resolveSpecifiers(w); err != nil {
			t.Fatalf("%q, word %d: %v", s, i, err)
		}
	}
	return words
}

// systemdWords splits s as systemd's extract_first_word does with
// EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE (src/basic/extract-word.c): words
// separated by whitespace, quotes removed, C escapes decoded. An unquoted
// lone ";" (a command separator in Exec* lines) is an error here.
func systemdWords(s string) ([]string, error) {
	var words []string
	i := 0
	for {
		for i < len(s) && strings.IndexByte(" \t\n\r", s[i]) >= 0 {
			i++
		}
		if i >= len(s) {
			return words, nil
		}
		if s[i] == ';' && (i+1 == len(s) || strings.IndexByte(" \t\n\r", s[i+1]) >= 0) {
			return nil, fmt.Errorf("an unquoted ; at %d separates commands", i)
		}
		var b strings.Builder
		var quote byte
		for i < len(s) && (quote != 0 || strings.IndexByte(" \t\n\r", s[i]) < 0) {
			switch c := s[i]; {
			case c == '\\':
				r, n, err := cunescape(s[i+1:])
				if err != nil {
					return nil, fmt.Errorf("at %d: %v", i, err)
				}
				b.WriteString(r)
				i += 1 + n
			case quote == 0 && (c == '"' || c == '\''):
				quote = c
				i++
			case quote != 0 && c == quote:
				quote = 0
				i++
			default:
				b.WriteByte(c)
				i++
			}
		}
		if quote != 0 {
			return nil, fmt.Errorf("unterminated %c quote", quote)
		}
		words = append(words, b.String())
	}
}

// cunescape decodes one C escape after a backslash (systemd's
// cunescape_one): the text and how many bytes of s it took.
func cunescape(s string) (string, int, error) {
	if s == "" {
		return "", 0, fmt.Errorf("a backslash ends the line")
	}
	if r, ok := map[byte]string{'a': "\a", 'b': "\b", 'f': "\f", 'n': "\n", 'r': "\r", 't': "\t", 'v': "\v",
		'\\': "\\", '"': "\"", '\'': "'", 's': " "}[s[0]]; ok {
		return r, 1, nil
	}
	hex := func(n int) (string, int, error) {
		if len(s) < 1+n {
			return "", 0, fmt.Errorf("short \\%c escape", s[0])
		}
		v, err := strconv.ParseUint(s[1:1+n], 16, 32)
		if err != nil || v == 0 {
			return "", 0, fmt.Errorf("bad \\%c escape %q", s[0], s[:1+n])
		}
		if s[0] == 'x' {
			return string([]byte{byte(v)}), 1 + n, nil
		}
		return string(rune(v)), 1 + n, nil
	}
	switch s[0] {
	case 'x':
		return hex(2)
	case 'u':
		return hex(4)
	case 'U':
		return hex(8)
	}
	if s[0] >= '0' && s[0] <= '7' && len(s) >= 3 {
		if v, err := strconv.ParseUint(s[:3], 8, 8); err == nil && v != 0 {
			return string([]byte{byte(v)}), 3, nil
		}
	}
	return "", 0, fmt.Errorf("unknown escape \\%c", s[0])
}

// resolveSpecifiers resolves %% to %; any other specifier (%h, %n, ...)
// would be replaced by systemd, so it is an error.
func resolveSpecifiers(w string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(w); i++ {
		if w[i] != '%' {
			b.WriteByte(w[i])
			continue
		}
		if i+1 < len(w) && w[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		return "", fmt.Errorf("systemd would expand the specifier %q in %q", w[i:min(i+2, len(w))], w)
	}
	return b.String(), nil
}

// resolveDollars applies the exec-time rule for $: $$ is $; $NAME and
// ${NAME} would be replaced from the environment, so they are errors.
func resolveDollars(w string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(w); i++ {
		if w[i] != '$' {
			b.WriteByte(w[i])
			continue
		}
		if i+1 < len(w) && w[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		if i+1 < len(w) && (w[i+1] == '{' || w[i+1] == '_' || unicode.IsLetter(rune(w[i+1]))) {
			return "", fmt.Errorf("systemd would expand the variable in %q", w[i:])
		}
		b.WriteByte('$')
	}
	return b.String(), nil
}

// readWritePaths is a unit's ReadWritePaths= as systemd reads them: one
// path per line the module sets, each line's words.
func readWritePaths(t *testing.T, u *nixUnit) []string {
	t.Helper()
	var paths []string
	v, _ := u.ServiceConfig["ReadWritePaths"].([]any)
	for _, line := range v {
		s, ok := line.(string)
		if !ok {
			t.Fatalf("ReadWritePaths entry %#v; want a string", line)
		}
		paths = append(paths, pathWords(t, s)...)
	}
	return paths
}

// servePolicy is the policy text the stub writeText put in the store path
// that serve's --policy names.
func servePolicy(t *testing.T, argv []string) []byte {
	t.Helper()
	if len(argv) != 6 || argv[0] != fakeExe || argv[1] != "serve" || argv[2] != "--policy" || argv[4] != "--audit-log" {
		t.Fatalf("serve argv = %q; want [%s serve --policy STORE-FILE --audit-log PATH]", argv, fakeExe)
	}
	path, text, ok := strings.Cut(argv[3], "#")
	if !ok || path != "/nix/store/stub-prune-guard-policy.json" {
		t.Fatalf("--policy %q; want the module's policy file", argv[3])
	}
	return []byte(text)
}

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
	argv := execArgv(t, svc)
	text := servePolicy(t, argv)
	if argv[5] != "/var/log/prune-guard/audit.jsonl" {
		t.Errorf("--audit-log %s; want /var/log/prune-guard/audit.jsonl", argv[5])
	}
	if rw, _ := svc.ServiceConfig["ReadWritePaths"].([]any); len(rw) != 0 || len(out.TmpfilesRules) != 0 {
		t.Errorf("ReadWritePaths %q, tmpfiles rules %q; want none for /var/log/prune-guard (LogsDirectory=)", rw, out.TmpfilesRules)
	}
	// The policy the module writes loads in prune-guard itself.
	cfg, err := policy.Parse("module policy", text)
	if err != nil {
		t.Fatalf("prune-guard rejects the module's policy %s: %v", text, err)
	}
	if !slices.Equal(cfg.Run.Labels, []string{"prune-guard.run"}) || len(cfg.Protect.Images) != 0 {
		t.Errorf("policy %s: run labels %q, protected images %q; want [prune-guard.run] and none", text, cfg.Run.Labels, cfg.Protect.Images)
	}
	if len(out.Warnings) != 0 {
		t.Errorf("warnings %q; want none without autoPrune", out.Warnings)
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
		"policy": map[string]any{"mode": "warn", "run": map[string]any{"labels": []string{"overridden"}, "grace": "5m",
			"detectors": map[string]any{"woodpecker": "off", "compose": "ci-*"}}},
		"runLabels":       []string{"ci.job", "prune-guard.run=nightly"},
		"protectedImages": []string{"docker.io/library/*"},
		"auditLog":        "/srv/audit/prune-guard.jsonl",
	})})
	argv := execArgv(t, out.Service)
	text := servePolicy(t, argv)
	cfg, err := policy.Parse("module policy", text)
	if err != nil {
		t.Fatalf("prune-guard rejects the module's policy %s: %v", text, err)
	}
	if cfg.Run.Grace.String() != "5m0s" {
		t.Errorf("run.grace %v; want the policy option's 5m", cfg.Run.Grace)
	}
	if !slices.Equal(cfg.Run.Labels, []string{"ci.job", "prune-guard.run=nightly"}) {
		t.Errorf("run labels %q; want runLabels to win over policy.run.labels", cfg.Run.Labels)
	}
	if !slices.Equal(cfg.Protect.Images, []string{"docker.io/library/*"}) {
		t.Errorf("protected images %q; want protectedImages", cfg.Protect.Images)
	}
	if !strings.Contains(string(text), `"mode":"warn"`) || !strings.Contains(string(text), `"compose":"ci-*"`) {
		t.Errorf("policy %s lost the policy option's mode or detectors", text)
	}
	if argv[5] != "/srv/audit/prune-guard.jsonl" {
		t.Errorf("--audit-log %s; want the auditLog option", argv[5])
	}
	if rw := readWritePaths(t, out.Service); !slices.Equal(rw, []string{"/srv/audit"}) {
		t.Errorf("ReadWritePaths = %q; want the audit log's directory, which the sandbox otherwise keeps read-only", rw)
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
	argv := execArgv(t, out.Reclaim)
	if want := []string{fakeExe, "reclaim", "--policy", execArgv(t, out.Service)[3], "--audit-log", "/var/log/prune-guard/audit.jsonl",
		"--high", "90", "--low", "70", "--min-age", "24h"}; !slices.Equal(argv, want) {
		t.Errorf("reclaim argv = %q; want %q (serve's policy file)", argv, want)
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

// What an operator types as auditLog reaches prune-guard as one argument,
// unchanged (no word splitting, no specifier or variable expansion), in
// both units; its directory is made writable as one path, and created by a
// tmpfiles rule so that the unit can start before it exists.
func TestNixOSModuleAuditLogReachesTheUnitsAsOnePath(t *testing.T) {
	for _, tc := range []struct {
		log      string
		writable []string // ReadWritePaths, as systemd reads them
		created  string   // the directory a tmpfiles rule creates; "" for none
	}{
		{"/srv/audit dir/a.jsonl", []string{"/srv/audit dir"}, "/srv/audit dir"},
		{"/srv/a%h$USER.jsonl", []string{"/srv"}, "/srv"},
		{"/srv/%n ${HOME} $$/a.jsonl", []string{"/srv/%n ${HOME} $$"}, "/srv/%n ${HOME} $$"},
		{`/srv/q"uo'te\back;/a.jsonl`, []string{`/srv/q"uo'te\back;`}, `/srv/q"uo'te\back;`},
		{"/srv/tab\there ünï/a.jsonl", []string{"/srv/tab\there ünï"}, "/srv/tab\there ünï"},
		{"/var/log/prune-guard/audit.jsonl", nil, ""},
		{"/var/log/prune-guard/ci/audit.jsonl", nil, "/var/log/prune-guard/ci"},
		{"-", nil, ""},
	} {
		t.Run(tc.log, func(t *testing.T) {
			out := evalNixModule(t, map[string]any{"prune-guard": enabled(map[string]any{
				"auditLog": tc.log, "reclaim": map[string]any{"enable": true},
			})})
			if len(out.FailedAssertions) > 0 {
				t.Errorf("failed assertions: %q", out.FailedAssertions)
			}
			if argv := execArgv(t, out.Service); len(argv) != 6 || argv[4] != "--audit-log" || argv[5] != tc.log {
				t.Errorf("serve argv = %q; want --audit-log %q as the last argument", argv, tc.log)
			}
			if argv := execArgv(t, out.Reclaim); len(argv) != 12 || argv[4] != "--audit-log" || argv[5] != tc.log {
				t.Errorf("reclaim argv = %q; want --audit-log %q", argv, tc.log)
			}
			for name, u := range map[string]*nixUnit{"prune-guard": out.Service, "prune-guard-reclaim": out.Reclaim} {
				if rw := readWritePaths(t, u); !slices.Equal(rw, tc.writable) {
					t.Errorf("%s ReadWritePaths = %q; want %q", name, rw, tc.writable)
				}
				if tc.created != "" && !slices.Contains(u.After, "systemd-tmpfiles-resetup.service") {
					t.Errorf("%s is not ordered after systemd-tmpfiles-resetup.service, which creates the directory on switch", name)
				}
			}
			var created []string
			for _, r := range out.TmpfilesRules {
				w := pathWords(t, r)
				if len(w) != 6 || w[0] != "d" || w[2] != "0750" || w[3] != "root" || w[4] != "root" || w[5] != "-" {
					t.Errorf("tmpfiles rule %q reads as %q; want d PATH 0750 root root -", r, w)
					continue
				}
				created = append(created, w[1])
			}
			if want := []string{tc.created}; tc.created == "" && len(created) != 0 || tc.created != "" && !slices.Equal(created, want) {
				t.Errorf("tmpfiles rules create %q; want %q", created, tc.created)
			}
		})
	}
}

// Values that would put a second argument or a line break into a unit
// file are refused by the options' types, with the module system's
// message naming the option.
func TestNixOSModuleTypesRefuseValuesThatWouldBreakTheUnits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pg     map[string]any
		option string
	}{
		{"minAge with a flag", map[string]any{"reclaim": map[string]any{"enable": true, "minAge": "1h --x"}}, "services.prune-guard.reclaim.minAge"},
		{"minAge with a newline", map[string]any{"reclaim": map[string]any{"enable": true, "minAge": "1h\n"}}, "services.prune-guard.reclaim.minAge"},
		{"minAge in days", map[string]any{"reclaim": map[string]any{"enable": true, "minAge": "1d"}}, "services.prune-guard.reclaim.minAge"},
		{"minAge negative", map[string]any{"reclaim": map[string]any{"enable": true, "minAge": "-1h"}}, "services.prune-guard.reclaim.minAge"},
		{"dates with a second line", map[string]any{"reclaim": map[string]any{"enable": true, "dates": "hourly\nExecStart=/bin/sh"}}, "services.prune-guard.reclaim.dates"},
		{"dates with a carriage return", map[string]any{"reclaim": map[string]any{"enable": true, "dates": "hourly\r"}}, "services.prune-guard.reclaim.dates"},
		{"auditLog with a newline", map[string]any{"auditLog": "/srv/a\nb.jsonl"}, "services.prune-guard.auditLog"},
		{"auditLog relative", map[string]any{"auditLog": "audit.jsonl"}, "services.prune-guard.auditLog"},
		{"auditLog a directory", map[string]any{"auditLog": "/srv/audit/"}, "services.prune-guard.auditLog"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := evalNixModuleWith(t, map[string]any{"prune-guard": enabled(tc.pg)}, nil)
			if err == nil {
				t.Fatalf("evaluated; want a type error for %s\n%s", tc.option, out.raw)
			}
			if want := "A definition for option `" + tc.option + "' is not of type"; !strings.Contains(err.Error(), want) {
				t.Errorf("error %v; want one that says %q", err, want)
			}
		})
	}

	// As nixpkgs' types.singleLineStr allows, one trailing newline (a
	// '' string's) is dropped.
	out := evalNixModule(t, map[string]any{"prune-guard": enabled(map[string]any{
		"reclaim": map[string]any{"enable": true, "dates": "*:0/15\n"},
	})})
	if got := out.ReclaimTimer.TimerConfig["OnCalendar"]; got != "*:0/15" {
		t.Errorf("OnCalendar = %q; want *:0/15 (trailing newline dropped)", got)
	}
}

// reclaim.minAge's type accepts exactly the durations prune-guard reclaim
// --min-age accepts (Go's time.ParseDuration, no minus sign), so what
// passes evaluation cannot fail at the unit's first run. Not covered: a
// number too large for a time.Duration ("9999999999h"), which the type
// accepts and reclaim then refuses, as one argument.
func TestNixOSModuleMinAgeTypeIsPruneGuardsDuration(t *testing.T) {
	candidates := []string{
		"0", "1h", "24h", "90m", "1h30m", "1.5h", ".5h", "1.h", "300ms", "10us", "10µs", "10μs", "5ns", "2h45m30.5s", "0s", "0h0m",
		"", "1", "1d", "1w", "h", "1 h", "1h ", " 1h", "-1h", "+1h", "1h --x", "1h\n", "-0", "+0", "1hm", "1H", ".h", "1..5h", "00", "1e3s", "1h;", "%h",
	}
	out, err := evalNixModuleWith(t, map[string]any{"prune-guard": enabled(nil)}, candidates)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.DurationsAccepted) != len(candidates) {
		t.Fatalf("%d answers for %d candidates", len(out.DurationsAccepted), len(candidates))
	}
	for i, c := range candidates {
		_, perr := time.ParseDuration(c)
		goAccepts := perr == nil && !strings.HasPrefix(c, "-")
		if out.DurationsAccepted[i] != goAccepts {
			t.Errorf("minAge %q: the type accepts it: %v; prune-guard accepts it: %v (%v)", c, out.DurationsAccepted[i], goAccepts, perr)
		}
	}
}

// autoPrune.allVolumes (nixpkgs 24.11 and later) runs a prune that
// prune-guard always refuses; autoPrune itself fails while a job is active,
// which the module warns about and steers to reclaim.
func TestNixOSModuleAutoPruneAllVolumesIsRefusedAndAutoPruneWarned(t *testing.T) {
	for _, tc := range []struct {
		name    string
		docker  map[string]any
		assert  string // in the one failed assertion; "" for none
		warning bool
	}{
		{"allVolumes on", map[string]any{"autoPrune": map[string]any{"enable": true, "allVolumes": map[string]any{"enable": true, "flags": []string{}}}}, "autoPrune.allVolumes.enable", true},
		{"allVolumes off", map[string]any{"autoPrune": map[string]any{"enable": true, "allVolumes": map[string]any{"enable": false, "flags": []string{}}}}, "", true},
		{"nixpkgs without allVolumes", map[string]any{"autoPrune": map[string]any{"enable": true}}, "", true},
		{"autoPrune off", map[string]any{"autoPrune": map[string]any{"enable": false, "allVolumes": map[string]any{"enable": false, "flags": []string{}}}}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := evalNixModule(t, map[string]any{"prune-guard": enabled(nil), "docker": tc.docker})
			switch {
			case tc.assert == "" && len(out.FailedAssertions) > 0:
				t.Errorf("failed assertions %q; want none", out.FailedAssertions)
			case tc.assert != "" && (len(out.FailedAssertions) != 1 || !strings.Contains(out.FailedAssertions[0], tc.assert) ||
				!strings.Contains(out.FailedAssertions[0], "services.prune-guard.reclaim")):
				t.Errorf("failed assertions %q; want one that names %s and steers to services.prune-guard.reclaim", out.FailedAssertions, tc.assert)
			}
			if got := len(out.Warnings) == 1 && strings.Contains(out.Warnings[0], "while a CI job is active") &&
				strings.Contains(out.Warnings[0], "services.prune-guard.reclaim"); got != tc.warning {
				t.Errorf("warnings %q; want a warning that autoPrune fails during jobs and names reclaim: %v", out.Warnings, tc.warning)
			}
		})
	}
}

// proxyArgv checks the proxy unit's argument vector and returns it:
// [EXE proxy --listen SOCKET --docker-host unix:///run/docker/engine.sock
// --policy STORE-FILE --audit-log PATH].
func proxyArgv(t *testing.T, out nixModuleOut, exe, listen string) []string {
	t.Helper()
	argv := execArgv(t, out.Proxy)
	want := []string{exe, "proxy", "--listen", listen, "--docker-host", "unix:///run/docker/engine.sock", "--policy"}
	if len(argv) != 10 || !slices.Equal(argv[:7], want) || argv[8] != "--audit-log" {
		t.Fatalf("proxy argv = %q; want %q, then STORE-FILE --audit-log PATH", argv, want)
	}
	return argv
}

// mode = "proxy": dockerd listens on its own root-only socket, with no
// authorization plugin, docker.socket hands the clients' socket to the
// proxy, which starts after dockerd, and nothing of authz mode remains.
// nixpkgs' docker module's own hosts = [ "fd://" ] and group = "docker"
// would otherwise merge in (the evaluator merges them as the module
// system does).
func TestNixOSModuleProxyModeMovesDockerdAndHandsItsSocketToTheProxy(t *testing.T) {
	authz := evalNixModule(t, map[string]any{"prune-guard": enabled(nil)})
	if got := authz.DaemonSettings; !slices.Equal(anyStrings(got["hosts"]), []string{"fd://"}) || got["group"] != "docker" {
		t.Errorf("default mode: daemon.json %v; want nixpkgs' hosts [fd://] and group docker untouched", got)
	}
	if authz.Proxy != nil || authz.DockerSocket.SocketConfig["Service"] != nil {
		t.Errorf("default mode has proxy units: %s", authz.raw)
	}

	out := evalNixModule(t, map[string]any{"prune-guard": enabled(map[string]any{"mode": "proxy"})})
	if len(out.FailedAssertions) > 0 || len(out.Warnings) > 0 {
		t.Errorf("failed assertions %q, warnings %q; want none", out.FailedAssertions, out.Warnings)
	}
	ds := out.DaemonSettings
	if !slices.Equal(anyStrings(ds["hosts"]), []string{"unix:///run/docker/engine.sock"}) || ds["group"] != "root" {
		t.Errorf("daemon.json hosts %v, group %v; want [unix:///run/docker/engine.sock] and root, over nixpkgs' [fd://] and docker", ds["hosts"], ds["group"])
	}
	if _, ok := ds["authorization-plugins"]; ok || out.AuthorizationPlugins != nil {
		t.Errorf("daemon.json %v names an authorization plugin; proxy mode runs dockerd without one", ds)
	}
	if out.Socket != nil || out.Service != nil || out.Docker != nil {
		t.Errorf("proxy mode still renders the plugin's socket, service or docker.service additions: %s", out.raw)
	}

	sock := out.DockerSocket
	if sock == nil {
		t.Fatalf("no docker.socket: %s", out.raw)
	}
	for k, want := range map[string]any{"Service": "prune-guard-proxy.service", "SocketMode": "0660", "SocketGroup": "docker", "SocketUser": "root"} {
		if sock.SocketConfig[k] != want {
			t.Errorf("docker.socket %s = %v; want %v", k, sock.SocketConfig[k], want)
		}
	}
	if got := anyStrings(sock.SocketConfig["ListenStream"]); !slices.Equal(got, []string{"/run/docker.sock"}) {
		t.Errorf("docker.socket ListenStream = %q; want nixpkgs' [/run/docker.sock]", got)
	}

	p := out.Proxy
	if p == nil {
		t.Fatalf("no prune-guard-proxy.service: %s", out.raw)
	}
	for _, u := range []string{"docker.socket", "docker.service"} {
		if !slices.Contains(p.Requires, u) || !slices.Contains(p.After, u) {
			t.Errorf("prune-guard-proxy.service requires %q after %q; want %s in both", p.Requires, p.After, u)
		}
	}
	if len(p.WantedBy) != 0 {
		t.Errorf("prune-guard-proxy.service is wanted by %q; want it started by docker.socket alone", p.WantedBy)
	}
	for k, want := range map[string]any{"Type": "exec", "Restart": "on-failure", "ProtectSystem": "strict", "CapabilityBoundingSet": "CAP_SYS_PTRACE",
		"LogsDirectory": "prune-guard", "RuntimeDirectory": "prune-guard"} {
		if p.ServiceConfig[k] != want {
			t.Errorf("prune-guard-proxy serviceConfig.%s = %v; want %v", k, p.ServiceConfig[k], want)
		}
	}
	argv := proxyArgv(t, out, fakeExe, "/run/docker.sock")
	if argv[9] != "/var/log/prune-guard/audit.jsonl" {
		t.Errorf("--audit-log %s; want /var/log/prune-guard/audit.jsonl", argv[9])
	}
	_, text, _ := strings.Cut(argv[7], "#")
	if _, err := policy.Parse("module policy", []byte(text)); err != nil {
		t.Errorf("prune-guard rejects the proxy's policy %s: %v", text, err)
	}

	// reclaim goes through the proxy like any client, with the same
	// policy file and audit log.
	out = evalNixModule(t, map[string]any{"prune-guard": enabled(map[string]any{
		"mode": "proxy", "auditLog": "/srv/ci audit/a.jsonl", "reclaim": map[string]any{"enable": true},
	})})
	argv = proxyArgv(t, out, fakeExe, "/run/docker.sock")
	if argv[9] != "/srv/ci audit/a.jsonl" {
		t.Errorf("--audit-log %q; want the auditLog option", argv[9])
	}
	if rw := readWritePaths(t, out.Proxy); !slices.Equal(rw, []string{"/srv/ci audit"}) || !slices.Contains(out.Proxy.After, "systemd-tmpfiles-resetup.service") {
		t.Errorf("proxy ReadWritePaths %q, after %q; want the audit directory, after systemd-tmpfiles-resetup.service", rw, out.Proxy.After)
	}
	if r := execArgv(t, out.Reclaim); len(r) < 6 || r[3] != argv[7] || r[5] != argv[9] {
		t.Errorf("reclaim argv %q; want the proxy's policy %s and audit log %s", r, argv[7], argv[9])
	}
}

// anyStrings converts a decoded JSON list of strings.
func anyStrings(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// Proxy mode owns dockerd's hosts and group and takes the one socket
// docker.socket listens on: settings that contradict that are refused
// at evaluation, with a message that says what to change.
func TestNixOSModuleProxyModeRefusesWhatWouldBreakIt(t *testing.T) {
	for _, tc := range []struct {
		name   string
		docker map[string]any
		want   string // in the one failed assertion; "" for none
		listen string // the proxy's --listen when none fails
	}{
		{"-H in extraOptions", map[string]any{"extraOptions": "--debug -H tcp://0.0.0.0:2375"}, "extraOptions", ""},
		{"-H attached", map[string]any{"extraOptions": "-Hfd://"}, "extraOptions", ""},
		{"--host=", map[string]any{"extraOptions": "--host=unix:///run/other.sock"}, "extraOptions", ""},
		{"--group", map[string]any{"extraOptions": "--group docker"}, "extraOptions", ""},
		{"-G attached", map[string]any{"extraOptions": "  -Gdocker\t--debug"}, "extraOptions", ""},
		{"--host-gateway-ip is another flag", map[string]any{"extraOptions": "--host-gateway-ip 192.0.2.1"}, "", "/run/docker.sock"},
		{"another authorization plugin", map[string]any{"extraOptions": "--authorization-plugin=other"}, "", "/run/docker.sock"},
		{"a TCP address beside the socket", map[string]any{"listenOptions": []string{"/run/docker.sock", "0.0.0.0:2375"}}, "listenOptions", ""},
		{"a TCP address alone", map[string]any{"listenOptions": []string{"0.0.0.0:2375"}}, "listenOptions", ""},
		{"another socket path", map[string]any{"listenOptions": []string{"/run/ci/docker.sock"}}, "", "/run/ci/docker.sock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := evalNixModule(t, map[string]any{"prune-guard": enabled(map[string]any{"mode": "proxy"}), "docker": tc.docker})
			switch {
			case tc.want == "" && len(out.FailedAssertions) > 0:
				t.Errorf("failed assertions %q; want none", out.FailedAssertions)
			case tc.want != "" && (len(out.FailedAssertions) != 1 || !strings.Contains(out.FailedAssertions[0], tc.want)):
				t.Errorf("failed assertions %q; want one that names %q", out.FailedAssertions, tc.want)
			}
			if tc.listen != "" {
				proxyArgv(t, out, fakeExe, tc.listen)
			}
		})
	}

	_, err := evalNixModuleWith(t, map[string]any{"prune-guard": enabled(map[string]any{"mode": "plugin"})}, nil)
	if want := "A definition for option `services.prune-guard.mode' is not of type `one of \"authz\", \"proxy\"'"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("mode = \"plugin\": %v; want %q", err, want)
	}
}
