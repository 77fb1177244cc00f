"""One run per contact list at a time, runs for other lists side by side: the lease the import tasks take in the
tenant's budget store (memory store here; the SQLite and Redis stores run the same lease tests in
test_ratelimit.py)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from airflow.sdk.exceptions import AirflowRescheduleException
from cxone_provider.errors import ListLeaseLostError
from cxone_provider.hooks.cxone import CXoneHook
from include.cxone_dag.settings import CXONE_CONN_ID
from include.cxone_import import list_lease
from include.cxone_import.state import list_key
from include.cxone_import.task_config import run_layout
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
    return CXoneHook(CXONE_CONN_ID)


def run(run_id: str) -> dict:
    return {"run_id": run_id}


def test_a_second_run_for_a_held_list_is_rescheduled(hook) -> None:
    with list_lease.contact_list_lease(hook, LIST_A, run("run-1")):
        with pytest.raises(AirflowRescheduleException) as waiting:
            with list_lease.contact_list_lease(hook, LIST_A, run("run-2")):
                pytest.fail("two runs sent to one list at once")
        with list_lease.contact_list_lease(hook, LIST_A, run("run-1")):
            pass  # another import task of the same run
        with list_lease.contact_list_lease(hook, LIST_B, run("run-2")):
            pass  # another list goes on
        other_tenant = list_key("list-a", base_url="http://127.0.0.1:10", client_id="client")
        with list_lease.contact_list_lease(hook, other_tenant, run("run-2")):
            pass  # the same list id on another tenant is another list

    assert waiting.value.reschedule_date is not None


def test_a_calling_list_named_by_id_or_by_name_is_one_lease(hook) -> None:
    """chunk resolves the name to the list's id: the key (tenant + resolved id) is the same either way."""
    by_name = list_key("4711", tenant_id="tenant-1")  # the run named "outbound-q4", resolved to listId 4711
    by_id = list_key("4711", tenant_id="tenant-1")
    with list_lease.contact_list_lease(hook, by_name, run("run-1")):
        with pytest.raises(AirflowRescheduleException):
            with list_lease.contact_list_lease(hook, by_id, run("run-2")):
                pass


def test_the_report_task_frees_the_list(hook) -> None:
    run_layout(run("run-1")).root.mkdir(parents=True, exist_ok=True)
    write_json(run_layout(run("run-1")).list_key, LIST_A.to_dict())  # chunk resolved it
    with list_lease.contact_list_lease(hook, LIST_A, run("run-1")):
        pass
    with pytest.raises(AirflowRescheduleException):
        with list_lease.contact_list_lease(hook, LIST_A, run("run-2")):
            pass  # still held between the run's import tasks

    list_lease.release_contact_list({"contact_list_id": "list-a"}, run("run-1"))

    with list_lease.contact_list_lease(hook, LIST_A, run("run-2")):
        pass


def test_the_list_stays_the_runs_between_chunk_and_its_imports(hook, monkeypatch) -> None:
    """Queued for a pool slot longer than the lease's lifetime: chunk's lease is kept for the hand-over, so another
    run cannot take the list, and the imports go on with chunk's fencing token."""
    monkeypatch.setattr(list_lease, "LIST_LEASE_TTL_S", 0.5)
    with list_lease.contact_list_lease(hook, LIST_A, run("run-1"), first=True) as chunk_lease:
        pass
    time.sleep(1.0)  # twice the lease's lifetime, nothing of run-1 running

    with pytest.raises(AirflowRescheduleException):
        with list_lease.contact_list_lease(hook, LIST_A, run("run-2")):
            pytest.fail("another run took the list while run-1's imports were queued")
    with list_lease.contact_list_lease(hook, LIST_A, run("run-1")) as import_lease:
        import_lease.check()
    assert import_lease.token == chunk_lease.token


def test_an_import_that_finds_another_runs_tenure_since_chunk_fails(hook, monkeypatch) -> None:
    monkeypatch.setenv("CXONE_LIST_HANDOVER_S", "0.2")
    with list_lease.contact_list_lease(hook, LIST_A, run("run-1"), first=True):
        pass
    time.sleep(0.4)
    with list_lease.contact_list_lease(hook, LIST_A, run("run-2"), first=True):
        pass  # run-2 took the list after run-1's hand-over lapsed, and gave it back
    assert hook.release_list_lease(LIST_A.lease_name, list_lease.lease_owner(run("run-2")))

    with pytest.raises(ListLeaseLostError, match="another run held the list"):
        with list_lease.contact_list_lease(hook, LIST_A, run("run-1")):
            pytest.fail("run-1 sent on a comparison another run has made stale")


@pytest.mark.timeout(300)
def test_a_run_that_lost_its_list_stops_sending_and_fails_naming_why(run_import, cxone_sandbox, tmp_path,
                                                                      monkeypatch) -> None:
    """A budget-store outage longer than the lease, then another run takes the list: run A sends nothing more,
    checkpoints what CXone answered, and its import fails once (no retry) with the reason in the report."""
    from tests.conftest import CONTACT_LIST_ID
    from tools.sample_data import generate_crm_export

    store_path = tmp_path / "budget.sqlite"
    monkeypatch.setenv("CXONE_RATE_BUDGET_URL", f"sqlite:///{store_path}")
    monkeypatch.setattr(list_lease, "LIST_LEASE_TTL_S", 2.0)
    monkeypatch.setattr(list_lease, "LIST_LEASE_RENEW_S", 0.3)
    cxone_sandbox.configure(latency_ms=150)
    export = generate_crm_export(tmp_path / "contacts.csv", 400, bad_share=0.0, seed=3)
    key = list_key(CONTACT_LIST_ID, base_url=cxone_sandbox.url, client_id="sandbox-client")
    seen: dict[str, int] = {}

    def outage_then_takeover() -> None:
        while cxone_sandbox.stats()["records_requests"] < 5:
            time.sleep(0.02)
        db = sqlite3.connect(store_path, timeout=60, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")  # the store answers nobody: renewals and rate slots wait
        seen["at_outage"] = cxone_sandbox.stats()["records_requests"]
        time.sleep(3.0)  # longer than the lease's 2 s
        db.execute("COMMIT")
        db.close()
        taken = CXoneHook(CXONE_CONN_ID).list_lease(key.lease_name, "run-b", 600, label="b").take()
        seen["b_token"] = taken.token if taken.holder == "run-b" else -1
        time.sleep(2.0)
        seen["after"] = cxone_sandbox.stats()["records_requests"]

    other = threading.Thread(target=outage_then_takeover, daemon=True)
    other.start()
    result = run_import({"source_uri": f"file://{export.path}", "batch_size": 10}, max_concurrency=1)
    other.join(timeout=30)

    assert seen["b_token"] > 0, "run B took the list"
    assert seen["after"] <= seen["at_outage"] + 1, "at most the request in flight when the store went away"
    assert cxone_sandbox.stats()["records_requests"] <= seen["at_outage"] + 1
    assert result.state == "failed"
    report = result.report
    assert report["not_sent_reason"] == "list_lease_lost"
    assert report["failure"]["rule"] == "list_lease_lost"
    assert "lost the lease on list list-e2e" in report["failure"]["message"]
    assert report["totals"]["not_sent"] > 0 and report["dead_letters"] == 0
    assert report["totals"]["imported"] == len(list((result.root / "checkpoints").glob("*.json"))) * 10
    failure = json.loads(result.file("failures/import_batches-00000.json").read_text())
    assert failure["try_number"] == 1
