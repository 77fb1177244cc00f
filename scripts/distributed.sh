#!/usr/bin/env bash
# The DAG on a distributed stack, as plain processes on 127.0.0.1 in one folder (no Docker):
# `bash scripts/distributed.sh start|stop|status|run COMMAND...` (make distributed-test drives it).
#
# start   installs PostgreSQL and Redis when missing (scripts/install_services.sh, Debian packages), then starts,
#         each in its own process group with its pid in $DISTRIBUTED_HOME/services/<name>.pid and its output in
#         $DISTRIBUTED_HOME/services/<name>.log, on free ports:
#           postgres  the Airflow metadata DB and Celery's result backend (a fresh cluster, run as the `postgres`
#                     user when started as root: PostgreSQL refuses root; its data folder is then a mktemp folder
#                     that user can reach, removed on stop)
#           redis     Celery broker (db 0) and the CXone rate budget (db 1: CXONE_RATE_BUDGET_URL)
#           s3        moto's S3 server with the bucket `cxone-distributed`: the storage base (Variables
#                     cxone_storage_base / cxone_storage_conn_id, connection aws_distributed) and the source files
#         and then scripts/stack.sh with AIRFLOW__CORE__EXECUTOR=CeleryExecutor: the CXone sandbox + webhook sink,
#         api-server, scheduler, dag-processor and two Celery workers (STACK_CELERY_WORKERS, default
#         "worker-1 worker-2"), AIRFLOW_HOME=$DISTRIBUTED_HOME/airflow. Every setting is written to
#         $DISTRIBUTED_HOME/stack.env, so `run`, `status` and `stop` talk to the same stack. A failed start stops what
#         it started.
# stop    stops the Airflow stack (scripts/stack.sh stop), then S3, Redis and PostgreSQL; safe to repeat.
# status  what runs.
# run     a command in the stack's environment, e.g. `bash scripts/distributed.sh run airflow dags list`.
#
# Parameters (environment, read by start): DISTRIBUTED_HOME (default ${TMPDIR:-/tmp}/cxone-distributed-$UID),
# AIRFLOW_API_PORT / CXONE_SANDBOX_PORT / CXONE_WEBHOOK_PORT (default: free ports), STACK_CELERY_WORKERS,
# STACK_CELERY_CONCURRENCY, STACK_OWNER_PID (a watchdog stops everything once that process is gone: used by
# tests/distributed.py), AIRFLOW_ADMIN_PASSWORD, any AIRFLOW__SECTION__KEY or CXONE_* variable.
# Lost-worker detection is shortened for the stack (override through the environment):
#   AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=30 (default 300), ..._DETECTION_INTERVAL=5 (default 10).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

HOME_DIR="${DISTRIBUTED_HOME:-${TMPDIR:-/tmp}/cxone-distributed-$(id -u)}"
SERVICES_DIR="$HOME_DIR/services"
ENV_FILE="$HOME_DIR/stack.env"
BUCKET=cxone-distributed
STORAGE_PREFIX=imports
AWS_CONN_ID=aws_distributed
SERVICES=(postgres redis s3 watchdog)  # start order; stop goes the other way round
STOP_TIMEOUT="${STACK_STOP_TIMEOUT:-30}"

say() { printf 'distributed: %s\n' "$*"; }
die() { printf 'distributed: %s\n' "$*" >&2; exit 1; }

free_port() { "$ROOT/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

alive() {  # pid: exists and is not a zombie
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

group_alive() { ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'; }

pid_of() { local f="$SERVICES_DIR/$1.pid"; [ -f "$f" ] && read -r pid <"$f" && [[ "$pid" =~ ^[0-9]+$ ]] && echo "$pid"; }

ours() {  # name pid: the recorded pid still leads the process group we started
  alive "$2" || return 1
  [ "$(ps -o pgid= -p "$2" 2>/dev/null | tr -d ' ')" = "$2" ]
}

launch() {  # name command...: start in a new session (own process group), record the pid
  local name="$1"; shift
  setsid "$@" >"$SERVICES_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$SERVICES_DIR/$name.pid"
}

wait_for() {  # name seconds command...: until the command succeeds, while the service lives
  local name="$1" seconds="$2" deadline; shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    alive "$(pid_of "$name")" || { tail -n 30 "$SERVICES_DIR/$name.log" >&2; die "$name exited during start-up"; }
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$SERVICES_DIR/$name.log" >&2; die "$name not ready after ${seconds}s"; }
    sleep 0.2
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop_service() {  # name signal: signal the group, wait, KILL it after STOP_TIMEOUT
  local name="$1" signal="$2" pid begun
  pid="$(pid_of "$name")" || return 0
  if ours "$name" "$pid"; then
    kill "-$signal" -- "-$pid" 2>/dev/null || true
    begun=$SECONDS
    while group_alive "$pid"; do
      if [ $((SECONDS - begun)) -ge "$STOP_TIMEOUT" ]; then
        say "$name still running after ${STOP_TIMEOUT}s, killing process group $pid"
        kill -KILL -- "-$pid" 2>/dev/null || true
        sleep 0.5
        break
      fi
      sleep 0.2
    done
  fi
  rm -f "$SERVICES_DIR/$name.pid"
}

# -- start ----------------------------------------------------------------------------------------------------

start_postgres() {  # port pg_bin
  local port="$1" bin="$2" data run_as=()
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres
    data="$(mktemp -d "${TMPDIR:-/tmp}/cxone-distributed-pg.XXXXXX")"
    chown postgres: "$data"
    run_as=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  else
    data="$SERVICES_DIR/pgdata"
    mkdir -p "$data"
  fi
  chmod 700 "$data"
  echo "$data" >"$SERVICES_DIR/pgdata.path"
  pushd "$data" >/dev/null  # a working directory the postgres user can enter, whoever owns ours
  "${run_as[@]}" "$bin/initdb" --pgdata "$data" --username postgres --auth-local trust --auth-host scram-sha-256 \
    --encoding UTF8 --no-sync >"$SERVICES_DIR/initdb.log" 2>&1 \
    || { tail -n 30 "$SERVICES_DIR/initdb.log" >&2; die "initdb failed"; }
  # Throw-away data: no fsync. Unix socket inside the data folder (only its owner and root reach it).
  launch postgres "${run_as[@]}" "$bin/postgres" -D "$data" -p "$port" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories="$data" -c max_connections=300 -c fsync=off -c synchronous_commit=off \
    -c full_page_writes=off
  wait_for postgres 60 "$bin/pg_isready" -q -h "$data" -p "$port"
  "${run_as[@]}" "$bin/psql" -q -v ON_ERROR_STOP=1 -h "$data" -p "$port" -U postgres -d postgres \
    -c "CREATE ROLE airflow LOGIN PASSWORD 'airflow'" -c "CREATE DATABASE airflow OWNER airflow" \
    >"$SERVICES_DIR/createdb.log" 2>&1 || { cat "$SERVICES_DIR/createdb.log" >&2; die "creating the airflow DB failed"; }
  popd >/dev/null
}

write_env() {  # the settings every component (and `run`) gets
  local pg="$1" redis="$2" s3="$3" api="$4" sandbox="$5" webhook="$6"
  local db="postgresql+psycopg2://airflow:airflow@127.0.0.1:$pg/airflow"
  local storage="s3://$BUCKET/$STORAGE_PREFIX"
  local aws_conn="{\"conn_type\": \"aws\", \"login\": \"testing\", \"password\": \"testing\", \"extra\": {\"endpoint_url\": \"http://127.0.0.1:$s3\", \"region_name\": \"us-east-1\"}}"
  {
    declare -A settings=(
      [DISTRIBUTED_HOME]="$HOME_DIR"
      [AIRFLOW_HOME]="$HOME_DIR/airflow"
      [AIRFLOW_API_PORT]="$api"
      [CXONE_SANDBOX_PORT]="$sandbox"
      [CXONE_WEBHOOK_PORT]="$webhook"
      [DISTRIBUTED_POSTGRES_PORT]="$pg"
      [DISTRIBUTED_REDIS_PORT]="$redis"
      [DISTRIBUTED_S3_ENDPOINT]="http://127.0.0.1:$s3"
      [DISTRIBUTED_BUCKET]="$BUCKET"
      [AIRFLOW__CORE__EXECUTOR]=CeleryExecutor
      [AIRFLOW__DATABASE__SQL_ALCHEMY_CONN]="$db"
      [AIRFLOW__CELERY__BROKER_URL]="redis://127.0.0.1:$redis/0"
      [AIRFLOW__CELERY__RESULT_BACKEND]="db+postgresql+psycopg2://airflow:airflow@127.0.0.1:$pg/airflow"
      [AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT]="${AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT:-30}"
      [AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL]="${AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL:-5}"
      [AIRFLOW__CORE__PARALLELISM]="${AIRFLOW__CORE__PARALLELISM:-8}"  # = worker slots: 2 x 4
      [STACK_CELERY_WORKERS]="${STACK_CELERY_WORKERS:-worker-1 worker-2}"
      [STACK_CELERY_CONCURRENCY]="${STACK_CELERY_CONCURRENCY:-4}"
      [CXONE_RATE_BUDGET_URL]="redis://127.0.0.1:$redis/1"
      [CXONE_IMPORT_STORAGE_BASE]="$storage"
      [AIRFLOW_VAR_CXONE_STORAGE_BASE]="$storage"
      [AIRFLOW_VAR_CXONE_STORAGE_CONN_ID]="$AWS_CONN_ID"
      ["AIRFLOW_CONN_${AWS_CONN_ID^^}"]="$aws_conn"
      # Nothing may reach AWS: dummy credentials, no metadata service, no profile files.
      [AWS_ACCESS_KEY_ID]=testing
      [AWS_SECRET_ACCESS_KEY]=testing
      [AWS_DEFAULT_REGION]=us-east-1
      [AWS_EC2_METADATA_DISABLED]=true
      [AWS_CONFIG_FILE]=/dev/null
      [AWS_SHARED_CREDENTIALS_FILE]=/dev/null
    )
    local key
    for key in "${!settings[@]}"; do printf 'export %s=%q\n' "$key" "${settings[$key]}"; done
    # Whatever else the caller set for the stack (tests pass their knobs this way).
    for key in $(compgen -e); do
      case "$key" in AIRFLOW__* | CXONE_* | AIRFLOW_ADMIN_PASSWORD | STACK_START_TIMEOUT) ;; *) continue ;; esac
      [ -n "${settings[$key]+x}" ] || printf 'export %s=%q\n' "$key" "${!key}"
    done
  } | sort >"$ENV_FILE"
}

on_start_exit() {
  if [ "$1" -ne 0 ]; then
    say "start failed, stopping what was started" >&2
    stop_all >&2 || true
  fi
}

start_all() {
  [ -d "$ROOT/.venv" ] || bash "$ROOT/scripts/setup.sh"
  if [ -f "$ENV_FILE" ] && [ -n "$(running | xargs)" ]; then
    die "already running in $HOME_DIR ($(running | xargs)): stop it first (bash scripts/distributed.sh stop)"
  fi
  local started=$SECONDS pg_bin
  pg_bin="$(bash "$ROOT/scripts/install_services.sh")" || die "PostgreSQL / Redis not available (see above)"
  mkdir -p "$SERVICES_DIR" "$HOME_DIR/airflow"
  rm -f "$SERVICES_DIR"/*.log
  trap 'on_start_exit $?' EXIT

  local pg redis s3 api sandbox webhook
  pg="$(free_port)"; redis="$(free_port)"; s3="$(free_port)"
  api="${AIRFLOW_API_PORT:-$(free_port)}"; sandbox="${CXONE_SANDBOX_PORT:-$(free_port)}"
  webhook="${CXONE_WEBHOOK_PORT:-$(free_port)}"
  write_env "$pg" "$redis" "$s3" "$api" "$sandbox" "$webhook"
  if [ -n "${STACK_OWNER_PID:-}" ]; then
    launch watchdog bash "$ROOT/scripts/distributed.sh" _watch "$STACK_OWNER_PID"
  fi

  say "starting PostgreSQL on 127.0.0.1:$pg"
  start_postgres "$pg" "$pg_bin"
  say "starting Redis on 127.0.0.1:$redis"
  launch redis redis-server --bind 127.0.0.1 --port "$redis" --save "" --appendonly no --dir "$SERVICES_DIR" \
    --protected-mode yes
  wait_for redis 30 redis-cli -h 127.0.0.1 -p "$redis" ping
  say "starting S3 (moto) on 127.0.0.1:$s3"
  launch s3 "$ROOT/.venv/bin/python" -m moto.server -H 127.0.0.1 -p "$s3"
  wait_for s3 60 port_open "$s3"
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  "$ROOT/.venv/bin/python" -c 'import os, boto3
boto3.client("s3", endpoint_url=os.environ["DISTRIBUTED_S3_ENDPOINT"]).create_bucket(Bucket=os.environ["DISTRIBUTED_BUCKET"])' \
    || die "creating bucket $BUCKET failed"

  say "starting the Airflow stack (CeleryExecutor): scripts/stack.sh start"
  env -u STACK_OWNER_PID bash "$ROOT/scripts/stack.sh" start || die "scripts/stack.sh start failed"
  trap - EXIT
  cat <<EOF
distributed: up in $((SECONDS - started))s in $HOME_DIR
  PostgreSQL  127.0.0.1:$pg (db airflow, user airflow/airflow)   Redis 127.0.0.1:$redis (broker db 0, rate budget db 1)
  S3 (moto)   http://127.0.0.1:$s3 bucket $BUCKET, storage base s3://$BUCKET/$STORAGE_PREFIX (connection $AWS_CONN_ID)
  logs        $SERVICES_DIR/*.log, $HOME_DIR/airflow/stack/*.log   stop: bash scripts/distributed.sh stop
EOF
}

running() {
  local name pid
  for name in "${SERVICES[@]}"; do
    pid="$(pid_of "$name")" && ours "$name" "$pid" && echo "$name"
  done
  return 0
}

stop_all() {
  if [ -f "$ENV_FILE" ]; then
    # shellcheck disable=SC1090
    source "$ENV_FILE"
    env -u STACK_OWNER_PID bash "$ROOT/scripts/stack.sh" stop || say "scripts/stack.sh stop failed"
  fi
  [ -d "$SERVICES_DIR" ] || { say "nothing running in $HOME_DIR"; return 0; }
  say "stopping S3, Redis, PostgreSQL"
  stop_service s3 TERM
  stop_service redis TERM
  stop_service postgres INT  # PostgreSQL's fast shutdown (TERM would wait for every client to disconnect)
  if [ -f "$SERVICES_DIR/pgdata.path" ]; then
    local data; data="$(cat "$SERVICES_DIR/pgdata.path")"
    case "$data" in "${TMPDIR:-/tmp}"/cxone-distributed-pg.*) rm -rf "$data" ;; esac
    rm -f "$SERVICES_DIR/pgdata.path"
  fi
  [ -n "${STACK_FROM_WATCHDOG:-}" ] || stop_service watchdog TERM
  say "stopped"
}

status_all() {
  echo "distributed: DISTRIBUTED_HOME=$HOME_DIR"
  local name pid
  for name in "${SERVICES[@]}"; do
    if pid="$(pid_of "$name")" && ours "$name" "$pid"; then printf '  %-14s running (pid %s)\n' "$name" "$pid"
    elif [ "$name" != watchdog ]; then printf '  %-14s not running\n' "$name"; fi
  done
  if [ -f "$ENV_FILE" ]; then
    # shellcheck disable=SC1090
    source "$ENV_FILE"
    bash "$ROOT/scripts/stack.sh" status || true
  fi
}

watch_owner() {  # owner pid: stop everything once the owner is gone, however it ended
  while kill -0 "$1" 2>/dev/null; do sleep 2; done
  STACK_FROM_WATCHDOG=1 bash "$ROOT/scripts/distributed.sh" stop >>"$SERVICES_DIR/watchdog-stop.log" 2>&1 || true
  rm -f "$SERVICES_DIR/watchdog.pid"
}

case "${1:-}" in
  start) start_all ;;
  stop) stop_all ;;
  status) status_all ;;
  run)
    shift
    [ -f "$ENV_FILE" ] || die "no stack in $HOME_DIR (start it first)"
    # shellcheck disable=SC1090
    source "$ENV_FILE"
    exec bash "$ROOT/scripts/stack.sh" run "$@"
    ;;
  _watch) watch_owner "$2" ;;
  *) echo "usage: $0 start|stop|status|run COMMAND..." >&2; exit 2 ;;
esac
