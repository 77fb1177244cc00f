"""The call_lists profile under the real scheduler: the import task defers to a real ``airflow triggerer`` while
CXone processes its upload, holding no worker or pool slot, and resumes to read the list back."""

from __future__ import annotations

import time

import pytest

from include.cxone_sandbox.call_lists_api import CallListSandbox, CallListSandboxConfig
from tests.stack import AirflowStack
from tools.localrun import call_list_connection_env
from tools.sample_data import generate_crm_export

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]

DAG_ID = "cxone_contact_import"
JOB_DELAY_S = 8.0  # long enough to see the task deferred, short for the suite


@pytest.fixture(scope="module")
def call_list_sandbox():
    with CallListSandbox(CallListSandboxConfig(job_delay_s=JOB_DELAY_S)) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def stack_with_triggerer(tmp_path_factory, call_list_sandbox):
    """A stack of its own (the session's has no triggerer) whose cxone_default speaks call_lists to the sandbox."""
    env = call_list_connection_env(call_list_sandbox.url, "http://127.0.0.1:9",
                                   extra={"job_poll_first_s": 1, "job_poll_max_s": 2, "job_timeout_s": 300})
    stack = AirflowStack(tmp_path_factory.mktemp("stack-triggerer"),
                         extra_env={"STACK_TRIGGERER": "1", "AIRFLOW_CONN_CXONE_DEFAULT": env["AIRFLOW_CONN_CXONE_DEFAULT"]})
    with stack:
        yield stack


def test_import_task_defers_on_the_triggerer_holding_no_slot(stack_with_triggerer, call_list_sandbox, tmp_path):
    stack = stack_with_triggerer
    export = generate_crm_export(tmp_path / "contacts.csv", 200, bad_share=0.1, seed=3)
    run = stack.trigger(DAG_ID, conf={"source_uri": f"file://{export.path}", "contact_list_id": "stack-list",
                                      "create_list_if_missing": True})

    deadline = time.monotonic() + 240
    states: list[str] = []
    while time.monotonic() < deadline:
        states = [t["state"] for t in stack.task_instances(DAG_ID, run["dag_run_id"]) if t["task_id"] == "import_batches"]
        if states and all(s == "deferred" for s in states):
            break
        assert "failed" not in states, stack.describe_run(DAG_ID, run["dag_run_id"])
        time.sleep(0.5)
    assert states and all(s == "deferred" for s in states), stack.describe_run(DAG_ID, run["dag_run_id"])
    pool = stack.api("GET", "/pools/cxone_api")
    assert pool["running_slots"] == 0 and pool["occupied_slots"] == 0, pool  # waiting costs no slot
    assert pool["deferred_slots"] == len(states)
    assert call_list_sandbox.jobs() and not any(j["isComplete"] for j in call_list_sandbox.jobs())

    finished = stack.wait_for_run(DAG_ID, run["dag_run_id"], timeout=240)
    assert finished["state"] == "success", stack.describe_run(DAG_ID, run["dag_run_id"])
    report = stack.run_report(run["dag_run_id"])
    assert report["reconciliation"]["ok"]
    assert report["totals"]["imported"] == len(export.valid_contact_ids)
    assert {r["externalId"] for r in call_list_sandbox.records("stack-list")} == set(export.valid_contact_ids)
