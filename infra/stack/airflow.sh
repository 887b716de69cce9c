# The Airflow deployment's settings (sourced by infra/stack/up.sh; `airflow_env` runs in the
# subshell that starts each Airflow process, so nothing here leaks into the other services).
# The same settings as docker-compose.yml's x-airflow-env, for one machine: LocalExecutor (task
# processes under the scheduler) instead of Celery, the loopback instead of service names.
# shellcheck shell=bash

airflow_env() {
  # no raw AWS credentials: tasks get them from the AWS connection (dags/_common.py)
  unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 MLFLOW_TRACKING_URI
  export AIRFLOW_HOME=$STACK/airflow
  export PYTHONPATH=$REPO/libs # task processes import the checkout's package
  export AIRFLOW__CORE__EXECUTOR=LocalExecutor
  export AIRFLOW__CORE__PARALLELISM=${CLIMB_STACK_PARALLELISM:-3} # task processes at once (2 cores)
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://airflow:${AIRFLOW_DB_PASSWORD}@127.0.0.1:${PORT_POSTGRES}/airflow"
  export AIRFLOW__CORE__FERNET_KEY=$AIRFLOW_FERNET_KEY
  export AIRFLOW__API__SECRET_KEY=$AIRFLOW_API_SECRET_KEY
  export AIRFLOW__API_AUTH__JWT_SECRET=$AIRFLOW_JWT_SECRET
  export AIRFLOW__API__BASE_URL=http://127.0.0.1:$PORT_AIRFLOW
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$PORT_AIRFLOW/execution/
  export AIRFLOW__CORE__DAGS_FOLDER=$REPO/dags
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
  export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$PORT_AIRFLOW_LOGS
  export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=$PORT_AIRFLOW_TRIGGERER
  # Airflow's simple auth manager (one admin, password generated into secrets.env): enough for a
  # single-user local stack; a shared deployment uses FAB or the platform's SSO (OPERATIONS.md).
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$STACK/airflow/passwords.json
  # Connections from the environment (Airflow's env secrets backend): Spark and S3.
  AIRFLOW_CONN_SPARK_DEFAULT=$("$PY" -c 'import json, sys; print(json.dumps({"conn_type": "spark",
    "host": "spark://127.0.0.1", "port": int(sys.argv[1]), "extra": {"deploy-mode": "client"}}))' "$PORT_SPARK")
  AIRFLOW_CONN_AWS_DEFAULT=$(S3_ACCESS_KEY_ID=$S3_ACCESS_KEY_ID S3_SECRET_ACCESS_KEY=$S3_SECRET_ACCESS_KEY "$PY" -c '
import json, os, sys
print(json.dumps({"conn_type": "aws", "login": os.environ["S3_ACCESS_KEY_ID"],
                  "password": os.environ["S3_SECRET_ACCESS_KEY"],
                  "extra": {"endpoint_url": sys.argv[1], "region_name": "us-east-1"}}))' "http://127.0.0.1:$PORT_S3")
  export AIRFLOW_CONN_SPARK_DEFAULT AIRFLOW_CONN_AWS_DEFAULT
  # The Variables the DAGs read (dags/_common.py VARIABLES): refreshes on demand only (no
  # schedule: a local stack does not start a refresh of its own), runs tracked on the server.
  export AIRFLOW_VAR_CLIMB_REFRESH_SCHEDULE=""
  export AIRFLOW_VAR_CLIMB_MLFLOW_TRACKING_URI=http://127.0.0.1:$PORT_MLFLOW
}
