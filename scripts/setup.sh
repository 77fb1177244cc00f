#!/usr/bin/env bash
# Idempotent set-up from a fresh clone with only python3: virtualenv, pinned installs, the local provider,
# and an initialised SQLite Airflow metadata DB inside the repo.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
fi
stamp=".venv/.installed-$(cat requirements.txt requirements-dev.txt constraints.txt plugins/pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing pinned requirements"
  .venv/bin/uv pip install --quiet --python .venv/bin/python -r requirements-dev.txt -c constraints.txt
  .venv/bin/uv pip install --quiet --python .venv/bin/python -e plugins
  rm -f .venv/.installed-*
  touch "$stamp"
fi
mkdir -p "$AIRFLOW_HOME"
if [ ! -f "$AIRFLOW_HOME/.db-ready" ] || [ "$stamp" -nt "$AIRFLOW_HOME/.db-ready" ]; then
  echo "setup: initialising the Airflow metadata DB in $AIRFLOW_HOME"
  airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -50 "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
  touch "$AIRFLOW_HOME/.db-ready"
fi
echo "setup: ready (python $(.venv/bin/python -c 'import sys; print(sys.version.split()[0])'), airflow $(.venv/bin/python -c 'import airflow; print(airflow.__version__)'))"
