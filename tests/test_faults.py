"""Nothing lost under faults: whole DAG runs against a sandbox told to fail.

Each test checks what a user cares about: the sandbox finally holds exactly the valid unique records, nothing
was created twice, and the report reconciles input = imported + duplicate + rejected + failed.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tools.localrun import connection_env
from tools.sample_data import generate_crm_export
from tests.conftest import CONTACT_LIST_ID, run_killed
from tests.ports import free_port

pytestmark = pytest.mark.timeout(600)

ROWS = 400
FAST_RETRIES = {"backoff_base_s": 0.05, "backoff_max_s": 0.5, "max_attempts": 8}


@pytest.fixture
def export(tmp_path):
    return generate_crm_export(tmp_path / "contacts.csv", ROWS, bad_share=0.1, seed=5)


@pytest.fixture(autouse=True)
def quick_task_retries(monkeypatch):
    monkeypatch.setenv("CXONE_IMPORT_RETRY_DELAY_S", "1")


def stored_once(sandbox) -> set[str]:
    ids = Counter(r["contactId"] for r in sandbox.records(CONTACT_LIST_ID))
    twice = [cid for cid, n in ids.items() if n > 1]
    assert not twice, f"created more than once: {twice[:5]}"
    return set(ids)


def assert_reconciled(run, export, *, duplicates: int = 0):
    assert run.report is not None, "the report must be written"
    totals = run.report["totals"]
    assert run.report["reconciliation"]["ok"], run.report["reconciliation"]["detail"]
    assert totals["input"] == ROWS
    assert totals["rejected"] == len(export.expected_rejects)
    assert totals["failed"] == 0
    assert totals["duplicates"] == duplicates
    assert totals["imported"] + totals["duplicates"] == len(export.valid_contact_ids)


@pytest.mark.parametrize("retry_after", [True, False], ids=["with-retry-after", "without-retry-after"])
def test_429_storm(run_import, export, cxone_sandbox, retry_after):
    cxone_sandbox.configure(requests_per_minute=240, rate_window_s=1.0, retry_after=retry_after)
    run = run_import({"source_uri": f"file://{export.path}", "batch_size": 20},
                     requests_per_minute=6000, extra=FAST_RETRIES)

    assert cxone_sandbox.stats()["status_counts"].get("429", 0) > 0, "the storm must happen"
    assert run.state == "success"
    assert stored_once(cxone_sandbox) == set(export.valid_contact_ids)
    assert_reconciled(run, export)
    assert run.report["totals"]["rate_limited"] > 0


def test_server_errors_ten_percent(run_import, export, cxone_sandbox):
    cxone_sandbox.configure(error_rate_5xx=0.1)
    run = run_import({"source_uri": f"file://{export.path}", "batch_size": 10}, extra=FAST_RETRIES)

    assert cxone_sandbox.stats()["status_counts"].get("503", 0) > 0
    assert run.state == "success"
    assert stored_once(cxone_sandbox) == set(export.valid_contact_ids)
    assert_reconciled(run, export)
    assert run.report["totals"]["attempts"] > run.report["totals"]["requests"]


def test_dropped_connections_before_and_after_commit(run_import, export, cxone_sandbox):
    cxone_sandbox.configure(drop_rate=0.05, drop_after_commit_rate=0.05)
    run = run_import({"source_uri": f"file://{export.path}", "batch_size": 4}, extra=FAST_RETRIES)

    stats = cxone_sandbox.stats()
    assert stats["dropped_after_commit"] > 0
    assert run.state == "success"
    assert stored_once(cxone_sandbox) == set(export.valid_contact_ids)
    # records whose first answer was lost come back as duplicates: ours, so imported, not duplicate
    assert_reconciled(run, export, duplicates=0)
    assert run.report["totals"]["confirmed_on_retry"] > 0


def test_short_token_lifetime(run_import, export, cxone_sandbox):
    cxone_sandbox.configure(token_lifetime_s=2, latency_ms=30)
    run = run_import({"source_uri": f"file://{export.path}", "batch_size": 10}, max_concurrency=2)

    assert cxone_sandbox.stats()["token_requests"] > 1
    assert cxone_sandbox.stats()["status_counts"].get("401", 0) == 0, "tokens are refreshed before they expire"
    assert run.state == "success"
    assert stored_once(cxone_sandbox) == set(export.valid_contact_ids)
    assert_reconciled(run, export)


def test_revoked_token_mid_run(run_import, export, cxone_sandbox):
    cxone_sandbox.configure(latency_ms=20)

    import threading

    revoker = threading.Timer(1.5, cxone_sandbox.revoke_tokens)
    revoker.start()
    try:
        run = run_import({"source_uri": f"file://{export.path}", "batch_size": 5}, max_concurrency=2)
    finally:
        revoker.cancel()
    assert run.state == "success"
    assert stored_once(cxone_sandbox) == set(export.valid_contact_ids)
    assert_reconciled(run, export)


@pytest.mark.parametrize("names", [True, False], ids=["409-names-duplicates", "409-names-none"])
def test_conflict_mode_with_preseeded_duplicates(run_import, export, cxone_sandbox, names, tmp_path):
    valid = sorted(export.valid_contact_ids)
    records = [json.loads(line) for line in _as_jsonl(export, tmp_path)]
    by_id = {r["contactId"]: r for r in records}
    seeded_by_id = [by_id[cid] for cid in valid[:7]]
    phone_clash = [
        {**by_id[cid], "contactId": f"other-{cid}"} for cid in valid[7:12]
    ]  # same phone, different id: duplicate by phone
    cxone_sandbox.seed_records(CONTACT_LIST_ID, seeded_by_id + phone_clash)
    cxone_sandbox.configure(duplicate_mode="conflict", conflict_names_duplicates=names)

    run = run_import({"source_uri": f"file://{export.path}", "batch_size": 25})

    assert cxone_sandbox.stats()["status_counts"].get("409", 0) > 0
    assert run.state == "success"
    ids = stored_once(cxone_sandbox)
    assert ids == set(export.valid_contact_ids) - set(valid[7:12]) | {f"other-{c}" for c in valid[7:12]}
    assert_reconciled(run, export, duplicates=12)


def test_webhook_sink_down(run_import, export, cxone_sandbox):
    closed_port_url = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    run = run_import({"source_uri": f"file://{export.path}"}, webhook_url=closed_port_url)

    assert run.state == "success", "a webhook failure never fails the import"
    assert stored_once(cxone_sandbox) == set(export.valid_contact_ids)
    assert_reconciled(run, export)
    webhook = run.report["webhook"]
    assert webhook["delivered"] == 0 and webhook["failed"] == webhook["events"] > 0
    failures = [e for e in run.jsonl("audit.jsonl") if e["kind"] == "webhook"]
    assert failures and all(e["status"] == "delivery_failed" for e in failures)


def test_webhook_events_are_signed_and_keyed(run_import, export, webhook_sink):
    import hashlib
    import hmac

    run_import({"source_uri": f"file://{export.path}"})
    events = [e for e in webhook_sink.events() if e.get("status", 200) == 200]
    assert events
    keys = [e["headers"].get("Idempotency-Key") for e in events]
    assert len(set(keys)) == len(keys) and all(keys)
    for event in events:
        body = json.dumps(event["body"], separators=(",", ":")).encode()
        stamp = event["headers"]["X-Signature-Timestamp"]  # the signature covers it: "{timestamp}.{body}"
        expected = "sha256=" + hmac.new(b"demo-signing-secret", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert event["headers"].get("X-Signature") == expected


def test_rerunning_a_finished_run_creates_nothing(run_import, export, cxone_sandbox):
    day = datetime(2026, 11, 20, tzinfo=timezone.utc)
    first = run_import({"source_uri": f"file://{export.path}", "batch_size": 20}, logical_date=day)
    requests_after_first = cxone_sandbox.stats()["records_requests"]
    second = run_import({"source_uri": f"file://{export.path}", "batch_size": 20}, logical_date=day)

    assert first.state == second.state == "success"
    assert first.dag_run.run_id == second.dag_run.run_id
    assert cxone_sandbox.stats()["records_requests"] == requests_after_first, "acknowledged batches are skipped"
    assert stored_once(cxone_sandbox) == set(export.valid_contact_ids)
    assert_reconciled(second, export)
    assert second.report["totals"]["batches_resumed"] == second.report["totals"]["batches"]


def test_import_killed_mid_run_then_run_again(run_import, export, cxone_sandbox, webhook_sink, storage_base, tmp_path):
    day = datetime(2026, 11, 21, tzinfo=timezone.utc)
    cxone_sandbox.configure(latency_ms=150)
    env = {
        **os.environ,
        **connection_env(cxone_sandbox.url, webhook_sink.url, max_concurrency=2),
        "CXONE_IMPORT_STORAGE_BASE": f"file://{storage_base}",
    }
    run_killed({"source_uri": f"file://{export.path}", "batch_size": 5}, day, env, tmp_path / "killed-run.log",
               lambda: len(list(Path(storage_base).glob("runs/*/*/checkpoints/*.json"))) >= 10, deadline_s=120)
    created_before = len(cxone_sandbox.records(CONTACT_LIST_ID))
    assert 0 < created_before < len(export.valid_contact_ids), "killed mid-import"

    cxone_sandbox.configure(latency_ms=0)
    run = run_import({"source_uri": f"file://{export.path}", "batch_size": 5}, logical_date=day)

    assert run.state == "success"
    assert stored_once(cxone_sandbox) == set(export.valid_contact_ids)
    assert_reconciled(run, export)
    assert run.report["totals"]["batches_resumed"] >= 10


def _as_jsonl(export, tmp_path):
    """The export's records in the API shape (to seed the sandbox with exactly what the import would send)."""
    from upath import UPath

    from include.cxone_import import pipeline
    from cxone_runs.layout import RunLayout
    from include.cxone_import.storage import read_parquet

    layout = RunLayout.for_run(UPath(f"file://{tmp_path}/seed"), "seed", "seed")
    extracted = pipeline.extract(UPath(export.path), layout)
    validated = pipeline.validate(layout, parts=extracted["parts"], max_consent_age_days=1825)
    pipeline.chunk(layout, parts=validated["parts"], valid_rows=validated["valid_rows"], batch_scope="x",
                   batch_size=100, parallelism=1, max_map_length=1024)
    return [line for p in sorted((Path(tmp_path) / "seed").rglob("group-*.parquet"))
            for line in read_parquet(UPath(p))["record_json"]]
