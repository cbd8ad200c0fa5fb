#!/bin/sh
# Builds every binary of the image as a static executable into the folder
# given as $1. The Dockerfile runs it, and .ci/run runs it outside Docker, so
# that CI checks the image's build without a Docker engine.
#   selector, worker   the service and the worker agent
#   loadtargets        the one-shot loader of deploy/compose.yaml
#   nats-server        the NATS server at the version go.mod pins, which the
#                      integration tests run too
set -eu
out=${1:?usage: deploy/build.sh OUTPUT_DIR}
mkdir -p "$out"
export CGO_ENABLED=0
for cmd in selector worker loadtargets; do
  go build -trimpath -ldflags="-s -w" -o "$out/$cmd" "./cmd/$cmd"
done
go build -trimpath -ldflags="-s -w" -o "$out/nats-server" github.com/nats-io/nats-server/v2
