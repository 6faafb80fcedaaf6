# syntax=docker/dockerfile:1
#
# tollgate and its sample services in one image (docs/operations/docker-compose.md).
#
#   docker build -t tollgate:dev .
#   docker run --rm -p 8080:8080 -p 9901:9901 tollgate:dev
#
# Every package listed in PACKAGES is built in release mode and its binary (named like the
# package) lands in /usr/local/bin. To ship another workspace binary, add its package here (or
# pass --build-arg PACKAGES=...) and run it from docker-compose.yml with `entrypoint: [NAME]`, as
# the users/orders (`sample-http`) and greeter (`sample-grpc`) services do. protoc is installed
# below for tonic/prost build scripts such as sample-grpc's.

ARG PACKAGES="tollgate sample-http sample-grpc"

# ---------------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
ARG PACKAGES

# cmake: pingora's compression dependencies build C code with it. protobuf-compiler: protoc,
# for gRPC code generation (the same prerequisites as scripts/install-prereqs.sh).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Dependency caching: the crates.io registry, git checkouts and target/ live in BuildKit cache
# mounts, so a rebuild after a code change recompiles only the workspace's own crates, not the
# hundreds of dependencies (a manifest-only "dummy main" layer fits badly with a workspace of this
# many members, benches and explicit targets). A cache mount is not part of the image, so the
# binaries are copied out to /out.
RUN --mount=type=cache,id=tollgate-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=tollgate-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=tollgate-target,target=/src/target,sharing=locked \
    set -eux; \
    pkgs=""; for p in $PACKAGES; do pkgs="$pkgs -p $p"; done; \
    cargo build --release --locked $pkgs; \
    mkdir -p /out; \
    for p in $PACKAGES; do cp "target/release/$p" /out/; done

# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates: TLS to upstreams verifies against the system roots. curl: the compose
# healthchecks (`curl -fsS http://127.0.0.1:9901/healthz`).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 tollgate \
 && useradd --system --uid 10001 --gid tollgate --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tollgate

COPY --from=builder /out/ /usr/local/bin/
# A default config that listens on 0.0.0.0 (the repo's gateway.toml binds 127.0.0.1, which is
# unreachable from outside a container). Its targets are the compose services users, orders and
# greeter; mount your own file over it to run the image elsewhere.
COPY deploy/gateway.compose.toml /etc/tollgate/gateway.toml
# The greeter route compiles proto/greeter.proto at start-up (paths relative to the config).
COPY proto /etc/tollgate/proto

USER 10001:10001

# 8080: proxy listener `public`; 9901: admin listener (/healthz, /upstreams, /metrics).
EXPOSE 8080 9901

ENTRYPOINT ["tollgate"]
CMD ["-c", "/etc/tollgate/gateway.toml"]
