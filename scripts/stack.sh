#!/usr/bin/env bash
# The full local Airflow stack on 127.0.0.1: `make airflow` (start), `make stop` (stop), `bash scripts/stack.sh status`.
#
# start   set-up (scripts/setup.sh), then as background processes, each in its own process group with its pid in
#         $AIRFLOW_HOME/stack/<name>.pid and its output in $AIRFLOW_HOME/stack/<name>.log:
#           sandbox        the CXone sandbox + CRM webhook sink (python -m include.cxone_sandbox)
#           api-server     UI, REST API and the execution API the task runners talk to
#           scheduler      LocalExecutor (--skip-serve-logs: tasks run on this machine, logs are read from disk)
#           dag-processor  parses dags/
#           triggerer      when STACK_TRIGGERER=1 (default with CeleryExecutor): runs deferred tasks (--skip-serve-logs)
#           celery-<name>  with AIRFLOW__CORE__EXECUTOR=CeleryExecutor only: one Celery worker per name in
#                          STACK_CELERY_WORKERS (`airflow celery worker --celery-hostname <name> --skip-serve-logs`;
#                          its task instances report <name> as their hostname, scripts/worker_hostname.py). The
#                          broker, result backend and metadata DB come from the environment (scripts/distributed.sh)
#         airflow_settings.yaml is applied before the Airflow processes start (scripts/apply_settings.py:
#         `airflow connections|variables|pools import`). Waits until the api-server answers, scheduler and
#         dag-processor heartbeat and the DAG is serialized; on failure prints the tail of the log that explains it
#         and stops what it started. Only the call_lists profile's import task defers (it waits for upload jobs on
#         a triggerer): `make airflow` starts none unless STACK_TRIGGERER=1.
# stop    stops exactly the processes recorded in the pid files (and their descendants), waits for them to exit.
# status  prints what runs.
# run     runs a command in the stack's environment, e.g. `bash scripts/stack.sh run airflow dags list` (with the
#         same AIRFLOW_HOME/port variables as the stack it should talk to).
#
# Parameters (environment): AIRFLOW_HOME (default .airflow), AIRFLOW_API_PORT (8080), CXONE_SANDBOX_PORT (8765),
# CXONE_WEBHOOK_PORT (8766), CXONE_IMPORT_STORAGE_BASE (file://<repo>/data),
# AIRFLOW_ADMIN_PASSWORD (admin), STACK_EXTRA_USERS (more logins: name:role:password,...),
# STACK_START_TIMEOUT (s the processes get to become ready after set-up, 120),
# STACK_STOP_TIMEOUT (s, 30), AIRFLOW__CORE__EXECUTOR (LocalExecutor; CeleryExecutor adds the workers),
# STACK_CELERY_WORKERS ("worker-1 worker-2"), STACK_CELERY_CONCURRENCY (task slots per worker, 4), STACK_TRIGGERER,
# STACK_OWNER_PID (when set, a watchdog stops the stack once that process is gone: used
# by tests/stack.py), any AIRFLOW__SECTION__KEY.
# The metadata DB is SQLite in $AIRFLOW_HOME unless AIRFLOW__DATABASE__SQL_ALCHEMY_CONN says otherwise.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

DAG_ID=cxone_contact_import
API_PORT="${AIRFLOW_API_PORT:-8080}"
SANDBOX_PORT="${CXONE_SANDBOX_PORT:-8765}"
WEBHOOK_PORT="${CXONE_WEBHOOK_PORT:-8766}"
STACK_DIR="$AIRFLOW_HOME/stack"
START_TIMEOUT="${STACK_START_TIMEOUT:-120}"
STOP_TIMEOUT="${STACK_STOP_TIMEOUT:-30}"
ADMIN_USER="admin"
ADMIN_PASSWORD="${AIRFLOW_ADMIN_PASSWORD:-admin}"
API_URL="http://127.0.0.1:$API_PORT"
SANDBOX_URL="http://127.0.0.1:$SANDBOX_PORT"
WEBHOOK_URL="http://127.0.0.1:$WEBHOOK_PORT"
EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
CELERY_WORKERS=()
TRIGGERER=()
if [ "$EXECUTOR" = CeleryExecutor ]; then
  read -r -a CELERY_WORKERS <<<"${STACK_CELERY_WORKERS:-worker-1 worker-2}"
fi
if [ "${STACK_TRIGGERER:-$([ "$EXECUTOR" = CeleryExecutor ] && echo 1 || echo 0)}" = 1 ]; then
  TRIGGERER=(triggerer)
fi
# Start order; stop goes the other way round. The watchdog only runs when STACK_OWNER_PID is set.
COMPONENTS=(sandbox api-server scheduler dag-processor "${TRIGGERER[@]}" "${CELERY_WORKERS[@]/#/celery-}" watchdog)

# Everything the Airflow processes (and `airflow` commands run against this stack) need; exported, so the
# components inherit it. The execution API URL always follows the api-server port, whatever the caller had.
export AIRFLOW_API_PORT="$API_PORT"
export AIRFLOW__CORE__EXECUTOR="$EXECUTOR"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db?timeout=60}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="$API_URL/execution/"
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="$API_PORT"
export AIRFLOW__API__WORKERS="${AIRFLOW__API__WORKERS:-1}"
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
# More logins besides admin, STACK_EXTRA_USERS="name:role:password,..." (an empty role: signed in, no permission).
SIMPLE_AUTH_USERS="$ADMIN_USER:admin"
IFS=',' read -r -a EXTRA_USERS <<<"${STACK_EXTRA_USERS:-}"
for entry in "${EXTRA_USERS[@]}"; do SIMPLE_AUTH_USERS+=",${entry%:*}"; done
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="$SIMPLE_AUTH_USERS"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$AIRFLOW_HOME/simple_auth_manager_passwords.json"
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-8}"   # LocalExecutor forks this many workers
export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=False
export AIRFLOW__CORE__TEST_CONNECTION="${AIRFLOW__CORE__TEST_CONNECTION:-Enabled}"  # the connection form's Test button (a real token request)

say() { printf 'stack: %s\n' "$*"; }
die() { printf 'stack: %s\n' "$*" >&2; exit 1; }

# -- processes ------------------------------------------------------------------------------------------------

pid_of() { local f="$STACK_DIR/$1.pid"; [ -f "$f" ] && read -r pid <"$f" && [[ "$pid" =~ ^[0-9]+$ ]] && echo "$pid"; }

alive() {  # pid: exists and is not a zombie
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

marker_of() {  # what the command line of a component contains
  case "$1" in
    sandbox) echo include.cxone_sandbox ;;
    watchdog) echo stack.sh ;;
    celery-*) echo celery ;;  # a Celery worker retitles itself ([celeryd: ...])
    *) echo airflow ;;
  esac
}

ours() {  # name pid: the recorded pid is still the process group leader we started (not a recycled pid)
  local pgid
  alive "$2" || return 1
  pgid="$(ps -o pgid= -p "$2" 2>/dev/null | tr -d ' ')"
  [ "$pgid" = "$2" ] && tr '\0' ' ' <"/proc/$2/cmdline" 2>/dev/null | grep -q -- "$(marker_of "$1")"
}

group_alive() {  # pgid: some non-zombie process is still in the group
  ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'
}

descendants() {  # pids...: every descendant of these processes (task runners move to their own process groups)
  ps -e -o pid=,ppid= | awk -v roots="$*" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) want[r[i]] = 1 }
    { parent[$1] = $2 }
    END {
      do {
        changed = 0
        for (p in parent) if (!(p in want) && (parent[p] in want)) { want[p] = 1; changed = 1; print p }
      } while (changed)
    }'
}

launch() {  # name command...: start in a new session (own process group), record the pid
  local name="$1"; shift
  setsid "$@" >"$STACK_DIR/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$STACK_DIR/$name.pid"
  sleep 0.2
  local pgid; pgid="$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" || true
  if [ -n "$pgid" ] && [ "$pgid" != "$pid" ]; then
    die "$name (pid $pid) did not get its own process group"
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running_components() {
  local name pid
  for name in "${COMPONENTS[@]}"; do
    pid="$(pid_of "$name")" && ours "$name" "$pid" && echo "$name"
  done
  return 0
}

in_groups() {  # pid pgid...: the process belongs to one of these process groups
  local pgid; pgid="$(ps -o pgid= -p "$1" 2>/dev/null | tr -d ' ')" || return 1
  local g; for g in "${@:2}"; do [ "$pgid" = "$g" ] && return 0; done
  return 1
}

terminate() {  # leader pids...: stop these process groups and everything they spawned, wait until all is gone
  local leaders=("$@") pid
  # Snapshot the process trees first: task runners live in their own process groups and outlive their parents.
  local tree runners=()
  tree="$(descendants "${leaders[@]}" | tr '\n' ' ')"
  for pid in $tree; do in_groups "$pid" "${leaders[@]}" || runners+=("$pid"); done
  # TERM the leaders (the scheduler's executor then shuts its workers down) and the task runners (a task ends as
  # failed and reports so while the api-server still answers); after 10s TERM whatever is left in the groups,
  # after STACK_STOP_TIMEOUT KILL it.
  for pid in "${leaders[@]}" "${runners[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  local begun=$SECONDS signalled_groups=0 left
  while :; do
    left=()
    for pid in "${leaders[@]}"; do group_alive "$pid" && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && break
    if [ $((SECONDS - begun)) -ge "$STOP_TIMEOUT" ]; then
      say "still running after ${STOP_TIMEOUT}s, killing process groups ${left[*]}"
      for pid in "${left[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
      sleep 0.5
      break
    fi
    if [ $signalled_groups -eq 0 ] && [ $((SECONDS - begun)) -ge 10 ]; then
      for pid in "${left[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
      signalled_groups=1
    fi
    sleep 0.3
  done
  local stray=()
  for pid in $tree; do alive "$pid" && stray+=("$pid"); done
  if [ ${#stray[@]} -gt 0 ]; then
    kill -TERM "${stray[@]}" 2>/dev/null || true
    sleep 1
    for pid in "${stray[@]}"; do
      if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
  fi
}

stop_stack() {
  local names=() leaders=() first=() name pid i
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    name="${COMPONENTS[$i]}"
    [ "$name" = watchdog ] && [ -n "${STACK_FROM_WATCHDOG:-}" ] && continue  # the watchdog removes its own file
    pid="$(pid_of "$name")" || continue
    if ours "$name" "$pid"; then
      names+=("$name")
      case "$name" in
        scheduler | dag-processor | triggerer | celery-*) first+=("$pid") ;;
        *) leaders+=("$pid") ;;
      esac
    else
      rm -f "$STACK_DIR/$name.pid"
    fi
  done
  if [ ${#names[@]} -eq 0 ]; then
    say "nothing running (AIRFLOW_HOME=$AIRFLOW_HOME)"
    return 0
  fi
  say "stopping ${names[*]}"
  # Scheduler, dag-processor and Celery workers (with the running tasks) first, while the api-server still takes the
  # tasks' last reports; then the api-server, the sandbox and the watchdog.
  if [ ${#first[@]} -gt 0 ]; then terminate "${first[@]}"; fi
  if [ ${#leaders[@]} -gt 0 ]; then terminate "${leaders[@]}"; fi
  for name in "${names[@]}"; do rm -f "$STACK_DIR/$name.pid"; done
  rm -f "$STACK_DIR/sandbox.json"
  say "stopped"
}

# -- start ----------------------------------------------------------------------------------------------------

print_summary() {
  local paused="$1" seconds="$2"
  cat <<EOF
stack: up in ${seconds}s (AIRFLOW_HOME=$AIRFLOW_HOME, $EXECUTOR${CELERY_WORKERS[*]:+ (workers ${CELERY_WORKERS[*]})}, DB ${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN%%://*})
  Airflow UI + REST API  $API_URL   login: $ADMIN_USER / $ADMIN_PASSWORD
  CXone sandbox          $SANDBOX_URL   (records on a list: GET $SANDBOX_URL/_sandbox/records/<list id>)
  CRM webhook sink       $WEBHOOK_URL   (events: GET $WEBHOOK_URL/_sink/events)
  storage base           $CXONE_IMPORT_STORAGE_BASE   (source files: <storage base>/incoming/contacts_<YYYY-MM-DD>.csv)
  settings               airflow_settings.yaml applied: connections cxone_default, crm_webhook -> the sandbox above;
                         variables; pool cxone_api; rate budget $AIRFLOW_HOME/cxone-rate-budget.sqlite
  logs                   $STACK_DIR/*.log (task logs: $AIRFLOW_HOME/logs)   stop: make stop
EOF
  if [ "$paused" = paused ]; then
    cat <<EOF
DAG $DAG_ID is PAUSED (Airflow pauses new DAGs; this script leaves it so). Runs you trigger (UI "Trigger" with a
source_uri, or a backfill) stay queued until you unpause it: UI toggle, or
  source scripts/env.sh && airflow dags unpause $DAG_ID
Unpausing also starts one scheduled run straight away, for the latest 02:00 UTC slot (catchup=False), which reads
contacts_<that day>.csv from the source base; drop that file there first or expect that run to fail on a missing
source. To get no scheduled runs at all, start the stack with AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE=False.
EOF
  else
    echo "DAG $DAG_ID is ACTIVE (unpaused): the scheduler runs it at 02:00 UTC daily."
  fi
}

on_start_exit() {  # exit status: a failed start stops what it had started
  if [ "$1" -ne 0 ]; then
    say "start failed, stopping what was started" >&2
    stop_stack >&2 || true
  fi
}

start_stack() {
  mkdir -p "$STACK_DIR"
  local running; running="$(running_components | xargs)"
  if [ -n "$running" ]; then
    if [ "$(wc -w <<<"${running/watchdog/}")" -eq $((${#COMPONENTS[@]} - 1)) ]; then
      say "already running ($running) for AIRFLOW_HOME=$AIRFLOW_HOME: UI $API_URL, login $ADMIN_USER / $ADMIN_PASSWORD"
      return 0
    fi
    say "partly running ($running): stopping it first"
    stop_stack
  fi
  local port
  for port in "$API_PORT" "$SANDBOX_PORT" "$WEBHOOK_PORT"; do
    port_in_use "$port" \
      && die "port $port on 127.0.0.1 is in use (set AIRFLOW_API_PORT / CXONE_SANDBOX_PORT / CXONE_WEBHOOK_PORT)"
  done
  local started=$SECONDS
  bash "$ROOT/scripts/setup.sh"

  # On any failure from here on, stop what was started.
  trap 'on_start_exit $?' EXIT

  # The login: SimpleAuthManager reads passwords from this file (it only generates ones for users missing in it).
  local password_file="$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
  ( umask 077; python -c 'import json, sys; users = {sys.argv[1]: sys.argv[2]}
users.update((e.split(":")[0], e.split(":")[-1]) for e in sys.argv[3].split(",") if e); print(json.dumps(users))' \
      "$ADMIN_USER" "$ADMIN_PASSWORD" "${STACK_EXTRA_USERS:-}" >"$password_file" )
  rm -f "$STACK_DIR/sandbox.json" "$STACK_DIR"/*.log

  say "starting the CXone sandbox on :$SANDBOX_PORT and the webhook sink on :$WEBHOOK_PORT"
  launch sandbox python -m include.cxone_sandbox --port "$SANDBOX_PORT" --webhook-port "$WEBHOOK_PORT" \
    --ready-file "$STACK_DIR/sandbox.json"
  if [ -n "${STACK_OWNER_PID:-}" ]; then
    launch watchdog bash "$ROOT/scripts/stack.sh" _watch "$STACK_OWNER_PID"
  fi

  say "applying airflow_settings.yaml (airflow connections/variables/pools import)"
  python "$ROOT/scripts/apply_settings.py" --settings "$ROOT/airflow_settings.yaml" --out-dir "$STACK_DIR/settings" \
    --cxone-url "$SANDBOX_URL" --webhook-url "$WEBHOOK_URL" >"$STACK_DIR/apply-settings.log" 2>&1 \
    || { tail -n 40 "$STACK_DIR/apply-settings.log" >&2; die "applying airflow_settings.yaml failed"; }

  local deadline=$((SECONDS + 20))
  until [ -s "$STACK_DIR/sandbox.json" ]; do
    alive "$(pid_of sandbox)" || { tail -n 40 "$STACK_DIR/sandbox.log" >&2; die "the sandbox exited"; }
    [ $SECONDS -lt $deadline ] || { tail -n 40 "$STACK_DIR/sandbox.log" >&2; die "the sandbox did not start in 20s"; }
    sleep 0.2
  done

  say "starting api-server on $API_URL, scheduler, dag-processor"
  launch api-server airflow api-server --host 127.0.0.1 --port "$API_PORT" --workers "$AIRFLOW__API__WORKERS"
  launch scheduler airflow scheduler --skip-serve-logs
  launch dag-processor airflow dag-processor
  if [ ${#TRIGGERER[@]} -gt 0 ]; then
    say "starting the triggerer"
    launch triggerer airflow triggerer --skip-serve-logs
  fi
  local worker
  for worker in "${CELERY_WORKERS[@]}"; do
    say "starting Celery worker $worker"
    launch "celery-$worker" env STACK_WORKER_HOSTNAME="$worker" \
      AIRFLOW__CORE__HOSTNAME_CALLABLE=scripts.worker_hostname.hostname \
      airflow celery worker --celery-hostname "$worker" --skip-serve-logs \
      --concurrency "${STACK_CELERY_CONCURRENCY:-4}"
  done

  local state
  state="$(python "$ROOT/scripts/stack_probe.py" wait --stack-dir "$STACK_DIR" --api-url "$API_URL" \
    --user "$ADMIN_USER" --password-file "$password_file" --dag-id "$DAG_ID" --timeout "$START_TIMEOUT")" \
    || die "not ready (logs: $STACK_DIR)"
  for worker in "${CELERY_WORKERS[@]}"; do  # a worker is ready once it consumes from the broker
    until grep -q "@$worker ready" "$STACK_DIR/celery-$worker.log" 2>/dev/null; do
      alive "$(pid_of "celery-$worker")" \
        || { tail -n 40 "$STACK_DIR/celery-$worker.log" >&2; die "worker $worker exited"; }
      [ $((SECONDS - started)) -lt $((START_TIMEOUT + 60)) ] \
        || { tail -n 40 "$STACK_DIR/celery-$worker.log" >&2; die "worker $worker not ready"; }
      sleep 0.5
    done
  done
  trap - EXIT
  print_summary "$state" $((SECONDS - started))
}

status_stack() {
  local name pid any=0 all=1
  echo "stack: AIRFLOW_HOME=$AIRFLOW_HOME"
  for name in "${COMPONENTS[@]}"; do
    if pid="$(pid_of "$name")"; then
      if ours "$name" "$pid"; then
        printf '  %-14s running (pid %s)\n' "$name" "$pid"; any=1; continue
      fi
      printf '  %-14s not running (stale pid file)\n' "$name"; all=0; continue
    fi
    [ "$name" = watchdog ] && continue
    printf '  %-14s not running\n' "$name"; all=0
  done
  if [ $any -eq 1 ]; then
    printf '  %-14s %s\n' health "$(python "$ROOT/scripts/stack_probe.py" health --api-url "$API_URL" || true)"
    echo "  UI $API_URL (login $ADMIN_USER / $ADMIN_PASSWORD), sandbox $SANDBOX_URL, webhook sink $WEBHOOK_URL"
  fi
  [ $all -eq 1 ]
}

watch_owner() {  # owner pid: stop the stack once the owner (a test session) is gone, however it ended
  local owner="$1"
  while kill -0 "$owner" 2>/dev/null; do sleep 2; done
  STACK_FROM_WATCHDOG=1 bash "$ROOT/scripts/stack.sh" stop >>"$STACK_DIR/watchdog.log" 2>&1 || true
  rm -f "$STACK_DIR/watchdog.pid"
}

case "${1:-}" in
  start) start_stack ;;
  stop) mkdir -p "$STACK_DIR"; stop_stack ;;
  status) status_stack ;;
  run) shift; exec "$@" ;;
  _watch) watch_owner "$2" ;;
  *) echo "usage: $0 start|stop|status|run COMMAND..." >&2; exit 2 ;;
esac
