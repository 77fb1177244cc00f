"""Run the import DAG on the embedded default: local sandbox + webhook sink, local storage, ``dag.test()``.

Shared by ``make demo``, the end-to-end tests and the benchmark, so all three exercise the same path.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from cxone_provider.connection_form import DEFAULT_MAX_CONCURRENCY

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "dags" / "cxone_contact_import.py"
DEMO_WEBHOOK_SECRET = "demo-signing-secret"


def connection_env(
    cxone_url: str,
    webhook_url: str,
    *,
    requests_per_minute: int = 1000,
    max_concurrency: int | None = None,
    client_id: str = "sandbox-client",
    client_secret: str = "sandbox-secret",
    webhook_secret: str | None = DEMO_WEBHOOK_SECRET,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Airflow connections as environment variables (JSON form), pointing at the local servers."""
    cxone = {
        "conn_type": "cxone",
        "login": client_id,
        "password": client_secret,
        "extra": {"host": cxone_url, "requests_per_minute": requests_per_minute,
                  "max_concurrency": max_concurrency or DEFAULT_MAX_CONCURRENCY,
                  **(extra or {})},
    }
    webhook = {"conn_type": "http", "host": webhook_url, "extra": {"endpoint": "/crm/events", "backoff_base_s": 0.05}}
    if webhook_secret:
        webhook["password"] = webhook_secret
    return {"AIRFLOW_CONN_CXONE_DEFAULT": json.dumps(cxone), "AIRFLOW_CONN_CRM_WEBHOOK": json.dumps(webhook)}


def call_list_connection_env(
    sandbox_url: str,
    webhook_url: str,
    *,
    requests_per_minute: int = 1000,
    extra: dict[str, Any] | None = None,
    **webhook: Any,
) -> dict[str, str]:
    """Like :func:`connection_env` for the call_lists profile, pointing at a ``CallListSandbox``: its access key as
    login/password, its OIDC client in the extras, discovery on the sandbox, short job polls."""
    from include.cxone_sandbox.call_lists_api import CallListSandboxConfig

    sandbox = CallListSandboxConfig()
    env = connection_env(sandbox_url, webhook_url, **webhook)
    cxone = {
        "conn_type": "cxone",
        "login": sandbox.access_key_id,
        "password": sandbox.access_key_secret,
        "extra": {
            "api_profile": "call_lists",
            "client_id": sandbox.client_id,
            "client_secret": sandbox.client_secret,
            "auth_base_url": sandbox_url,
            "requests_per_minute": requests_per_minute,
            "job_poll_first_s": 0.1,
            "job_poll_max_s": 1.0,
            "job_timeout_s": 60,
            **(extra or {}),
        },
    }
    return {**env, "AIRFLOW_CONN_CXONE_DEFAULT": json.dumps(cxone)}


@contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def ensure_pool(name: str = "cxone_api", slots: int = 4) -> None:
    """dag.test() honours pools: make sure the import pool exists in the metadata DB."""
    from airflow.models.pool import Pool

    if Pool.get_pool(name) is None:
        Pool.create_or_update_pool(name, slots=slots, description="CXone API concurrency", include_deferred=False)


def load_dag() -> Any:
    """Parse the DAG file the way the DAG processor does (a DagBag over that one file) and return the DAG."""
    from airflow.dag_processing.dagbag import DagBag

    dagbag = DagBag(dag_folder=str(DAG_FILE))
    if dagbag.import_errors:
        raise RuntimeError(f"the DAG file does not import: {dagbag.import_errors}")
    return dagbag.get_dag("cxone_contact_import")


def run_dag(run_conf: dict[str, Any], *, logical_date: Any = None) -> Any:
    """``dag.test()`` with this conf; returns the DagRun."""
    ensure_pool()
    dag = load_dag()
    kwargs: dict[str, Any] = {"run_conf": run_conf}
    if logical_date is not None:
        # run_after fixes the run id too, so running the same date again re-runs that run (like a clear)
        kwargs["logical_date"] = logical_date
        kwargs["run_after"] = logical_date
    return dag.test(**kwargs)


def run_report(storage_base: Path, run_id: str) -> dict[str, Any] | None:
    from cxone_runs.layout import safe_segment

    path = storage_base / "runs" / "cxone_contact_import" / safe_segment(run_id) / "report.json"
    return json.loads(path.read_text()) if path.exists() else None
