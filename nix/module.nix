# NixOS module for prune-guard, the Docker authorization plugin that keeps a
# CI host's image cache from being pruned. Import it and set
#
#   services.prune-guard.enable = true;
#   services.prune-guard.package = ...;   # prune-guard is not in nixpkgs
#
# docs/install.md has a complete configuration. In the default mode,
# "authz", the module runs prune-guard from a socket unit that listens
# before docker.service starts and adds it to dockerd's
# "authorization-plugins" in daemon.json. With mode = "proxy" it runs
# "prune-guard proxy" on the socket docker clients use (docker.socket hands
# it over) and moves dockerd to a root-only socket of its own. Either way it
# can run "prune-guard reclaim" from a timer instead of an "autoPrune --all".
{ config, lib, pkgs, utils, ... }:

let
  inherit (lib) literalExpression mkEnableOption mkIf mkMerge mkOption types;

  cfg = config.services.prune-guard;
  docker = config.virtualisation.docker;

  exe = "${cfg.package}/bin/prune-guard";

  authz = cfg.mode == "authz";
  proxy = cfg.mode == "proxy";

  # Proxy mode: dockerd's own socket, which only root reaches (dockerd's
  # "group" is root), and the socket clients use, which docker.socket
  # holds and passes to the proxy.
  engineSocket = "/run/docker/engine.sock";
  listenOptions = docker.listenOptions or [ "/run/docker.sock" ];
  clientSocket = builtins.head listenOptions;

  # Words of virtualisation.docker.extraOptions that set what proxy mode
  # sets in daemon.json ("hosts", "group"): dockerd will not start with a
  # setting given both ways. -H and -G take their value attached or as the
  # next word; --host and --group also after "=".
  extraWords = builtins.filter (w: builtins.isString w && w != "") (builtins.split "[[:space:]]+" docker.extraOptions);
  setsHostOrGroup = w:
    builtins.match "(-H|-G|--host|--group)(=.*)?" w != null
    || builtins.match "-[HG].+" w != null;

  # A duration that prune-guard's flags accept: what Go's
  # time.ParseDuration reads, but never negative ("1h", "90m", "1h30m",
  # "1.5h", "0"), so that a value can carry neither a second argument nor a
  # newline into the unit file.
  goDuration = types.strMatching "[+]?(0|(([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)";

  # One path as one word of a unit setting that lists paths
  # (ReadWritePaths=) or of a tmpfiles.d(5) line: double-quoted with C
  # escapes (JSON's are a subset of what systemd reads), and % doubled so
  # that no specifier is expanded. $ is not expanded in either place, so
  # it stays as it is (utils.escapeSystemdExecArg, for Exec* lines, also
  # doubles it).
  quotePath = p: lib.replaceStrings [ "%" ] [ "%%" ] (builtins.toJSON p);

  # The policy file: cfg.policy, then the dedicated options over it. Keys
  # left out keep their built-in values (docs/policy.md).
  policyFile = pkgs.writeText "prune-guard-policy.json" (builtins.toJSON
    (lib.recursiveUpdate cfg.policy {
      run.labels = cfg.runLabels;
      protect.images = cfg.protectedImages;
    }));

  # "docker system prune" flags that also remove tagged images: prune-guard
  # refuses such a prune, so a unit that runs one fails every time.
  removesTagged = flag:
    flag == "--all" || builtins.match "--all=.*" flag != null
    || builtins.match "-[a-zA-Z]*a[a-zA-Z]*" flag != null;

  # Where the audit log may be written under ProtectSystem=strict:
  # /var/log/prune-guard (LogsDirectory=, which systemd creates), and
  # another file's directory, made writable with ReadWritePaths=. systemd
  # refuses to start a unit whose ReadWritePaths= entry is missing
  # (226/NAMESPACE), and prune-guard creates its file but no directory, so
  # a tmpfiles rule creates any directory but /var/log/prune-guard itself,
  # at boot and on every switch (systemd-tmpfiles-resetup.service).
  auditDir = dirOf cfg.auditLog;
  auditToFile = cfg.auditLog != "-";
  underLogs = auditDir == "/var/log/prune-guard" || lib.hasPrefix "/var/log/prune-guard/" auditDir;
  auditPaths = {
    LogsDirectory = "prune-guard";
    LogsDirectoryMode = "0750";
    ReadWritePaths = lib.optional (auditToFile && !underLogs) (quotePath auditDir);
  };
  auditDirRules = lib.optional (auditToFile && auditDir != "/var/log/prune-guard")
    "d ${quotePath auditDir} 0750 root root -";

  # prune-guard reads its policy, talks to dockerd over unix sockets,
  # appends to its audit log and reads /proc to recognise CI jobs that run
  # on the host; it needs nothing else (packaging/systemd has the same
  # sandbox for other distributions). Reading another process's
  # environment needs CAP_SYS_PTRACE; nothing is ever traced.
  sandbox = {
    CapabilityBoundingSet = "CAP_SYS_PTRACE";
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictAddressFamilies = [ "AF_UNIX" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" ];
    UMask = "0077";
  };
in
{
  options.services.prune-guard = {
    enable = mkEnableOption "prune-guard, a Docker authorization plugin that refuses prunes and image deletes that would evict the host's image cache";

    mode = mkOption {
      type = types.enum [ "authz" "proxy" ];
      default = "authz";
      example = "proxy";
      description = ''
        How prune-guard sits in front of dockerd (docs/install.md, "Choose a mode").
        `authz`: as dockerd's authorization plugin; the socket clients use is dockerd's
        own. `proxy`: `prune-guard proxy` serves the socket clients use
        (`virtualisation.docker.listenOptions`, one path; docker.socket hands it over)
        and forwards to dockerd, which then listens on /run/docker/engine.sock only,
        with group root and no authorization plugin; the module sets dockerd's `hosts`
        and `group` for it. Proxy mode also sees BuildKit's gRPC calls (`docker builder
        prune` with buildx, native gRPC on Docker 29.2 and later), which no
        authorization plugin sees.
      '';
    };

    package = mkOption {
      type = types.package;
      # Not in nixpkgs: evaluating the default without an overlay that
      # provides pkgs.prune-guard fails with this message.
      default = pkgs.prune-guard or (throw "services.prune-guard.package: prune-guard is not in nixpkgs; set this option (docs/install.md shows a buildGoModule expression) or add pkgs.prune-guard with an overlay");
      defaultText = literalExpression "pkgs.prune-guard";
      example = literalExpression "pkgs.callPackage ./prune-guard.nix { }";
      description = "The prune-guard package to use. prune-guard is not in nixpkgs, so set it unless an overlay provides `pkgs.prune-guard`.";
    };

    policy = mkOption {
      type = (pkgs.formats.json { }).type;
      default = { };
      example = literalExpression ''
        {
          mode = "warn";
          protect.labels = [ "prune-guard.keep=true" "ci.base-image=true" ];
          audit = "all";
          run.grace = "5m";
          run.detectors = { woodpecker = "off"; compose = "ci-*"; };
        }
      '';
      description = ''
        Policy settings, written to the Nix store as JSON and passed with `--policy`.
        Keys as in the output of `prune-guard policy default` (docs/policy.md); a key
        left out keeps its built-in value, and without `rules` the built-in rules
        apply. `runLabels` and `protectedImages` set `run.labels` and
        `protect.images` over whatever this sets. How CI jobs are recognised is
        set here too: `run.grace` (how long image deletes stay refused after a
        job, `"2m"`), `run.detectors` (`{ gitlab = "off"; compose = "ci-*"; }`)
        and `run.selectors`. The plugin and `reclaim` read the same file.
      '';
    };

    runLabels = mkOption {
      type = types.listOf types.str;
      default = [ "prune-guard.run" ];
      example = [ "prune-guard.run" "ci.job" ];
      description = "Labels (`KEY` or `KEY=VALUE`) that mark a container or swarm service as part of an active CI run, during which every prune and image delete is refused.";
    };

    protectedImages = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "docker.io/library/*" "registry.example/base/*:*" ];
      description = "Image reference patterns that are never deleted (policy `protect.images`).";
    };

    auditLog = mkOption {
      # An absolute file path on one line, or "-".
      type = types.strMatching "-|/[^\n\r]*[^/\n\r]";
      default = "/var/log/prune-guard/audit.jsonl";
      example = "/srv/ci-audit/prune-guard.jsonl";
      description = "JSON-lines audit file (created 0600), or `-` for the journal. Any path is passed to prune-guard as it is written (spaces, `%` and `$` included). A directory other than /var/log/prune-guard is created (0750, root) by systemd-tmpfiles at boot and on switch, and made writable to the service.";
    };

    reclaim = {
      enable = mkEnableOption "a timer that runs `prune-guard reclaim`, which frees disk space when the disk holding Docker's data fills up by removing unused images, dangling ones first, then the least recently used; unlike `docker system prune --all` it keeps images used within `minAge` and protected images, and removes nothing while a CI run is active";

      highPercent = mkOption {
        type = types.ints.between 1 100;
        default = 85;
        description = "Reclaim when the disk holding Docker's data is at least this many percent full.";
      };

      lowPercent = mkOption {
        type = types.ints.between 0 99;
        default = 80;
        description = "Stop reclaiming once the disk is at most this many percent full. Below `highPercent`.";
      };

      minAge = mkOption {
        type = goDuration;
        default = "1h";
        example = "24h";
        description = "Never remove an image first seen or last used less than this long ago: a Go duration such as `90m`, `24h` or `1h30m` (units `ns`, `us`, `ms`, `s`, `m`, `h`; no days).";
      };

      dates = mkOption {
        type = types.singleLineStr;
        default = "hourly";
        example = "*:0/15";
        description = "When to run, as a systemd calendar event (systemd.time(7)).";
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = docker.enable;
          message = "services.prune-guard guards the Docker daemon: set virtualisation.docker.enable = true.";
        }
        {
          assertion = !(docker.autoPrune.enable && lib.any removesTagged docker.autoPrune.flags);
          message = "virtualisation.docker.autoPrune.flags contains --all (or -a): prune-guard refuses a prune that removes tagged images, so that job would fail every time. Remove the flag, and set services.prune-guard.reclaim.enable = true to free disk space without evicting the image cache.";
        }
        {
          # dockerd refuses to start with a setting given both in
          # daemon.json and on its command line.
          assertion = !(authz && lib.hasInfix "--authorization-plugin" docker.extraOptions);
          message = "services.prune-guard sets virtualisation.docker.daemon.settings.\"authorization-plugins\"; remove --authorization-plugin from virtualisation.docker.extraOptions (dockerd will not start with both).";
        }
        {
          assertion = !(proxy && lib.any setsHostOrGroup extraWords);
          message = "services.prune-guard.mode = \"proxy\" sets virtualisation.docker.daemon.settings.hosts and .group; remove -H/--host and -G/--group from virtualisation.docker.extraOptions (dockerd will not start with a setting given both ways).";
        }
        {
          # The proxy takes exactly one socket from docker.socket, and
          # every address there reaches the proxy, not dockerd.
          assertion = !proxy || (builtins.length listenOptions == 1 && lib.hasPrefix "/" clientSocket);
          message = "services.prune-guard.mode = \"proxy\" serves the one socket docker.socket listens on: set virtualisation.docker.listenOptions to a single unix socket path (the default, [ \"/run/docker.sock\" ]). A TCP address there would reach the proxy, not dockerd; keep remote clients on mode = \"authz\".";
        }
        {
          # Only in nixpkgs that have the option (24.11 and later); on
          # older ones the attribute is missing and this holds.
          assertion = !(docker.autoPrune.allVolumes.enable or false);
          message = "virtualisation.docker.autoPrune.allVolumes.enable runs `docker volume prune --all`, which prune-guard refuses (rule no-volume-prune-all: it removes named volumes), so docker-prune.service would fail every time. Set it to false; remove a volume you mean to lose with `docker volume rm NAME`, and free image disk space with services.prune-guard.reclaim.enable = true.";
        }
        {
          assertion = !cfg.reclaim.enable || cfg.reclaim.lowPercent < cfg.reclaim.highPercent;
          message = "services.prune-guard.reclaim.lowPercent must be below highPercent.";
        }
      ];

      # docker system prune -f is refused while a CI job is active (rule
      # no-prune-during-run), so the autoPrune timer fails on busy hosts.
      warnings = lib.optional docker.autoPrune.enable "virtualisation.docker.autoPrune runs `docker system prune -f`, which prune-guard refuses while a CI job is active (rule no-prune-during-run), so docker-prune.service fails whenever its timer fires during a job. services.prune-guard.reclaim frees disk space without that failure: it skips a pass while a job is active and removes images only under disk pressure.";

      systemd.tmpfiles.rules = auditDirRules;
    }

    (mkIf authz {
      # Merged with any other authorization plugins; never also
      # --authorization-plugin in extraOptions (see the assertion).
      virtualisation.docker.daemon.settings."authorization-plugins" = [ "prune-guard" ];

      # dockerd refuses to start while a configured authorization plugin is
      # missing: the socket listens from sockets.target, before any
      # service, and its first connection starts prune-guard.
      systemd.sockets.prune-guard = {
        description = "prune-guard Docker authorization plugin socket";
        wantedBy = [ "sockets.target" ];
        before = [ "docker.service" ];
        listenStreams = [ "/run/docker/plugins/prune-guard.sock" ];
        socketConfig = {
          SocketMode = "0660";
          DirectoryMode = "0755";
          RemoveOnStop = false;
        };
      };

      systemd.services.prune-guard = {
        description = "prune-guard Docker authorization plugin";
        documentation = [ "https://github.com/prune-guard/prune-guard/blob/main/docs/install.md" ];
        requires = [ "prune-guard.socket" ];
        # After the tmpfiles rules re-applied on switch, which create the
        # audit log's directory.
        after = [ "prune-guard.socket" "systemd-tmpfiles-resetup.service" ];
        before = [ "docker.service" ];
        serviceConfig = sandbox // auditPaths // {
          Type = "exec";
          # Each value one argument, with no specifier or variable expanded
          # (nixpkgs' docker-prune does the same).
          ExecStart = utils.escapeSystemdExecArgs [ exe "serve" "--policy" policyFile "--audit-log" cfg.auditLog ];
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          Restart = "on-failure";
          RestartSec = "1s";
          # In-flight calls are drained for up to 10 s on SIGTERM.
          TimeoutStopSec = "15s";
        };
      };

      systemd.services.docker = {
        wants = [ "prune-guard.socket" ];
        after = [ "prune-guard.socket" ];
      };
    })

    (mkIf proxy {
      # nixpkgs' docker module sets hosts = [ "fd://" ] and group =
      # "docker" (list definitions would be concatenated, so dockerd would
      # still ask for docker.socket's descriptors, which now go to the
      # proxy, and fail). dockerd listens on its own socket only, root's.
      virtualisation.docker.daemon.settings = {
        hosts = lib.mkForce [ "unix://${engineSocket}" ];
        group = lib.mkForce "root";
      };

      # docker.service requires docker.socket (nixpkgs and the docker
      # package both say so), so the socket stays and is handed to the
      # proxy: same path, mode and group, another service.
      systemd.sockets.docker.socketConfig.Service = "prune-guard-proxy.service";

      systemd.services.prune-guard-proxy = {
        description = "prune-guard proxy in front of the Docker Engine API";
        documentation = [ "https://github.com/prune-guard/prune-guard/blob/main/docs/install.md" ];
        # Started by the first connection to docker.socket, after dockerd,
        # which it forwards to and asks about CI runs; and after the
        # tmpfiles rules re-applied on switch, which create the audit
        # log's directory.
        requires = [ "docker.socket" "docker.service" ];
        after = [ "docker.socket" "docker.service" "systemd-tmpfiles-resetup.service" ];
        serviceConfig = sandbox // auditPaths // {
          Type = "exec";
          ExecStart = utils.escapeSystemdExecArgs [
            exe "proxy" "--listen" clientSocket "--docker-host" "unix://${engineSocket}"
            "--policy" policyFile "--audit-log" cfg.auditLog
          ];
          ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          Restart = "on-failure";
          RestartSec = "1s";
          # In-flight calls are drained for up to 10 s on SIGTERM.
          TimeoutStopSec = "15s";
          # /run/prune-guard/control.sock: status and metrics, root only.
          RuntimeDirectory = "prune-guard";
          RuntimeDirectoryMode = "0750";
        };
      };
    })

    (mkIf cfg.reclaim.enable {
      systemd.services.prune-guard-reclaim = {
        description = "prune-guard reclaim: free disk space without evicting recent images";
        documentation = [ "https://github.com/prune-guard/prune-guard/blob/main/docs/install.md" ];
        requires = [ "docker.service" ];
        after = [ "docker.service" "systemd-tmpfiles-resetup.service" ];
        serviceConfig = sandbox // auditPaths // {
          Type = "oneshot";
          # The same policy file (run labels, protected images, detectors,
          # grace) and audit log as the plugin.
          ExecStart = utils.escapeSystemdExecArgs [
            exe "reclaim" "--policy" policyFile "--audit-log" cfg.auditLog
            "--high" (toString cfg.reclaim.highPercent) "--low" (toString cfg.reclaim.lowPercent)
            "--min-age" cfg.reclaim.minAge
          ];
          # reclaim remembers when it last saw each image in use
          # (/var/lib/prune-guard/reclaim-state.json).
          StateDirectory = "prune-guard";
          StateDirectoryMode = "0700";
        };
      };

      systemd.timers.prune-guard-reclaim = {
        description = "Run prune-guard reclaim periodically";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = cfg.reclaim.dates;
          Persistent = true;
          RandomizedDelaySec = "5min";
        };
      };
    })
  ]);
}
