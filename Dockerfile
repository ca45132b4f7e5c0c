# syntax=docker/dockerfile:1
# Multi-stage build: compile a release binary with the Rust toolchain, ship it
# on a distroless image (glibc, CA certificates, no shell) as a non-root user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits reuse the cached dependency layer.
COPY Cargo.toml Cargo.lock build.rs ./
# Build settings for C dependencies (the allocator's memory behaviour).
COPY .cargo ./.cargo
COPY proto ./proto
# build.rs compiles Envoy's ext_authz protos from here too.
COPY third_party ./third_party
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
# Make sure cargo rebuilds the crate itself rather than the placeholder.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/cognito-facade /usr/local/bin/cognito-facade
USER nonroot:nonroot
# gRPC, and Prometheus /metrics.
EXPOSE 50051 9090
ENV COGNITO_FACADE_LISTEN_ADDR=0.0.0.0:50051 \
    COGNITO_FACADE_LOG_FORMAT=json \
    COGNITO_FACADE_METRICS_ADDR=0.0.0.0:9090
# The same binary probes itself (grpc.health.v1 Check): distroless has no shell
# and needs no extra probe binary. It asks wherever COGNITO_FACADE_LISTEN_ADDR
# says the server listens (0.0.0.0 is probed on loopback), so `docker run -e
# COGNITO_FACADE_LISTEN_ADDR=...` moves the probe with the server. Plaintext
# only; with --tls-cert, probe from outside instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/cognito-facade", "healthcheck"]
# The process handles SIGTERM itself: NOT_SERVING, drain (5 s), grace (10 s),
# exit 0. That is longer than `docker stop`'s default 10 s before SIGKILL:
# stop with `docker stop -t 20` or run with `--stop-timeout 20`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cognito-facade"]
