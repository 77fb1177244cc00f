"""The calling-list job trigger and the upload checkpoints, against the calling-list sandbox over real HTTP."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from airflow.sdk.exceptions import TaskDeferred
from cxone_provider.call_lists import CallListClient
from cxone_provider.errors import CXoneJobWaitError
from cxone_provider.operators.import_group import ImportGroupOperator
from cxone_provider.retry import backoff_s
from cxone_provider.triggers.call_lists import TRIGGER_TIMEOUT_MARGIN_S, CallListJobsTrigger, JobWait
from include.cxone_sandbox.call_lists_api import CallListSandbox, CallListSandboxConfig
from tools.localrun import call_list_connection_env

pytestmark = pytest.mark.timeout(120)

CSV = b"contactId,mobile_phone\r\nc-1,+14155550101\r\nc-2,+14155550102\r\n"
PHONES = [{"fieldName": "mobile_phone", "fieldValue": "mobile_phone"}]
EXPIRES = datetime.now(timezone.utc) + timedelta(days=1)


@pytest.fixture
def sandbox(monkeypatch):
    with CallListSandbox(CallListSandboxConfig(job_delay_s=0.3)) as running:
        for key, value in call_list_connection_env(running.url, "http://127.0.0.1:9").items():
            monkeypatch.setenv(key, value)
        yield running


@pytest.fixture
def client(sandbox):
    config = CallListSandboxConfig()
    with CallListClient(sandbox.url, config.access_key_id, config.access_key_secret, client_id=config.client_id,
                        client_secret=config.client_secret) as made:
        yield made


def first_event(trigger: CallListJobsTrigger) -> dict:
    """Run a trigger the way the triggerer does: rebuilt from its serialized form, first event only."""
    classpath, kwargs = trigger.serialize()
    assert classpath == "cxone_provider.triggers.call_lists.CallListJobsTrigger"

    async def run() -> dict:
        return (await anext(CallListJobsTrigger(**kwargs).run())).payload

    return asyncio.run(run())


def trigger_for(list_id: str, job_ids: list[str], **kwargs) -> CallListJobsTrigger:
    return CallListJobsTrigger(cxone_conn_id="cxone_default", list_id=list_id, job_ids=job_ids,
                               submitted_at=time.time(), poll_first_s=0.05, poll_max_s=0.2, **kwargs)


def test_waits_until_jobs_complete_or_are_cancelled(sandbox, client):
    list_id = client.create_list("t", external_id_column="contactId", destination_mappings=PHONES, custom_field_mappings=[])
    done = client.upload(list_id, CSV, file_name="a.csv", expiration_date=EXPIRES)
    sandbox.configure(cancel_jobs=1)
    cancelled = client.upload(list_id, CSV, file_name="b.csv", expiration_date=EXPIRES)

    event = first_event(trigger_for(list_id, [done, cancelled], timeout_s=10))

    assert event == {"status": "done", "jobs": {done: "complete", cancelled: "cancelled"}}
    assert {r["externalId"] for r in sandbox.records(list_id)} == {"c-1", "c-2"}


def test_times_out_on_a_job_that_never_completes(sandbox, client):
    list_id = client.create_list("t", external_id_column="contactId", destination_mappings=PHONES, custom_field_mappings=[])
    sandbox.configure(stall_jobs=1)
    stalled = client.upload(list_id, CSV, file_name="a.csv", expiration_date=EXPIRES)

    started = time.monotonic()
    event = first_event(trigger_for(list_id, [stalled], timeout_s=0.5))

    assert event == {"status": "timeout", "jobs": {stalled: "pending"}}
    assert time.monotonic() - started < 5


def test_polls_through_429_and_5xx_and_waits_for_a_job_it_has_no_id_for(sandbox, client):
    list_id = client.create_list("t", external_id_column="contactId", destination_mappings=PHONES, custom_field_mappings=[])
    sandbox.configure(upload_errors_5xx_after_accept=1)
    with pytest.raises(Exception) as answered:
        client.upload(list_id, CSV, file_name="a.csv", expiration_date=EXPIRES)
    assert answered.value.outcome_uncertain and sandbox.stats()["uploads"] == 1, "accepted once, never re-sent"
    sandbox.configure(rate_limited_requests=2, read_errors_5xx=2)

    event = first_event(trigger_for(list_id, [], wait_for_list=True, timeout_s=10))

    assert event["status"] == "done"
    assert {r["externalId"] for r in sandbox.records(list_id)} == {"c-1", "c-2"}


def test_an_auth_failure_ends_the_wait_with_an_error(sandbox, client, monkeypatch):
    list_id = client.create_list("t", external_id_column="contactId", destination_mappings=PHONES, custom_field_mappings=[])
    job = client.upload(list_id, CSV, file_name="a.csv", expiration_date=EXPIRES)
    sandbox.configure(access_key_secret="rotated")

    event = first_event(trigger_for(list_id, [job], timeout_s=10))

    assert event["status"] == "error" and "token request" in event["message"]
    assert "rotated" not in event["message"] and "sandbox-access-secret" not in event["message"]


WAIT = JobWait(cxone_conn_id="cxone_default", list_id="list-1", job_ids=["job-1", "job-2"], wait_for_list=True,
               submitted_at=1_700_000_000.0, timeout_s=600.0, poll_first_s=2.0, poll_max_s=30.0)


class WaitOnceOperator(ImportGroupOperator):
    """An import step that uploads (waits on ``WAIT``), then ends with what the trigger's event said."""

    def start_group(self, context):
        return WAIT

    def resume_group(self, context, settled):
        return {"status": settled.status, "jobs": settled.jobs}


def test_the_operator_defers_on_the_trigger_built_from_the_wait():
    with pytest.raises(TaskDeferred) as deferred:
        WaitOnceOperator(task_id="import_batches", group={"group_index": 0}).execute({})

    path, kwargs = deferred.value.trigger.serialize()
    assert path == "cxone_provider.triggers.call_lists.CallListJobsTrigger"
    assert kwargs == {"cxone_conn_id": "cxone_default", "list_id": "list-1", "job_ids": ["job-1", "job-2"],
                      "wait_for_list": True, "submitted_at": 1_700_000_000.0, "timeout_s": 600.0,
                      "poll_first_s": 2.0, "poll_max_s": 30.0}
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == timedelta(seconds=600.0 + TRIGGER_TIMEOUT_MARGIN_S)


@pytest.mark.parametrize("event", [
    {"status": "done", "jobs": {"job-1": "complete", "job-2": "cancelled"}},
    {"status": "timeout", "jobs": {"job-1": "complete", "job-2": "pending"}},
], ids=["done", "timeout"])
def test_a_settled_or_timed_out_wait_resumes_the_import_step(event):
    result = WaitOnceOperator(task_id="import_batches", group={"group_index": 0}).execute_complete({}, event)

    assert result == event


def test_an_error_event_fails_the_task_with_a_typed_error():
    operator = WaitOnceOperator(task_id="import_batches", group={"group_index": 0})

    with pytest.raises(CXoneJobWaitError, match="token request refused"):
        operator.execute_complete({}, {"status": "error", "message": "token request refused", "jobs": {}})


@pytest.mark.parametrize(("poll", "wait"), [(1, 0.5), (2, 1.0), (3, 2.0), (10, 30.0)], ids=str)
def test_backoff_doubles_up_to_the_cap(poll, wait):
    assert backoff_s(poll, 0.5, 30.0) == wait


def _group(layout, index: int, contact_ids: list[str]) -> None:
    import json

    import pyarrow as pa

    from include.cxone_import.pipeline import GROUP_SCHEMA
    from include.cxone_import.storage import write_parquet

    records = [json.dumps({"contactId": c, "phoneNumbers": [{"type": "mobile", "number": f"+1415555{n:04d}"}],
                           "customFields": {}, "consentTimestamp": "2026-06-01T00:00:00.000Z",
                           "optInStatus": "confirmed"}) for n, c in enumerate(contact_ids)]
    n = len(contact_ids)
    write_parquet(layout.group_file(index), pa.table(
        {"row_number": list(range(1, n + 1)), "batch_index": [0] * n, "batch_id": ["b"] * n,
         "contact_id": contact_ids, "record_json": records, "listed_before": [False] * n,
         "sent_unanswered": [False] * n}, schema=GROUP_SCHEMA))


def test_uploads_are_checkpointed_and_never_sent_twice(sandbox, client, tmp_path):
    from dataclasses import asdict

    import pandas as pd

    from cxone_runs.layout import RunLayout
    from include.cxone_import.storage import write_json, write_parquet
    from include.cxone_import.uploads import UPLOADING, CallListColumns, GroupState, GroupUploader, UploadOptions, csv_files

    list_id = client.create_list("t", external_id_column="contactId", destination_mappings=[
        {"fieldName": "mobile_phone", "fieldValue": "mobile_phone"}], custom_field_mappings=[])
    layout = RunLayout(tmp_path / "run")
    call_list = CallListColumns.for_columns(list_id, "t", "contactId", ["contact_id", "phone_mobile"])
    _group(layout, 0, ["g0-a", "g0-b", "g0-c"])
    _group(layout, 1, ["g1-a", "g1-b"])
    uploader = GroupUploader(client, call_list, layout, records_per_file=2, options=UploadOptions(1))

    state = uploader.submit(0)
    again = GroupUploader(client, call_list, layout, records_per_file=2, options=UploadOptions(1)).submit(0)  # a retried task
    assert len(state.jobs()) == 2 and set(again.jobs()) == set(state.jobs())
    assert sandbox.stats()["uploads"] == 2

    # group 1's task died while its only file was on its way: the retry must not send it again
    folder = layout.root / "uploads" / "group-00001"
    write_parquet(folder / "before.parquet", pd.DataFrame({"contact_id": pd.Series([], dtype="str")}))
    (only,) = csv_files(call_list, uploader._group_rows(1), records_per_file=2)
    died = GroupState(1, before_taken=True, submitted_at=time.time(),
                      files={only.file_id: {"state": UPLOADING, "index": 0, "records": 2, "file_name": only.file_name}})
    write_json(folder / "state.json", asdict(died))
    resumed = uploader.submit(1)
    assert resumed.uncertain() and not resumed.jobs()
    assert sandbox.stats()["uploads"] == 2

    # the read-back finds its rows absent once the list's jobs settled: they go again in a recovery round's file
    assert uploader.reconcile(1, {}) is None
    recovered = uploader.submit(1)
    (job,) = set(recovered.jobs())
    assert sandbox.stats()["uploads"] == 3
    assert wait_for_jobs(sandbox, [job]) == {job: "complete"}
    summary = uploader.reconcile(1, {job: "complete"})
    assert summary["imported"] == 2 and summary["failed"] == 0 and summary["recovery_rounds"] == 1
    assert {r["externalId"] for r in sandbox.records(list_id)} == {"g0-a", "g0-b", "g0-c", "g1-a", "g1-b"}
    metrics = {m["batch_id"]: m for m in summary["batch_metrics"]}
    assert metrics[only.file_id]["records"] == 0 and metrics[only.file_id]["error"].startswith("2 records uploaded again")
    assert metrics[f"{only.file_id}-r1"]["imported"] == 2


def wait_for_jobs(sandbox, job_ids: list[str], timeout_s: float = 10.0) -> dict[str, str]:
    """Poll the sandbox until the jobs settle; their states as the trigger names them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        views = {str(j["jobId"]): j for j in sandbox.jobs() if str(j["jobId"]) in job_ids}
        if len(views) == len(job_ids) and all(v["isComplete"] or v["isCancelled"] for v in views.values()):
            return {k: "cancelled" if v["isCancelled"] else "complete" for k, v in views.items()}
        time.sleep(0.05)
    raise AssertionError(f"jobs {job_ids} did not settle")


def test_recovery_uploads_only_what_the_list_does_not_hold(sandbox, client, tmp_path):
    """A lost reply whose job ran: its rows are on the list and never sent again. A cancelled job: its rows go
    again, once, in a recovery round. A file cancelled every time: after the last round its rows end failed."""
    from cxone_runs.layout import RunLayout
    from include.cxone_import.uploads import MAX_RECOVERY_ROUNDS, CallListColumns, GroupUploader, UploadOptions

    list_id = client.create_list("t", external_id_column="contactId", destination_mappings=PHONES,
                                 custom_field_mappings=[])
    layout = RunLayout(tmp_path / "run")
    call_list = CallListColumns.for_columns(list_id, "t", "contactId", ["contact_id", "phone_mobile"])
    uploader = GroupUploader(client, call_list, layout, records_per_file=2, options=UploadOptions(1))

    def settle(group_index: int) -> dict | None:
        jobs = uploader.load_state(group_index).jobs()
        return uploader.reconcile(group_index, wait_for_jobs(sandbox, jobs) if jobs else {})

    _group(layout, 0, ["lost-1", "lost-2", "ok-1", "ok-2"])
    sandbox.configure(upload_errors_5xx_after_accept=1)
    state = uploader.submit(0)
    assert state.uncertain() and len(state.jobs()) == 1
    wait_for_jobs(sandbox, [str(j["jobId"]) for j in sandbox.jobs()])  # what the trigger's list wait does
    summary = settle(0)
    assert summary is not None and summary["imported"] == 4 and summary["recovery_rounds"] == 0
    assert sandbox.stats()["uploads"] == 2, "a row the list held was uploaded again"

    _group(layout, 1, ["cancel-1", "cancel-2"])
    sandbox.configure(cancel_jobs=1)
    uploader.submit(1)
    assert settle(1) is None  # the cancelled file's rows are planned again
    uploader.submit(1)
    summary = settle(1)
    assert summary is not None and summary["imported"] == 2 and summary["recovery_rounds"] == 1
    assert sandbox.stats()["uploads"] == 4

    _group(layout, 2, ["never-1", "never-2"])
    sandbox.configure(cancel_jobs=1 + MAX_RECOVERY_ROUNDS)
    for _ in range(MAX_RECOVERY_ROUNDS + 1):
        uploader.submit(2)
        summary = settle(2)
        if summary is not None:
            break
    assert summary is not None and summary["failed"] == 2 and summary["recovery_rounds"] == MAX_RECOVERY_ROUNDS
    assert sandbox.stats()["uploads"] == 4 + 1 + MAX_RECOVERY_ROUNDS
    details = set(pd.read_parquet(layout.outcome_file(2))["detail"])
    assert len(details) == 1 and details.pop().endswith("was cancelled")
    held = {r["externalId"] for r in sandbox.records(list_id)}
    assert held == {"lost-1", "lost-2", "ok-1", "ok-2", "cancel-1", "cancel-2"}


def test_a_slow_poll_does_not_delay_another_trigger(monkeypatch):
    """Two triggers in one event loop, as the triggerer runs them: one tenant answers after 3 s, the other at once.
    The fast trigger's event must not wait for the slow one's poll (on a shared sync thread it would)."""
    import json

    slow_sandbox = CallListSandbox(CallListSandboxConfig(job_delay_s=0.0)).start()
    fast_sandbox = CallListSandbox(CallListSandboxConfig(job_delay_s=0.0)).start()
    try:
        for conn_id, running in (("cxone_slow", slow_sandbox), ("cxone_fast", fast_sandbox)):
            env = call_list_connection_env(running.url, "http://127.0.0.1:9")
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", env["AIRFLOW_CONN_CXONE_DEFAULT"])
        jobs = {}
        for name, running in (("slow", slow_sandbox), ("fast", fast_sandbox)):
            config = CallListSandboxConfig()
            with CallListClient(running.url, config.access_key_id, config.access_key_secret,
                                client_id=config.client_id, client_secret=config.client_secret) as made:
                list_id = made.create_list("t", external_id_column="contactId", destination_mappings=PHONES,
                                           custom_field_mappings=[])
                jobs[name] = (list_id, made.upload(list_id, CSV, file_name="a.csv", expiration_date=EXPIRES))
        slow_sandbox.configure(latency_ms=3000)

        def trigger(name: str) -> CallListJobsTrigger:
            list_id, job = jobs[name]
            return CallListJobsTrigger(cxone_conn_id=f"cxone_{name}", list_id=list_id, job_ids=[job],
                                       submitted_at=time.time(), timeout_s=30, poll_first_s=0.05, poll_max_s=0.2)

        async def both() -> dict[str, float]:
            started = time.monotonic()
            done: dict[str, float] = {}

            async def first(name: str) -> None:
                event = await anext(trigger(name).run())
                assert event.payload["status"] == "done", json.dumps(event.payload)
                done[name] = time.monotonic() - started

            slow = asyncio.create_task(first("slow"))
            await asyncio.sleep(0.2)  # the slow trigger's first poll is on its way (token, discovery: 3 s each)
            await first("fast")
            await slow
            return done

        done = asyncio.run(both())
        assert done["fast"] < 2.0, f"the fast trigger waited {done['fast']:.1f}s behind the slow one's poll"
        assert done["slow"] >= 3.0
    finally:
        slow_sandbox.stop()
        fast_sandbox.stop()
