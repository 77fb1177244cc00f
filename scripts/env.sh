# Sourced by the Makefile's recipes and scripts: the embedded default environment.
# Everything lives inside the repository (git-ignored): the virtualenv, AIRFLOW_HOME with its SQLite DB, the data.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://127.0.0.1:${AIRFLOW_API_PORT:-8080}/execution/}"
export PYTHONPATH="$ROOT:$ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}"
# Where runs keep their files (any fsspec URI: file://, s3://, ...). Default: a local folder in the repo.
export CXONE_IMPORT_STORAGE_BASE="${CXONE_IMPORT_STORAGE_BASE:-file://$ROOT/data}"
