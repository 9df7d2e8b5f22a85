# shellcheck shell=bash
# The official MCP SDK clients of tests/it/sdk_clients.rs (programs in tests/clients/): the
# TypeScript SDK from npm, run with the Node of lib/node.sh, and the Python SDK from PyPI in a
# python3 venv, at the versions in versions.env. Sourced by hack/testbed (CACHE_ROOT,
# versions.env, log, die, print_export, install_node).
#
#   $CACHE_ROOT/npm/mcp-sdk@<MCP_TS_SDK_VERSION>/node_modules/@modelcontextprotocol/sdk
#   $CACHE_ROOT/python/mcp@<MCP_PY_SDK_VERSION>/bin/python

CLIENT_TS_MODULES() { echo "$CACHE_ROOT/npm/mcp-sdk@$MCP_TS_SDK_VERSION/node_modules"; }
CLIENT_PY_DIR() { echo "$CACHE_ROOT/python/mcp@$MCP_PY_SDK_VERSION"; }

install_client_ts() {
  [[ -f "$(CLIENT_TS_MODULES)/@modelcontextprotocol/sdk/package.json" ]] && return 0
  command -v npm >/dev/null 2>&1 || die "npm not found (apt-get install npm)"
  local dest=$CACHE_ROOT/npm/mcp-sdk@$MCP_TS_SDK_VERSION tmp
  mkdir -p "$CACHE_ROOT/npm"
  tmp=$(mktemp -d "$CACHE_ROOT/npm/.install-mcp-sdk-XXXXXX")
  printf '{"name":"mcp-keycloak-operator-sdk-client","private":true,"dependencies":{"@modelcontextprotocol/sdk":"%s"}}\n' \
    "$MCP_TS_SDK_VERSION" >"$tmp/package.json"
  log "installing @modelcontextprotocol/sdk@$MCP_TS_SDK_VERSION into $dest (npm install)"
  (cd "$tmp" && npm install --silent --no-audit --no-fund --omit=dev >&2) \
    || { rm -rf "$tmp"; die "npm install @modelcontextprotocol/sdk@$MCP_TS_SDK_VERSION failed"; }
  rm -rf "$dest"
  mv "$tmp" "$dest"
}

install_client_py() {
  local dir; dir=$(CLIENT_PY_DIR)
  # Written last: a venv interrupted mid-install is made again.
  [[ -f "$dir/.installed" ]] && return 0
  log "installing PyPI mcp==$MCP_PY_SDK_VERSION into a venv at $dir (pip install)"
  # A venv records its own path, so it is made in place rather than renamed into it.
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  python3 -m venv "$dir" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "mcp==$MCP_PY_SDK_VERSION" >&2 \
    || die "pip install mcp==$MCP_PY_SDK_VERSION failed"
  touch "$dir/.installed"
}

install_clients() {
  install_node
  install_client_ts
  install_client_py
}

# Installs what is missing and prints the export lines tests/it/sdk_clients.rs reads.
clients_env() {
  install_clients
  print_export MCP_CLIENT_NODE "$(NODE_BIN)"
  print_export MCP_CLIENT_NODE_PATH "$(CLIENT_TS_MODULES)"
  print_export MCP_CLIENT_PYTHON "$(CLIENT_PY_DIR)/bin/python"
}
