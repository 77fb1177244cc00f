"""Whole DAG runs (dag.test) against the sandbox over real HTTP, with a generated export holding bad rows."""

from __future__ import annotations

import csv
import math
from datetime import datetime

import pytest

from tools.sample_data import generate_crm_export
from tests.conftest import CONTACT_LIST_ID

pytestmark = pytest.mark.timeout(300)

ROWS = 1200
BATCH_SIZE = 50


@pytest.fixture
def export(tmp_path):
    return generate_crm_export(tmp_path / "contacts.csv", ROWS, bad_share=0.15, seed=11)


def test_import_accounts_for_every_row(run_import, export, cxone_sandbox, webhook_sink):
    run = run_import({"source_uri": f"file://{export.path}", "batch_size": BATCH_SIZE})

    assert run.state == "success"
    stored = cxone_sandbox.records(CONTACT_LIST_ID)
    stored_ids = [r["contactId"] for r in stored]
    assert len(stored_ids) == len(set(stored_ids)), "a record was created twice"
    assert set(stored_ids) == set(export.valid_contact_ids)

    with run.file("rejects.csv").open() as handle:
        rejects = list(csv.DictReader(handle))
    reasons: dict[int, set[str]] = {}
    for row in rejects:
        reasons.setdefault(int(row["row_number"]), set()).add(row["rule"])
    assert reasons == {row: set(rules) for row, rules in export.expected_rejects.items()}
    assert all(row["message"] for row in rejects)

    totals = run.report["totals"]
    assert totals["input"] == ROWS
    assert totals["rejected"] == len(export.expected_rejects)
    assert totals["imported"] == len(export.valid_contact_ids)
    assert totals["duplicates"] == totals["failed"] == 0
    assert totals["input"] == totals["imported"] + totals["duplicates"] + totals["rejected"] + totals["failed"]
    assert totals["success_rate_percent"] == round(100 * len(export.valid_contact_ids) / ROWS, 2)
    assert run.report["reconciliation"]["ok"] is True
    assert totals["p95_batch_latency_ms"] > 0 and totals["average_batch_latency_ms"] > 0

    batches = math.ceil(len(export.valid_contact_ids) / BATCH_SIZE)
    events = [e["body"] for e in webhook_sink.events() if e.get("status", 200) == 200]
    kinds = [e["event"] for e in events]
    assert kinds.count("cxone_contact_import_batch_complete") == batches
    assert kinds.count("cxone_contact_import_run_complete") == 1
    summary = next(e for e in events if e["event"] == "cxone_contact_import_run_complete")
    assert summary["metrics"]["totalProcessed"] == ROWS
    assert {"event", "timestamp", "metrics", "auditTrailer"} <= set(events[0])

    audit = run.jsonl("audit.jsonl")
    assert sum(1 for e in audit if e["kind"] == "batch") == batches
    assert sum(1 for e in audit if e["kind"] == "record") == len(export.expected_rejects)
    assert all({"auditId", "timestamp", "status", "latencyMs", "details"} <= set(e) for e in audit)


def test_batch_events_leave_while_the_import_still_sends(run_import, export, cxone_sandbox, webhook_sink):
    """Each import task tells the CRM of a batch as soon as CXone acknowledged it, not after the run's last batch:
    the first batch event arrives before the last records request; the totals are the group's."""
    cxone_sandbox.configure(latency_ms=50)
    run = run_import({"source_uri": f"file://{export.path}", "batch_size": BATCH_SIZE})

    assert run.state == "success"
    last_request = max(r["at"] for r in cxone_sandbox.request_log())
    events = [e for e in webhook_sink.events() if e["body"]["event"] == "cxone_contact_import_batch_complete"]
    first_event = min(datetime.fromisoformat(e["received_at"]).timestamp() for e in events)
    assert first_event < last_request
    assert len({e["body"]["eventId"] for e in events}) == len(events) == run.report["totals"]["batches"]
    scopes = [e["body"]["metrics"]["scope"] for e in events]
    assert all(s["kind"] == "group" for s in scopes)
    last = max(events, key=lambda e: e["body"]["metrics"]["totalProcessed"])["body"]["metrics"]
    assert last["totalProcessed"] == len(export.valid_contact_ids)  # one group: its totals are the run's
    assert run.report["webhook"]["delivered"] == run.report["webhook"]["events"] == len(events) + 1
    assert run.report["webhook"]["delivered_while_importing"] == len(events)


def test_batch_events_the_crm_missed_while_importing_are_sent_again(run_import, export, cxone_sandbox, webhook_sink):
    """The CRM is down while the import sends (every delivery fails, each after its retries) and back when
    notify_webhook runs: notify_webhook delivers exactly the batch events no import task delivered."""
    batches = math.ceil(len(export.valid_contact_ids) / 100)
    webhook_sink.configure(fail_status=503, fail_count=batches * 4)  # 4 attempts per event (the default policy)

    run = run_import({"source_uri": f"file://{export.path}", "batch_size": 100})

    assert run.state == "success"
    ok = [e["body"] for e in webhook_sink.events() if e["status"] == 200]
    assert sorted(e["metrics"]["scope"]["kind"] for e in ok if "scope" in e.get("metrics", {})) == ["redelivery"] * batches
    assert len(ok) == batches + 1  # each batch event once, and the summary
    assert run.report["webhook"] == {**run.report["webhook"], "events": batches + 1, "delivered": batches + 1,
                                     "failed": 0, "delivered_while_importing": 0}
    live = [e for e in run.jsonl("audit.jsonl") if e["kind"] == "webhook" and e["status"] == "delivery_failed"]
    assert len(live) == batches


def test_dry_run_sends_nothing(run_import, export, cxone_sandbox):
    run = run_import({"source_uri": f"file://{export.path}", "dry_run": True})

    assert run.state == "success"
    assert cxone_sandbox.records(CONTACT_LIST_ID) == []
    assert cxone_sandbox.stats()["records_requests"] == 0
    assert run.report["totals"]["rejected"] == len(export.expected_rejects)
    assert run.report["not_sent_reason"] == "dry_run"


def test_scheduled_run_reads_its_own_day(run_import, storage_base, tmp_path, cxone_sandbox):
    from datetime import datetime, timezone

    day = datetime(2026, 3, 4, tzinfo=timezone.utc)
    export = generate_crm_export(storage_base / "incoming" / "contacts_2026-03-04.csv", 150, bad_share=0.0, seed=3,
                                 now=datetime(2026, 3, 5, tzinfo=timezone.utc))
    run = run_import({}, logical_date=day)

    assert run.state == "success"
    assert {r["contactId"] for r in cxone_sandbox.records(CONTACT_LIST_ID)} == set(export.valid_contact_ids)


def test_asset_event_for_the_contact_list(run_import, export, cxone_sandbox):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    run = run_import({"source_uri": f"file://{export.path}"})
    assert run.state == "success"
    host = cxone_sandbox.url.split("://", 1)[1]
    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri == f"cxone://{host}/contactlists/{CONTACT_LIST_ID}")
            .filter(AssetEvent.source_run_id == run.dag_run.run_id)
            .all()
        )
    assert events
    assert sum(e.extra["imported"] for e in events) == len(export.valid_contact_ids)


def test_too_many_rejects_sends_nothing_and_fails_the_run(run_import, export, cxone_sandbox, webhook_sink):
    run = run_import({"source_uri": f"file://{export.path}", "max_reject_share": 0.05})

    assert run.state == "failed"
    assert cxone_sandbox.stats()["records_requests"] == 0, "the gate decides before anything is sent"
    assert cxone_sandbox.records(CONTACT_LIST_ID) == []
    assert run.file("rejects.csv").exists()
    assert run.report["status"] == "failed" and run.report["held_by_reject_gate"]
    assert run.report["reconciliation"]["ok"], "every row accounted for: rejected or not_sent"
    assert run.report["totals"]["not_sent"] == len(export.valid_contact_ids)
    assert run.report["not_sent_reason"] == "reject_gate"
    assert any("max_reject_share" in p and "nothing was sent" in p for p in run.report["problems"])
    failure = [e["body"] for e in webhook_sink.events() if e["body"].get("event") == "cxone_contact_import_run_failed"]
    assert len(failure) == 1
    assert failure[0]["failedTask"] == "report"
    assert any("max_reject_share" in p for p in failure[0]["problems"])


FILE_ERRORS = {
    "duplicate-header": ("contact_id,contact_id,mobile_phone,consent_timestamp,opt_in_status\n"
                         "a,b,+14155550100,2026-06-01T00:00:00Z,confirmed\n", "unique_header", "contact_id"),
    "not-utf8": (b"contact_id,mobile_phone,consent_timestamp,opt_in_status\nZo\xeb,+14155550100,2026-06-01T00:00:00Z,confirmed\n",
                 "utf8_encoding", None),
    "directory": (None, "file_format", None),
    "missing-file": ("missing", "source_exists", None),
}


@pytest.mark.parametrize("case", sorted(FILE_ERRORS), ids=sorted(FILE_ERRORS))
def test_a_file_level_error_fails_at_once_and_says_why(run_import, cxone_sandbox, webhook_sink, tmp_path, case):
    body, rule, column = FILE_ERRORS[case]
    source = tmp_path / "contacts.csv"
    if body is None:
        source.mkdir()
    elif isinstance(body, bytes):
        source.write_bytes(body)
    elif body != "missing":
        source.write_text(body)

    run = run_import({"source_uri": f"file://{source}"})

    assert run.state == "failed"
    tries = {ti.task_id: (ti.state, ti.try_number) for ti in run.dag_run.get_task_instances()}
    assert tries["extract"] == ("failed", 1), "an error of the data is not retried"
    assert run.report["status"] == "failed"
    assert run.report["failure"]["task"] == "extract"
    assert (run.report["failure"]["rule"], run.report["failure"]["column"]) == (rule, column)
    assert str(source) in run.report["failure"]["message"]
    assert any("nothing was sent" in p for p in run.report["problems"])
    assert cxone_sandbox.stats()["records_requests"] == 0
    failure = [e["body"] for e in webhook_sink.events() if e["body"].get("event") == "cxone_contact_import_run_failed"]
    assert len(failure) == 1
    assert failure[0]["failedTask"] == "extract"
    assert failure[0]["failure"]["rule"] == rule and rule in failure[0]["failure"]["message"]