"""Nightly runs send only what changed: whole DAG runs against the sandbox, counting the requests it answered."""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from include.cxone_import.state import list_key
from tests.conftest import CONTACT_LIST_ID, fold_killed_while_writing_current, run_killed
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
    # these nights test the create-only behaviour (issue 20); sync modes are tests/test_sync.py's
    return run_import({"source_uri": f"file://{path}", "batch_size": BATCH_SIZE, "sync_mode": "append", **params},
                      logical_date=DAY + timedelta(days=day), **(conn or {}))


def list_state_root(storage_base: Path, sandbox) -> Path:
    """Where the list's state lives for the sandbox's tenant (its host and the connection's client id)."""
    key = list_key(CONTACT_LIST_ID, base_url=sandbox.url, client_id="sandbox-client")
    return storage_base / "state" / "cxone_contact_import" / f"tenant={key.tenant_digest}" / CONTACT_LIST_ID


def edited_export(export, tmp_path, *, change: int, add: int, phones: bool = False,
                  only: set[str] | None = None, name: str = "contacts_next.csv") -> tuple[Path, set[str], set[str]]:
    """A copy of the export with ``change`` valid contacts (or those in ``only``) edited (a custom field; with
    ``phones`` also the first phone number) and ``add`` new ones."""
    with export.path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or []), list(reader)
    changed: set[str] = set()
    seen: set[str] = set()
    phone_columns = [f for f in fields if f.endswith("_phone")]
    for row in rows:
        contact_id = row["contact_id"]
        wanted = contact_id in only if only is not None else len(changed) < change
        if contact_id in export.valid_contact_ids and contact_id not in seen and wanted:
            row["tier"] = "changed-" + row["tier"]
            if phones:
                column = next(c for c in phone_columns if row[c])
                row[column] = f"+6149158{len(changed):04d}"  # Australian fiction range: on no list
            changed.add(contact_id)
        seen.add(contact_id)
    template = next(r for r in rows if r["contact_id"] in export.valid_contact_ids)
    phone_columns = [f for f in fields if f.endswith("_phone")]
    added = {f"crm-new-{n:04d}" for n in range(add)}
    for n, contact_id in enumerate(sorted(added)):
        rows.append({**template, "contact_id": contact_id, **{c: "" for c in phone_columns},
                     phone_columns[0]: NEW_PHONES[n]})
    path = tmp_path / name
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
    state = list_state_root(storage_base, cxone_sandbox)
    assert json.loads((state / "CURRENT.json").read_text())["contacts"] == len(export.valid_contact_ids)
    assert second.report["changes"]["state"]["path"].endswith(str(state.relative_to(storage_base)))
    assert second.report["changes"]["state"]["tenant"] == f"{cxone_sandbox.url.split('://')[1]}, client id sandbox-client"
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
    assert third.report["totals"]["unchanged"] == len(export.valid_contact_ids) - len(changed) + len(added)
    assert third.report["totals"]["duplicates"] == len(changed), "CXone never acknowledged their new content"
    assert third.report["totals"]["requests"] == 0, "sending what was answered duplicate again changes nothing"


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
    state = list_state_root(storage_base, cxone_sandbox)
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
    run_killed({"source_uri": f"file://{export.path}", "batch_size": 5}, KILLED_DAY, env, tmp_path / "killed-run.log",
               lambda: len(list(Path(storage_base).glob("runs/*/*/checkpoints/*.json"))) >= 10, deadline_s=120)
    acknowledged = {
        o[1] for p in storage_base.glob("runs/*/*/checkpoints/*.json")
        for o in json.loads(p.read_text())["outcomes"] if o[2] in ("imported", "duplicate")
    }
    time.sleep(1)  # requests in flight at the kill still commit on the server (its latency is 150 ms)
    created_before = len(cxone_sandbox.records(CONTACT_LIST_ID))
    assert 0 < len(acknowledged) <= created_before < len(export.valid_contact_ids), "killed mid-import"
    assert not list(storage_base.glob("state/*/*/*/deltas/*.parquet")), "the killed task wrote no delta"

    # The killed run never reached its report task, which gives the list back; an operator (or the lease's expiry)
    # frees it. A re-run of the killed run itself would not need this (tests/test_faults.py).
    from include.cxone_import.list_lease import release_contact_list

    monkeypatch.setenv("AIRFLOW_CONN_CXONE_DEFAULT", env["AIRFLOW_CONN_CXONE_DEFAULT"])
    release_contact_list({"contact_list_id": CONTACT_LIST_ID}, {"run_id": f"manual__{KILLED_DAY.isoformat()}"})
    cxone_sandbox.configure(latency_ms=0)
    second = nightly(run_import, export.path, 41)

    assert second.state == "success"
    totals = second.report["totals"]
    assert totals["unchanged"] == len(acknowledged), "what was acknowledged is not sent again"
    in_flight_at_kill = created_before - len(acknowledged)  # created on the server, answer never read
    assert totals["confirmed_on_retry"] == in_flight_at_kill <= 2 * 5, "the killed run's own records, sent exactly so"
    assert totals["duplicates"] == 0
    assert second.report["changes"]["answer_lost"] >= in_flight_at_kill
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
    lease = list_key(CONTACT_LIST_ID, base_url=cxone_sandbox.url, client_id="sandbox-client").lease_name
    assert hook.acquire_list_lease(lease, other, 60) == other
    releaser = threading.Timer(3.0, hook.release_list_lease, (lease, other))
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


def test_changes_cxone_answered_duplicate_are_never_unchanged(run_import, export, cxone_sandbox, tmp_path):
    """Night 2 changes the phone number and a custom field of 60 contacts: the records API only creates, so they are
    answered duplicate and CXone keeps the old numbers. No later night calls them unchanged while CXone holds other
    content; a night whose export did not change sends nothing (at most 2.5% of night 1's requests)."""
    first = nightly(run_import, export.path, 70)
    night_1_requests = first.report["totals"]["requests"]
    old_phones = {r["contactId"]: r["phoneNumbers"] for r in cxone_sandbox.records(CONTACT_LIST_ID)}
    path, changed, _ = edited_export(export, tmp_path, change=60, add=0, phones=True)

    second = nightly(run_import, path, 71)
    third = nightly(run_import, path, 72)
    requests_before_fourth = requests_sent(cxone_sandbox)
    fourth = nightly(run_import, export.path, 73)  # the CRM reverted: CXone holds exactly this

    assert len(changed) == 60
    assert second.report["totals"]["duplicates"] == 60 and second.report["totals"]["unchanged"] == len(
        export.valid_contact_ids) - 60
    assert any("60 changed records were answered duplicate" in n for n in second.report["notices"])
    assert {r["contactId"]: r["phoneNumbers"] for r in cxone_sandbox.records(CONTACT_LIST_ID)} == old_phones
    for night in (second, third):
        outcomes = load_outcomes(night.root)
        assert not set(outcomes.loc[outcomes["outcome"] == "unchanged", "row_number"]) & rows_of(night.root, changed)
        assert night.report["reconciliation"]["ok"], night.report["reconciliation"]["detail"]
    assert third.report["totals"]["duplicates"] == 60 and third.report["changes"]["unconfirmed"] == 60
    assert third.report["totals"]["requests"] == 0 <= 0.025 * night_1_requests
    assert any("60 records were not sent again" in n for n in third.report["notices"])
    assert fourth.report["totals"]["unchanged"] == len(export.valid_contact_ids)
    assert requests_sent(cxone_sandbox) == requests_before_fourth


def load_outcomes(root: Path):
    from upath import UPath

    from include.cxone_import.report import load_outcomes as load
    from cxone_runs.layout import RunLayout

    return load(RunLayout(UPath(f"file://{root}")))


def rows_of(root: Path, contact_ids: set[str]) -> set[int]:
    import pandas as pd

    valid = pd.concat([pd.read_parquet(p, columns=["row_number", "contact_id"]) for p in (root / "valid").glob("*.parquet")])
    return set(valid.loc[valid["contact_id"].isin(contact_ids), "row_number"])


def test_a_cleared_run_after_the_source_was_corrected_sends_the_corrected_records(run_import, export, cxone_sandbox,
                                                                                   tmp_path, storage_base):
    """CXone refused some records; the CRM corrects its file (those records, and five it had acknowledged) and the run
    is cleared. Every batch whose content changed is sent: the refused records land with their corrected phone, the
    acknowledged ones are answered duplicate (CXone keeps what it created) and never taken as acknowledged."""
    day = 80
    source = tmp_path / "contacts_day.csv"
    source.write_bytes(export.path.read_bytes())
    cxone_sandbox.configure(record_error_rate=0.05)
    first = nightly(run_import, source, day)
    refused = {r.split('"contactId":"')[1].split('"')[0] for r in json_lines(first.root / "dead_letter.jsonl")}
    assert first.state == "failed" and refused, "some records were refused"
    created = set(stored_once(cxone_sandbox))
    acknowledged_changed = set(sorted(created)[:5])
    corrected, _, _ = edited_export(export, tmp_path, change=0, add=0, phones=True, only=refused | acknowledged_changed,
                                    name="corrected.csv")
    source.write_bytes(corrected.read_bytes())
    cxone_sandbox.configure(record_error_rate=0.0)
    sent_before = requests_sent(cxone_sandbox)

    cleared = nightly(run_import, source, day)  # the same logical date: the same run, cleared and run again

    assert cleared.dag_run.run_id == first.dag_run.run_id and cleared.state == "success"
    assert requests_sent(cxone_sandbox) > sent_before
    holds = {r["contactId"]: r for r in cxone_sandbox.records(CONTACT_LIST_ID)}
    assert set(holds) == set(export.valid_contact_ids)
    assert all(r["phoneNumbers"][0]["number"].startswith("+6149158") for c, r in holds.items() if c in refused)
    assert not any(r["phoneNumbers"][0]["number"].startswith("+6149158") for c, r in holds.items()
                   if c in acknowledged_changed), "the records API does not update: CXone keeps what it created"
    outcomes = load_outcomes(cleared.root).set_index("row_number")["outcome"]
    assert set(outcomes[sorted(rows_of(cleared.root, acknowledged_changed))]) == {"duplicate"}
    assert set(outcomes[sorted(rows_of(cleared.root, refused))]) == {"imported"}
    assert cleared.report["totals"]["batches_resumed"] > 0

    next_night = nightly(run_import, source, day + 1)
    outcomes = load_outcomes(next_night.root).set_index("row_number")["outcome"]
    assert set(outcomes[sorted(rows_of(next_night.root, acknowledged_changed))]) == {"duplicate"}, "never unchanged"
    assert set(outcomes[sorted(rows_of(next_night.root, refused))]) == {"unchanged"}


def json_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def test_another_tenant_with_the_same_list_id_gets_every_record(run_import, export, cxone_sandbox, storage_base):
    """The connection now names another tenant (another host) with the same list id: its list is another list,
    with its own state; every record is sent there. Back on the first tenant, its state is intact."""
    from include.cxone_sandbox import CXoneSandbox, SandboxConfig

    assert nightly(run_import, export.path, 90).state == "success"
    with CXoneSandbox(SandboxConfig(seed=3)) as other:
        switched = nightly(run_import, export.path, 91, conn={"extra": {"host": other.url}})
        on_other = {r["contactId"] for r in other.records(CONTACT_LIST_ID)}
        other_host = other.url.split("://")[1]
    back = nightly(run_import, export.path, 92)

    assert switched.state == "success"
    assert switched.report["totals"]["imported"] == len(export.valid_contact_ids) == len(on_other)
    assert switched.report["totals"]["unchanged"] == 0
    assert switched.report["changes"]["state"]["tenant"].startswith(other_host)
    assert back.report["totals"]["unchanged"] == len(export.valid_contact_ids) and back.report["totals"]["requests"] == 0


def test_a_kill_in_the_middle_of_a_state_write_then_a_run_that_succeeds(run_import, export, cxone_sandbox,
                                                                          storage_base, tmp_path):
    """A process folding the list's state is killed while it writes CURRENT.json: the next run reads the state
    whole (the old CURRENT.json and the deltas it was folding) and sends nothing that did not change."""
    assert nightly(run_import, export.path, 100).state == "success"
    path, changed, added = edited_export(export, tmp_path, change=4, add=3)
    assert nightly(run_import, path, 101).state == "success"  # its deltas are folded by the next run
    state = list_state_root(storage_base, cxone_sandbox)
    assert list(state.glob("deltas/*.parquet"))
    fold_killed_while_writing_current(f"file://{storage_base}", "cxone_contact_import", list_key(
        CONTACT_LIST_ID, base_url=cxone_sandbox.url, client_id="sandbox-client"))
    json.loads((state / "CURRENT.json").read_text())  # whole: the write went to a temporary file
    sent_before = requests_sent(cxone_sandbox)

    after = nightly(run_import, path, 102)

    assert after.state == "success" and not after.report["changes"]["unreadable"]
    assert after.report["totals"]["unchanged"] == len(export.valid_contact_ids) - len(changed) + len(added)
    assert requests_sent(cxone_sandbox) == sent_before


def test_an_unreadable_state_file_is_reported_and_its_records_sent(run_import, export, cxone_sandbox, storage_base):
    """A CURRENT.json cut short (an in-place write killed half-way, as earlier versions wrote it): the run does not
    crash and does not skip anything silently: it says so and sends every record (answered duplicate)."""
    assert nightly(run_import, export.path, 110).state == "success"
    assert nightly(run_import, export.path, 111).state == "success"
    current = list_state_root(storage_base, cxone_sandbox) / "CURRENT.json"
    current.write_text(current.read_text()[:25])

    after = nightly(run_import, export.path, 112)
    again = nightly(run_import, export.path, 113)

    assert after.state == "success", after.report and after.report["problems"]
    assert after.report["totals"]["unchanged"] == 0
    assert after.report["totals"]["duplicates"] == len(export.valid_contact_ids)
    assert [u.split(":")[0] for u in after.report["changes"]["unreadable"]] == ["CURRENT.json"]
    assert any("could not be read (CURRENT.json" in n for n in after.report["notices"])
    assert again.report["changes"]["unreadable"] == [] and again.report["totals"]["requests"] == 0
