#!/usr/bin/env bash
# Provisions the Docker Engines the end-to-end suite runs on, without
# changing the system's packages, and caches them keyed by version.
#
#   sudo bash scripts/engines.sh provision [ENGINE...]   # default: all
#   sudo bash scripts/engines.sh list                    # the engine names
#   sudo bash scripts/engines.sh dir ENGINE              # where ENGINE lives
#
# Engines (README.md and docs/install.md carry the same table):
#
#   20.10            Debian bookworm docker.io 20.10.24 (the system's), overlay2
#   26.1             Debian trixie docker.io 26.1.5 + containerd 1.7.24, overlay2
#   28.5             Debian forky docker.io 28.5.2 + containerd 2.1.9, overlay2
#   28.5-containerd  the same with the containerd image store
#   29               moby v2.0.0-beta.24 (Docker 29, API 1.56) built from its Go
#                    module, forky's containerd 2.1.9, runc 1.3.3 built from its
#                    Go module; containerd image store (29's default)
#
# Each engine becomes a folder $PG_CACHE/engines/NAME holding bin/ (dockerd,
# containerd, containerd-shim-runc-v2, runc, docker-init, docker-proxy and the
# docker CLI the suite drives it with), daemon.json (what the engine's private
# daemon.json starts from) and versions (what bin/ holds). internal/enginetest
# reads that folder when PG_ENGINE=NAME. Docker compose v2 (forky's
# docker-compose, a CLI plugin) is provisioned with every engine at
# $PG_CACHE/compose/VERSION/docker-compose and linked as
# $PG_CACHE/engines/NAME/cli-plugins/docker-compose.
#
# Docker buildx (forky's docker-buildx, a CLI plugin too) is provisioned
# with every engine at $PG_CACHE/buildx/VERSION/docker-buildx and linked as
# $PG_CACHE/engines/NAME/opt-in-plugins/docker-buildx, not in cli-plugins/:
# a CLI from 23.0 on that has buildx (and BuildKit not disabled) turns
# "docker builder prune" into "docker buildx prune", which sends BuildKit's
# gRPC inside POST /grpc instead of REST POST /build/prune, and the
# end-to-end tests of build-cache prunes need the REST request. A test opts
# in (enginetest.Options.Buildx).
#
# Trixie and forky packages come through a private apt configuration (own
# sources list, lists and cache under $PG_CACHE/apt) and are unpacked with
# dpkg -x; nothing is installed. The archive address is the one the system's
# own apt sources name. Their binaries run on bookworm's libc, except forky's
# runc (it needs glibc 2.38), so 26.1 and 28.5 run bookworm's runc 1.1.5.
# Docker 29 asks runc for a time namespace (runc >= 1.2) and bookworm's crun
# refuses its runtime spec, so runc 1.3.3 is built from its Go module with
# seccomp (Debian's libseccomp-dev, installed by .ci/run).
#
# Environment: PG_CACHE (default /var/cache/prune-guard-ci).
set -euo pipefail

PG_CACHE=${PG_CACHE:-/var/cache/prune-guard-ci}
ALL_ENGINES=(20.10 26.1 28.5 28.5-containerd 29)

# Pinned upstream versions. A Debian revision is taken as the archive
# offers it (the suite's newest build of that upstream version), and the
# cache is keyed by the full version that was fetched.
TRIXIE_DOCKER=26.1.5
TRIXIE_CONTAINERD=1.7.24
FORKY_DOCKER=28.5.2
FORKY_CONTAINERD=2.1.9
FORKY_COMPOSE=2.40.3
FORKY_BUILDX=0.29.1
MOBY_V2=v2.0.0-beta.24
RUNC=v1.3.3

log() { printf 'engines.sh: %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

# --- private apt -----------------------------------------------------------

APT_DIR=$PG_CACHE/apt
# The lists are refreshed once per run of this script. deb runs in command
# substitutions (subshells), so the mark is a file named after this
# script's process, not a variable.
APT_MARK=$APT_DIR/.updated-by-$$
trap 'rm -f "$APT_MARK"' EXIT

# archive_uri prints the Debian archive address the system's apt sources
# use for the main archive (not the security one).
archive_uri() {
	local f uri
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -e $f ]] || continue
		uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' "$f")
		[[ -n $uri ]] && { echo "$uri"; return; }
	done
	if [[ -e /etc/apt/sources.list ]]; then
		uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
		[[ -n $uri ]] && { echo "$uri"; return; }
	fi
	die "no Debian archive address in the system's apt sources"
}

apt_opts() {
	echo "-o Dir::Etc::sourcelist=$APT_DIR/sources.list -o Dir::Etc::sourceparts=-" \
		"-o Dir::State::Lists=$APT_DIR/lists -o Dir::Cache=$APT_DIR/cache" \
		"-o Dir::Etc::preferences=$APT_DIR/preferences -o Dir::Etc::preferencesparts=-" \
		"-o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false" \
		"-o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false" \
		"-o Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false" \
		"-o Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"
}

# apt_update refreshes the private lists, once per run.
apt_update() {
	[[ -e $APT_MARK ]] && return
	local uri
	uri=$(archive_uri)
	mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
	cat >"$APT_DIR/sources.list" <<-EOF
		deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main
		deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri forky main
	EOF
	: >"$APT_DIR/preferences"
	log "apt-get update (private: trixie, forky)"
	# shellcheck disable=SC2046
	apt-get -q $(apt_opts) update >"$APT_DIR/update.log" 2>&1 ||
		die "private apt-get update failed: $(tail -5 "$APT_DIR/update.log")"
	touch "$APT_MARK"
}

# deb_version SUITE PKG UPSTREAM prints the full Debian version of PKG's
# UPSTREAM version in SUITE.
deb_version() {
	local suite=$1 pkg=$2 up=$3 v
	# shellcheck disable=SC2046
	v=$(apt-cache $(apt_opts) madison "$pkg" |
		awk -F' *[|] *' -v s="$suite/main" -v up="$up" '
			{ split($3, w, " "); if (w[2] == s && (index($2, up "+") == 1 || index($2, up "~") == 1 || index($2, up "-") == 1)) { print $2; exit } }')
	[[ -n $v ]] || die "$suite offers no $pkg $up (apt-cache madison $pkg: $(apt-cache $(apt_opts) madison "$pkg" | tr '\n' ';'))"
	echo "$v"
}

# deb SUITE PKG UPSTREAM prints the folder PKG is unpacked in, fetching
# and unpacking it first if the cache has no build of UPSTREAM.
deb() {
	local suite=$1 pkg=$2 up=$3 d v tmp
	for d in "$PG_CACHE/deb/$pkg/$up"[-+~]*; do
		if [[ -e $d/.done ]]; then
			echo "$d"
			return
		fi
	done
	apt_update
	v=$(deb_version "$suite" "$pkg" "$up")
	d=$PG_CACHE/deb/$pkg/$v
	tmp=$(mktemp -d "$PG_CACHE/tmp.XXXXXX")
	log "fetching $pkg=$v ($suite)"
	# shellcheck disable=SC2046
	(cd "$tmp" && apt-get -q $(apt_opts) download "$pkg=$v" >download.log 2>&1) ||
		die "apt-get download $pkg=$v failed: $(tail -5 "$tmp/download.log")"
	mkdir -p "$tmp/root"
	dpkg -x "$tmp"/*.deb "$tmp/root"
	touch "$tmp/root/.done"
	rm -rf "$d"
	mkdir -p "$(dirname "$d")"
	mv "$tmp/root" "$d"
	rm -rf "$tmp"
	echo "$d"
}

# --- builds from Go modules -----------------------------------------------

gobin() {
	if command -v go >/dev/null; then command -v go; elif [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; else die "go not found"; fi
}

# moby_v2 prints the path of dockerd built from moby's v2 module.
moby_v2() {
	local d=$PG_CACHE/build/moby-$MOBY_V2 tmp
	if [[ ! -e $d/.done ]]; then
		tmp=$(mktemp -d "$PG_CACHE/tmp.XXXXXX")
		log "building dockerd from github.com/moby/moby/v2@$MOBY_V2 (about 5 minutes on 2 cores)"
		CGO_ENABLED=0 GOBIN=$tmp "$(gobin)" install \
			-tags exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper \
			-ldflags "-X github.com/moby/moby/v2/dockerversion.Version=${MOBY_V2#v} -X github.com/moby/moby/v2/dockerversion.GitCommit=$MOBY_V2" \
			"github.com/moby/moby/v2/cmd/dockerd@$MOBY_V2" >"$tmp/build.log" 2>&1 ||
			die "building dockerd $MOBY_V2 failed: $(tail -20 "$tmp/build.log")"
		touch "$tmp/.done"
		rm -rf "$d"
		mkdir -p "$(dirname "$d")"
		mv "$tmp" "$d"
	fi
	echo "$d/dockerd"
}

# runc_build prints the path of runc built from its Go module, with seccomp.
# The module's go.mod replaces opencontainers/selinux with a folder the
# module zip does not carry, so the replace is dropped (the module then
# uses the selinux release it requires) and the vendor folder is ignored.
runc_build() {
	local d=$PG_CACHE/build/runc-$RUNC tmp src
	if [[ ! -e $d/.done ]]; then
		pkg-config --exists libseccomp || die "runc needs libseccomp-dev (apt-get install libseccomp-dev pkg-config)"
		tmp=$(mktemp -d "$PG_CACHE/tmp.XXXXXX")
		log "building runc $RUNC from its Go module"
		src=$(cd "$tmp" && "$(gobin)" mod download -json "github.com/opencontainers/runc@$RUNC" |
			awk -F'"' '/"Dir":/ {print $4}')
		[[ -d $src ]] || die "go mod download github.com/opencontainers/runc@$RUNC gave no folder"
		cp -r "$src" "$tmp/src"
		chmod -R u+w "$tmp/src"
		(cd "$tmp/src" && "$(gobin)" mod edit -dropreplace github.com/opencontainers/selinux &&
			CGO_ENABLED=1 "$(gobin)" build -mod=mod -trimpath -tags seccomp \
				-ldflags "-X main.version=${RUNC#v}" -o "$tmp/runc" .) >"$tmp/build.log" 2>&1 ||
			die "building runc $RUNC failed: $(tail -20 "$tmp/build.log")"
		rm -rf "$tmp/src"
		touch "$tmp/.done"
		rm -rf "$d"
		mkdir -p "$(dirname "$d")"
		mv "$tmp" "$d"
	fi
	echo "$d/runc"
}

# --- engines ---------------------------------------------------------------

# sysbin NAME prints the system's binary NAME from bookworm's packages.
sysbin() {
	local p
	for p in "/usr/sbin/$1" "/usr/bin/$1" "/sbin/$1"; do
		[[ -x $p ]] && { echo "$p"; return; }
	done
	die "$1 is not installed (Debian bookworm: docker.io, containerd, runc, tini)"
}

compose() {
	local d=$PG_CACHE/compose/$FORKY_COMPOSE src
	if [[ ! -e $d/.done ]]; then
		src=$(deb forky docker-compose "$FORKY_COMPOSE")
		mkdir -p "$d"
		ln -sfn "$src/usr/libexec/docker/cli-plugins/docker-compose" "$d/docker-compose"
		touch "$d/.done"
	fi
	echo "$d/docker-compose"
}

# buildx prints the path of forky's buildx CLI plugin, fetching it first if
# the cache has none of $FORKY_BUILDX. Forky's, as compose's: the suite
# that ships the CLI 28.5.2 most engines are driven with.
buildx() {
	local d=$PG_CACHE/buildx/$FORKY_BUILDX src
	if [[ ! -e $d/.done ]]; then
		src=$(deb forky docker-buildx "$FORKY_BUILDX")
		mkdir -p "$d"
		ln -sfn "$src/usr/libexec/docker/cli-plugins/docker-buildx" "$d/docker-buildx"
		touch "$d/.done"
	fi
	echo "$d/docker-buildx"
}

# link_engine NAME DAEMON_JSON NAME=PATH... makes the engine's folder anew:
# bin/ with one link per binary, daemon.json, cli-plugins/ (what every
# test's CLI has), opt-in-plugins/ (what a test asks for) and versions.
link_engine() {
	local name=$1 daemon_json=$2 d tmp kv
	shift 2
	d=$PG_CACHE/engines/$name
	tmp=$(mktemp -d "$PG_CACHE/tmp.XXXXXX")
	mkdir -p "$tmp/bin" "$tmp/cli-plugins" "$tmp/opt-in-plugins"
	for kv in "$@"; do
		[[ -x ${kv#*=} ]] || die "$name: ${kv#*=} is missing"
		ln -s "${kv#*=}" "$tmp/bin/${kv%%=*}"
	done
	ln -s "$(compose)" "$tmp/cli-plugins/docker-compose"
	ln -s "$(buildx)" "$tmp/opt-in-plugins/docker-buildx"
	printf '%s\n' "$daemon_json" >"$tmp/daemon.json"
	{
		echo "engine $name"
		"$tmp/bin/dockerd" --version
		"$tmp/bin/containerd" --version
		"$tmp/bin/runc" --version | head -1
		"$tmp/bin/docker" --version
		"$tmp/cli-plugins/docker-compose" version
		"$tmp/opt-in-plugins/docker-buildx" version
	} >"$tmp/versions" 2>&1 || die "$name: a binary does not run: $(cat "$tmp/versions")"
	rm -rf "$d"
	mkdir -p "$(dirname "$d")"
	mv "$tmp" "$d"
	chmod 755 "$d"
}

provision_one() {
	local name=$1 io cd cli
	case $name in
	20.10)
		link_engine "$name" '{}' dockerd="$(sysbin dockerd)" docker-proxy="$(sysbin docker-proxy)" \
			containerd="$(sysbin containerd)" containerd-shim-runc-v2="$(sysbin containerd-shim-runc-v2)" \
			runc="$(sysbin runc)" docker-init="$(sysbin docker-init)" docker="/usr/bin/docker"
		grep -q '20\.10\.24' "$PG_CACHE/engines/$name/versions" || die "20.10: /usr/sbin/dockerd is not 20.10.24"
		;;
	26.1)
		io=$(deb trixie docker.io "$TRIXIE_DOCKER")
		cd=$(deb trixie containerd "$TRIXIE_CONTAINERD")
		cli=$(deb trixie docker-cli "$TRIXIE_DOCKER")
		link_engine "$name" '{}' dockerd="$io/usr/sbin/dockerd" docker-proxy="$io/usr/sbin/docker-proxy" \
			containerd="$cd/usr/bin/containerd" containerd-shim-runc-v2="$cd/usr/bin/containerd-shim-runc-v2" \
			runc="$(sysbin runc)" docker-init="$(sysbin docker-init)" docker="$cli/usr/bin/docker"
		;;
	28.5 | 28.5-containerd)
		io=$(deb forky docker.io "$FORKY_DOCKER")
		cd=$(deb forky containerd "$FORKY_CONTAINERD")
		cli=$(deb forky docker-cli "$FORKY_DOCKER")
		local dj='{}'
		[[ $name == 28.5-containerd ]] && dj='{"features": {"containerd-snapshotter": true}}'
		link_engine "$name" "$dj" dockerd="$io/usr/sbin/dockerd" docker-proxy="$io/usr/sbin/docker-proxy" \
			containerd="$cd/usr/bin/containerd" containerd-shim-runc-v2="$cd/usr/bin/containerd-shim-runc-v2" \
			runc="$(sysbin runc)" docker-init="$(sysbin docker-init)" docker="$cli/usr/bin/docker"
		;;
	29)
		io=$(deb forky docker.io "$FORKY_DOCKER") # docker-proxy
		cd=$(deb forky containerd "$FORKY_CONTAINERD")
		cli=$(deb forky docker-cli "$FORKY_DOCKER")
		link_engine "$name" '{}' dockerd="$(moby_v2)" docker-proxy="$io/usr/sbin/docker-proxy" \
			containerd="$cd/usr/bin/containerd" containerd-shim-runc-v2="$cd/usr/bin/containerd-shim-runc-v2" \
			runc="$(runc_build)" docker-init="$(sysbin docker-init)" docker="$cli/usr/bin/docker"
		;;
	*) die "unknown engine $name (known: ${ALL_ENGINES[*]})" ;;
	esac
	log "$name ready: $(sed -n 2p "$PG_CACHE/engines/$name/versions")"
}

main() {
	local cmd=${1:-}
	shift || true
	case $cmd in
	provision)
		(($#)) || set -- "${ALL_ENGINES[@]}"
		mkdir -p "$PG_CACHE"
		local e
		for e in "$@"; do provision_one "$e"; done
		;;
	list) printf '%s\n' "${ALL_ENGINES[@]}" ;;
	dir)
		[[ $# == 1 ]] || die "usage: engines.sh dir ENGINE"
		echo "$PG_CACHE/engines/$1"
		;;
	*) die "usage: engines.sh provision [ENGINE...] | list | dir ENGINE" ;;
	esac
}

main "$@"
