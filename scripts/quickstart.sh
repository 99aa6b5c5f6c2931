#!/usr/bin/env bash
# Installs prune-guard on this Debian host and puts it in front of the local
# dockerd with the built-in default policy, auditing to
# /var/log/prune-guard/audit.jsonl. Run as root, with Go 1.26 or newer on PATH
# or in /usr/local/go; it installs Debian's docker.io if dockerd is missing,
# and needs neither curl nor python3.
#
#   bash scripts/quickstart.sh           authz mode (the default): dockerd's
#                                        authorization plugin
#   bash scripts/quickstart.sh --proxy   proxy mode: prune-guard proxy owns the
#                                        socket clients use
#
# authz: starts "prune-guard serve" on /run/docker/plugins/prune-guard.sock,
# then adds "authorization-plugins": ["prune-guard"] to /etc/docker/daemon.json
# and restarts dockerd (systemd), or starts dockerd with it when no dockerd
# runs. The plugin starts first: dockerd refuses to start while its
# authorization plugin is missing.
#
# --proxy: moves dockerd to its own socket, unix:///run/docker/engine.sock,
# root's alone ("hosts" and "group" in /etc/docker/daemon.json, no
# authorization plugin), then runs "prune-guard proxy" on /var/run/docker.sock.
# Under systemd it installs packaging/systemd's proxy units: docker.socket
# keeps /run/docker.sock and hands it to prune-guard-proxy.service, and a
# drop-in runs dockerd without -H fd://. dockerd restarts once; containers
# stop with it unless "live-restore" is on.
#
# Undo: docs/install.md ("Roll back" under each mode).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

mode=authz
case "${1:-}" in
"") ;;
--proxy) mode=proxy ;;
*)
	echo "usage: bash scripts/quickstart.sh [--proxy]" >&2
	exit 2
	;;
esac

die() {
	echo "quickstart: $*" >&2
	exit 1
}
[[ $EUID -eq 0 ]] || die "run as root (as another user: sudo bash scripts/quickstart.sh${1:+ $1})"
command -v go >/dev/null || die "Go 1.26 or newer is needed to build prune-guard (see go.mod)"

if ! command -v dockerd >/dev/null; then
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
fi

go build -o bin/prune-guard ./cmd/prune-guard
install -m 0755 bin/prune-guard /usr/local/bin/prune-guard
mkdir -p /var/log/prune-guard /etc/docker

# systemd is the init system (sd_booted): a "degraded" system counts too.
systemd=false
[[ -d /run/systemd/system ]] && command -v systemctl >/dev/null && systemd=true

# daemon.json is edited by a small Go program (no python3, no jq): other keys
# and their order are kept.
daemonjson() { go run ./scripts/daemonjson /etc/docker/daemon.json "$@"; }

# The plugin this script starts in authz mode, which --proxy stops.
serve_pid=/run/prune-guard-serve.pid

# waitfor TRIES CMD...: run CMD every 0.2 s until it succeeds.
waitfor() {
	local n=$1
	shift
	for _ in $(seq "$n"); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	return 1
}

if [[ $mode == authz ]]; then
	[[ $(daemonjson mode) == authz ]] || die "dockerd is set up for proxy mode here; roll that back first (docs/install.md)"
	sock=/run/docker/plugins/prune-guard.sock
	if [[ -S $sock ]] && /usr/local/bin/prune-guard status --socket "$sock" >/dev/null 2>&1; then
		echo "quickstart: prune-guard already serves $sock; leaving it running"
	else
		nohup /usr/local/bin/prune-guard serve --socket "$sock" \
			--audit-log /var/log/prune-guard/audit.jsonl >>/var/log/prune-guard/serve.log 2>&1 &
		echo $! >"$serve_pid"
		waitfor 50 test -S "$sock" || die "prune-guard did not start; see /var/log/prune-guard/serve.log"
	fi

	# Point dockerd at the plugin through daemon.json, never also with a
	# flag: dockerd refuses a setting given both ways.
	daemonjson authz

	if $systemd; then
		systemctl restart docker
	elif docker -H unix:///var/run/docker.sock version >/dev/null 2>&1 && [[ -s /var/run/docker.pid ]]; then
		kill -HUP "$(cat /var/run/docker.pid)" # reloads authorization-plugins from daemon.json
	else
		nohup dockerd >>/var/log/prune-guard/dockerd.log 2>&1 &
	fi
	waitfor 100 docker -H unix:///var/run/docker.sock version || die "dockerd does not answer on /var/run/docker.sock"

	echo "quickstart: prune-guard is guarding the local dockerd (authz mode). Try:"
	echo "  docker image prune -af    # refused by prune-guard"
	echo "  prune-guard status"
	echo "  tail -f /var/log/prune-guard/audit.jsonl"
	exit 0
fi

# Proxy mode. dockerd's "hosts" goes in daemon.json, never also on its command
# line: dockerd refuses a setting given both ways.
if [[ -f /etc/default/docker ]] && grep -Eq '^[^#]*DOCKER_OPTS=.*(-H|--host[=[:space:]])' /etc/default/docker; then
	die "/etc/default/docker gives dockerd -H/--host in DOCKER_OPTS; remove it (proxy mode sets dockerd's hosts in daemon.json)"
fi
engine=/run/docker/engine.sock

if $systemd; then
	systemctl cat docker.socket >/dev/null 2>&1 ||
		die "no docker.socket unit here; set proxy mode up by hand (docs/install.md, proxy mode)"
	# dockerd's packaged command line without -H fd://, whatever the package:
	# the last ExecStart= of docker.service as it is now.
	exec_start=$(systemctl cat docker.service | sed -n 's/^ExecStart=\(..*\)$/\1/p' | tail -n 1)
	[[ -n $exec_start ]] || die "docker.service has no ExecStart= to adapt"
	exec_start=$(sed -E 's/[[:space:]]+(-H|--host)[=[:space:]]*fd:\/\/[^[:space:]]*//g' <<<"$exec_start")
	[[ $exec_start != *fd://* ]] || die "cannot take fd:// out of docker.service's ExecStart=$exec_start; see docs/install.md"
	if grep -Eq '[[:space:]](-H|--host([=[:space:]]|$))' <<<"$exec_start"; then
		die "docker.service gives dockerd other -H/--host addresses (ExecStart=$exec_start); proxy mode sets its hosts in daemon.json: see docs/install.md"
	fi

	systemctl stop docker.socket docker.service
	daemonjson proxy
	install -m 0644 packaging/systemd/prune-guard-proxy.service /etc/systemd/system/
	install -D -m 0644 packaging/systemd/docker.socket.d/prune-guard-proxy.conf /etc/systemd/system/docker.socket.d/prune-guard-proxy.conf
	mkdir -p /etc/systemd/system/docker.service.d
	cat >/etc/systemd/system/docker.service.d/prune-guard-proxy.conf <<EOF
# Proxy mode (scripts/quickstart.sh): dockerd listens only where "hosts" in
# /etc/docker/daemon.json says, so its command line loses -H fd:// (dockerd
# refuses "hosts" given both ways). This host's docker.service command line,
# adapted; packaging/systemd/docker.service.d/prune-guard-proxy.conf explains.
[Service]
ExecStart=
ExecStart=$exec_start
EOF
	systemctl daemon-reload
	# The engine first, then the socket clients use, then the proxy (which
	# the first client would start anyway).
	systemctl start docker.service
	systemctl start docker.socket
	systemctl start prune-guard-proxy.service
else
	daemonjson proxy
	if [[ -s /var/run/docker.pid ]] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
		# A reload does not change dockerd's listeners: restart it.
		pid=$(cat /var/run/docker.pid)
		kill -TERM "$pid"
		waitfor 150 bash -c "! kill -0 $pid" || die "dockerd (pid $pid) did not stop"
	fi
	nohup dockerd >>/var/log/prune-guard/dockerd.log 2>&1 &
	waitfor 100 docker -H "unix://$engine" version || die "dockerd does not answer on $engine; see /var/log/prune-guard/dockerd.log"
	if /usr/local/bin/prune-guard status --socket /run/prune-guard/control.sock >/dev/null 2>&1; then
		echo "quickstart: a prune-guard proxy already answers; leaving it running"
	else
		nohup /usr/local/bin/prune-guard proxy --audit-log /var/log/prune-guard/audit.jsonl \
			>>/var/log/prune-guard/proxy.log 2>&1 &
	fi
fi
waitfor 100 docker -H unix:///var/run/docker.sock version ||
	die "nothing answers on /var/run/docker.sock; see $($systemd && echo 'journalctl -u prune-guard-proxy' || echo /var/log/prune-guard/proxy.log)"

# dockerd no longer asks the authorization plugin an earlier run started.
if [[ -s $serve_pid ]] && pid=$(cat "$serve_pid") && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == prune-guard ]]; then
	kill -TERM "$pid"
	echo "quickstart: stopped prune-guard serve (pid $pid), the authorization plugin dockerd no longer asks"
elif [[ -S /run/docker/plugins/prune-guard.sock ]]; then
	echo "quickstart: a prune-guard serve may still answer on /run/docker/plugins/prune-guard.sock; dockerd no longer asks it: stop it"
fi
rm -f "$serve_pid"
echo "quickstart: prune-guard proxy is guarding the local dockerd on /var/run/docker.sock (proxy mode). Try:"
echo "  docker builder prune -af  # refused by prune-guard, with buildx too"
echo "  docker image prune -af    # refused by prune-guard"
echo "  prune-guard status        # the mode, and a warning if dockerd is reachable past the proxy"
echo "  tail -f /var/log/prune-guard/audit.jsonl"
