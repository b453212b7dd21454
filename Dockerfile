# The parm image: one binary (`parm`, every service is a subcommand), the ONNX models and
# the Avro schemas. Build: `docker build -t parm .` (docker-compose.yml builds it too).
#
# Stage 1 builds `parm` in release mode. librdkafka is compiled from the bundled sources
# (rdkafka-sys, with make), which needs a C toolchain, make and the zlib headers:
# all in the rust:*-bookworm image. The cache mounts keep the cargo registry and target
# folder between builds (BuildKit, the default builder of `docker build` and `docker compose`).
# No `# syntax=` line: the Dockerfile frontend built into the engine reads RUN --mount, and
# naming one would pull docker/dockerfile from a registry, which fails where none is reachable.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY services ./services
# Every workspace member's manifest must be there for the workspace to load.
COPY benchmarks ./benchmarks
# librdkafka, patched (third_party/rdkafka-sys/PARM-PATCH.md; Cargo.toml's [patch]).
COPY third_party ./third_party
# The Avro schemas are compiled in (include_str!).
COPY schemas ./schemas
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p parm \
    && install -m 0755 target/release/parm /usr/local/bin/parm

# Stage 2: a small runtime. The binary links only glibc, libgcc and zlib.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 parm \
    && useradd --system --uid 10001 --gid parm --home-dir /app --shell /usr/sbin/nologin parm
COPY --from=builder /usr/local/bin/parm /usr/local/bin/parm
COPY deploy/docker-entrypoint.sh /usr/local/bin/parm-entrypoint
COPY --chown=root:root models /app/models
COPY --chown=root:root schemas /app/schemas
WORKDIR /app
ENV PARM_MODELS_DIR=/app/models \
    RUST_LOG=info,rdkafka=warn
USER 10001:10001
# Metrics (--metrics-addr 0.0.0.0:9100) when a service is started with it.
EXPOSE 9100
ENTRYPOINT ["/usr/local/bin/parm-entrypoint"]
CMD ["--help"]
