# ghcr.io/mcp-keycloak-operator/native-server-example:<crate version> — examples/native_server.rs
# (an rmcp MCP server that validates tokens itself; McpServer `auth.mode: Native`). The local pod
# runner maps this image to the built `target/<profile>/examples/native_server`
# (crates/localpod/src/images.rs).
#
#   docker build -f examples/images/native-server.Dockerfile \
#     -t ghcr.io/mcp-keycloak-operator/native-server-example:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --example native_server \
 && install -D -m 0755 target/release/examples/native_server /out/native_server

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/native_server /native_server
USER 65532:65532
ENTRYPOINT ["/native_server"]
