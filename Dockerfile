# syntax=docker/dockerfile:1.7
# The operator image: one binary, also the gateway image of McpServers in Proxy mode.
#
#   docker build -t ghcr.io/mcp-keycloak-operator/operator:0.1.0 .
#
# Built with glibc and run on distroless "cc" (glibc, libgcc, CA certificates, /etc/passwd with
# nonroot; no shell, no package manager). reqwest verifies Keycloak's TLS against the system CA
# store, which a bare scratch image would lack.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mcp-keycloak-operator \
 && install -D -m 0755 target/release/mcp-keycloak-operator /out/mcp-keycloak-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/mcp-keycloak-operator /mcp-keycloak-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/mcp-keycloak-operator"]
CMD ["run"]
