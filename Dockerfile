# The managed plugin's root filesystem: nothing but the static prune-guard
# binary. FROM scratch so that it builds offline; build the binary first
# (scripts/build-plugin.sh does both):
#
#   CGO_ENABLED=0 go build -trimpath -o prune-guard ./cmd/prune-guard
#   docker build -t prune-guard-rootfs .
#
# config.json, not this image, decides how the plugin runs; the entrypoint
# is here only so that "docker create" accepts the image for export.
FROM scratch
COPY prune-guard /prune-guard
ENTRYPOINT ["/prune-guard"]
