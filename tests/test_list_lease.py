"""One run per contact list at a time, runs for other lists side by side: the lease the import tasks take in the
tenant's budget store (memory store here; the SQLite and Redis stores run the same lease tests in
test_ratelimit.py)."""

from __future__ import annotations

import json

import pytest

from airflow.sdk.exceptions import AirflowRescheduleException
from cxone_provider.hooks.cxone import CXoneHook
from include.cxone_import import airflow_tasks as steps


@pytest.fixture
def hook(monkeypatch, request) -> CXoneHook:
    monkeypatch.setenv("CXONE_RATE_BUDGET_URL", f"memory://{request.node.name}")
    monkeypatch.setenv("CXONE_LIST_WAIT_S", "7")
    monkeypatch.setenv("AIRFLOW_CONN_CXONE_DEFAULT", json.dumps(
        {"conn_type": "cxone", "login": "client", "password": "secret", "extra": {"host": "http://127.0.0.1:9"}}
    ))
    return CXoneHook(steps.CXONE_CONN_ID)


def run(run_id: str) -> dict:
    return {"run_id": run_id}


def test_a_second_run_for_a_held_list_is_rescheduled(hook) -> None:
    with steps.contact_list_lease(hook, "list-a", run("run-1")):
        with pytest.raises(AirflowRescheduleException) as waiting:
            with steps.contact_list_lease(hook, "list-a", run("run-2")):
                pytest.fail("two runs sent to one list at once")
        with steps.contact_list_lease(hook, "list-a", run("run-1")):
            pass  # another import task of the same run
        with steps.contact_list_lease(hook, "list-b", run("run-2")):
            pass  # another list goes on

    assert waiting.value.reschedule_date is not None


def test_the_report_task_frees_the_list(hook) -> None:
    with steps.contact_list_lease(hook, "list-a", run("run-1")):
        pass
    with pytest.raises(AirflowRescheduleException):
        with steps.contact_list_lease(hook, "list-a", run("run-2")):
            pass  # still held between the run's import tasks

    steps.release_contact_list({"contact_list_id": "list-a"}, run("run-1"))

    with steps.contact_list_lease(hook, "list-a", run("run-2")):
        pass
