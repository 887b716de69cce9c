#!/usr/bin/env bash
# `make stack`: the whole deployment on this machine, from the project's own environment and
# Debian's PostgreSQL (no container engine): PostgreSQL (Airflow's metadata DB and MLflow's
# backend store), moto's S3 server (the S3 endpoint), a Spark standalone master and two workers,
# an MLflow tracking server (artifacts in S3), and Airflow 3 (api-server, scheduler,
# dag-processor, triggerer; LocalExecutor). Every service listens on 127.0.0.1 on a fixed port
# (infra/stack/common.sh), keeps its state under out/stack/ and is health-checked before the next
# starts. Secrets are generated once into out/stack/secrets.env (mode 600) and reach the services
# through their environment, never a command line, a committed file or a log.
# `make stack-down` (infra/stack/down.sh) stops exactly what this started. docs/OPERATIONS.md.
set -euo pipefail
source "$(dirname "$0")/common.sh"
T0=$SECONDS
# services get the S3 credentials and endpoints meant for them, never the caller's
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 MLFLOW_TRACKING_URI

# ------------------------------------------------------------------------------ preconditions
for name in "${SERVICES[@]}"; do
  if alive "$name"; then die "$name is already running (pid $(cat "$RUN/$name.pid")): make stack-down first"; fi
done
for port in "${ALL_PORTS[@]}"; do
  if port_taken "$port"; then die "port $port on 127.0.0.1 is taken by another process: the stack needs it (see docs/OPERATIONS.md)"; fi
done
command -v java >/dev/null || die "java is not installed (Spark needs a JRE 17+: apt-get install openjdk-17-jre-headless)"
if [[ -z $PG_BIN ]]; then
  say "PostgreSQL is not installed: apt-get install postgresql (Debian's)"
  (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq postgresql >/dev/null) ||
    die "could not install PostgreSQL with apt-get"
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
# a start that fails half-way stops what it had started
trap 'rc=$?; if ((rc != 0)); then say "start failed: stopping what was started"; bash "$REPO/infra/stack/down.sh" >&2; fi' EXIT
mkdir -p "$RUN" "$LOGS" "$STACK/spark/conf" "$STACK/spark/events" "$STACK/airflow"
rm -f "$RUN"/*.pid

# ------------------------------------------------------------------------------ secrets
if [[ ! -s $SECRETS ]]; then
  [[ -e $STACK/postgres/data/PG_VERSION ]] && die "$SECRETS is missing but $STACK/postgres holds a database made with it: rm -rf $STACK and start again"
  (umask 077 && "$PY" - >"$SECRETS" <<'PY'
import secrets
from cryptography.fernet import Fernet
tok = lambda: secrets.token_urlsafe(24)
for name in ("POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "AIRFLOW_ADMIN_PASSWORD",
             "AIRFLOW_API_SECRET_KEY", "AIRFLOW_JWT_SECRET"):
    print(f"{name}={tok()}")
print(f"AIRFLOW_FERNET_KEY={Fernet.generate_key().decode()}")
# moto accepts any credentials; generated ones still prove that each process gets them
print(f"S3_ACCESS_KEY_ID=climb{secrets.token_hex(6)}")
print(f"S3_SECRET_ACCESS_KEY={tok()}")
PY
  )
fi
source "$SECRETS" # shell variables, not exported: each service gets only the ones it needs

# What clients need (no secret): the e2e test and a user's shell read it.
cat >"$STACK/stack.env" <<EOF2
AIRFLOW_URL=http://127.0.0.1:$PORT_AIRFLOW
MLFLOW_TRACKING_URI=http://127.0.0.1:$PORT_MLFLOW
AWS_ENDPOINT_URL=http://127.0.0.1:$PORT_S3
SPARK_MASTER=spark://127.0.0.1:$PORT_SPARK
SPARK_MASTER_UI=http://127.0.0.1:$PORT_SPARK_UI
SPARK_EVENT_LOG_DIR=$STACK/spark/events
EOF2

# ------------------------------------------------------------------------------ PostgreSQL
as_pg() { if [[ $EUID -eq 0 ]]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi; }
PGDATA=$STACK/postgres/data
mkdir -p "$STACK/postgres/socket"
touch "$LOGS/postgres.log"
[[ $EUID -eq 0 ]] && chown -R "$PG_USER" "$STACK/postgres" "$LOGS/postgres.log"
if [[ ! -s $PGDATA/PG_VERSION ]]; then
  pw=$(mktemp) && printf '%s\n' "$POSTGRES_PASSWORD" >"$pw"
  [[ $EUID -eq 0 ]] && chown "$PG_USER" "$pw"
  as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --pwfile="$pw" --auth-local=peer --auth-host=scram-sha-256 \
    --no-locale -E UTF8 >>"$LOGS/postgres.log" || { rm -f "$pw"; die "initdb failed (log: $LOGS/postgres.log)"; }
  rm -f "$pw"
fi
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$LOGS/postgres.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $PORT_POSTGRES -k $STACK/postgres/socket" start >/dev/null ||
  die "PostgreSQL did not start (log: $LOGS/postgres.log)"
head -1 "$PGDATA/postmaster.pid" >"$RUN/postgres.pid"
wait_for postgres 60 "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT_POSTGRES"
export PGHOST=127.0.0.1 PGPORT=$PORT_POSTGRES
if ! PGPASSWORD=$POSTGRES_PASSWORD psql -U postgres -d postgres -tAc "select 1 from pg_database where datname='airflow'" | grep -q 1; then
  PGPASSWORD=$POSTGRES_PASSWORD POSTGRES_USER=postgres POSTGRES_DB=postgres AIRFLOW_DB_PASSWORD=$AIRFLOW_DB_PASSWORD \
    MLFLOW_DB_PASSWORD=$MLFLOW_DB_PASSWORD bash "$REPO/infra/postgres/init-databases.sh" >/dev/null
  say "databases airflow and mlflow created"
fi
unset PGHOST PGPORT

# ------------------------------------------------------------------------------ S3 (moto)
s3_env() { # the S3 endpoint and credentials, exported in the calling subshell only
  export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT_S3 AWS_DEFAULT_REGION=us-east-1
  export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$S3_SECRET_ACCESS_KEY
}
start s3 "$BIN/moto_server" -H 127.0.0.1 -p "$PORT_S3"
wait_for s3 60 curl -sf -o /dev/null "http://127.0.0.1:$PORT_S3/"
(s3_env && "$PY" "$REPO/infra/minio/create_buckets.py" climb mlflow >/dev/null)

# ------------------------------------------------------------------------------ Spark
# The applications' settings (spark-submit reads SPARK_CONF_DIR): every application writes an
# event log (what ran where: the e2e test reads it), the driver is reachable on the loopback.
cat >"$STACK/spark/conf/spark-defaults.conf" <<EOF2
spark.eventLog.enabled       true
spark.eventLog.dir           file://$STACK/spark/events
spark.driver.host            127.0.0.1
spark.ui.showConsoleProgress false
spark.executor.memory        1g
EOF2
export SPARK_CONF_DIR=$STACK/spark/conf SPARK_LOCAL_IP=127.0.0.1
# Executors run this environment's Python with the checkout's package (what the compose image
# installs); no S3 credentials here: each application's driver hands its own to its executors.
start spark-master "$BIN/spark-class" org.apache.spark.deploy.master.Master --host 127.0.0.1 --port "$PORT_SPARK" --webui-port "$PORT_SPARK_UI"
wait_for spark-master 90 curl -sf -o /dev/null "http://127.0.0.1:$PORT_SPARK_UI/json/"
for i in 1 2; do
  mkdir -p "$STACK/spark/work-$i"
  PYTHONPATH="$REPO/libs" start "spark-worker-$i" \
    "$BIN/spark-class" org.apache.spark.deploy.worker.Worker --host 127.0.0.1 --cores 1 --memory 1g \
    --webui-port "${PORT_SPARK_WORKER_UI[$((i - 1))]}" --work-dir "$STACK/spark/work-$i" "spark://127.0.0.1:$PORT_SPARK"
done
spark_workers() { curl -sf "http://127.0.0.1:$PORT_SPARK_UI/json/" | "$PY" -c 'import json,sys; sys.exit(json.load(sys.stdin)["aliveworkers"] != 2)'; }
wait_for spark-worker-2 90 spark_workers

# ------------------------------------------------------------------------------ MLflow
(s3_env && export MLFLOW_S3_ENDPOINT_URL=$AWS_ENDPOINT_URL MLFLOW_BUCKET=mlflow MLFLOW_DB_PASSWORD \
  MLFLOW_DB_HOST=127.0.0.1:$PORT_POSTGRES MLFLOW_HOST=127.0.0.1 MLFLOW_PORT=$PORT_MLFLOW MLFLOW_WORKERS=1 &&
  start mlflow bash "$REPO/infra/mlflow/server.sh")
wait_for mlflow 180 curl -sf -o /dev/null "http://127.0.0.1:$PORT_MLFLOW/health"

# ------------------------------------------------------------------------------ Airflow
source "$REPO/infra/stack/airflow.sh"
(airflow_env && export AIRFLOW_ADMIN_PASSWORD GPU_POOL_SLOTS=2 && bash "$REPO/infra/airflow/init.sh") >>"$LOGS/airflow-init.log" 2>&1 ||
  { tail -n 30 "$LOGS/airflow-init.log" >&2; die "airflow init failed (log: $LOGS/airflow-init.log)"; }
say "airflow metadata DB migrated, pool gpu set"
(airflow_env && start airflow-api-server airflow api-server --host 127.0.0.1 --port "$PORT_AIRFLOW" --workers 1)
wait_for airflow-api-server 180 curl -sf -o /dev/null "http://127.0.0.1:$PORT_AIRFLOW/api/v2/monitor/health"
for svc in scheduler dag-processor triggerer; do
  (airflow_env && start "airflow-$svc" airflow "$svc")
done
airflow_healthy() {
  curl -sf "http://127.0.0.1:$PORT_AIRFLOW/api/v2/monitor/health" | "$PY" -c '
import json, sys
h = json.load(sys.stdin)
sys.exit(any(h.get(k, {}).get("status") != "healthy" for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")))'
}
wait_for airflow-scheduler 180 airflow_healthy
# Up means usable: the DAG processor has parsed the project's DAGs (a DAG run can be triggered).
dags_parsed() {
  AIRFLOW_URL="http://127.0.0.1:$PORT_AIRFLOW" AIRFLOW_ADMIN_PASSWORD="$AIRFLOW_ADMIN_PASSWORD" "$PY" -c '
import os, sys, requests
url = os.environ["AIRFLOW_URL"]
r = requests.post(f"{url}/auth/token", json={"username": "admin", "password": os.environ["AIRFLOW_ADMIN_PASSWORD"]}, timeout=10)
h = {"Authorization": "Bearer " + r.json()["access_token"]}
sys.exit(any(requests.get(f"{url}/api/v2/dags/{d}", headers=h, timeout=10).status_code != 200
             for d in ("climb_corpus_refresh", "climb_mixture_search")))' 2>/dev/null
}
wait_for airflow-dag-processor 180 dags_parsed # its log on failure

say "up in $((SECONDS - T0))s: Airflow http://127.0.0.1:$PORT_AIRFLOW (user admin, password in $SECRETS)," \
  "MLflow http://127.0.0.1:$PORT_MLFLOW, Spark http://127.0.0.1:$PORT_SPARK_UI, S3 http://127.0.0.1:$PORT_S3"
