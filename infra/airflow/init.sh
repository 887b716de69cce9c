#!/usr/bin/env bash
# One-shot setup of the Airflow deployment (compose service `airflow-init`); safe to run again.
# Migrates the metadata DB, writes the admin's password for Airflow's simple auth manager from
# the environment (.env), and creates the pool that the DAGs' GPU tasks run in.
set -euo pipefail

airflow db migrate

: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD in .env}"
: "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?}"
python - <<'PY'
import json, os
path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
os.makedirs(os.path.dirname(path), exist_ok=True)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump({"admin": os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
PY

# One slot per GPU the workers on the `gpu` queue have: embedding and each proxy run take one.
airflow pools set gpu "${GPU_POOL_SLOTS:-1}" "GPUs: embedding and proxy training, one task per slot"
