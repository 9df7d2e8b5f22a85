# ghcr.io/mcp-keycloak-operator/server-everything:2026.8.31 — the MCP reference server
# "everything" in Streamable HTTP mode, pinned. The local pod runner maps this image to
# `node <npm dir>/node_modules/@modelcontextprotocol/server-everything/dist/index.js` with the
# same ENTRYPOINT/CMD split (crates/localpod/src/images.rs).
#
#   docker build -f examples/images/server-everything.Dockerfile \
#     -t ghcr.io/mcp-keycloak-operator/server-everything:2026.8.31 examples/images
#
# Listens on $PORT (all interfaces; default 3001), MCP endpoint /mcp. Ignores HOST.
FROM node:22-alpine
WORKDIR /app
RUN npm install --no-audit --no-fund --omit=dev @modelcontextprotocol/server-everything@2026.8.31
USER node
ENTRYPOINT ["node", "/app/node_modules/@modelcontextprotocol/server-everything/dist/index.js"]
CMD ["streamableHttp"]
