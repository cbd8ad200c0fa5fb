# syntax=docker/dockerfile:1
# Builds the selector and the worker as static binaries on a minimal image.
# The same build commands run in .ci/run, outside Docker.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/selector ./cmd/selector \
 && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/worker ./cmd/worker \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/selector /out/worker /usr/local/bin/
# distroless's nonroot user is 65532; it must own the data directory.
COPY --from=build --chown=65532:65532 /out/data /var/lib/taskselector
# The embedded NATS server stores JetStream data here when NATS_URL is empty.
ENV SELECTOR_DATA_DIR=/var/lib/taskselector \
    SELECTOR_LISTEN=0.0.0.0:4222
VOLUME ["/var/lib/taskselector"]
EXPOSE 4222
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/selector"]
