#!/usr/bin/env bash
# Builds prune-guard as a managed (v2) Docker plugin and creates it, disabled,
# on the engine the docker CLI talks to (DOCKER_HOST, else the local one):
#   1. a static binary (CGO_ENABLED=0: the plugin's root filesystem has no libc);
#   2. the Dockerfile's FROM scratch image around it (nothing to pull: builds offline);
#   3. that image's filesystem, exported, as rootfs/ beside config.json;
#   4. docker plugin create NAME (default prune-guard).
# Then set its mounts if needed and enable it (docs/install.md):
#   docker plugin enable prune-guard
# The name must be free: an existing plugin is never replaced here.
#
# Usage: scripts/build-plugin.sh [NAME]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
# The classic builder works with every engine and needs no buildx.
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}"

name="${1:-prune-guard}"
work="$(mktemp -d)"
cid=""
iid=""
cleanup() {
	[[ -n $cid ]] && docker rm "$cid" >/dev/null
	# The build image is untagged; if it cannot go now (an active CI run
	# blocks image deletes), any later "docker image prune" removes it.
	[[ -n $iid ]] && { docker rmi "$iid" >/dev/null || echo "build-plugin: left build image $iid behind" >&2; }
	rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/context" "$work/plugin/rootfs"
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$work/context/prune-guard" ./cmd/prune-guard
docker build --quiet --iidfile "$work/iid" --file Dockerfile "$work/context" >/dev/null
iid="$(cat "$work/iid")"
cid="$(docker create "$iid")"
docker export "$cid" | tar -x -C "$work/plugin/rootfs"
cp config.json "$work/plugin/config.json"
docker plugin create "$name" "$work/plugin"
echo "build-plugin: created plugin $name (disabled); next: docker plugin enable $name"
