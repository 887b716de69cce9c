# Shared by infra/stack/up.sh and down.sh (sourced): where the local stack keeps its state, the
# ports it uses, and how it starts and stops a service. docs/OPERATIONS.md describes the stack.
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK=${CLIMB_STACK_DIR:-$REPO/out/stack} # state, logs, data; git-ignored (out/)
RUN=$STACK/run                             # one pid file per service
LOGS=$STACK/logs                           # one log per service
SECRETS=$STACK/secrets.env                 # generated once, mode 600, never printed

# Fixed ports, all on 127.0.0.1 (the same numbers as docker-compose.yml's published ports, but
# Postgres, which compose does not publish: 15432 keeps clear of a system PostgreSQL on 5432).
PORT_POSTGRES=15432
PORT_S3=9000
PORT_MLFLOW=5000
PORT_AIRFLOW=8080
PORT_AIRFLOW_LOGS=8793      # the scheduler's task-log server (LocalExecutor)
PORT_AIRFLOW_TRIGGERER=8794 # the triggerer's log server
PORT_SPARK=7077
PORT_SPARK_UI=8081
PORT_SPARK_WORKER_UI=(8082 8083)
ALL_PORTS=("$PORT_POSTGRES" "$PORT_S3" "$PORT_MLFLOW" "$PORT_AIRFLOW" "$PORT_AIRFLOW_LOGS"
  "$PORT_AIRFLOW_TRIGGERER" "$PORT_SPARK" "$PORT_SPARK_UI" "${PORT_SPARK_WORKER_UI[@]}")

# Services in start order (down.sh stops them in reverse).
SERVICES=(postgres s3 spark-master spark-worker-1 spark-worker-2 mlflow
  airflow-api-server airflow-scheduler airflow-dag-processor airflow-triggerer)

PY=$(command -v python || command -v python3) || { echo "stack: python is not on PATH (run through make stack)" >&2; exit 1; }
BIN=$(dirname "$PY")
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true) # empty: not installed (up.sh installs it)
PG_USER=postgres # initdb and the server refuse root: they run as Debian's postgres user

say() { printf '%s stack: %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

port_taken() { # port -> 0 when something listens on 127.0.0.1:port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

alive() { # service -> 0 when its pid file names a live process
  local f=$RUN/$1.pid
  [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# start NAME CMD...: run CMD in a session (and process group) of its own, so that stopping the
# group stops it and every process it started (uvicorn workers, task processes, executors).
start() {
  local name=$1
  shift
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

# wait_for NAME SECONDS CHECK...: poll CHECK every second until it passes; fail with the log's tail.
wait_for() {
  local name=$1 secs=$2 t0=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - t0 > secs)); then
      tail -n 30 "$LOGS/$name.log" >&2 2>/dev/null
      die "$name did not become healthy within ${secs}s (log: $LOGS/$name.log)"
    fi
    if [[ $name != postgres ]] && ! alive "$name"; then
      tail -n 30 "$LOGS/$name.log" >&2 2>/dev/null
      die "$name exited (log: $LOGS/$name.log)"
    fi
    sleep 1
  done
  say "$name healthy ($((SECONDS - t0))s)"
}
