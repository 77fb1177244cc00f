"""Configuration errors fail fast (a refused credential, a missing connection, a redirect; one task try, records
``not_sent``, the report names the connection and what to fix), and a budget store that is not shared is refused
when tasks may run on several hosts."""

from __future__ import annotations

import json

import pytest

from cxone_provider.errors import (
    CXoneAuthError,
    CXoneConfigurationError,
    CXoneRedirectError,
    CXoneServerError,
    CXoneStatusError,
)
from cxone_provider.hooks.cxone import CXoneHook
from cxone_provider.retry import is_configuration_error
from include.cxone_import import task_config
from tools.sample_data import generate_crm_export

pytestmark = pytest.mark.timeout(600)

RECORDS = 300
HOST = "http://127.0.0.1:9"


@pytest.fixture
def export(tmp_path):
    return generate_crm_export(tmp_path / "contacts.csv", RECORDS, bad_share=0.0, seed=23)


def _import_tries(run) -> list[int]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter(TaskInstance.run_id == run.dag_run.run_id,
                                                  TaskInstance.task_id == "import_batches").all()
        return [ti.try_number for ti in rows]


def test_a_wrong_client_secret_fails_on_the_first_try_and_names_the_credential(run_import, export, cxone_sandbox,
                                                                             webhook_sink):
    run = run_import({"source_uri": f"file://{export.path}", "batch_size": 25}, client_secret="not-the-secret")

    assert run.state == "failed"
    stats = cxone_sandbox.stats()
    assert stats["records_requests"] == 0
    assert 1 <= stats["token_requests"] <= 2, stats
    assert _import_tries(run) and set(_import_tries(run)) == {1}, "no retry of the import task"
    report = run.report
    assert report["totals"]["not_sent"] == report["totals"]["valid"] > 0
    assert report["totals"]["failed"] == 0
    assert report["dead_letters"] == 0
    assert run.file("dead_letter.jsonl").read_text() == ""
    assert report["not_sent_reason"] == "cxone_configuration"
    assert report["failure"]["rule"] == "cxone_configuration"
    problems = " ".join(report["problems"])
    assert "connection cxone_default" in problems and "client secret" in problems
    assert "redrive" not in problems
    assert "not-the-secret" not in json.dumps(report)
    failed = [e["body"] for e in webhook_sink.events() if e["body"].get("event") == "cxone_contact_import_run_failed"]
    assert failed, "the CRM heard of the failure"
    event = failed[-1]
    assert event["failure"]["rule"] == "cxone_configuration"
    assert "connection cxone_default" in event["failure"]["message"]


def test_a_missing_connection_fails_chunk_once_and_leaves_the_records_not_sent(run_import, export, monkeypatch):
    monkeypatch.setattr(task_config, "CXONE_CONN_ID", "cxone_missing")
    run = run_import({"source_uri": f"file://{export.path}"})

    assert run.state == "failed"
    assert run.report["totals"]["not_sent"] == run.report["totals"]["valid"] > 0
    assert run.report["failure"]["task"] == "chunk"
    assert "connection cxone_missing does not exist" in run.report["failure"]["message"]
    failure = json.loads(run.file("failures/chunk.json").read_text())
    assert failure["try_number"] == 1 and failure["rule"] == "cxone_configuration"


@pytest.mark.parametrize(("error", "configuration"), [
    (CXoneAuthError("401", status_code=401, body={"error": "invalid_client"}), True),
    (CXoneAuthError("400", status_code=400, body={"error": "invalid_grant"}), True),
    (CXoneRedirectError("307", status_code=307, location="http://127.0.0.1:1/elsewhere"), True),
    (CXoneStatusError("404", status_code=404), True),
    (CXoneServerError("503", status_code=503), False),
], ids=["invalid-client", "invalid-grant", "redirect", "no-such-list", "server-error"])
def test_configuration_errors_are_told_apart_from_transient_ones(error, configuration) -> None:
    assert is_configuration_error(error) is configuration


def test_a_redirect_names_the_setting_to_change() -> None:
    error = CXoneRedirectError("307", status_code=307, location="http://127.0.0.1:1/elsewhere")
    message = str(CXoneConfigurationError.from_error("cxone_default", error))
    assert "connection cxone_default" in message and "redirect to http://127.0.0.1:1/elsewhere" in message


# -- point 4: a budget store every host shares ----------------------------------------------------------------


def _hook(monkeypatch, **extra) -> CXoneHook:
    monkeypatch.delenv("CXONE_RATE_BUDGET_URL", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_CXONE_SCOPE", json.dumps(
        {"conn_type": "cxone", "login": "client", "password": "secret", "extra": {"host": HOST, **extra}}))
    return CXoneHook("cxone_scope")


@pytest.mark.parametrize("executor", ["CeleryExecutor", "KubernetesExecutor",
                                      "airflow.providers.celery.executors.celery_executor.CeleryExecutor"])
def test_a_per_host_budget_store_is_refused_on_a_multi_host_executor(monkeypatch, executor) -> None:
    with pytest.raises(CXoneConfigurationError) as refused:
        _hook(monkeypatch).check_budget_store(executor)
    message = str(refused.value)
    assert "rate_budget_url" in message and "CXONE_RATE_BUDGET_URL" in message and "rate_budget_scope" in message


@pytest.mark.parametrize(("executor", "extra"), [
    ("LocalExecutor", {}),
    ("CeleryExecutor", {"rate_budget_url": "redis://127.0.0.1:6379/0"}),
    ("CeleryExecutor", {"rate_budget_scope": "host"}),
], ids=["local-executor", "shared-redis", "per-host-on-purpose"])
def test_a_shared_or_intended_budget_store_is_accepted(monkeypatch, executor, extra) -> None:
    _hook(monkeypatch, **extra).check_budget_store(executor)


def test_an_import_task_on_celery_with_the_sqlite_default_fails_at_start(run_import, export, cxone_sandbox,
                                                                          monkeypatch):
    monkeypatch.delenv("CXONE_RATE_BUDGET_URL", raising=False)
    monkeypatch.setattr(task_config, "default_executor", lambda: "CeleryExecutor")
    run = run_import({"source_uri": f"file://{export.path}"})

    assert run.state == "failed"
    assert cxone_sandbox.stats()["records_requests"] == 0
    assert set(_import_tries(run)) == {1}
    assert run.report["not_sent_reason"] == "cxone_configuration"
    assert "rate_budget_url" in run.report["failure"]["message"]
