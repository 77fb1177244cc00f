"""One run per contact list at a time, runs for other lists side by side: the lease the import tasks take in the
tenant's budget store (memory store here; the SQLite and Redis stores run the same lease tests in
test_ratelimit.py)."""

from __future__ import annotations

import json

import pytest

from airflow.sdk.exceptions import AirflowRescheduleException
from cxone_provider.hooks.cxone import CXoneHook
from include.cxone_import import airflow_tasks as steps
from include.cxone_import.state import list_key
from include.cxone_import.storage import write_json


HOST = "http://127.0.0.1:9"
LIST_A = list_key("list-a", base_url=HOST, client_id="client")
LIST_B = list_key("list-b", base_url=HOST, client_id="client")


@pytest.fixture
def hook(monkeypatch, request, storage_base) -> CXoneHook:
    monkeypatch.setenv("CXONE_RATE_BUDGET_URL", f"memory://{request.node.name}")
    monkeypatch.setenv("CXONE_LIST_WAIT_S", "7")
    monkeypatch.setenv("AIRFLOW_CONN_CXONE_DEFAULT", json.dumps(
        {"conn_type": "cxone", "login": "client", "password": "secret", "extra": {"host": HOST}}
    ))
    return CXoneHook(steps.CXONE_CONN_ID)


def run(run_id: str) -> dict:
    return {"run_id": run_id}


def test_a_second_run_for_a_held_list_is_rescheduled(hook) -> None:
    with steps.contact_list_lease(hook, LIST_A, run("run-1")):
        with pytest.raises(AirflowRescheduleException) as waiting:
            with steps.contact_list_lease(hook, LIST_A, run("run-2")):
                pytest.fail("two runs sent to one list at once")
        with steps.contact_list_lease(hook, LIST_A, run("run-1")):
            pass  # another import task of the same run
        with steps.contact_list_lease(hook, LIST_B, run("run-2")):
            pass  # another list goes on
        other_tenant = list_key("list-a", base_url="http://127.0.0.1:10", client_id="client")
        with steps.contact_list_lease(hook, other_tenant, run("run-2")):
            pass  # the same list id on another tenant is another list

    assert waiting.value.reschedule_date is not None


def test_a_calling_list_named_by_id_or_by_name_is_one_lease(hook) -> None:
    """chunk resolves the name to the list's id: the key (tenant + resolved id) is the same either way."""
    by_name = list_key("4711", tenant_id="tenant-1")  # the run named "outbound-q4", resolved to listId 4711
    by_id = list_key("4711", tenant_id="tenant-1")
    with steps.contact_list_lease(hook, by_name, run("run-1")):
        with pytest.raises(AirflowRescheduleException):
            with steps.contact_list_lease(hook, by_id, run("run-2")):
                pass


def test_the_report_task_frees_the_list(hook) -> None:
    steps.run_layout(run("run-1")).root.mkdir(parents=True, exist_ok=True)
    write_json(steps.run_layout(run("run-1")).root / steps.LIST_KEY_FILE, LIST_A.to_dict())  # chunk resolved it
    with steps.contact_list_lease(hook, LIST_A, run("run-1")):
        pass
    with pytest.raises(AirflowRescheduleException):
        with steps.contact_list_lease(hook, LIST_A, run("run-2")):
            pass  # still held between the run's import tasks

    steps.release_contact_list({"contact_list_id": "list-a"}, run("run-1"))

    with steps.contact_list_lease(hook, LIST_A, run("run-2")):
        pass
