# syntax=docker/dockerfile:1
#
# chat-relay container image: a multi-stage build whose runtime stage holds
# the binary alone (plus the C runtime and CA certificates of the distroless
# base) and runs as a non-root user.
#
#   docker build -t chat-relay .
#   docker run --rm -p 8080:8080 chat-relay
#
# Where no registry is reachable, scripts/build-relay-image assembles the
# same runtime layout offline (see docs/deploy.md).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the
# binary is stripped of its line tables here, as a deployment wants it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --bin chat-relay \
    && cp target/release/chat-relay /chat-relay

# glibc, libgcc, CA certificates and a `nonroot` user (65532), nothing else:
# no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /chat-relay /usr/local/bin/chat-relay
ENV RELAY_LISTEN=0.0.0.0:8080 \
    RELAY_LOG_FORMAT=json
EXPOSE 8080
USER 65532:65532
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/chat-relay"]
