# syntax=docker/dockerfile:1
# Builds taskselector's binaries (deploy/build.sh: the selector, the worker,
# loadtargets and the NATS server go.mod pins) as static executables on a
# minimal image. .ci/run runs the same script outside Docker.
# deploy/compose.yaml runs every service from this one image.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN sh deploy/build.sh /out \
 && mkdir -p /out/data /out/natsdata

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/selector /out/worker /out/loadtargets /out/nats-server /usr/local/bin/
# distroless's nonroot user is 65532; it must own the data directories: the
# selector's embedded server's and, for the NATS server, /data (its
# JetStream store in deploy/nats/nats.conf), which a named volume mounted
# there inherits.
COPY --from=build --chown=65532:65532 /out/data /var/lib/taskselector
COPY --from=build --chown=65532:65532 /out/natsdata /data
# The embedded NATS server stores JetStream data here when NATS_URL is empty.
ENV SELECTOR_DATA_DIR=/var/lib/taskselector \
    SELECTOR_LISTEN=0.0.0.0:4222
VOLUME ["/var/lib/taskselector"]
EXPOSE 4222
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/selector"]
