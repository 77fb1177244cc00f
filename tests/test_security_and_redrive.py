"""Secrets and personal data stay out of logs and XCom; failed records are dead-lettered and redriven."""

from __future__ import annotations

import json
import re

import pytest

from tools.sample_data import generate_crm_export
from tests.conftest import CONTACT_LIST_ID

pytestmark = pytest.mark.timeout(600)

PHONE = re.compile(r"\+[1-9]\d{7,14}")


@pytest.fixture
def export(tmp_path):
    return generate_crm_export(tmp_path / "contacts.csv", 300, bad_share=0.1, seed=9)


def _phones(path) -> set[str]:
    return set(PHONE.findall(path.read_text()))


def test_logs_and_xcom_hold_no_secret_token_or_phone(run_import, export, cxone_sandbox, capfd, caplog):
    run = run_import({"source_uri": f"file://{export.path}", "batch_size": 25})
    assert run.state == "success"

    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    assert len(logs) > 10_000, "the run's task logs were captured"
    tokens = cxone_sandbox.issued_tokens()
    assert tokens
    for token in tokens:
        assert token not in logs
    assert "sandbox-secret" not in logs
    assert "demo-signing-secret" not in logs
    leaked = _phones(export.path) & set(PHONE.findall(logs))
    assert not leaked, f"{len(leaked)} full phone numbers in the logs"

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        values = [
            json.dumps(x.value)
            for x in session.query(XComModel).filter(XComModel.run_id == run.dag_run.run_id).all()
        ]
    xcom_text = " ".join(values)
    assert values, "the run pushed XComs"
    assert not (_phones(export.path) & set(PHONE.findall(xcom_text)))
    assert "example.com" not in xcom_text, "no e-mail addresses (custom fields) in XCom"


def test_every_crm_event_of_a_run_verifies_at_a_receiver(run_import, export):
    """A receiver holding the connection's secret (the sink checks as the README tells) accepts every event of a run:
    batch events sent while importing, the summary; each signed with its own timestamp."""
    from include.cxone_sandbox import WebhookSink
    from tools.localrun import DEMO_WEBHOOK_SECRET

    with WebhookSink(secret=DEMO_WEBHOOK_SECRET) as receiver:
        run = run_import({"source_uri": f"file://{export.path}", "batch_size": 50}, webhook_url=receiver.url)
        events = receiver.events()

    assert run.state == "success"
    assert len(events) == run.report["totals"]["batches"] + 1
    assert {e["signature"] for e in events} == {"valid"}
    assert run.report["webhook"]["failed"] == 0


def test_tls_verification_is_on_by_default(monkeypatch):
    from cxone_provider.hooks.cxone import CXoneHook

    monkeypatch.setenv("AIRFLOW_CONN_CXONE_TLS", json.dumps({"conn_type": "cxone", "login": "a", "password": "b"}))
    assert CXoneHook("cxone_tls").verify_ssl is True


def test_failed_records_are_dead_lettered_then_redriven(run_import, export, cxone_sandbox, monkeypatch):
    monkeypatch.setenv("CXONE_IMPORT_RETRY_DELAY_S", "0.2")
    cxone_sandbox.configure(error_rate_5xx=1.0)
    failed_run = run_import({"source_uri": f"file://{export.path}", "batch_size": 50},
                            extra={"max_attempts": 2, "backoff_base_s": 0.01})

    assert failed_run.state == "failed"
    totals = failed_run.report["totals"]
    assert failed_run.report["reconciliation"]["ok"]
    assert totals["failed"] == len(export.valid_contact_ids)
    assert any("redrive_run_id" in p for p in failed_run.report["problems"])
    dead = failed_run.jsonl("dead_letter.jsonl")
    assert {d["contactId"] for d in dead} == set(export.valid_contact_ids)
    assert all(d["_lastError"] and d["_sourceRowNumber"] for d in dead)
    assert cxone_sandbox.records(CONTACT_LIST_ID) == []

    cxone_sandbox.configure(error_rate_5xx=0.0)
    redrive = run_import({"redrive_run_id": failed_run.dag_run.run_id, "batch_size": 50})

    assert redrive.state == "success"
    assert redrive.report["totals"]["input"] == len(export.valid_contact_ids)
    assert redrive.report["totals"]["imported"] == len(export.valid_contact_ids)
    assert sorted(r["contactId"] for r in cxone_sandbox.records(CONTACT_LIST_ID)) == sorted(export.valid_contact_ids)
