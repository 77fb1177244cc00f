"""Keeping a list in sync (issue 22): whole DAG runs against the sandbox, what report.json says against what the
sandbox holds."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import CONTACT_LIST_ID, run_killed
from tools.sample_data import generate_crm_export

pytestmark = pytest.mark.timeout(600)

ROWS = 240
BATCH_SIZE = 20
DAY = datetime(2026, 9, 1, tzinfo=timezone.utc)  # days no other test file uses
FOREIGN = [{"contactId": f"foreign-{n}", "phoneNumbers": [{"type": "mobile", "number": f"+6149159{n:04d}"}],
            "consentTimestamp": "2026-08-01T00:00:00.000Z", "optInStatus": "confirmed"} for n in range(5)]


@pytest.fixture
def export(tmp_path):
    return generate_crm_export(tmp_path / "contacts.csv", ROWS, bad_share=0.1, seed=23)


def rows_of(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def write_rows(path: Path, fields: list[str], rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def night2(export, tmp_path: Path, *, change: int = 10, withdraw: int = 6, expire: int = 4, absent: int = 5):
    """Night 2's export: ``change`` contacts with a new phone and tier, ``withdraw`` revoked (in mixed case), ``expire``
    with consent older than the window, ``absent`` dropped."""
    fields, rows = rows_of(export.path)
    valid = [r for r in rows if r["contact_id"] in export.valid_contact_ids]
    seen: set[str] = set()
    valid = [r for r in valid if not (r["contact_id"] in seen or seen.add(r["contact_id"]))]
    changed, withdrawn, expired, gone = (valid[:change], valid[change:change + withdraw],
                                         valid[change + withdraw:change + withdraw + expire],
                                         valid[change + withdraw + expire:change + withdraw + expire + absent])
    phone_column = [c for c in fields if c.endswith("_phone")]
    for n, row in enumerate(changed):
        row["tier"] = "changed-" + row["tier"]
        row[next(c for c in phone_column if row[c])] = f"+6149158{n:04d}"
    for n, row in enumerate(withdrawn):
        row["opt_in_status"] = [" Revoked", "OPTED_OUT ", "revoked"][n % 3]
    for row in expired:
        row["consent_timestamp"] = "2001-01-01T00:00:00Z"
    dropped = {r["contact_id"] for r in gone}
    kept = [r for r in rows if r["contact_id"] not in dropped]
    path = write_rows(tmp_path / "night2.csv", fields, kept)
    return path, {r["contact_id"]: r for r in changed}, {r["contact_id"] for r in withdrawn}, \
        {r["contact_id"] for r in expired}, dropped, phone_column


def nightly(run_import, path: Path, day: int, **params):
    return run_import({"source_uri": f"file://{path}", "batch_size": BATCH_SIZE, "max_reject_share": 0.5, **params},
                      logical_date=DAY + timedelta(days=day))


def stored(sandbox, key: str = "contactId") -> dict[str, dict]:
    """The list's records by id (``key``: ``externalId`` on a calling list), each stored once."""
    records = sandbox.records(CONTACT_LIST_ID)
    ids = [r[key] for r in records]
    assert len(ids) == len(set(ids)), "a record was stored twice"
    return {r[key]: r for r in records}


def crm_events(webhook_sink, run_id: str) -> list[dict]:
    """The events of a run the CRM accepted."""
    return [e["body"] for e in webhook_sink.events()
            if e.get("status", 200) == 200 and str((e.get("body") or {}).get("eventId", "")).startswith(f"{run_id}:")]


def groups_with_sync_ops(run) -> int:
    import pandas as pd

    return sum(1 for path in run.file("sync").glob("ops-*.parquet") if len(pd.read_parquet(path)))


@pytest.mark.parametrize("mode", ["upsert", "mirror"])
def test_night_two_updates_changes_removes_withdrawn_expired_and_mirror_absentees(run_import, cxone_sandbox, export,
                                                                                   tmp_path, mode, webhook_sink):
    first = nightly(run_import, export.path, 0, sync_mode=mode)
    assert first.state == "success", first.report and first.report["problems"]
    cxone_sandbox.seed_records(CONTACT_LIST_ID, FOREIGN)  # on the list, not put there by this project
    path, changed, withdrawn, expired, absent, phone_column = night2(export, tmp_path)
    before = stored(cxone_sandbox)
    second = nightly(run_import, path, 1, sync_mode=mode)
    assert second.state == "success", second.report["problems"]
    after = stored(cxone_sandbox)
    for contact_id in changed:  # every changed record holds its new content
        assert any(p["number"].startswith("+6149158") for p in after[contact_id]["phoneNumbers"])
        assert after[contact_id]["customFields"]["tier"].startswith("changed-")
    assert not (withdrawn | expired) & set(after)  # withdrawn and expired consent: gone
    assert {f["contactId"] for f in FOREIGN} <= set(after)  # never a record the project did not put there
    expected_absent_removed = absent if mode == "mirror" else set()
    assert set(before) - set(after) == withdrawn | expired | expected_absent_removed
    unchanged = set(before) - withdrawn - expired - expected_absent_removed - set(changed)
    assert all(after[c] == before[c] for c in unchanged)  # nothing else on the list changed
    totals = second.report["totals"]
    assert totals["updated"] == len(changed)
    assert totals["removed"] == len(withdrawn | expired | expected_absent_removed)
    assert totals["not_on_list"] == totals["removal_held"] == totals["removal_failed"] == 0
    assert second.report["reconciliation"]["ok"] and second.report["sync"]["removals_reconciled"]
    plan = second.report["sync"]["plan"]
    assert plan["removals"] == {"consent_withdrawn": len(withdrawn), "consent_expired": len(expired),
                                "mirror_absent": len(expected_absent_removed)}
    audit = [e for e in second.jsonl("audit.jsonl") if e.get("kind") == "removal"]
    assert {e["contactId"] for e in audit} == withdrawn | expired | expected_absent_removed
    assert all(e["details"]["reason"] and e["timestamp"] for e in audit)
    summary = [e["body"] for e in webhook_sink.events()
               if (e.get("body") or {}).get("eventId") == f"{second.dag_run.run_id}:summary"][-1]
    assert summary["metrics"]["updatedCount"] == len(changed) and summary["metrics"]["removedCount"] == totals["removed"]
    assert second.report["accounting"]["rows"]["ok"] and second.report["accounting"]["removals"]["ok"]
    # the CRM hears of the updates and removals once per import group, never once per request
    events = crm_events(webhook_sink, second.dag_run.run_id)
    group_events = [e for e in events if e["event"] == "cxone_contact_list_sync_group_complete"]
    assert len({e["eventId"] for e in group_events}) == len(group_events) == groups_with_sync_ops(second)
    assert sum(e["metrics"]["updates"].get("updated", 0) for e in group_events) == len(changed)
    assert sum(e["metrics"]["removals"].get("removed", 0) for e in group_events) == totals["removed"]
    batches = [e for e in events if e["event"] == "cxone_contact_import_batch_complete"]
    assert len(batches) == sum(1 for line in second.jsonl("batch_results.jsonl") if not line.get("kind"))
    third = nightly(run_import, path, 2, sync_mode=mode)  # the same export again: nothing left to do
    assert third.report["totals"]["requests"] == 0, third.report["totals"]
    assert stored(cxone_sandbox) == after


def test_append_keeps_todays_behaviour(run_import, cxone_sandbox, export, tmp_path):
    nightly(run_import, export.path, 10, sync_mode="append")
    path, changed, withdrawn, expired, absent, _ = night2(export, tmp_path)
    before = stored(cxone_sandbox)
    second = nightly(run_import, path, 11, sync_mode="append")
    assert stored(cxone_sandbox) == before  # create-only: nothing updated or removed
    assert second.report["sync"] is None and second.report["totals"]["duplicates"] == len(changed)


def test_faults_on_put_and_delete_lose_no_update_and_remove_nothing_twice(run_import, cxone_sandbox, export, tmp_path):
    nightly(run_import, export.path, 20, sync_mode="mirror")
    path, changed, withdrawn, expired, absent, _ = night2(export, tmp_path, change=30, withdraw=10, expire=6, absent=8)
    cxone_sandbox.configure(put_error_rate_5xx=0.05, delete_error_rate_5xx=0.05, seed=5)
    removed_before = cxone_sandbox.stats()["records_removed"]
    second = nightly(run_import, path, 21, sync_mode="mirror")
    assert second.state == "success", second.report["problems"]
    after = stored(cxone_sandbox)
    assert all(after[c]["customFields"]["tier"].startswith("changed-") for c in changed)
    assert not (withdrawn | expired | absent) & set(after)
    gone = withdrawn | expired | absent
    assert cxone_sandbox.stats()["records_removed"] - removed_before == len(gone), "a record was removed twice"
    totals = second.report["totals"]
    assert (totals["updated"], totals["removed"], totals["not_on_list"]) == (len(changed), len(gone), 0)
    assert second.report["reconciliation"]["ok"] and second.report["sync"]["removals_reconciled"]
    statuses = [r.get("status") for r in cxone_sandbox.request_log() if r.get("method") in ("PUT", "DELETE")]
    assert 503 in statuses, "the fault knobs answered no 503"


def run_killed_mid_sync(cxone_sandbox, webhook_sink, storage_base, tmp_path, path: Path, day: datetime) -> None:
    """Run the import of ``path`` in another process, SIGKILLed once its updates and removals are under way."""
    import os
    import time

    from tools.localrun import connection_env

    cxone_sandbox.configure(latency_ms=150)
    env = {**os.environ, **connection_env(cxone_sandbox.url, webhook_sink.url, max_concurrency=2),
           "CXONE_IMPORT_STORAGE_BASE": f"file://{storage_base}"}
    conf = {"source_uri": f"file://{path}", "batch_size": BATCH_SIZE, "max_reject_share": 0.5, "sync_mode": "mirror"}
    run_killed(conf, day, env, tmp_path / "killed.log",
               lambda: len([p for p in storage_base.glob("runs/*/*/checkpoints/*.json") if f"{day:%Y-%m-%d}" in str(p)]) >= 8)
    time.sleep(1)  # requests in flight at the kill still land on the server
    cxone_sandbox.configure(latency_ms=0)


def test_an_import_task_killed_mid_group_loses_no_update_and_removes_nothing_twice(
        run_import, cxone_sandbox, webhook_sink, export, tmp_path, storage_base):
    nightly(run_import, export.path, 30, sync_mode="mirror")
    path, changed, withdrawn, expired, absent, _ = night2(export, tmp_path, change=30, withdraw=10, expire=6, absent=8)
    day = DAY + timedelta(days=31)
    removed_before, updated_before = cxone_sandbox.stats()["records_removed"], cxone_sandbox.stats()["records_updated"]
    run_killed_mid_sync(cxone_sandbox, webhook_sink, storage_base, tmp_path, path, day)
    gone = withdrawn | expired | absent
    done_at_kill = (cxone_sandbox.stats()["records_removed"] - removed_before
                    + cxone_sandbox.stats()["records_updated"] - updated_before)
    assert 0 < done_at_kill < len(changed) + len(gone), "killed in the middle of the group's updates and removals"
    again = run_import({"source_uri": f"file://{path}", "batch_size": BATCH_SIZE, "max_reject_share": 0.5,
                        "sync_mode": "mirror"}, logical_date=day)
    assert again.state == "success", again.report["problems"]
    after = stored(cxone_sandbox)
    assert all(after[c]["customFields"]["tier"].startswith("changed-") for c in changed), "an update was lost"
    assert not gone & set(after)
    assert cxone_sandbox.stats()["records_removed"] - removed_before == len(gone), "a record was removed twice"
    totals = again.report["totals"]
    assert (totals["updated"], totals["removed"]) == (len(changed), len(gone))
    assert again.report["sync"]["removals_reconciled"] and again.report["reconciliation"]["ok"]


def test_a_killed_run_never_retried_leaves_its_updates_and_removals_in_the_lists_state(
        run_import, cxone_sandbox, webhook_sink, export, tmp_path, storage_base):
    """The next night's run reads the killed run's checkpoints into the list's state: it sends again exactly the
    updates and removals the killed run had no answer for, and nothing CXone had answered."""
    import pandas as pd
    from upath import UPath

    from cxone_provider.hooks.cxone import CXoneHook
    from include.cxone_import.engine import CheckpointStore
    from cxone_runs.layout import RunLayout
    from include.cxone_dag.settings import CXONE_CONN_ID
    from include.cxone_import.list_lease import run_list_key

    nightly(run_import, export.path, 80, sync_mode="mirror")
    path, changed, withdrawn, expired, absent, _ = night2(export, tmp_path, change=30, withdraw=10, expire=6, absent=8)
    day = DAY + timedelta(days=81)
    run_killed_mid_sync(cxone_sandbox, webhook_sink, storage_base, tmp_path, path, day)
    killed = f"manual__{day.isoformat()}"  # tools.localrun's run id
    layout = RunLayout.for_run(UPath(f"file://{storage_base}"), "cxone_contact_import", killed)
    answered = 0
    for group in range(8):
        if layout.sync_ops(group).exists():
            op_ids = pd.read_parquet(str(layout.sync_ops(group).path))["op_id"].tolist()
            store = CheckpointStore(layout, op_ids)
            answered += sum(store.load(op) is not None for op in op_ids)
    assert 0 < answered < len(changed) + len(withdrawn | expired | absent)
    key = run_list_key(layout)
    owner = f"cxone_contact_import/{killed}"  # the killed run's lease: released, not waited for
    assert CXoneHook(cxone_conn_id=CXONE_CONN_ID).release_list_lease(key.lease_name, owner)
    log_before = len(cxone_sandbox.request_log())
    night3 = nightly(run_import, path, 82, sync_mode="mirror")  # the same export, the next night
    assert night3.state == "success", night3.report["problems"]
    assert night3.report["changes"]["groups_recovered"] >= 1
    sent = [r for r in cxone_sandbox.request_log()[log_before:] if r.get("method") in ("PUT", "DELETE")]
    totals = night3.report["totals"]
    assert len(sent) == totals["updated"] + totals["removed"] + totals["not_on_list"]
    assert len(sent) == len(changed) + len(withdrawn | expired | absent) - answered, "an answered request sent again"
    after = stored(cxone_sandbox)
    assert all(after[c]["customFields"]["tier"].startswith("changed-") for c in changed)
    assert not (withdrawn | expired | absent) & set(after)


def test_a_backfill_of_older_days_leaves_the_newer_content_in_place(run_import, cxone_sandbox, export, tmp_path):
    path, changed, withdrawn, expired, absent, _ = night2(export, tmp_path, withdraw=0, expire=0, absent=0)
    day3 = nightly(run_import, path, 43, sync_mode="mirror")  # day 3: the newest content
    assert day3.state == "success"
    held = stored(cxone_sandbox)
    fields, rows = rows_of(export.path)  # days 1-2: the older export; day 1 also withdraws two changed contacts
    revoke = set(list(changed)[:2])
    for row in rows:
        if row["contact_id"] in revoke:
            row["opt_in_status"] = "revoked"
    day1 = nightly(run_import, write_rows(tmp_path / "day1.csv", fields, rows), 41, sync_mode="mirror")
    day2 = nightly(run_import, export.path, 42, sync_mode="mirror")
    assert stored(cxone_sandbox) == held, "the list still holds day 3's content"
    for run in (day1, day2):
        assert run.state == "success", run.report["problems"]
        assert run.report["totals"]["updated"] == 0 and run.report["totals"].get("removed", 0) == 0
        assert run.report["sync"]["plan"]["backfill"] is True
        assert run.report["sync"]["plan"]["removals"]["mirror_absent"] == 0
    assert day1.report["totals"]["stale"] == len(changed) - len(revoke)
    assert day1.report["sync"]["plan"]["stale"]["removals"] == len(revoke)  # day 3 granted consent again
    assert day2.report["totals"]["stale"] == len(changed)


def test_bulk_mirror_removals_are_held_until_approved_and_consent_removals_never_are(
        run_import, cxone_sandbox, export, tmp_path, answer_approval):
    import json

    nightly(run_import, export.path, 50, sync_mode="mirror")
    path, changed, withdrawn, expired, absent, _ = night2(export, tmp_path, absent=30)
    with answer_approval("Reject") as asked:  # the approver says no: the mirror removals are held
        held_run = nightly(run_import, path, 51, sync_mode="mirror", max_removal_share=0.05)
    assert asked["answered"] == 1 and f"**{len(absent)}** records" in asked["body"]
    plan = held_run.report["sync"]["plan"]
    assert plan["mirror_share"] > 0.05 and plan["removals"]["mirror_absent"] == len(absent)
    assert len(plan["samples"]["mirror_absent"]) == 5 and all(s not in absent for s in plan["samples"]["mirror_absent"])
    plan_file = json.loads(held_run.file("sync/plan.json").read_text())
    assert plan_file == plan
    assert set(held_run.file("sync/removals.parquet").exists() and ["ok"]) == {"ok"}
    after = stored(cxone_sandbox)
    assert absent <= set(after), "held: the absentees stay on the list"
    assert not (withdrawn | expired) & set(after), "consent removals are never held"
    assert held_run.report["totals"]["removal_held"] == len(absent)
    assert any("held" in n for n in held_run.report["notices"])
    decision = json.loads(held_run.file("sync/removal_decision.json").read_text())
    assert decision["mirror_removals"] == "held" and decision["decided_by"] == "approver"
    # the run again (cleared): the gate asks again, is approved, and the import sends exactly the held removals
    with answer_approval("Approve") as asked:
        approved = nightly(run_import, path, 51, sync_mode="mirror", max_removal_share=0.05)
    assert asked["answered"] == 1
    assert not absent & set(stored(cxone_sandbox))
    assert approved.report["totals"]["removed"] == len(absent | withdrawn | expired)
    assert approved.report["totals"]["removal_held"] == 0


def test_a_dry_run_reports_the_creates_updates_and_removals_it_would_make(run_import, cxone_sandbox, export, tmp_path):
    nightly(run_import, export.path, 60, sync_mode="mirror")
    path, changed, withdrawn, expired, absent, _ = night2(export, tmp_path)
    before = stored(cxone_sandbox)
    dry = nightly(run_import, path, 61, sync_mode="mirror", dry_run=True)
    assert stored(cxone_sandbox) == before
    plan = dry.report["sync"]["plan"]
    assert (plan["updates"], plan["removals"]) == (len(changed), {"consent_withdrawn": len(withdrawn),
                                                                  "consent_expired": len(expired),
                                                                  "mirror_absent": len(absent)})
    assert any(n.startswith("dry run (mirror): would create") for n in dry.report["notices"])
    assert dry.report["reconciliation"]["ok"], dry.report["reconciliation"]["detail"]


def test_a_contact_removed_on_the_cxone_side_ends_not_on_list(run_import, cxone_sandbox, webhook_sink, export,
                                                              tmp_path, storage_base):
    """A DELETE answered 404 (someone removed the record in CXone between nights) is ``not_on_list``: counted so in
    report.json, the CRM's group and summary events, the audit log, and the list's state knows the contact is gone."""
    import numpy as np
    from upath import UPath

    from cxone_provider.hooks.cxone import CXoneHook
    from cxone_runs.layout import RunLayout
    from include.cxone_dag.settings import CXONE_CONN_ID
    from include.cxone_import import tasks
    from include.cxone_import.list_lease import run_list_key
    from include.cxone_import.state import REMOVED, ContactListState, contact_keys

    nightly(run_import, export.path, 70, sync_mode="upsert")
    path, changed, withdrawn, expired, absent, _ = night2(export, tmp_path, change=0, withdraw=8, expire=0, absent=0)
    removed_there = sorted(withdrawn)[:3]
    with CXoneHook(cxone_conn_id=CXONE_CONN_ID).get_client() as client:
        assert all(client.delete_record(CONTACT_LIST_ID, c).found for c in removed_there)
    second = nightly(run_import, path, 71, sync_mode="upsert")
    assert second.state == "success", second.report["problems"]
    assert not withdrawn & set(stored(cxone_sandbox))
    totals = second.report["totals"]
    assert (totals["removed"], totals["not_on_list"], totals["removal_failed"]) == (len(withdrawn) - 3, 3, 0)
    removals = second.report["accounting"]["removals"]
    assert removals["ok"] and removals["outcomes"]["consent_withdrawn"] == {"removed": len(withdrawn) - 3,
                                                                            "not_on_list": 3}
    assert second.report["accounting"]["rows"]["ok"]
    # the CRM: the groups' events and the summary say the same, with masked samples only
    events = crm_events(webhook_sink, second.dag_run.run_id)
    groups = [e for e in events if e["event"] == "cxone_contact_list_sync_group_complete"]
    assert sum(e["metrics"]["removalsByReason"].get("consent_withdrawn", {}).get("not_on_list", 0) for e in groups) == 3
    assert not any(c in json.dumps(groups) for c in withdrawn), "a contactId unmasked in a CRM event"
    summary = next(e for e in events if e["eventId"] == f"{second.dag_run.run_id}:summary")
    assert (summary["metrics"]["notOnListCount"], summary["metrics"]["removedCount"]) == (3, len(withdrawn) - 3)
    assert summary["metrics"]["removalsByReason"]["consent_withdrawn"]["not_on_list"] == 3
    # the audit log: each removal with its contactId, reason, outcome and time
    audit = {e["contactId"]: e for e in second.jsonl("audit.jsonl") if e.get("kind") == "removal"}
    assert set(audit) == withdrawn
    assert {c for c, e in audit.items() if e["status"] == "not_on_list"} == set(removed_there)
    for entry in audit.values():
        assert entry["details"]["reason"] == "consent_withdrawn"
        assert datetime.fromisoformat(entry["timestamp"]).tzinfo is not None
    # the list's state: every withdrawn contact is removed, those gone before included
    key = run_list_key(RunLayout.for_run(UPath(f"file://{storage_base}"), "cxone_contact_import", second.dag_run.run_id))
    snapshot = ContactListState(UPath(f"file://{storage_base}"), "cxone_contact_import", key).snapshot()
    at = np.searchsorted(np.sort(snapshot["key"]), contact_keys(sorted(withdrawn)))
    acknowledged = snapshot["acknowledged"][np.argsort(snapshot["key"])][at]
    assert (acknowledged == REMOVED).all()
    # notify_webhook again (a retry of that task): nothing the CRM already has is sent twice
    received = len(webhook_sink.events())
    context = {"run_id": second.dag_run.run_id, "logical_date": DAY + timedelta(days=71),
               "ti": type("TI", (), {"dag_id": "cxone_contact_import", "try_number": 2, "map_index": -1})()}
    again = tasks.notify({"input_rows": second.report["totals"]["input"],
                          "rejected_rows": totals["rejected"], "valid_rows": totals["valid"]},
                         {"contact_list_id": CONTACT_LIST_ID, "sync_mode": "upsert"}, context)
    assert len(webhook_sink.events()) == received
    assert again["failed"] == 0 and again["delivered"] == again["events"]


def test_a_full_resync_under_upsert_updates_only_what_changed_and_re_creates_what_cxone_lost(
        run_import, cxone_sandbox, export, tmp_path):
    """``full_resync`` sends every record, but a record the list holds exactly so goes as a create (batched, answered
    duplicate), never as an update: only the changed ones are PUT, and a record deleted in CXone is created again."""
    from cxone_provider.hooks.cxone import CXoneHook
    from include.cxone_dag.settings import CXONE_CONN_ID

    first = nightly(run_import, export.path, 90, sync_mode="upsert")
    assert first.state == "success"
    path, changed, withdrawn, expired, absent, _ = night2(export, tmp_path, change=7, withdraw=0, expire=0, absent=0)
    lost = sorted(set(export.valid_contact_ids) - set(changed))[:4]
    with CXoneHook(cxone_conn_id=CXONE_CONN_ID).get_client() as client:
        assert all(client.delete_record(CONTACT_LIST_ID, c).found for c in lost)
    log_before = len(cxone_sandbox.request_log())
    resync = nightly(run_import, path, 91, sync_mode="upsert", full_resync=True)
    assert resync.state == "success", resync.report["problems"]
    sent = cxone_sandbox.request_log()[log_before:]
    puts = [r for r in sent if r.get("method") == "PUT"]
    assert len(puts) == len(changed), "only the changed records are updates"
    totals = resync.report["totals"]
    valid = len(export.valid_contact_ids)
    assert (totals["updated"], totals["imported"], totals["unchanged"]) == (len(changed), len(lost), 0)
    assert totals["duplicates"] == valid - len(changed) - len(lost)
    assert resync.report["changes"]["resent"] == valid - len(changed)
    after = stored(cxone_sandbox)
    assert set(lost) <= set(after) and all(after[c]["customFields"]["tier"].startswith("changed-") for c in changed)
