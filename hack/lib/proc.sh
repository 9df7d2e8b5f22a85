# shellcheck shell=bash
# Process and port helpers for hack/testbed.
#
# Every process the test bed starts is recorded in a pid file as "PID STARTTIME"
# (STARTTIME = field 22 of /proc/PID/stat), so a recycled PID is never mistaken
# for ours and stop only ever signals exactly the process it started.

proc_starttime() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  local rest=${stat##*) }
  # shellcheck disable=SC2206
  local fields=($rest)
  echo "${fields[19]}"
}

# pid_alive PIDFILE: true if the recorded process still runs (and is not a zombie).
pid_alive() {
  local f=$1 pid st cur state
  [[ -s "$f" ]] || return 1
  read -r pid st <"$f" || true
  [[ -n "$pid" ]] || return 1
  cur=$(proc_starttime "$pid") || return 1
  [[ -z "$st" || "$cur" == "$st" ]] || return 1
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
  [[ "$state" != "Z" ]]
}

pid_of() { local pid _; read -r pid _ <"$1"; echo "$pid"; }

# spawn PIDFILE LOGFILE CMD...: start CMD detached (own session, stdin from
# /dev/null, output appended to LOGFILE, no inherited lock fds) and record it.
spawn() {
  local pidfile=$1 logfile=$2; shift 2
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
  printf '=== %s starting: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$logfile"
  # setsid: not a process-group leader here (no job control), so it calls
  # setsid(2) and execs CMD in place: $! is CMD's own PID.
  setsid "$@" </dev/null >>"$logfile" 2>&1 8>&- 9>&- &
  local pid=$!
  local st; st=$(proc_starttime "$pid") || st=""
  echo "$pid $st" >"$pidfile"
}

# stop_pid PIDFILE LABEL [TIMEOUT]: TERM the recorded process, wait, then KILL it.
# Direct children that it had (kc.sh runs java as a child) are KILLed too if
# they outlive it.
stop_pid() {
  local f=$1 label=$2 timeout=${3:-30}
  if ! pid_alive "$f"; then
    rm -f "$f"
    return 0
  fi
  local pid; pid=$(pid_of "$f")
  local -a kids=() kid_st=()
  local k
  for k in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
    kids+=("$k"); kid_st+=("$(proc_starttime "$k" || echo x)")
  done
  log "stopping $label (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < timeout * 10; i++)); do
    pid_alive "$f" || break
    sleep 0.1
  done
  if pid_alive "$f"; then
    log "$label did not stop after ${timeout}s; sending KILL to pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do pid_alive "$f" || break; sleep 0.1; done
  fi
  for i in "${!kids[@]}"; do
    if [[ "$(proc_starttime "${kids[$i]}" 2>/dev/null)" == "${kid_st[$i]}" ]]; then
      log "killing leftover child ${kids[$i]} of $label"
      kill -KILL "${kids[$i]}" 2>/dev/null || true
    fi
  done
  rm -f "$f"
}

port_in_use() {
  # A successful connect means something listens there.
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port: a random free loopback port below the kernel's ephemeral range
# (so it is never taken by an outgoing connection), not handed out before in
# this run.
_ALLOCATED_PORTS=" "
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 12000))
    [[ "$_ALLOCATED_PORTS" == *" $p "* ]] && continue
    port_in_use "$p" && continue
    _ALLOCATED_PORTS+="$p "
    echo "$p"
    return 0
  done
  die "could not find a free port"
}

port_free_or_die() {
  if port_in_use "$1"; then
    die "port $1 ($2) is already in use by a process this test bed did not start; stop it, or run './hack/testbed down' and remove $TESTBED_DIR to get new ports"
  fi
}

# wait_until TIMEOUT_S PIDFILE LABEL LOGFILE CMD...: poll CMD every 0.5 s.
wait_until() {
  local timeout=$1 pidfile=$2 label=$3 logfile=$4; shift 4
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$pidfile" ]] && ! pid_alive "$pidfile"; then
      tail -n 30 "$logfile" >&2
      die "$label exited during start-up (log: $logfile)"
    fi
    if ((SECONDS - start > timeout)); then
      tail -n 30 "$logfile" >&2
      die "$label not ready after ${timeout}s (log: $logfile)"
    fi
    sleep 0.5
  done
}

print_export() {
  printf 'export %s=%q\n' "$1" "$2"
}
