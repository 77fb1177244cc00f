"""Nightly runs send only what changed: whole DAG runs against the sandbox, counting the requests it answered."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import CONTACT_LIST_ID, ROOT
from tools.localrun import connection_env
from tools.sample_data import generate_crm_export

pytestmark = pytest.mark.timeout(600)

ROWS = 300
BATCH_SIZE = 20
DAY = datetime(2026, 7, 1, tzinfo=timezone.utc)  # after the DAG's start; days no other test file uses, each test its own
KILLED_DAY = DAY + timedelta(days=40)
NEW_PHONES = [f"+6149157{n:04d}" for n in range(100)]  # Australian fiction range: never in the generated export


@pytest.fixture
def export(tmp_path):
    return generate_crm_export(tmp_path / "contacts.csv", ROWS, bad_share=0.1, seed=21)


def requests_sent(sandbox) -> int:
    return sandbox.stats()["records_requests"]


def stored_once(sandbox) -> set[str]:
    ids = Counter(r["contactId"] for r in sandbox.records(CONTACT_LIST_ID))
    assert not [cid for cid, n in ids.items() if n > 1], "a record was created twice"
    return set(ids)


def nightly(run_import, path: Path, day: int, *, conn: dict | None = None, **params):
    """The scheduled run of the day ``day`` after DAY (its own run id), reading ``path``; tests use distinct days
    (dag.test() runs share one metadata DB, where a logical date is one run)."""
    return run_import({"source_uri": f"file://{path}", "batch_size": BATCH_SIZE, **params},
                      logical_date=DAY + timedelta(days=day), **(conn or {}))


def edited_export(export, tmp_path, *, change: int, add: int) -> tuple[Path, set[str], set[str]]:
    """A copy of the export with ``change`` valid contacts edited (custom field) and ``add`` new ones."""
    with export.path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or []), list(reader)
    changed: set[str] = set()
    seen: set[str] = set()
    for row in rows:
        contact_id = row["contact_id"]
        if contact_id in export.valid_contact_ids and contact_id not in seen and len(changed) < change:
            row["tier"] = "changed-" + row["tier"]
            changed.add(contact_id)
        seen.add(contact_id)
    template = next(r for r in rows if r["contact_id"] in export.valid_contact_ids)
    phone_columns = [f for f in fields if f.endswith("_phone")]
    added = {f"crm-new-{n:04d}" for n in range(add)}
    for n, contact_id in enumerate(sorted(added)):
        rows.append({**template, "contact_id": contact_id, **{c: "" for c in phone_columns},
                     phone_columns[0]: NEW_PHONES[n]})
    path = tmp_path / "contacts_next.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path, changed, added


def test_second_run_of_an_unchanged_file_sends_nothing(run_import, export, cxone_sandbox, webhook_sink, storage_base):
    first = nightly(run_import, export.path, 0)
    assert first.state == "success"
    assert first.report["totals"]["imported"] == len(export.valid_contact_ids)
    sent_first = requests_sent(cxone_sandbox)

    second = nightly(run_import, export.path, 1)

    assert second.state == "success"
    assert requests_sent(cxone_sandbox) == sent_first, "nothing is sent again"
    totals = second.report["totals"]
    assert totals["unchanged"] == len(export.valid_contact_ids)
    assert totals["imported"] == totals["duplicates"] == totals["failed"] == totals["batches"] == 0
    assert totals["rejected"] == len(export.expected_rejects)
    assert second.report["reconciliation"]["ok"], second.report["reconciliation"]["detail"]
    assert totals["success_rate_percent"] == first.report["totals"]["success_rate_percent"]
    assert second.report["changes"]["mode"] == "compare"
    summaries = [e["body"] for e in webhook_sink.events()
                 if e["body"].get("event") == "cxone_contact_import_run_complete"]
    assert summaries[-1]["metrics"]["unchangedCount"] == len(export.valid_contact_ids)
    state = storage_base / "state" / "cxone_contact_import" / CONTACT_LIST_ID
    assert json.loads((state / "CURRENT.json").read_text())["contacts"] == len(export.valid_contact_ids)
    assert stored_once(cxone_sandbox) == set(export.valid_contact_ids)


def test_changed_and_new_contacts_are_sent(run_import, export, cxone_sandbox, tmp_path):
    assert nightly(run_import, export.path, 10).state == "success"
    path, changed, added = edited_export(export, tmp_path, change=5, add=4)
    sent_first = requests_sent(cxone_sandbox)

    second = nightly(run_import, path, 11)

    assert second.state == "success"
    totals = second.report["totals"]
    assert totals["imported"] == len(added)
    assert totals["duplicates"] == len(changed), "changed contacts are sent (the server already has their id)"
    assert totals["unchanged"] == len(export.valid_contact_ids) - len(changed)
    assert requests_sent(cxone_sandbox) - sent_first == totals["requests"] == 1, "9 records fit one batch"
    assert second.report["reconciliation"]["ok"], second.report["reconciliation"]["detail"]
    assert stored_once(cxone_sandbox) == set(export.valid_contact_ids) | added

    third = nightly(run_import, path, 12)
    assert third.report["totals"]["unchanged"] == len(export.valid_contact_ids) + len(added)
    assert third.report["totals"]["requests"] == 0


def test_full_resync_sends_everything(run_import, export, cxone_sandbox):
    assert nightly(run_import, export.path, 20).state == "success"
    sent_first = requests_sent(cxone_sandbox)

    resync = nightly(run_import, export.path, 21, full_resync=True)

    assert resync.state == "success"
    totals = resync.report["totals"]
    assert totals["unchanged"] == 0
    assert totals["duplicates"] == len(export.valid_contact_ids)
    assert requests_sent(cxone_sandbox) - sent_first == totals["requests"] == sent_first
    assert resync.report["changes"]["mode"] == "full_resync"


def test_dry_run_reports_what_would_be_sent_and_writes_no_state(run_import, export, cxone_sandbox, tmp_path, storage_base):
    assert nightly(run_import, export.path, 30).state == "success"
    path, changed, added = edited_export(export, tmp_path, change=3, add=2)
    state = storage_base / "state" / "cxone_contact_import" / CONTACT_LIST_ID
    before = sorted(p.relative_to(state) for p in state.rglob("*") if p.is_file())
    sent_first = requests_sent(cxone_sandbox)

    dry = nightly(run_import, path, 31, dry_run=True)

    assert dry.state == "success"
    assert requests_sent(cxone_sandbox) == sent_first
    assert dry.report["totals"]["not_sent"] == len(changed) + len(added)
    assert dry.report["totals"]["unchanged"] == len(export.valid_contact_ids) - len(changed)
    assert dry.report["reconciliation"]["ok"], dry.report["reconciliation"]["detail"]
    assert sorted(p.relative_to(state) for p in state.rglob("*") if p.is_file()) == before, "a dry run folds nothing"


def test_killed_mid_import_then_next_run_loses_nothing_and_resends_nothing(
    run_import, export, cxone_sandbox, webhook_sink, storage_base, tmp_path, monkeypatch
):
    """The killed run never wrote its delta: the next run (another run id) recovers what it had acknowledged from
    its checkpoints, sends only the rest, and the run after that sends nothing."""
    cxone_sandbox.configure(latency_ms=150)
    env = {
        **os.environ,
        **connection_env(cxone_sandbox.url, webhook_sink.url, max_concurrency=2),
        "CXONE_IMPORT_STORAGE_BASE": f"file://{storage_base}",
    }
    code = (
        "from datetime import datetime, timezone\n"
        "from tools.localrun import run_dag\n"
        f"run_dag({{'source_uri': 'file://{export.path}', 'batch_size': 5, 'contact_list_id': '{CONTACT_LIST_ID}'}},"
        f" logical_date=datetime.fromisoformat({KILLED_DAY.isoformat()!r}))\n"
    )
    log = (tmp_path / "killed-run.log").open("w")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(list(storage_base.glob("runs/*/*/checkpoints/*.json"))) >= 10:
                break
            assert child.poll() is None, "the run ended before it could be killed"
            time.sleep(0.1)
        else:
            pytest.fail("the import never started")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        log.close()
    acknowledged = {
        o[1] for p in storage_base.glob("runs/*/*/checkpoints/*.json")
        for o in json.loads(p.read_text())["outcomes"] if o[2] in ("imported", "duplicate")
    }
    time.sleep(1)  # requests in flight at the kill still commit on the server (its latency is 150 ms)
    created_before = len(cxone_sandbox.records(CONTACT_LIST_ID))
    assert 0 < len(acknowledged) <= created_before < len(export.valid_contact_ids), "killed mid-import"
    assert not list(storage_base.glob("state/*/*/deltas/*.parquet")), "the killed task wrote no delta"

    # The killed run never reached its report task, which gives the list back; an operator (or the lease's expiry)
    # frees it. A re-run of the killed run itself would not need this (tests/test_faults.py).
    from include.cxone_import.airflow_tasks import release_contact_list

    monkeypatch.setenv("AIRFLOW_CONN_CXONE_DEFAULT", env["AIRFLOW_CONN_CXONE_DEFAULT"])
    release_contact_list({"contact_list_id": CONTACT_LIST_ID}, {"run_id": f"manual__{KILLED_DAY.isoformat()}"})
    cxone_sandbox.configure(latency_ms=0)
    second = nightly(run_import, export.path, 41)

    assert second.state == "success"
    totals = second.report["totals"]
    assert totals["unchanged"] == len(acknowledged), "what was acknowledged is not sent again"
    in_flight_at_kill = created_before - len(acknowledged)  # created on the server, answer never read
    assert totals["duplicates"] == in_flight_at_kill <= 2 * 5
    assert totals["imported"] + totals["duplicates"] + totals["unchanged"] == len(export.valid_contact_ids)
    assert second.report["changes"]["groups_recovered"] == 1
    assert second.report["reconciliation"]["ok"], second.report["reconciliation"]["detail"]
    assert stored_once(cxone_sandbox) == set(export.valid_contact_ids)

    third = nightly(run_import, export.path, 42)
    assert third.report["totals"]["unchanged"] == len(export.valid_contact_ids), "nothing was lost from the state"
    assert third.report["totals"]["requests"] == 0


def test_a_redrive_sends_its_records_even_if_unchanged(run_import, export, cxone_sandbox, monkeypatch):
    """A redrive imports exactly the dead letters it names; the state never makes it skip one."""
    monkeypatch.setenv("CXONE_IMPORT_RETRY_DELAY_S", "0.2")
    cxone_sandbox.configure(error_rate_5xx=1.0)
    failed = nightly(run_import, export.path, 50, conn={"extra": {"max_attempts": 1, "backoff_base_s": 0.01}})
    assert failed.report["totals"]["failed"] == len(export.valid_contact_ids)
    cxone_sandbox.configure(error_rate_5xx=0.0)
    assert nightly(run_import, export.path, 51).report["totals"]["imported"] == len(export.valid_contact_ids)

    redrive = run_import({"redrive_run_id": failed.dag_run.run_id, "batch_size": 50})

    assert redrive.state == "success"
    assert redrive.report["changes"]["mode"] == "redrive"
    assert redrive.report["totals"]["unchanged"] == 0
    assert redrive.report["totals"]["duplicates"] == len(export.valid_contact_ids)


def test_a_run_compares_only_while_it_holds_the_list(run_import, export, cxone_sandbox, monkeypatch):
    """Another run of the same list still sending holds the list: the comparison waits for it (else this run would
    miss that run's acknowledgements and send those contacts again)."""
    import threading

    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session
    from cxone_provider.hooks.cxone import CXoneHook

    assert nightly(run_import, export.path, 60).state == "success"
    monkeypatch.setenv("CXONE_LIST_WAIT_S", "1")
    hook = CXoneHook(cxone_conn_id="cxone_default")
    other = "cxone_contact_import/another-run"
    assert hook.acquire_list_lease(CONTACT_LIST_ID, other, 60) == other
    releaser = threading.Timer(3.0, hook.release_list_lease, (CONTACT_LIST_ID, other))
    releaser.start()
    try:
        second = nightly(run_import, export.path, 61)
    finally:
        releaser.cancel()

    assert second.state == "success"
    assert second.report["totals"]["unchanged"] == len(export.valid_contact_ids)
    with create_session() as session:
        waits = session.query(TaskReschedule).filter(TaskReschedule.ti_id.in_(
            [ti.id for ti in second.dag_run.get_task_instances(session=session) if ti.task_id == "chunk"]
        )).count()
    assert waits >= 1, "chunk waited for the list"
