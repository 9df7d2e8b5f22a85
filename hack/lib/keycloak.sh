# shellcheck shell=bash
# Keycloak instances of the test bed. Sourced by hack/testbed.
#
# Each instance NAME lives in $TESTBED_DIR/keycloak/NAME/:
#   instance.env   HTTP_PORT, MGMT_PORT, FEATURES (fixed when the instance is created)
#   home/          a private copy of a pre-built Keycloak distribution; its data/
#                  holds the dev-file (H2) database, so restarts keep realms/users
#   kc.pid kc.log
#
# Start-up: `kc.sh start-dev` re-runs Quarkus augmentation on every start
# (~50 s on 2 cores) before it even begins booting. Instead we run `kc.sh build`
# once per feature set (cached under $CACHE_ROOT/keycloak/<version>/built-<key>/)
# and start instances with `kc.sh start --optimized`, which skips augmentation.
# The build bakes in: dev-file DB, local cache, health endpoints, the features.

KEYCLOAK_DEFAULT_FEATURES=${TESTBED_KEYCLOAK_FEATURES-cimd}
KEYCLOAK_ADMIN_USER="admin"

# Which JDK runs Keycloak. Keycloak 26.7.3 starts fine on Debian's OpenJDK 17
# (checked on this machine), so that is the first choice; Temurin 25 is the
# fallback for machines without 17 (Keycloak supports 21/25 as well).
# TESTBED_JAVA_HOME overrides.
keycloak_java_home() {
  local c
  for c in "${TESTBED_JAVA_HOME:-}" /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/java-21-openjdk-amd64; do
    [[ -n "$c" && -x "$c/bin/java" ]] && { echo "$c"; return 0; }
  done
  die "no JDK found for Keycloak (looked for JDK 17, Temurin 25, JDK 21; set TESTBED_JAVA_HOME)"
}

keycloak_env() {
  export JAVA_HOME; JAVA_HOME=$(keycloak_java_home)
  # kc.sh defaults to 50-70 % of RAM for the heap; keep each instance small.
  export JAVA_OPTS_KC_HEAP="-Xms128m -Xmx1g"
  # C1-only JIT: noticeably faster start-up on 2 cores, plenty fast for tests.
  export JAVA_OPTS_APPEND="${TESTBED_KEYCLOAK_JAVA_OPTS_APPEND--XX:TieredStopAtLevel=1}"
}

keycloak_feature_key() {
  local f=$1
  [[ -z "$f" ]] && { echo none; return; }
  echo "${f//[^a-zA-Z0-9_-]/_}"
}

# Build (once) a Keycloak distribution with the given features baked in.
keycloak_built_home() {
  local features=$1 key; key=$(keycloak_feature_key "$features")
  local dir="$CACHE_ROOT/keycloak/$KEYCLOAK_VERSION/built-$key"
  if [[ ! -f "$dir/.built" ]]; then
    install_keycloak
    mkdir -p "$CACHE_ROOT/keycloak/$KEYCLOAK_VERSION"
    (
      exec 8>"$CACHE_ROOT/keycloak/$KEYCLOAK_VERSION/build-$key.lock"
      flock 8
      [[ -f "$dir/.built" ]] && exit 0
      log "building Keycloak $KEYCLOAK_VERSION with features='${features}' (one-time, ~1 min)"
      local start=$SECONDS
      rm -rf "$dir.tmp"
      cp -a "$(KEYCLOAK_HOME)" "$dir.tmp"
      keycloak_env
      local args=(build --db=dev-file --cache=local --health-enabled=true)
      [[ -n "$features" ]] && args+=("--features=$features")
      run_logged "$dir.tmp.log" "$dir.tmp/bin/kc.sh" "${args[@]}" 8>&-
      rm -rf "$dir.tmp/data"
      touch "$dir.tmp/.built"
      rm -rf "$dir"
      mv "$dir.tmp" "$dir"
      mv "$dir.tmp.log" "$dir/build.log"
      log "Keycloak build done in $((SECONDS - start)) s"
    ) || die "Keycloak build failed"
  fi
  echo "$dir"
}

kc_dir() { echo "$TESTBED_DIR/keycloak/$1"; }

keycloak_admin_password() {
  local f="$TESTBED_DIR/keycloak-admin-password"
  if [[ ! -s "$f" ]]; then
    (umask 077; openssl rand -hex 18 >"$f")
  fi
  chmod 600 "$f"
  cat "$f"
}

keycloak_is_running() {
  local d; d=$(kc_dir "$1")
  pid_alive "$d/kc.pid"
}

# keycloak_start NAME FEATURES: start (creating on first use) and wait until ready.
keycloak_start_bg() {
  local name=$1 features=$2 d; d=$(kc_dir "$name")
  if keycloak_is_running "$name"; then return 0; fi
  if [[ -f "$d/instance.env" ]]; then
    local old_features; old_features=$(. "$d/instance.env"; echo "$FEATURES")
    if [[ "$old_features" != "$features" ]]; then
      die "Keycloak instance '$name' exists with features='$old_features', asked for '$features'; use another --name or 'keycloak-delete --name $name'"
    fi
  fi
  local built; built=$(keycloak_built_home "$features")
  mkdir -p "$d"
  if [[ ! -f "$d/instance.env" ]]; then
    printf 'HTTP_PORT=%s\nMGMT_PORT=%s\nFEATURES=%q\n' "$(free_port)" "$(free_port)" "$features" >"$d/instance.env.tmp"
    mv "$d/instance.env.tmp" "$d/instance.env"
  fi
  if [[ ! -f "$d/home/.built" ]]; then
    rm -rf "${d:?}/home"
    cp -a --reflink=auto "$built" "$d/home.tmp"
    mv "$d/home.tmp" "$d/home"
  fi
  local HTTP_PORT MGMT_PORT FEATURES
  # shellcheck disable=SC1091
  . "$d/instance.env"
  port_free_or_die "$HTTP_PORT" "Keycloak '$name' http"
  port_free_or_die "$MGMT_PORT" "Keycloak '$name' management"
  log "starting Keycloak '$name' on http://127.0.0.1:$HTTP_PORT (features='${FEATURES}')"
  (
    keycloak_env
    export KC_BOOTSTRAP_ADMIN_USERNAME=$KEYCLOAK_ADMIN_USER
    KC_BOOTSTRAP_ADMIN_PASSWORD=$(keycloak_admin_password)
    export KC_BOOTSTRAP_ADMIN_PASSWORD
    spawn "$d/kc.pid" "$d/kc.log" "$d/home/bin/kc.sh" start --optimized \
      --http-enabled=true --http-host=127.0.0.1 --http-port="$HTTP_PORT" \
      --http-management-port="$MGMT_PORT" --hostname-strict=false
  )
}

# Stops a named instance and gives it another feature set, keeping its port, data (realms,
# clients) and admin: a Keycloak restarted with or without a feature, as an operator meets it
# (tests/it/audience.rs migrates servers between audience modes this way).
keycloak_refeature() {
  local name=$1 features=$2 d; d=$(kc_dir "$name")
  [[ -f "$d/instance.env" ]] || die "no Keycloak instance '$name'"
  keycloak_stop "$name"
  local built; built=$(keycloak_built_home "$features")
  rm -rf "${d:?}/home.tmp"
  cp -a --reflink=auto "$built" "$d/home.tmp"
  if [[ -d "$d/home/data" ]]; then
    rm -rf "$d/home.tmp/data"
    cp -a "$d/home/data" "$d/home.tmp/data"
  fi
  rm -rf "${d:?}/home"
  mv "$d/home.tmp" "$d/home"
  local HTTP_PORT MGMT_PORT FEATURES
  # shellcheck disable=SC1091
  . "$d/instance.env"
  printf 'HTTP_PORT=%s\nMGMT_PORT=%s\nFEATURES=%q\n' "$HTTP_PORT" "$MGMT_PORT" "$features" >"$d/instance.env.tmp"
  mv "$d/instance.env.tmp" "$d/instance.env"
  keycloak_start_bg "$name" "$features"
}

keycloak_wait_ready() {
  local name=$1 d; d=$(kc_dir "$name")
  local MGMT_PORT HTTP_PORT FEATURES
  # shellcheck disable=SC1091
  . "$d/instance.env"
  local start=$SECONDS
  until curl -fsS -o /dev/null "http://127.0.0.1:$MGMT_PORT/health/ready" 2>/dev/null; do
    if ! pid_alive "$d/kc.pid"; then
      tail -n 30 "$d/kc.log" >&2
      die "Keycloak '$name' exited during start-up (log: $d/kc.log)"
    fi
    ((SECONDS - start > 300)) && die "Keycloak '$name' not ready after 300 s (log: $d/kc.log)"
    sleep 1
  done
  log "Keycloak '$name' ready ($((SECONDS - start)) s wait)"
}

keycloak_stop() {
  local d; d=$(kc_dir "$1")
  stop_pid "$d/kc.pid" "Keycloak '$1'"
}

keycloak_exports() {
  local name=$1 d; d=$(kc_dir "$name")
  [[ -f "$d/instance.env" ]] || die "no Keycloak instance '$name' in $TESTBED_DIR"
  local HTTP_PORT MGMT_PORT FEATURES
  # shellcheck disable=SC1091
  . "$d/instance.env"
  print_export KEYCLOAK_URL "http://127.0.0.1:$HTTP_PORT"
  print_export KEYCLOAK_MANAGEMENT_URL "http://127.0.0.1:$MGMT_PORT"
  print_export KEYCLOAK_ADMIN "$KEYCLOAK_ADMIN_USER"
  print_export KEYCLOAK_ADMIN_PASSWORD "$(keycloak_admin_password)"
  print_export KEYCLOAK_FEATURES "$FEATURES"
}
