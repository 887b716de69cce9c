#!/usr/bin/env bash
# The MLflow tracking server (compose service `mlflow`): runs and metrics in Postgres, artifacts
# in the S3 bucket $MLFLOW_BUCKET on MinIO, served through this server (clients need no S3
# credentials for MLflow). infra/stack/up.sh runs it too, on the loopback (MLFLOW_DB_HOST,
# MLFLOW_HOST, MLFLOW_PORT). The store URI goes through the environment, not the command line, so
# its password does not show in `ps`. Host headers allowed: the service name for the workers,
# localhost for the UI through a port forward.
set -euo pipefail
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in .env}"
export MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://mlflow:${MLFLOW_DB_PASSWORD}@${MLFLOW_DB_HOST:-postgres:5432}/mlflow"
# MLflow 3's job runner (GenAI evaluation jobs: a process pool of ~250 MB each) is not used here.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
export MLFLOW_ARTIFACTS_DESTINATION="s3://${MLFLOW_BUCKET:-mlflow}/artifacts"
exec mlflow server --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --serve-artifacts \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-mlflow,mlflow:5000,localhost,localhost:5000,127.0.0.1,127.0.0.1:5000}" \
  --workers "${MLFLOW_WORKERS:-2}"
