#!/usr/bin/env bash
# Installs prune-guard on this Debian host and puts it in front of the local
# dockerd with the built-in default policy:
#   - installs Debian's docker.io if dockerd is missing;
#   - builds bin/prune-guard and installs it as /usr/local/bin/prune-guard;
#   - starts "prune-guard serve" on /run/docker/plugins/prune-guard.sock, auditing
#     to /var/log/prune-guard/audit.jsonl;
#   - adds "authorization-plugins": ["prune-guard"] to /etc/docker/daemon.json and
#     restarts dockerd (systemd), or starts dockerd with it when no dockerd runs.
# The plugin starts before dockerd is pointed at it: dockerd refuses to start
# while its authorization plugin is missing. Undo: docs in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

[[ $EUID -eq 0 ]] || { echo "quickstart: run as root (as another user: sudo bash scripts/quickstart.sh)" >&2; exit 1; }
command -v go >/dev/null || { echo "quickstart: Go 1.26 or newer is needed to build prune-guard (see go.mod)" >&2; exit 1; }

if ! command -v dockerd >/dev/null; then
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
fi

go build -o bin/prune-guard ./cmd/prune-guard
install -m 0755 bin/prune-guard /usr/local/bin/prune-guard

sock=/run/docker/plugins/prune-guard.sock
mkdir -p /var/log/prune-guard
if [[ -S $sock ]] && curl -fsS --unix-socket "$sock" -X POST http://p/Plugin.Activate >/dev/null 2>&1; then
	echo "quickstart: prune-guard already serves $sock; leaving it running"
else
	nohup /usr/local/bin/prune-guard serve --socket "$sock" \
		--audit-log /var/log/prune-guard/audit.jsonl >>/var/log/prune-guard/serve.log 2>&1 &
	for _ in $(seq 50); do [[ -S $sock ]] && break; sleep 0.1; done
	[[ -S $sock ]] || { echo "quickstart: prune-guard did not start; see /var/log/prune-guard/serve.log" >&2; exit 1; }
fi

# Point dockerd at the plugin through daemon.json, never also with a flag:
# dockerd refuses a setting given both ways.
mkdir -p /etc/docker
python3 - <<'PY'
import json, os
p = "/etc/docker/daemon.json"
cfg = json.load(open(p)) if os.path.exists(p) and os.path.getsize(p) else {}
plugins = cfg.setdefault("authorization-plugins", [])
if "prune-guard" not in plugins:
    plugins.append("prune-guard")
    json.dump(cfg, open(p, "w"), indent=2)
PY

if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
	systemctl restart docker
elif docker -H unix:///var/run/docker.sock version >/dev/null 2>&1 && [[ -s /var/run/docker.pid ]]; then
	kill -HUP "$(cat /var/run/docker.pid)" # reloads authorization-plugins from daemon.json
else
	nohup dockerd >>/var/log/prune-guard/dockerd.log 2>&1 &
fi
for _ in $(seq 100); do docker -H unix:///var/run/docker.sock version >/dev/null 2>&1 && break; sleep 0.2; done

echo "quickstart: prune-guard is guarding the local dockerd. Try:"
echo "  docker image prune -af    # refused by prune-guard"
echo "  tail -f /var/log/prune-guard/audit.jsonl"
