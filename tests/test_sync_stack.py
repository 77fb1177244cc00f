"""The bulk-removal guard under the real scheduler (tests/stack.py: scheduler, LocalExecutor, api-server): a mirror
night that would remove more than ``max_removal_share`` of the list waits at ``approve_removals`` in Airflow's
``awaiting_input`` state; an approval through the REST API lets the removals go, a rejection holds them, and the
sandbox shows which.

Night 1 of each list creates 40 records with ``sync_mode`` upsert; night 2 (mirror) drops 10 of them from the export:
25% of the list, above the default 5%.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tools.sample_data import generate_crm_export
from tests.stack import DAG_ID, AirflowStack

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]

ROWS = 40
DROPPED = 10
RUN_TIMEOUT_S = 240


def _nights(tmp_path: Path, name: str) -> tuple[Path, Path, set[str], set[str]]:
    """Night 1's export, night 2's (the first DROPPED contacts left out), and the contact ids of each."""
    first = generate_crm_export(tmp_path / f"{name}-night1.csv", ROWS, bad_share=0.0, seed=22)
    with first.path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    second = tmp_path / f"{name}-night2.csv"
    with second.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[DROPPED:])
    all_ids = {r["contact_id"] for r in rows}
    return first.path, second, all_ids, {r["contact_id"] for r in rows[DROPPED:]}


def _wait_for_task_state(stack: AirflowStack, run_id: str, task_id: str, state: str,
                         timeout: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {ti["task_id"]: ti["state"] for ti in stack.task_instances(DAG_ID, run_id)}
        if states.get(task_id) == state:
            return
        time.sleep(1.0)
    raise TimeoutError(f"{task_id} never reached {state}\n" + stack.describe_run(DAG_ID, run_id))


@pytest.mark.parametrize("answer", ["Approve", "Reject"])
def test_a_mirror_night_above_the_bound_waits_for_a_human(airflow_stack: AirflowStack, tmp_path, answer):
    list_id = f"list-gate-{answer.lower()}"
    night1, night2, all_ids, kept = _nights(tmp_path, list_id)
    first = airflow_stack.trigger(DAG_ID, conf={"source_uri": f"file://{night1}", "contact_list_id": list_id,
                                                "sync_mode": "upsert"})
    assert airflow_stack.wait_for_run(DAG_ID, first["dag_run_id"], RUN_TIMEOUT_S)["state"] == "success"
    assert {r["contactId"] for r in airflow_stack.sandbox_records(list_id)} == all_ids

    second = airflow_stack.trigger(DAG_ID, conf={"source_uri": f"file://{night2}", "contact_list_id": list_id,
                                                 "sync_mode": "mirror"})
    run_id = second["dag_run_id"]
    _wait_for_task_state(airflow_stack, run_id, "approve_removals", "awaiting_input")
    states = {ti["task_id"]: ti["state"] for ti in airflow_stack.task_instances(DAG_ID, run_id)}
    assert states.get("import_batches") in (None, "none", "scheduled"), "the imports started before the answer"
    hitl = f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/approve_removals/-1/hitlDetails"
    detail = airflow_stack.api("GET", hitl)
    assert "**10** records" in detail["body"] and "25.0%" in detail["body"]

    # a human reads before answering; an answer within a fraction of a second of the park races the executor's
    # report of the parked process (Airflow 3.3.2 then fails the task as "state changed externally")
    time.sleep(5)
    airflow_stack.api("PATCH", hitl, chosen_options=[answer], params_input={})
    finished = airflow_stack.wait_for_run(DAG_ID, run_id, RUN_TIMEOUT_S)

    assert finished["state"] == "success", airflow_stack.describe_run(DAG_ID, run_id)
    held = {r["contactId"] for r in airflow_stack.sandbox_records(list_id)}
    report = airflow_stack.run_report(run_id)
    totals = report["totals"]
    if answer == "Approve":
        assert held == kept, "the approved mirror removals did not all go, or something else went"
        assert totals["removed"] == DROPPED and totals.get("removal_held", 0) == 0
    else:
        assert held == all_ids, "a rejected mirror removal was sent"
        assert totals["removal_held"] == DROPPED and totals.get("removed", 0) == 0


def test_a_calling_list_mirror_night_waits_for_a_human_then_removes_and_updates(tmp_path):
    """The call_lists profile under the real scheduler with a triggerer: night 2 (mirror) changes records and drops
    25% of the list; approved through the REST API, the absentees leave the calling list and the changed records
    hold their new phone (removal, then an upload the task waits for on the triggerer)."""
    from include.cxone_sandbox.call_lists_api import CallListSandbox, CallListSandboxConfig
    from tools.localrun import call_list_connection_env

    list_name = "stack-sync-list"
    night1, night2, all_ids, kept = _nights(tmp_path, list_name)
    with night2.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    changed = {r["contact_id"] for r in rows[:5]}
    for n, row in enumerate(rows[:5]):
        row[next(c for c in row if c.endswith("_phone") and row[c])] = f"+6149158{n:04d}"
    with night2.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with CallListSandbox(CallListSandboxConfig(job_delay_s=2.0)) as sandbox:
        env = call_list_connection_env(sandbox.url, "http://127.0.0.1:9",
                                       extra={"job_poll_first_s": 1, "job_poll_max_s": 2, "job_timeout_s": 300})
        with AirflowStack(tmp_path / "stack", extra_env={"STACK_TRIGGERER": "1",
                                                         "AIRFLOW_CONN_CXONE_DEFAULT": env["AIRFLOW_CONN_CXONE_DEFAULT"]}) as stack:
            conf = {"contact_list_id": list_name, "create_list_if_missing": True}
            first = stack.trigger(DAG_ID, conf={**conf, "source_uri": f"file://{night1}", "sync_mode": "upsert"})
            assert stack.wait_for_run(DAG_ID, first["dag_run_id"], RUN_TIMEOUT_S)["state"] == "success"
            second = stack.trigger(DAG_ID, conf={**conf, "source_uri": f"file://{night2}", "sync_mode": "mirror"})
            run_id = second["dag_run_id"]
            _wait_for_task_state(stack, run_id, "approve_removals", "awaiting_input")
            time.sleep(5)  # see above: an answer racing the park fails the task
            hitl = f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/approve_removals/-1/hitlDetails"
            stack.api("PATCH", hitl, chosen_options=["Approve"], params_input={})
            finished = stack.wait_for_run(DAG_ID, run_id, RUN_TIMEOUT_S)
            assert finished["state"] == "success", stack.describe_run(DAG_ID, run_id)
            report = stack.run_report(run_id)
        records = {r["externalId"]: r for r in sandbox.records(list_name)}
    assert set(records) == kept, "the approved mirror removals did not all go, or something else went"
    assert all(any(d["formattedDestination"].startswith("+6149158") for d in records[c]["destinations"])
               for c in changed), "a changed record does not hold its new phone"
    totals = report["totals"]
    assert (totals["removed"], totals["updated"], totals.get("removal_held", 0)) == (DROPPED, len(changed), 0)
    assert report["reconciliation"]["ok"] and report["sync"]["removals_reconciled"]
