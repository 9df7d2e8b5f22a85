# shellcheck shell=bash
# The MCP conformance suite (npm @modelcontextprotocol/conformance@$CONFORMANCE_VERSION), which
# needs Node >= 22 (install_node in lib/node.sh). Sourced by hack/testbed.
#
#   $CACHE_ROOT/npm/conformance@<CONFORMANCE_VERSION>/node_modules/@modelcontextprotocol/conformance/dist/index.js

CONFORMANCE_JS() {
  echo "$CACHE_ROOT/npm/conformance@$CONFORMANCE_VERSION/node_modules/@modelcontextprotocol/conformance/dist/index.js"
}

install_conformance() {
  local js; js=$(CONFORMANCE_JS)
  [[ -f "$js" ]] && return 0
  command -v npm >/dev/null 2>&1 || die "npm not found (apt-get install npm)"
  local dest=$CACHE_ROOT/npm/conformance@$CONFORMANCE_VERSION tmp
  mkdir -p "$CACHE_ROOT/npm"
  tmp=$(mktemp -d "$CACHE_ROOT/npm/.install-conformance-XXXXXX")
  printf '{"name":"mcp-keycloak-operator-conformance","private":true,"dependencies":{"@modelcontextprotocol/conformance":"%s"}}\n' \
    "$CONFORMANCE_VERSION" >"$tmp/package.json"
  log "installing @modelcontextprotocol/conformance@$CONFORMANCE_VERSION into $dest (npm install)"
  # The package declares engines node >= 22; npm itself may run on an older Node.
  (cd "$tmp" && npm install --silent --no-audit --no-fund --omit=dev --engine-strict=false >&2) \
    || { rm -rf "$tmp"; die "npm install @modelcontextprotocol/conformance@$CONFORMANCE_VERSION failed"; }
  rm -rf "$dest"
  mv "$tmp" "$dest"
}

# Installs Node and the suite if missing and prints their export lines (for tests/it/conformance.rs).
conformance_env() {
  install_node
  install_conformance
  print_export CONFORMANCE_NODE "$(NODE_BIN)"
  print_export CONFORMANCE_JS "$(CONFORMANCE_JS)"
}
