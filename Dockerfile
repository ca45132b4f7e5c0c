# syntax=docker/dockerfile:1
# Multi-stage build: compile a release binary with the Rust toolchain, ship it
# on a distroless image (glibc, CA certificates, no shell) as a non-root user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits reuse the cached dependency layer.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
# Make sure cargo rebuilds the crate itself rather than the placeholder.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/cognito-facade /usr/local/bin/cognito-facade
USER nonroot:nonroot
EXPOSE 50051
ENV COGNITO_FACADE_LISTEN_ADDR=0.0.0.0:50051 \
    COGNITO_FACADE_LOG_FORMAT=json
# The process handles SIGTERM itself: NOT_SERVING, drain, grace, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cognito-facade"]
