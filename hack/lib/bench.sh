# shellcheck shell=bash
# The peers of benches/gateway_peers.rs, installed on demand (never by ./hack/test): oauth2-proxy
# built from its Go module, and the load generator oha (a Rust crate, cargo install), at the versions in
# versions.env. Sourced by hack/testbed (CACHE_ROOT, versions.env, log, die, print_export,
# install_go_tool, run_logged).
#
#   $CACHE_ROOT/bin/oauth2-proxy-<OAUTH2_PROXY_VERSION>/oauth2-proxy
#   $CACHE_ROOT/bin/oha-<OHA_VERSION>/bin/oha

OAUTH2_PROXY_BIN() { echo "$CACHE_ROOT/bin/oauth2-proxy-$OAUTH2_PROXY_VERSION/oauth2-proxy"; }
OHA_BIN() { echo "$CACHE_ROOT/bin/oha-$OHA_VERSION/bin/oha"; }

# The version string oauth2-proxy's Makefile stamps in (shown by --version and its logs).
oauth2_proxy_ldflags() {
  echo "-X github.com/oauth2-proxy/oauth2-proxy/v7/pkg/version.VERSION=$OAUTH2_PROXY_VERSION"
}

install_oauth2_proxy() {
  # The module's root package is the binary (main.go at the root, as its Makefile builds it).
  install_go_tool oauth2-proxy "$OAUTH2_PROXY_VERSION" github.com/oauth2-proxy/oauth2-proxy/v7 \
    github.com/oauth2-proxy/oauth2-proxy/v7 "" oauth2_proxy_ldflags
}

# `cargo install --locked` (oha's own Cargo.lock) into a temporary root, renamed into place
# when complete; its own target dir, so a caller's CARGO_TARGET_DIR is neither used nor filled.
install_oha() {
  local bin; bin=$(OHA_BIN)
  [[ -x "$bin" ]] && return 0
  command -v cargo >/dev/null 2>&1 || die "cargo not found"
  local root="$CACHE_ROOT/bin/oha-$OHA_VERSION" logf="$CACHE_ROOT/build/oha-$OHA_VERSION.log"
  local target="$CACHE_ROOT/build/oha-$OHA_VERSION-target"
  mkdir -p "$CACHE_ROOT/build"
  : >"$logf"
  log "building oha $OHA_VERSION (cargo install --locked); log: $logf"
  local start=$SECONDS
  rm -rf "$root.tmp"
  CARGO_TARGET_DIR=$target run_logged "$logf" cargo install oha --locked --version "$OHA_VERSION" \
    --root "$root.tmp" --no-track
  rm -rf "$root" "$target"
  mv "$root.tmp" "$root"
  log "built oha $OHA_VERSION in $((SECONDS - start)) s"
}

# Installs what is missing and prints the export lines benches/gateway_peers.rs reads.
bench_tools_env() {
  mkdir -p "$CACHE_ROOT/build"
  install_oauth2_proxy
  install_oha
  print_export OAUTH2_PROXY_BIN "$(OAUTH2_PROXY_BIN)"
  print_export OHA_BIN "$(OHA_BIN)"
}
