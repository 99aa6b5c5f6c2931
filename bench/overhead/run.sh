#!/usr/bin/env bash
# Overhead benchmark: what prune-guard costs on every Docker API call.
#
# Starts three private dockerds that differ only in their authorization
# plugin, and loads all three with the same GET (default
# /v1.41/containers/json, over 5 created containers) from bench/overhead/loadgen:
#
#   none   no --authorization-plugin: dockerd alone.
#   floor  --authorization-plugin=pgbench-floor-PID, the do-nothing plugin
#          in noopplugin/: the price of the authz protocol itself (two HTTP
#          round trips over a unix socket and the JSON per API call).
#   guard  --authorization-plugin=pgbench-guard-PID, the real
#          `bin/prune-guard serve`, built from this tree.
#
# Rounds are interleaved, in an order that rotates and every third round
# reverses, so noise on the machine and the position in a round hit all
# three alike. How to read the table:
#
#   vs floor         median over rounds of the target's req/s divided by
#                    floor's in the same round; `per-round range` is how far
#                    those ratios spread.
#   cpu/req          CPU time of the target's dockerd and plugin per
#                    request; `cpu/req vs floor` is paired the same way.
#                    It barely moves when other work shares the cores, so
#                    trust it over req/s on a busy machine.
#
# none's ratios are what any authz plugin costs (dockerd sends it every
# request and response) and are not ours to win back; guard's are
# prune-guard's own overhead. The target: guard req/s >= 0.95 x floor
# (about cpu/req <= 1.05 x floor); compare p50/p99 the same way. If the
# req/s range is wider than that margin the machine was too busy to tell;
# run again or with more rounds. GUARD_BIN=noop (floor against floor) shows
# how close to 1.000 this machine measures. loadgen exits non-zero if any
# request failed, and so does this script.
#
# Usage (from the repo root, as root, since dockerd needs it):
#
#   bash bench/overhead/run.sh
#
# Environment:
#   DURATION=5s      length of one target's turn in a round
#   ROUNDS=12        number of interleaved rounds (a multiple of 6 balances
#                    the order for three targets; 6 is too few to resolve 5%
#                    on a shared 2-core machine: A/A runs came out 0.94-1.08)
#   CONCURRENCY=8    keep-alive connections per target
#   WARMUP=1s        unmeasured load per target before round 1
#   PAUSE=1s         idle time before each turn, so one daemon's aftermath
#                    (GC) is not charged to the next
#   GUARD_BIN=PATH   use this prune-guard binary instead of building one;
#                    GUARD_BIN=noop runs the noop plugin as the guard too
#                    (to test the harness before prune-guard builds)
#   JSON=1           print loadgen's JSON instead of the table
#   KEEP=1           keep the temp dir (daemon logs, audit log) for a look
#   BEFORE_BIN=PATH  add a fourth target, `before`: this prune-guard binary
#                    (an older build), run like guard, in the same rounds
#   LOAD_PATH=PATH   the GET to load (/v1.41/containers/json); with
#   TAGS=N           N extra tags of the fixture image per daemon (0), so
#                    that LOAD_PATH=/v1.41/images/json TAGS=2000 answers
#                    ~62 KiB, which dockerd sends whole in every AuthZRes
#   BURST=0          skip the memory burst: after the load, CALLS (32)
#                    concurrent SIZE_MIB (14) MiB calls straight to each
#                    plugin's socket, reporting idle and peak RSS
#   PG_ENGINE=NAME   run on an engine scripts/engines.sh provisioned (20.10,
#                    26.1, 28.5, 28.5-containerd, 29): its binaries first on
#                    PATH, its daemon.json; unset, dockerd and docker from PATH
#   PG_CACHE=DIR     where those engines are (default /var/cache/prune-guard-ci)
#
# Run it alone: other engines on a 2-core machine move the figures. CI and
# the e2e tests take /tmp/pg-e2e.lock; so should you:
#
#   flock /tmp/pg-e2e.lock env PG_ENGINE=28.5 bash bench/overhead/run.sh
set -euo pipefail

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-12}
CONCURRENCY=${CONCURRENCY:-8}
WARMUP=${WARMUP:-1s}
PAUSE=${PAUSE:-1s}
GUARD_BIN=${GUARD_BIN:-}
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
BEFORE_NAME=pgbench-before-$$
BEFORE_SOCK=$PLUGIN_DIR/$BEFORE_NAME.sock
TARGETS=(none floor guard)
if [[ -n $BEFORE_BIN ]]; then
	TARGETS=(none floor before guard)
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

[[ $(id -u) == 0 ]] || die "must run as root (dockerd needs it)"
[[ -z $BEFORE_BIN || -x $BEFORE_BIN ]] || die "BEFORE_BIN=$BEFORE_BIN is not executable"
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

# Short on purpose: dockerd and containerd put unix sockets under here,
# and sun_path holds 107 bytes.
W=$(mktemp -d /tmp/pgb.XXXX)
declare -A DAEMON_PID=()
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
	# Daemons first, since they may still call their plugin while shutting
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
log "building noopplugin and loadgen"
(cd "$ROOT" && go build -o "$BIN/noopplugin" ./bench/overhead/noopplugin &&
	go build -o "$BIN/loadgen" ./bench/overhead/loadgen &&
	go build -o "$BIN/burst" ./bench/overhead/burst) || die "build failed"

case $GUARD_BIN in
noop)
	log "GUARD_BIN=noop: the guard target runs the noop plugin, not prune-guard"
	;;
"")
	log "building bin/prune-guard"
	(cd "$ROOT" && go build -o bin/prune-guard ./cmd/prune-guard) || die "building prune-guard failed"
	GUARD_BIN=$ROOT/bin/prune-guard
	;;
*)
	[[ -x $GUARD_BIN ]] || die "GUARD_BIN=$GUARD_BIN is not executable"
	;;
esac

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

"$BIN/noopplugin" --socket "$FLOOR_SOCK" >"$W/floor-plugin.log" 2>&1 &
FLOOR_PLUGIN_PID=$!
PLUGIN_PIDS+=("$FLOOR_PLUGIN_PID")
wait_plugin floor-plugin "$FLOOR_SOCK" "$FLOOR_PLUGIN_PID"

# The guard starts before its daemon exists (dockerd won't start without
# it), so it must not need the daemon until a request comes in.
if [[ $GUARD_BIN == noop ]]; then
	"$BIN/noopplugin" --socket "$GUARD_SOCK" >"$W/guard-plugin.log" 2>&1 &
else
	"$GUARD_BIN" serve --socket "$GUARD_SOCK" --docker-host "unix://$W/guard/d.sock" \
		--audit-log "$W/audit.jsonl" >"$W/guard-plugin.log" 2>&1 &
fi
GUARD_PLUGIN_PID=$!
PLUGIN_PIDS+=("$GUARD_PLUGIN_PID")
wait_plugin guard-plugin "$GUARD_SOCK" "$GUARD_PLUGIN_PID"

if [[ -n $BEFORE_BIN ]]; then
	"$BEFORE_BIN" serve --socket "$BEFORE_SOCK" --docker-host "unix://$W/before/d.sock" \
		--audit-log "$W/before-audit.jsonl" >"$W/before-plugin.log" 2>&1 &
	BEFORE_PLUGIN_PID=$!
	PLUGIN_PIDS+=("$BEFORE_PLUGIN_PID")
	wait_plugin before-plugin "$BEFORE_SOCK" "$BEFORE_PLUGIN_PID"
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

# wait_daemon TARGET: until /_ping answers OK, or 60s (three dockerds and
# their containerds starting at once on 2 cores take a while).
wait_daemon() {
	local t=$1 d=$W/$1 i
	for ((i = 0; i < 600; i++)); do
		kill -0 "${DAEMON_PID[$t]}" 2>/dev/null ||
			die "dockerd ($t) exited$(logtail "$d/dockerd.log")"
		if [[ $(curl -s --max-time 1 --unix-socket "$d/d.sock" http://docker/_ping 2>/dev/null) == OK ]]; then
			return 0
		fi
		sleep 0.1
	done
	die "dockerd ($t) did not answer /_ping within 60s$(logtail "$d/dockerd.log")"
}

log "starting dockerds in $W"
start_daemon none
start_daemon floor --authorization-plugin="$FLOOR_NAME"
start_daemon guard --authorization-plugin="$GUARD_NAME"
[[ -n $BEFORE_BIN ]] && start_daemon before --authorization-plugin="$BEFORE_NAME"
for t in "${TARGETS[@]}"; do
	wait_daemon "$t"
done

# --- fixtures -----------------------------------------------------------

# Five created (not started) containers per daemon, so /containers/json
# encodes a realistic list rather than an empty one. The image is
# FROM scratch plus a static busybox, built without the network.
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
	docker -H "unix://$W/none/d.sock" save -o "$W/image.tar" pgbench:latest || die "docker save failed"
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
	log "GET $LOAD_PATH answers $(curl -s --unix-socket "$W/none/d.sock" "http://docker$LOAD_PATH" | wc -c) bytes"
fi

# Idle memory, before any load (VmRSS, kB).
for pid in $FLOOR_PLUGIN_PID ${BEFORE_PLUGIN_PID:-} $GUARD_PLUGIN_PID; do
	log "plugin pid $pid ($(tr -d '\0' </proc/$pid/cmdline | cut -c1-40)): idle $(awk '/^VmRSS/ { print $2, $3 }' /proc/$pid/status)"
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

check_load "before measuring"
sockets="none=$W/none/d.sock,floor=$W/floor/d.sock"
[[ -n $BEFORE_BIN ]] && sockets+=",before=$W/before/d.sock"
sockets+=",guard=$W/guard/d.sock"
args=(--socket "$sockets" --path "$LOAD_PATH"
	--cpu-pids "none=${DAEMON_PID[none]}"
	--cpu-pids "floor=${DAEMON_PID[floor]}+$FLOOR_PLUGIN_PID" --plugin-pids "floor=$FLOOR_PLUGIN_PID"
	--cpu-pids "guard=${DAEMON_PID[guard]}+$GUARD_PLUGIN_PID" --plugin-pids "guard=$GUARD_PLUGIN_PID"
	--concurrency "$CONCURRENCY" --duration "$DURATION" --rounds "$ROUNDS"
	--warmup "$WARMUP" --pause "$PAUSE")
if [[ -n $BEFORE_BIN ]]; then
	args+=(--cpu-pids "before=${DAEMON_PID[before]}+$BEFORE_PLUGIN_PID" --plugin-pids "before=$BEFORE_PLUGIN_PID")
fi
[[ -n $JSON ]] && args+=(--json)
log "measuring: ${TARGETS[*]}, $ROUNDS rounds of $DURATION each, concurrency $CONCURRENCY"
rc=0
"$BIN/loadgen" "${args[@]}" || rc=$?
if [[ -f $W/audit.jsonl ]]; then
	log "guard audit log: $(wc -l <"$W/audit.jsonl") lines, $(du -h "$W/audit.jsonl" | cut -f1)"
fi
if [[ $BURST == 1 ]]; then
	log "memory burst: $CALLS concurrent $SIZE_MIB MiB calls straight to each plugin's socket"
	"$BIN/burst" --label floor --socket "$FLOOR_SOCK" --pid "$FLOOR_PLUGIN_PID" --calls "$CALLS" --size-mib "$SIZE_MIB" || rc=1
	if [[ -n $BEFORE_BIN ]]; then
		"$BIN/burst" --label before --socket "$BEFORE_SOCK" --pid "$BEFORE_PLUGIN_PID" --calls "$CALLS" --size-mib "$SIZE_MIB" || rc=1
	fi
	"$BIN/burst" --label guard --socket "$GUARD_SOCK" --pid "$GUARD_PLUGIN_PID" --calls "$CALLS" --size-mib "$SIZE_MIB" || rc=1
fi
# loadgen's verdict (non-zero if any request failed) is the script's.
[[ $rc == 0 ]] || exit "$rc"
