#!/usr/bin/env bash
# Overhead benchmark: what prune-guard costs on every Docker API call, as an
# authorization plugin and as a proxy in front of the engine's socket.
#
# Starts a private dockerd per target, each given the same five created
# containers, and loads them all with the same GET (default
# /v1.41/containers/json) from bench/overhead/loadgen:
#
#   none     no --authorization-plugin: dockerd alone.
#   floor    --authorization-plugin=pgbench-floor-PID, the do-nothing plugin
#            in noopplugin/: the price of the authz protocol itself (two HTTP
#            round trips over a unix socket and the JSON per API call).
#   guard    --authorization-plugin=pgbench-guard-PID, the real
#            `bin/prune-guard serve`, built from this tree.
#   proxy    `prune-guard proxy` on a socket of its own, in front of a
#            dockerd with no plugin (the proxy mode).
#   haproxy  Debian's haproxy in front of a dockerd with no plugin,
#            configured as Tecnativa's docker-socket-proxy runs it: mode
#            http, http-server-close, generous timeouts, a method and path
#            filter; here on unix sockets at both ends.
#
# Rounds are interleaved, in an order that rotates and every len(targets)
# rounds reverses, so noise on the machine and the position in a round hit
# all targets alike. How to read the tables:
#
#   vs floor         median over rounds of the target's req/s divided by
#                    floor's in the same round; `per-round range` is how far
#                    those ratios spread.
#   vs none, vs haproxy
#                    the same pairing for req/s, p50, p99 (each round's own)
#                    and CPU per request, against dockerd alone and HAProxy.
#   cpu/req          CPU time of the target's dockerd and plugin (or proxy)
#                    per request; `cpu/req vs floor` is paired the same way.
#                    It barely moves when other work shares the cores, so
#                    trust it over req/s on a busy machine.
#   plugin/proxy cpu/req
#                    the plugin's or the proxy's process alone.
#
# none's ratios are what any authz plugin costs (dockerd sends it every
# request and response) and are not ours to win back; guard's are
# prune-guard's own overhead. The targets: guard req/s >= 0.95 x floor
# (about cpu/req <= 1.05 x floor); proxy req/s >= 0.5 x none and >= haproxy,
# proxy p99 <= 2 x none. If a req/s range is wider than the margin the
# machine was too busy to tell; run again or with more rounds.
# GUARD_BIN=noop (floor against floor) shows how close to 1.000 this machine
# measures. loadgen exits non-zero if any request failed, and so does this
# script.
#
# With proxy among the targets, two more phases follow the load:
#
#   save     GET /images/NAME/get (what `docker save` asks) of a
#            SAVE_MIB (256) MiB image, one at a time, straight from none's
#            dockerd and through proxy and haproxy: MB/s, interleaved the
#            same way (SAVE=0 skips it).
#   upload   UPLOAD_CALLS (32) concurrent `docker load`s of a UPLOAD_MIB
#            (64) MiB image, chunked as the CLI sends them, through the
#            proxy (and haproxy): the proxy's RSS before, its peak (VmHWM,
#            reset before the burst) and after (UPLOAD=0 skips it).
#
# Usage (from the repo root, as root, since dockerd needs it):
#
#   bash bench/overhead/run.sh
#
# Environment:
#   TARGETS="..."    which targets, of none floor guard proxy haproxy
#                    (default all five, in that order; space- or
#                    comma-separated)
#   DURATION=5s      length of one target's turn in a round
#   ROUNDS=10        number of interleaved rounds (a multiple of twice the
#                    targets balances the order; 6 is too few to resolve 5%
#                    on a shared 2-core machine: A/A runs came out 0.94-1.08)
#   CONCURRENCY=8    keep-alive connections per target
#   WARMUP=1s        unmeasured load per target before round 1
#   PAUSE=1s         idle time before each turn, so one daemon's aftermath
#                    (GC) is not charged to the next
#   GUARD_BIN=PATH   use this prune-guard binary (for guard and proxy)
#                    instead of building one; GUARD_BIN=noop runs the noop
#                    plugin as the guard too (to test the harness)
#   PROXY_BIN=PATH   the prune-guard binary for the proxy target (default:
#                    GUARD_BIN's, or the one built)
#   HAPROXY_REUSE=1  let haproxy keep its engine connections (http-keep-alive,
#                    http-reuse always) instead of Tecnativa's
#                    http-server-close: HAProxy at its fastest
#   JSON=1           print loadgen's JSON instead of the table
#   KEEP=1           keep the temp dir (daemon logs, audit log) for a look
#   BEFORE_BIN=PATH  add a target, `before`: this prune-guard binary (an
#                    older build), run like guard, in the same rounds
#   PROXY_BEFORE_BIN=PATH
#                    add a target, `proxy-before`: this prune-guard binary
#                    run like proxy (in the load, save and upload phases)
#   LOAD_PATH=PATH   the GET to load (/v1.41/containers/json); with
#   TAGS=N           N extra tags of the fixture image per daemon (0), so
#                    that LOAD_PATH=/v1.41/images/json TAGS=2000 answers
#                    ~62 KiB, which dockerd sends whole in every AuthZRes
#   BURST=0          skip the memory burst: after the load, CALLS (32)
#                    concurrent SIZE_MIB (14) MiB calls straight to each
#                    plugin's socket, reporting idle and peak RSS
#   LOAD=0           skip the GET load (and the burst), for the save and
#                    upload phases alone
#   SAVE=0, SAVE_MIB=256, SAVE_ROUNDS=6, SAVE_DURATION=5s
#                    the save phase (above)
#   UPLOAD=0, UPLOAD_CALLS=32, UPLOAD_MIB=64
#                    the upload phase (above)
#   PG_ENGINE=NAME   run on an engine scripts/engines.sh provisioned (20.10,
#                    26.1, 28.5, 28.5-containerd, 29): its binaries first on
#                    PATH, its daemon.json; unset, dockerd and docker from PATH
#   PG_CACHE=DIR     where those engines are (default /var/cache/prune-guard-ci)
#
# haproxy comes from Debian (apt-get install haproxy); CI does not run this
# benchmark, so .ci/run does not install it.
#
# Run it alone: other engines on a 2-core machine move the figures. CI and
# the e2e tests take /tmp/pg-e2e.lock; so should you:
#
#   flock /tmp/pg-e2e.lock env PG_ENGINE=28.5 bash bench/overhead/run.sh
set -euo pipefail

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-10}
CONCURRENCY=${CONCURRENCY:-8}
WARMUP=${WARMUP:-1s}
PAUSE=${PAUSE:-1s}
GUARD_BIN=${GUARD_BIN:-}
PROXY_BIN=${PROXY_BIN:-}
HAPROXY_REUSE=${HAPROXY_REUSE:-}
JSON=${JSON:-}
KEEP=${KEEP:-}
PG_ENGINE=${PG_ENGINE:-}
PG_CACHE=${PG_CACHE:-/var/cache/prune-guard-ci}
DAEMON_JSON='{}'

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PLUGIN_DIR=/run/docker/plugins
FLOOR_NAME=pgbench-floor-$$
GUARD_NAME=pgbench-guard-$$
FLOOR_SOCK=$PLUGIN_DIR/$FLOOR_NAME.sock
GUARD_SOCK=$PLUGIN_DIR/$GUARD_NAME.sock
BEFORE_BIN=${BEFORE_BIN:-}
LOAD_PATH=${LOAD_PATH:-/v1.41/containers/json}
TAGS=${TAGS:-0}
BURST=${BURST:-1}
CALLS=${CALLS:-32}
SIZE_MIB=${SIZE_MIB:-14}
LOAD=${LOAD:-1}
SAVE=${SAVE:-1}
SAVE_MIB=${SAVE_MIB:-256}
SAVE_ROUNDS=${SAVE_ROUNDS:-6}
SAVE_DURATION=${SAVE_DURATION:-5s}
UPLOAD=${UPLOAD:-1}
UPLOAD_CALLS=${UPLOAD_CALLS:-32}
UPLOAD_MIB=${UPLOAD_MIB:-64}
BEFORE_NAME=pgbench-before-$$
BEFORE_SOCK=$PLUGIN_DIR/$BEFORE_NAME.sock
read -r -a TARGETS <<<"${TARGETS:-none floor guard proxy haproxy}"
TARGETS=(${TARGETS[*]//,/ })
PROXY_BEFORE_BIN=${PROXY_BEFORE_BIN:-}
if [[ -n $BEFORE_BIN ]]; then
	TARGETS+=(before)
fi
if [[ -n $PROXY_BEFORE_BIN ]]; then
	TARGETS+=(proxy-before)
fi

log() { printf 'run.sh: %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}
# logtail FILE: its last lines, indented, to put in a die message (the temp
# dir holding FILE is gone once the script exits, unless KEEP=1).
logtail() {
	printf '\n--- last lines of %s:\n' "$1"
	tail -n 15 "$1" 2>/dev/null | sed 's/^/    /'
}
# has TARGET: whether the run includes it.
has() {
	local t
	for t in "${TARGETS[@]}"; do
		[[ $t == "$1" ]] && return 0
	done
	return 1
}

[[ $(id -u) == 0 ]] || die "must run as root (dockerd needs it)"
[[ -z $BEFORE_BIN || -x $BEFORE_BIN ]] || die "BEFORE_BIN=$BEFORE_BIN is not executable"
[[ -z $PROXY_BEFORE_BIN || -x $PROXY_BEFORE_BIN ]] || die "PROXY_BEFORE_BIN=$PROXY_BEFORE_BIN is not executable"
((${#TARGETS[@]} > 0)) || die "TARGETS is empty"
for t in "${TARGETS[@]}"; do
	case $t in
	none | floor | guard | proxy | haproxy | before | proxy-before) ;;
	*) die "unknown target $t in TARGETS (none floor guard proxy haproxy)" ;;
	esac
done
[[ $(printf '%s\n' "${TARGETS[@]}" | sort | uniq -d) == "" ]] || die "a target is named twice in TARGETS"
if [[ -n $PG_ENGINE ]]; then
	ENGINE_DIR=$PG_CACHE/engines/$PG_ENGINE
	[[ -x $ENGINE_DIR/bin/dockerd ]] || die "engine $PG_ENGINE is not provisioned (sudo bash scripts/engines.sh provision $PG_ENGINE)"
	export PATH="$ENGINE_DIR/bin:$PATH"
	DAEMON_JSON=$(cat "$ENGINE_DIR/daemon.json")
	log "engine $PG_ENGINE: $(dockerd --version)"
fi
for cmd in go dockerd docker curl; do
	command -v "$cmd" >/dev/null || die "$cmd not found"
done
[[ -x /usr/bin/busybox ]] || die "/usr/bin/busybox not found (apt-get install busybox-static)"
if has haproxy; then
	command -v haproxy >/dev/null || die "haproxy not found (apt-get install haproxy, or leave haproxy out of TARGETS)"
fi

# Short on purpose: dockerd and containerd put unix sockets under here,
# and sun_path holds 107 bytes.
W=$(mktemp -d /tmp/pgb.XXXX)
declare -A DAEMON_PID=()
# The process in front of a target's dockerd: its plugin, or its proxy.
declare -A FRONT_PID=()
PLUGIN_PIDS=()

# stop PID: SIGTERM, then SIGKILL if it has not gone after $2 seconds.
stop() {
	local pid=$1 grace=$2 i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < grace * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "pid $pid ignored SIGTERM for ${grace}s; killing it"
	kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$? t pid m stoppers=()
	trap - EXIT INT TERM
	set +e
	# Proxies first: nothing should reach a daemon through them while it
	# shuts down.
	for t in proxy proxy-before haproxy; do
		[[ -n ${FRONT_PID[$t]:-} ]] && stop "${FRONT_PID[$t]}" 5
	done
	# Daemons next, since they may still call their plugin while shutting
	# down; in parallel, since each can take seconds.
	for t in "${!DAEMON_PID[@]}"; do
		stop "${DAEMON_PID[$t]}" 20 &
		stoppers+=($!)
	done
	# Only the stoppers: a bare wait would also wait for the plugins.
	for pid in "${stoppers[@]}"; do
		wait "$pid"
	done
	# A dockerd that had to be killed leaves its own containerd behind.
	for t in "${TARGETS[@]}"; do
		pid=$(cat "$W/$t/exec/containerd/containerd.pid" 2>/dev/null) || continue
		[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && stop "$pid" 5
	done
	for pid in "${PLUGIN_PIDS[@]}"; do
		stop "$pid" 5
	done
	rm -f "$FLOOR_SOCK" "$GUARD_SOCK" "$BEFORE_SOCK"
	# Same for mounts: dockerd unmounts its data root on a clean shutdown
	# only. Deepest first, so parents are free when their turn comes.
	awk -v w="$W/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r |
		while read -r m; do umount -l "$m"; done
	if [[ -n $KEEP ]]; then
		log "kept $W"
	else
		rm -rf "$W"
		((rc == 0)) || log "removed $W; KEEP=1 keeps it (daemon and plugin logs) for a look"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build ---------------------------------------------------------------

BIN=$W/bin
mkdir -p "$BIN"
log "building noopplugin, loadgen, burst and upload"
(cd "$ROOT" && go build -o "$BIN/noopplugin" ./bench/overhead/noopplugin &&
	go build -o "$BIN/loadgen" ./bench/overhead/loadgen &&
	go build -o "$BIN/burst" ./bench/overhead/burst &&
	go build -o "$BIN/upload" ./bench/overhead/upload) || die "build failed"

build_guard() {
	log "building bin/prune-guard"
	(cd "$ROOT" && go build -o bin/prune-guard ./cmd/prune-guard) || die "building prune-guard failed"
}
case $GUARD_BIN in
noop)
	log "GUARD_BIN=noop: the guard target runs the noop plugin, not prune-guard"
	if has proxy && [[ -z $PROXY_BIN ]]; then
		build_guard
		PROXY_BIN=$ROOT/bin/prune-guard
	fi
	;;
"")
	build_guard
	GUARD_BIN=$ROOT/bin/prune-guard
	;;
*)
	[[ -x $GUARD_BIN ]] || die "GUARD_BIN=$GUARD_BIN is not executable"
	;;
esac
PROXY_BIN=${PROXY_BIN:-$GUARD_BIN}
[[ -x $PROXY_BIN ]] || ! has proxy || die "PROXY_BIN=$PROXY_BIN is not executable"

# --- plugins ------------------------------------------------------------

# wait_plugin NAME SOCK PID: until the plugin answers the handshake dockerd
# will send it, or 10s.
wait_plugin() {
	local name=$1 sock=$2 pid=$3 i
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || die "$name exited$(logtail "$W/$name.log")"
		if [[ -S $sock ]] && curl -sf --max-time 1 --unix-socket "$sock" \
			-X POST http://plugin/Plugin.Activate 2>/dev/null | grep -q authz; then
			return 0
		fi
		sleep 0.1
	done
	die "$name did not answer on $sock within 10s$(logtail "$W/$name.log")"
}

mkdir -p "$PLUGIN_DIR"
for t in "${TARGETS[@]}"; do
	mkdir -p "$W/$t"
done

if has floor; then
	"$BIN/noopplugin" --socket "$FLOOR_SOCK" >"$W/floor-plugin.log" 2>&1 &
	FRONT_PID[floor]=$!
	PLUGIN_PIDS+=("$!")
	wait_plugin floor-plugin "$FLOOR_SOCK" "${FRONT_PID[floor]}"
fi

# The guard starts before its daemon exists (dockerd won't start without
# it), so it must not need the daemon until a request comes in.
if has guard; then
	if [[ $GUARD_BIN == noop ]]; then
		"$BIN/noopplugin" --socket "$GUARD_SOCK" >"$W/guard-plugin.log" 2>&1 &
	else
		"$GUARD_BIN" serve --socket "$GUARD_SOCK" --docker-host "unix://$W/guard/d.sock" \
			--audit-log "$W/audit.jsonl" >"$W/guard-plugin.log" 2>&1 &
	fi
	FRONT_PID[guard]=$!
	PLUGIN_PIDS+=("$!")
	wait_plugin guard-plugin "$GUARD_SOCK" "${FRONT_PID[guard]}"
fi

if has before; then
	"$BEFORE_BIN" serve --socket "$BEFORE_SOCK" --docker-host "unix://$W/before/d.sock" \
		--audit-log "$W/before-audit.jsonl" >"$W/before-plugin.log" 2>&1 &
	FRONT_PID[before]=$!
	PLUGIN_PIDS+=("$!")
	wait_plugin before-plugin "$BEFORE_SOCK" "${FRONT_PID[before]}"
fi

# --- daemons ------------------------------------------------------------

# start_daemon TARGET [DOCKERD FLAGS...]
start_daemon() {
	local t=$1 d=$W/$1
	shift
	# An empty config file of its own, so the host's /etc/docker/daemon.json
	# (which may name an authorization plugin) never leaks in.
	mkdir -p "$d"
	printf '%s\n' "$DAEMON_JSON" >"$d/daemon.json"
	dockerd --config-file "$d/daemon.json" --host "unix://$d/d.sock" --data-root "$d/data" --exec-root "$d/exec" \
		--pidfile "$d/d.pid" --iptables=false --bridge=none "$@" >"$d/dockerd.log" 2>&1 &
	DAEMON_PID[$t]=$!
}

# ping SOCK: whether an engine (or a proxy in front of one) answers OK.
ping() {
	[[ $(curl -s --max-time 1 --unix-socket "$1" http://docker/_ping 2>/dev/null) == OK ]]
}

# wait_daemon TARGET: until /_ping answers OK, or 60s (several dockerds and
# their containerds starting at once on 2 cores take a while).
wait_daemon() {
	local t=$1 d=$W/$1 i
	for ((i = 0; i < 600; i++)); do
		kill -0 "${DAEMON_PID[$t]}" 2>/dev/null ||
			die "dockerd ($t) exited$(logtail "$d/dockerd.log")"
		ping "$d/d.sock" && return 0
		sleep 0.1
	done
	die "dockerd ($t) did not answer /_ping within 60s$(logtail "$d/dockerd.log")"
}

log "starting dockerds in $W"
for t in "${TARGETS[@]}"; do
	case $t in
	floor) start_daemon floor --authorization-plugin="$FLOOR_NAME" ;;
	guard) start_daemon guard --authorization-plugin="$GUARD_NAME" ;;
	before) start_daemon before --authorization-plugin="$BEFORE_NAME" ;;
	*) start_daemon "$t" ;; # none, and the engines behind the proxies
	esac
done
for t in "${TARGETS[@]}"; do
	wait_daemon "$t"
done

# --- proxies ------------------------------------------------------------

# wait_front TARGET: until the proxy in front of TARGET's dockerd passes
# /_ping on, or 10s.
wait_front() {
	local t=$1 i
	for ((i = 0; i < 100; i++)); do
		kill -0 "${FRONT_PID[$t]}" 2>/dev/null || die "$t exited$(logtail "$W/$t.log")"
		ping "$W/$t/p.sock" && return 0
		sleep 0.1
	done
	die "$t did not answer on $W/$t/p.sock within 10s$(logtail "$W/$t.log")"
}

# start_proxy TARGET BIN: `BIN proxy` in front of TARGET's dockerd.
start_proxy() {
	local t=$1 bin=$2
	"$bin" proxy --listen "$W/$t/p.sock" --socket-group "" --docker-host "unix://$W/$t/d.sock" \
		--control-socket "$W/$t/ctl.sock" --audit-log "$W/$t-audit.jsonl" >"$W/$t.log" 2>&1 &
	FRONT_PID[$t]=$!
	wait_front "$t"
}
if has proxy; then
	start_proxy proxy "$PROXY_BIN"
fi
if has proxy-before; then
	start_proxy proxy-before "$PROXY_BEFORE_BIN"
fi

# haproxy as Tecnativa's docker-socket-proxy configures it (mode http,
# http-server-close: a new engine connection per request, minutes-long
# timeouts, requests filtered by method and path), with its TCP frontend
# replaced by a unix socket and the filter opened to what this benchmark
# sends (CONTAINERS=1 IMAGES=1 POST=1 in their terms). HAPROXY_REUSE=1
# keeps engine connections instead.
if has haproxy; then
	server_side="option http-server-close"
	if [[ -n $HAPROXY_REUSE ]]; then
		server_side=$'option http-keep-alive\n    http-reuse always'
	fi
	cat >"$W/haproxy.cfg" <<EOF
global
    maxconn 4000

defaults
    mode http
    $server_side
    timeout connect 10s
    timeout client 10m
    timeout server 10m
    timeout queue 1m
    timeout http-request 10s
    timeout http-keep-alive 10s
    maxconn 3000

frontend clients
    bind unix@$W/haproxy/p.sock mode 600
    http-request deny unless METH_GET || METH_POST
    http-request allow if { path,url_dec -m reg -i ^(/v[0-9.]+)?/(containers|images|_ping) }
    http-request deny
    default_backend engine

backend engine
    server engine unix@$W/haproxy/d.sock
EOF
	haproxy -c -q -f "$W/haproxy.cfg" >"$W/haproxy.log" 2>&1 || die "haproxy refused its configuration$(logtail "$W/haproxy.log")"
	haproxy -db -f "$W/haproxy.cfg" >>"$W/haproxy.log" 2>&1 &
	FRONT_PID[haproxy]=$!
	wait_front haproxy
	log "haproxy: $(haproxy -v | head -n 1)"
fi

# The socket clients use for each target.
client_sock() {
	case $1 in
	proxy | proxy-before | haproxy) echo "$W/$1/p.sock" ;;
	*) echo "$W/$1/d.sock" ;;
	esac
}

# --- fixtures -----------------------------------------------------------

# Five created (not started) containers per daemon, so /containers/json
# encodes a realistic list rather than an empty one. The image is
# FROM scratch plus a static busybox, built without the network. Made on
# each dockerd's own socket, behind any proxy.
CTX=$W/image
mkdir -p "$CTX"
cp /usr/bin/busybox "$CTX/busybox"
cat >"$CTX/Dockerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
CMD ["/bin/busybox", "sleep", "3600"]
EOF

for t in "${TARGETS[@]}"; do
	host=unix://$W/$t/d.sock
	log "creating fixtures on $t"
	# The legacy builder: dockerd 20.10 has it, and the CLI's BuildKit
	# path would need the buildx plugin.
	DOCKER_BUILDKIT=0 docker -H "$host" build -q -t pgbench:latest "$CTX" >"$W/$t/build.log" 2>&1 ||
		die "docker build on $t failed$(logtail "$W/$t/build.log")"
	for i in 1 2 3 4 5; do
		docker -H "$host" create --name "pgbench-$i" --label "pgbench=$i" pgbench:latest >/dev/null ||
			die "docker create on $t failed"
	done
done

# TAGS extra names for the fixture image, in one `docker load` of the saved
# image with its manifest's RepoTags rewritten: thousands of `docker tag`
# calls would take minutes. Long names, so 2000 of them make /images/json
# answer about 62 KiB, just under the 64 KiB dockerd forwards to AuthZRes.
if ((TAGS > 0)); then
	docker -H "unix://$W/${TARGETS[0]}/d.sock" save -o "$W/image.tar" pgbench:latest || die "docker save failed"
	python3 - "$W/image.tar" "$W/tags.tar" "$TAGS" <<'PY' || die "rewriting the image's tags failed"
import io, json, sys, tarfile
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tags = ["pgbench-large-response:t%05d" % i for i in range(n)]
with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
    for m in tin.getmembers():
        f = tin.extractfile(m) if m.isfile() else None
        if m.name == "manifest.json":
            man = json.load(f)
            man[0]["RepoTags"] = ["pgbench:latest"] + tags
            data = json.dumps(man).encode()
            m.size = len(data)
            f = io.BytesIO(data)
        elif m.name == "repositories":
            continue  # legacy; manifest.json names the tags
        tout.addfile(m, f)
PY
	for t in "${TARGETS[@]}"; do
		log "loading $TAGS tags on $t"
		docker -H "unix://$W/$t/d.sock" load -q -i "$W/tags.tar" >/dev/null || die "docker load on $t failed"
	done
	log "GET $LOAD_PATH answers $(curl -s --unix-socket "$W/${TARGETS[0]}/d.sock" "http://docker$LOAD_PATH" | wc -c) bytes"
fi

# big_image NAME MIB: builds NAME on the first target's dockerd, FROM
# scratch with MIB MiB of random bytes (which no compression shrinks), and
# saves it to $W/NAME.tar.
big_image() {
	local name=$1 mib=$2 ctx=$W/$1 host=unix://$W/${TARGETS[0]}/d.sock
	mkdir -p "$ctx"
	head -c "${mib}M" /dev/urandom >"$ctx/blob"
	printf 'FROM scratch\nCOPY blob /blob\n' >"$ctx/Dockerfile"
	DOCKER_BUILDKIT=0 docker -H "$host" build -q -t "$name:latest" "$ctx" >"$W/$name-build.log" 2>&1 ||
		die "building $name failed$(logtail "$W/$name-build.log")"
	rm -f "$ctx/blob"
	docker -H "$host" save -o "$W/$name.tar" "$name:latest" || die "docker save $name failed"
}

# Idle memory, before any load (VmRSS, kB).
for t in "${TARGETS[@]}"; do
	pid=${FRONT_PID[$t]:-}
	[[ -n $pid ]] || continue
	log "$t: pid $pid ($(tr '\0' ' ' </proc/$pid/cmdline | cut -c1-40)): idle $(awk '/^VmRSS/ { print $2, $3 }' /proc/$pid/status)"
done

# --- measure ------------------------------------------------------------

# Everything here shares the machine's cores with whatever else runs on it,
# so say if it is busy already; the paired per-round ratios tolerate some
# noise, not a parallel build. During the run, loadgen's "other processes'
# CPU" lines show who else was busy, turn by turn.
check_load() {
	local load cores
	read -r load _ </proc/loadavg
	cores=$(nproc)
	if awk -v l="$load" -v c="$cores" 'BEGIN { exit !(l > c) }'; then
		log "warning: load average $load on $cores cores $1; the figures will be noisy"
	fi
}

# loadgen_args TARGET...: appends to args the sockets and processes of
# those targets, and what to compare them to.
loadgen_args() {
	local t sockets="" compare=""
	for t in "$@"; do
		sockets+="${sockets:+,}$t=$(client_sock "$t")"
		if [[ -n ${FRONT_PID[$t]:-} ]]; then
			args+=(--cpu-pids "$t=${DAEMON_PID[$t]}+${FRONT_PID[$t]}" --plugin-pids "$t=${FRONT_PID[$t]}")
		else
			args+=(--cpu-pids "$t=${DAEMON_PID[$t]}")
		fi
		if [[ $t == none || $t == haproxy ]]; then
			compare+="${compare:+,}$t"
		fi
	done
	args+=(--socket "$sockets")
	if [[ -n $compare ]]; then
		args+=(--compare "$compare")
	fi
	if [[ -n $JSON ]]; then
		args+=(--json)
	fi
}

check_load "before measuring"
rc=0
if [[ $LOAD == 1 ]]; then
	baseline=none
	has floor && baseline=floor
	args=(--path "$LOAD_PATH" --baseline "$baseline"
		--concurrency "$CONCURRENCY" --duration "$DURATION" --rounds "$ROUNDS"
		--warmup "$WARMUP" --pause "$PAUSE")
	loadgen_args "${TARGETS[@]}"
	log "measuring: ${TARGETS[*]}, $ROUNDS rounds of $DURATION each, concurrency $CONCURRENCY"
	"$BIN/loadgen" "${args[@]}" || rc=$?
	if [[ -f $W/audit.jsonl ]]; then
		log "guard audit log: $(wc -l <"$W/audit.jsonl") lines, $(du -h "$W/audit.jsonl" | cut -f1)"
	fi
	for t in proxy proxy-before haproxy; do
		[[ -n ${FRONT_PID[$t]:-} ]] || continue
		log "$t after the load: $(awk '/^Vm(RSS|HWM)/ { printf "%s %s %s  ", $1, $2, $3 }' "/proc/${FRONT_PID[$t]}/status")"
	done
fi
if [[ $LOAD == 1 && $BURST == 1 ]] && { has floor || has before || has guard; }; then
	log "memory burst: $CALLS concurrent $SIZE_MIB MiB calls straight to each plugin's socket"
	for t in floor before guard; do
		has "$t" || continue
		"$BIN/burst" --label "$t" --socket "$PLUGIN_DIR/pgbench-$t-$$.sock" --pid "${FRONT_PID[$t]}" \
			--calls "$CALLS" --size-mib "$SIZE_MIB" || rc=1
	done
fi

# The proxy's phases: a large response, many large requests. Only the
# engine alone (none) and the proxies take part.
fronts=()
for t in none proxy proxy-before haproxy; do
	if has "$t"; then
		fronts+=("$t")
	fi
done
if has proxy && [[ $SAVE == 1 ]]; then
	log "save: building a $SAVE_MIB MiB image"
	big_image pgbench-save "$SAVE_MIB"
	for t in "${fronts[@]}"; do
		if [[ $t != "${TARGETS[0]}" ]]; then
			docker -H "unix://$W/$t/d.sock" load -q -i "$W/pgbench-save.tar" >/dev/null || die "docker load on $t failed"
		fi
	done
	log "save: GET /images/pgbench-save/get (saved: $(stat -c %s "$W/pgbench-save.tar") bytes), one at a time: ${fronts[*]}, $SAVE_ROUNDS rounds of $SAVE_DURATION"
	args=(--path "/v1.41/images/pgbench-save:latest/get" --baseline "${fronts[0]}"
		--concurrency 1 --duration "$SAVE_DURATION" --rounds "$SAVE_ROUNDS" --warmup "$WARMUP" --pause "$PAUSE"
		--timeout 2m)
	loadgen_args "${fronts[@]}"
	"$BIN/loadgen" "${args[@]}" || rc=$?
fi
if has proxy && [[ $UPLOAD == 1 ]]; then
	log "upload: building a $UPLOAD_MIB MiB image"
	big_image pgbench-upload "$UPLOAD_MIB"
	for t in proxy proxy-before haproxy; do
		has "$t" || continue
		log "upload: $UPLOAD_CALLS concurrent docker loads of it through $t"
		"$BIN/upload" --label "$t" --socket "$W/$t/p.sock" --pid "${FRONT_PID[$t]}" --calls "$UPLOAD_CALLS" \
			--file "$W/pgbench-upload.tar" || rc=1
	done
fi
# The measurements' verdict (non-zero if any request failed) is the script's.
[[ $rc == 0 ]] || exit "$rc"
