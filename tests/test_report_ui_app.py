"""The report tab's and history page's app (plugins/cxone_report_ui) through FastAPI's TestClient, mounted under
/cxone as the api-server mounts it, with Airflow's real SimpleAuthManager deciding access (JWTs it signs, in a
header or the UI's ``_token`` cookie). Only the DAG runs come from a catalog the test fills instead of the DB.
Also the report's chart aggregates (include/cxone_import/report.py ``throughput``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cxone_report_plugin import CXoneReportPlugin
from cxone_report_ui import app as report_app
from cxone_runs.layout import RunLayout
from include.cxone_import.report import LATENCY_BUCKET_BOUNDS_MS, throughput

ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "cxone_contact_import"
OTHER_DAG_ID = "cxone_contact_import_eu"
RUN_ID = "manual__2026-11-30T02:00:00+00:00"
USERS = {"admin": "admin", "viewer": "viewer", "operator": "user", "outsider": ""}  # name: SimpleAuthManager role
PAGE_BUDGET_S = 1.0
BIG_RUN_BATCHES = 20_000  # a 2M-record run in batches of 100
T0 = datetime(2026, 11, 30, 2, 0, 5, tzinfo=UTC)


def batch_metrics(count: int, *, latency_ms: float = 180.0, spacing_s: float = 0.06) -> list[dict[str, Any]]:
    return [
        {
            "batch_id": f"b{i}", "batch_index": i, "records": 100, "latency_ms": latency_ms + i % 400,
            "attempts": 1 + (i % 50 == 0), "requests": 1, "rate_limited": int(i % 50 == 0),
            "started_at": (T0 + timedelta(seconds=i * spacing_s)).isoformat(),
            "finished_at": (T0 + timedelta(seconds=i * spacing_s + 0.2)).isoformat(),
        }
        for i in range(count)
    ]  # fmt: skip


def make_report(run_id: str, *, contact_list_id: str = "list-a", batches: int = 12, failed: int = 2) -> dict[str, Any]:
    metrics = batch_metrics(batches)
    imported = batches * 100 - failed - 7
    rejected = 9
    total = imported + 7 + failed + rejected
    return {
        "run": {"dag_id": DAG_ID, "run_id": run_id, "contact_list_id": contact_list_id, "dry_run": False},
        "generated_at": "2026-11-30T02:03:00+00:00",
        "source_uri": "file:///data/incoming/contacts_2026-11-30.csv",
        "totals": {
            "input": total, "rejected": rejected, "valid": total - rejected, "imported": imported, "duplicates": 7,
            "failed": failed, "not_sent": 0, "confirmed_on_retry": 1,
            "success_rate_percent": round(100 * (imported + 7) / total, 2), "batches": batches, "batches_resumed": 0,
            "requests": batches, "attempts": batches + 1, "rate_limited": 1,
            "average_batch_latency_ms": 200.0, "p95_batch_latency_ms": 380.0,
        },  # fmt: skip
        "reject_share": round(rejected / total, 4),
        "rejects_by_rule": {"phone_e164": 5, "consent_max_age": 3, "contact_id_unique": 2},
        "reconciliation": {"ok": True, "detail": f"all {total} input records accounted for exactly once"},
        "webhook": {"events": batches + 1, "delivered": batches, "failed": 1, "attempts": batches + 4,
                    "errors": ["HTTP 503"]},
        "throughput": throughput([{"batch_metrics": metrics}], 1000.0),
        "dead_letters": failed,
        "status": "failed" if failed else "success",
        "problems": [f"{failed} records failed to import"] if failed else [],
    }


class FakeCatalog:
    """DAG runs as the metadata DB would list them."""

    def __init__(self) -> None:
        self.runs: list[Any] = []

    def add(self, dag_id: str, run_id: str, *, state: str = "success", run_type: str = "scheduled",
            date: datetime | None = None, minutes: int = 3) -> Any:
        date = date or T0
        run = report_app.RunRecord(dag_id, run_id, run_type, state, date, date, date + timedelta(minutes=minutes)
                        if state not in ("running", "queued") else None)
        self.runs.append(run)
        return run

    def run(self, dag_id: str, run_id: str) -> Any:
        return next((r for r in self.runs if (r.dag_id, r.run_id) == (dag_id, run_id)), None)

    def recent(self, dag_ids: set[str], limit: int) -> list[Any]:
        return sorted((r for r in self.runs if r.dag_id in dag_ids), key=lambda r: r.date, reverse=True)[:limit]



def write_run(base: Path, dag_id: str, run_id: str, report: dict[str, Any] | None) -> RunLayout:
    layout = RunLayout.for_run(base, dag_id, run_id)
    layout.root.mkdir(parents=True, exist_ok=True)
    if report is not None:
        layout.report.write_text(json.dumps(report))
    layout.rejects_csv.write_text("row_number,contact_id,column,rule,message,value_masked\n3,c-3,mobile_phone,phone_e164,x,+44*******12\n")
    layout.dead_letter.write_text('{"contactId":"c-9","phoneNumbers":[{"type":"mobile","number":"+447700900123"}]}\n')
    return layout


@pytest.fixture
def auth_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Airflow's SimpleAuthManager with an admin, a viewer (reads DAG runs), a user (edits them) and a user without
    a role, as the api-server initialises it."""
    from airflow.api_fastapi import app as api_app

    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER",
                       "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", ",".join(f"{u}:{r}" for u, r in USERS.items()))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(tmp_path / "passwords.json"))
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "test-report-ui-" + "s" * 64)
    monkeypatch.setattr(api_app._AuthManagerState, "instance", None)
    return api_app.init_auth_manager()


@pytest.fixture
def tokens(auth_manager: Any) -> dict[str, str]:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return {name: auth_manager.generate_jwt(SimpleAuthManagerUser(username=name, role=role or None))
            for name, role in USERS.items()}


@pytest.fixture
def catalog() -> FakeCatalog:
    return FakeCatalog()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
def client(auth_manager: Any, catalog: FakeCatalog, base: Path) -> Any:
    """The plugin's app mounted under its url_prefix in a parent app, as Airflow's ``init_plugins`` mounts it."""
    plugin_app = CXoneReportPlugin.fastapi_apps[0]
    parent = FastAPI()
    parent.mount(plugin_app["url_prefix"], plugin_app["app"])
    report_app.app.dependency_overrides[report_app.run_catalog] = lambda: catalog
    report_app.app.dependency_overrides[report_app.storage_base] = lambda: base
    report_app.reports.clear()
    try:
        with TestClient(parent) as test_client:
            yield test_client
    finally:
        report_app.app.dependency_overrides.clear()
        report_app.reports.clear()


def as_user(tokens: dict[str, str], name: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[name]}"} if name else {}


def metrics(html: str) -> dict[str, str]:
    """What the page shows for each ``data-metric``."""
    return {k: unescape(re.sub(r"<[^>]+>", "", v)).strip()
            for k, v in re.findall(r'data-metric="([^"]+)"[^>]*>(.*?)</', html, flags=re.S)}


def shown_int(text: str) -> int:
    return int(text.replace(",", ""))


PAGES = [
    pytest.param(f"/cxone/dags/{DAG_ID}/report", id="report-tab"),
    pytest.param(f"/cxone/dags/{DAG_ID}/report.json", id="report-json"),
    pytest.param(f"/cxone/dags/{DAG_ID}/rejects.csv", id="rejects"),
    pytest.param(f"/cxone/dags/{DAG_ID}/dead_letter.jsonl", id="dead-letters"),
    pytest.param("/cxone/imports", id="history"),
]


@pytest.fixture
def finished_run(catalog: FakeCatalog, base: Path) -> dict[str, Any]:
    catalog.add(DAG_ID, RUN_ID)
    report = make_report(RUN_ID)
    write_run(base, DAG_ID, RUN_ID, report)
    return report


def test_the_app_imports_no_task_code(tmp_path: Path) -> None:
    """The api-server's app needs nothing of include/: with only plugins/ on the path (as the plugin scan and the
    image put it), importing it loads no module of include/."""
    code = ("import sys, cxone_report_ui.app; "
            "print(sorted(m for m in sys.modules if m == 'include' or m.startswith('include.')))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


# -- access ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_is_refused_401(client: Any, finished_run: dict, path: str) -> None:
    response = client.get(path, params={"run_id": RUN_ID})
    assert response.status_code == 401
    assert finished_run["source_uri"] not in response.text


@pytest.mark.parametrize("path", PAGES)
def test_user_without_a_role_is_refused_403(client: Any, tokens: dict, finished_run: dict, path: str) -> None:
    response = client.get(path, params={"run_id": RUN_ID}, headers=as_user(tokens, "outsider"))
    assert response.status_code == 403


def test_forged_token_is_refused(client: Any, finished_run: dict) -> None:
    response = client.get(f"/cxone/dags/{DAG_ID}/report", params={"run_id": RUN_ID},
                          headers={"Authorization": "Bearer not.a.jwt"})
    assert response.status_code in (401, 403)


def test_refusal_is_a_page_in_the_ui_iframe(client: Any, finished_run: dict) -> None:
    response = client.get(f"/cxone/dags/{DAG_ID}/report", params={"run_id": RUN_ID}, headers={"Accept": "text/html"})
    assert response.status_code == 401
    assert "text/html" in response.headers["content-type"]
    assert "sign in" in response.text


@pytest.mark.parametrize(
    "user, page, rejects, dead_letters",
    [("viewer", 200, 200, 403), ("operator", 200, 200, 200), ("admin", 200, 200, 200)],
    ids=["viewer-reads-only", "user-edits-runs", "admin"],
)
def test_dead_letters_need_the_permission_to_edit_runs(
    client: Any, tokens: dict, finished_run: dict, user: str, page: int, rejects: int, dead_letters: int
) -> None:
    headers, params = as_user(tokens, user), {"run_id": RUN_ID}
    report_page = client.get(f"/cxone/dags/{DAG_ID}/report", params=params, headers=headers)
    assert report_page.status_code == page
    assert ('href="dead_letter.jsonl?run_id=' in report_page.text) is (dead_letters == 200)
    response = client.get(f"/cxone/dags/{DAG_ID}/rejects.csv", params=params, headers=headers)
    assert response.status_code == rejects
    assert response.text.startswith("row_number,contact_id,column,rule")
    assert response.headers["content-disposition"].endswith('-rejects.csv"')
    response = client.get(f"/cxone/dags/{DAG_ID}/dead_letter.jsonl", params=params, headers=headers)
    assert response.status_code == dead_letters
    assert ("+447700900123" in response.text) is (dead_letters == 200)


def test_the_ui_cookie_signs_the_user_in(client: Any, tokens: dict, finished_run: dict) -> None:
    """The UI shows the pages in a same-origin iframe: the browser sends the ``_token`` cookie, no header."""
    client.cookies.set("_token", tokens["viewer"])
    response = client.get(f"/cxone/dags/{DAG_ID}/report", params={"run_id": RUN_ID})
    assert response.status_code == 200


# -- the report tab --------------------------------------------------------------------------------------------------


def test_report_tab_shows_the_numbers_of_report_json(client: Any, tokens: dict, finished_run: dict) -> None:
    response = client.get(f"/cxone/dags/{DAG_ID}/report", params={"run_id": RUN_ID}, headers=as_user(tokens, "viewer"))
    assert response.status_code == 200
    shown, totals = metrics(response.text), finished_run["totals"]
    for key in ("input", "imported", "duplicates", "failed", "rejected", "batches", "requests", "rate_limited"):
        assert shown_int(shown[key]) == totals[key], key
    assert shown["success_rate_percent"] == f"{totals['success_rate_percent']:.2f}%"
    assert shown["status"] == "failed" and shown["contact_list_id"] == "list-a"
    assert shown["reconciliation"] == "OK"
    assert shown_int(shown["webhook_delivered"]) == finished_run["webhook"]["delivered"]
    assert shown_int(shown["webhook_events"]) == finished_run["webhook"]["events"]
    assert float(shown["latency_p95"]) == finished_run["throughput"]["batch_latency"]["p95_ms"]
    rate = finished_run["throughput"]["request_rate"]
    assert shown_int(shown["peak_requests_per_minute"]) == rate["peak_requests_per_minute"]
    assert shown["duration"] == "3m 00s"
    # charts: one bar per outcome and per rule with the report's value, latency buckets, the budget line
    for rule, count in finished_run["rejects_by_rule"].items():
        assert f'data-name="{rule}" data-value="{count}"' in response.text
    assert f'data-name="Imported" data-value="{totals["imported"]}"' in response.text
    assert 'data-name="Unchanged"' not in response.text  # no change detection in this report
    assert response.text.count('<rect x=') >= len(LATENCY_BUCKET_BOUNDS_MS)
    assert 'data-reference="1000"' in response.text
    assert "<script src" not in response.text and "http://" not in response.text.replace("http://www.w3.org", "")


def test_report_json_is_the_stored_report(client: Any, tokens: dict, finished_run: dict) -> None:
    response = client.get(f"/cxone/dags/{DAG_ID}/report.json", params={"run_id": RUN_ID}, headers=as_user(tokens, "viewer"))
    assert response.json() == finished_run


def test_unchanged_outcome_is_shown_when_reported(client: Any, tokens: dict, catalog: FakeCatalog, base: Path) -> None:
    report = make_report(RUN_ID)
    report["totals"]["unchanged"] = 42
    catalog.add(DAG_ID, RUN_ID)
    write_run(base, DAG_ID, RUN_ID, report)
    response = client.get(f"/cxone/dags/{DAG_ID}/report", params={"run_id": RUN_ID}, headers=as_user(tokens, "viewer"))
    assert shown_int(metrics(response.text)["unchanged"]) == 42
    assert 'data-name="Unchanged" data-value="42"' in response.text


@pytest.mark.parametrize(
    ("dry_run", "held", "label"),
    [pytest.param(True, False, "Not sent (dry run)", id="dry-run"),
     pytest.param(False, True, "Not sent (held: too many rejects)", id="reject-gate")],
)
def test_rows_not_sent_are_named_by_why(client: Any, tokens: dict, catalog: FakeCatalog, base: Path,
                                        dry_run: bool, held: bool, label: str) -> None:
    report = make_report(RUN_ID, failed=0)
    report["totals"]["not_sent"], report["held_by_reject_gate"] = 40, held
    report["not_sent_reason"] = "dry_run" if dry_run else "reject_gate"
    catalog.add(DAG_ID, RUN_ID)
    write_run(base, DAG_ID, RUN_ID, report)
    response = client.get(f"/cxone/dags/{DAG_ID}/report", params={"run_id": RUN_ID}, headers=as_user(tokens, "viewer"))
    assert f'data-name="{label}" data-value="40"' in response.text


def test_the_tab_says_which_list_state_the_run_compared_against(client: Any, tokens: dict, catalog: FakeCatalog,
                                                                 base: Path) -> None:
    report = make_report(RUN_ID, failed=0)
    report["changes"] = {"mode": "compare", "unchanged": 2900, "unconfirmed": 60, "listed": 4, "state_contacts": 3010,
                         "state": {"tenant": "api.example.test, client id c-1", "list_id": "list-a", "path": "s3://x"}}
    report["notices"] = ["60 records were not sent again: CXone answered duplicate for this very content"]
    catalog.add(DAG_ID, RUN_ID)
    write_run(base, DAG_ID, RUN_ID, report)
    response = client.get(f"/cxone/dags/{DAG_ID}/report", params={"run_id": RUN_ID}, headers=as_user(tokens, "viewer"))
    shown = metrics(response.text)
    assert (shown["state_list"], shown["state_tenant"]) == ("list-a", "api.example.test, client id c-1")
    assert (shown_int(shown["state_unchanged"]), shown_int(shown["state_unconfirmed"])) == (2900, 60)
    assert "60 records were not sent again" in shown["notices"]


def with_sync(report: dict[str, Any], *, updated: int = 60, removed: int = 30, not_on_list: int = 2, held: int = 12,
              stale: int = 4) -> dict[str, Any]:
    """A report of a mirror run: its updates and removals (consent withdrawn 20 + 2 not on the list, expired 10,
    mirror 12 held)."""
    report["totals"].update(updated=updated, stale=stale, removed=removed, not_on_list=not_on_list,
                            removal_held=held, removal_failed=0)
    report["sync"] = {
        "mode": "mirror", "dry_run": False,
        "plan": {"mode": "mirror", "creates": 900, "updates": updated, "stale": {"updates": stale, "removals": 0},
                 "removals": {"consent_withdrawn": 22, "consent_expired": 10, "mirror_absent": held},
                 "rejected_on_list": 7, "state_records": 3000, "mirror_share": 0.004, "samples": {}},
        "removals": {"removed": removed, "not_on_list": not_on_list, "removal_held": held},
        "removals_by_reason": {"consent_withdrawn:removed": 20, "consent_withdrawn:not_on_list": 2,
                               "consent_expired:removed": 10, "mirror_absent:removal_held": held},
    }
    return report


def test_the_tab_shows_what_the_sync_did(client: Any, tokens: dict, catalog: FakeCatalog, base: Path) -> None:
    report = with_sync(make_report(RUN_ID, failed=0))
    catalog.add(DAG_ID, RUN_ID)
    write_run(base, DAG_ID, RUN_ID, report)
    response = client.get(f"/cxone/dags/{DAG_ID}/report", params={"run_id": RUN_ID}, headers=as_user(tokens, "viewer"))
    shown = metrics(response.text)
    assert shown["sync_mode"] == "mirror"
    assert {k: shown_int(shown[k]) for k in ("updated", "stale", "removed", "not_on_list", "removal_held",
                                             "removal_failed", "rejected_on_list")} == {
        "updated": 60, "stale": 4, "removed": 30, "not_on_list": 2, "removal_held": 12, "removal_failed": 0,
        "rejected_on_list": 7}
    table = re.search(r'<table data-table="removals">.*?</table>', response.text, flags=re.S).group(0)
    cells = {(reason, col): shown_int(value) for reason, row in re.findall(r'<tr data-reason="([^"]+)">(.*?)</tr>', table)
             for col, value in re.findall(r'data-col="([^"]+)">([^<]+)<', row)}
    assert cells[("consent_withdrawn", "planned")] == 22
    assert (cells[("consent_withdrawn", "removed")], cells[("consent_withdrawn", "not_on_list")]) == (20, 2)
    assert cells[("consent_expired", "removed")] == 10 and cells[("mirror_absent", "removal_held")] == 12
    assert cells[("mirror_absent", "removed")] == 0
    assert 'data-name="Updated" data-value="60"' in response.text  # an input row's outcome, in the outcome chart
    assert 'data-name="Stale (newer day on the list)" data-value="4"' in response.text
    assert "dnc_added" not in shown, "no DNC tiles without a DNC group"


def test_the_tab_shows_the_dnc_entries_of_withdrawn_consent(client: Any, tokens: dict, catalog: FakeCatalog,
                                                          base: Path) -> None:
    report = with_sync(make_report(RUN_ID, failed=0))
    report["sync"]["dnc"] = {"dnc_added": 14, "dnc_failed": 2}
    catalog.add(DAG_ID, RUN_ID)
    write_run(base, DAG_ID, RUN_ID, report)
    response = client.get(f"/cxone/dags/{DAG_ID}/report", params={"run_id": RUN_ID}, headers=as_user(tokens, "viewer"))
    shown = metrics(response.text)
    assert (shown_int(shown["dnc_added"]), shown_int(shown["dnc_failed"])) == (14, 2)


def test_a_run_without_sync_has_no_sync_section(client: Any, tokens: dict, finished_run: dict) -> None:
    response = client.get(f"/cxone/dags/{DAG_ID}/report", params={"run_id": RUN_ID}, headers=as_user(tokens, "viewer"))
    assert 'data-section="sync"' not in response.text and 'data-name="Updated"' not in response.text


@pytest.mark.parametrize("state, text", [("running", "still going"), ("failed", "ended before its report task")],
                         ids=["running", "failed-early"])
def test_run_without_a_report(client: Any, tokens: dict, catalog: FakeCatalog, base: Path, state: str, text: str) -> None:
    catalog.add(DAG_ID, RUN_ID, state=state)
    write_run(base, DAG_ID, RUN_ID, None)
    response = client.get(f"/cxone/dags/{DAG_ID}/report", params={"run_id": RUN_ID}, headers=as_user(tokens, "viewer"))
    assert response.status_code == 200
    assert text in metrics(response.text)["no-report"]
    assert ('http-equiv="refresh"' in response.text) is (state == "running")


def test_unknown_run_is_404(client: Any, tokens: dict, finished_run: dict) -> None:
    for run_id in ("manual__nope", "..", "../../etc"):
        response = client.get(f"/cxone/dags/{DAG_ID}/report", params={"run_id": run_id}, headers=as_user(tokens, "admin"))
        assert response.status_code == 404, run_id


def test_a_finished_runs_report_is_read_once(client: Any, tokens: dict, finished_run: dict, base: Path) -> None:
    headers, params = as_user(tokens, "viewer"), {"run_id": RUN_ID}
    assert client.get(f"/cxone/dags/{DAG_ID}/report", params=params, headers=headers).status_code == 200
    RunLayout.for_run(base, DAG_ID, RUN_ID).report.unlink()
    again = client.get(f"/cxone/dags/{DAG_ID}/report", params=params, headers=headers)
    assert shown_int(metrics(again.text)["input"]) == finished_run["totals"]["input"]


def test_report_tab_of_a_2m_record_run_renders_in_under_a_second(
    client: Any, tokens: dict, catalog: FakeCatalog, base: Path
) -> None:
    report = make_report(RUN_ID, batches=BIG_RUN_BATCHES)
    catalog.add(DAG_ID, RUN_ID, minutes=25)
    write_run(base, DAG_ID, RUN_ID, report)
    assert len(json.dumps(report)) < 20_000  # the aggregates stay compact whatever the run's size
    headers, params = as_user(tokens, "viewer"), {"run_id": RUN_ID}
    assert client.get("/cxone/imports", headers=headers).status_code == 200  # the process's first request warms up
    elapsed = []
    for _ in range(3):  # best of three, the report read from storage each time: the machine is shared
        report_app.reports.clear()
        started = time.perf_counter()
        response = client.get(f"/cxone/dags/{DAG_ID}/report", params=params, headers=headers)
        elapsed.append(time.perf_counter() - started)
        assert response.status_code == 200 and shown_int(metrics(response.text)["batches"]) == BIG_RUN_BATCHES
    assert min(elapsed) < PAGE_BUDGET_S, f"{min(elapsed):.2f}s"


# -- the history page ------------------------------------------------------------------------------------------------


@pytest.fixture
def nightly_runs(catalog: FakeCatalog, base: Path) -> list[str]:
    run_ids = []
    for day in range(35):
        run_id = f"scheduled__2026-10-{day + 1:02d}" if day < 31 else f"scheduled__2026-11-{day - 30:02d}"
        date = T0 - timedelta(days=35 - day)
        catalog.add(DAG_ID if day % 5 else OTHER_DAG_ID, run_id, date=date)
        write_run(base, DAG_ID if day % 5 else OTHER_DAG_ID, run_id,
                  make_report(run_id, contact_list_id="list-b" if day % 3 == 0 else "list-a", failed=day % 2))
        run_ids.append(run_id)
    catalog.add(DAG_ID, "manual__no-report", state="failed", run_type="manual")
    write_run(base, DAG_ID, "manual__no-report", None)
    catalog.add("some_other_dag", "scheduled__x")  # no import runs in storage: not listed
    return run_ids


def test_history_lists_every_import_run(client: Any, tokens: dict, nightly_runs: list[str]) -> None:
    assert client.get(f"/cxone/dags/{DAG_ID}/report", params={"run_id": nightly_runs[1]},
                      headers=as_user(tokens, "viewer")).status_code == 200  # the process's first request warms up
    report_app.reports.clear()
    started = time.perf_counter()
    response = client.get("/cxone/imports", headers=as_user(tokens, "viewer"))  # reads all 35 reports
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    listed = re.findall(r'<tr data-run-id="([^"]+)" data-dag-id="([^"]+)"', response.text)
    assert {r for r, _ in listed} == {*nightly_runs, "manual__no-report"}
    assert {d for _, d in listed} == {DAG_ID, OTHER_DAG_ID}
    assert listed[0][0] == "manual__no-report"  # newest first
    assert response.text.count("<circle") == 30  # the trend: last 30 nightly runs
    assert f'href="/cxone/dags/{DAG_ID}/report?run_id=' in response.text
    assert f'data-ui-href="/dags/{DAG_ID}/runs/' in response.text
    assert elapsed < PAGE_BUDGET_S, f"{elapsed:.2f}s"


def test_history_filters_by_contact_list(client: Any, tokens: dict, nightly_runs: list[str]) -> None:
    response = client.get("/cxone/imports", params={"list": "list-b"}, headers=as_user(tokens, "viewer"))
    lists = re.findall(r'<td data-col="list">([^<]+)</td>', response.text)
    assert lists and set(lists) == {"list-b"}
    assert len(lists) == sum(1 for day in range(35) if day % 3 == 0)
    assert '<option value="list-a">' in response.text and '<option value="list-b" selected>' in response.text


def test_history_row_numbers_come_from_the_report(client: Any, tokens: dict, nightly_runs: list[str], base: Path) -> None:
    response = client.get("/cxone/imports", headers=as_user(tokens, "viewer"))
    run_id = nightly_runs[-1]
    row = re.search(rf'<tr data-run-id="{re.escape(run_id)}".*?</tr>', response.text, flags=re.S).group(0)
    report = json.loads(RunLayout.for_run(base, DAG_ID, run_id).report.read_text())
    for column in ("input", "imported", "rejected"):
        cell = re.search(rf'data-col="{column}">([^<]+)<', row).group(1)
        assert shown_int(cell) == report["totals"][column]
    assert f'{report["totals"]["success_rate_percent"]:.2f}%' in row


def test_history_charts_what_each_run_created_updated_and_removed(client: Any, tokens: dict, catalog: FakeCatalog,
                                                                   base: Path) -> None:
    runs = {f"scheduled__2026-11-{day:02d}": day for day in (1, 2, 3)}
    for run_id, day in runs.items():
        catalog.add(DAG_ID, run_id, date=T0 + timedelta(days=day))
        report = make_report(run_id, failed=0)
        write_run(base, DAG_ID, run_id, with_sync(report, updated=10 * day, removed=day) if day > 1 else report)
    response = client.get("/cxone/imports", headers=as_user(tokens, "viewer"))
    chart = re.search(r'<svg[^>]*data-chart="list-changes".*?</svg>', response.text, flags=re.S).group(0)
    bars = {(run_id, series): int(value) for run_id, group in re.findall(r'<g data-run-id="([^"]+)">(.*?)</g>', chart)
            for series, value in re.findall(r'data-series="([^"]+)" data-value="(\d+)"', group)}
    imported = make_report("x", failed=0)["totals"]["imported"]
    assert bars == {(run_id, series): {"imported": imported, "updated": 10 * day if day > 1 else 0,
                                       "removed": day if day > 1 else 0}[series]
                    for run_id, day in runs.items() for series in ("imported", "updated", "removed")}
    row = re.search(r'<tr data-run-id="scheduled__2026-11-03".*?</tr>', response.text, flags=re.S).group(0)
    assert (re.search(r'data-col="updated">([^<]+)<', row).group(1), re.search(r'data-col="removed">([^<]+)<', row)
            .group(1)) == ("30", "3")
    row = re.search(r'<tr data-run-id="scheduled__2026-11-01".*?</tr>', response.text, flags=re.S).group(0)
    assert re.search(r'data-col="removed">([^<]+)<', row).group(1) == "–"  # a run without sync


def test_history_lists_only_the_dags_whose_runs_the_user_may_read(
    client: Any, tokens: dict, nightly_runs: list[str], auth_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a DAG is not reading its runs: the history asks what the report tab asks (GET on the DAG's runs)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

    decide = auth_manager.is_authorized_dag

    def runs_of_the_other_dag_refused(*, method: str, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        if details is not None and details.id == OTHER_DAG_ID and access_entity == DagAccessEntity.RUN:
            return False
        return decide(method=method, user=user, access_entity=access_entity, details=details)

    monkeypatch.setattr(auth_manager, "is_authorized_dag", runs_of_the_other_dag_refused)
    response = client.get("/cxone/imports", headers=as_user(tokens, "viewer"))

    listed = re.findall(r'<tr data-run-id="[^"]+" data-dag-id="([^"]+)"', response.text)
    assert listed and set(listed) == {DAG_ID}


@pytest.mark.parametrize("user", ["viewer", None], ids=["answer", "refusal"])
@pytest.mark.parametrize("path", PAGES)
def test_every_page_and_file_carries_the_security_headers(
    client: Any, tokens: dict, finished_run: dict, path: str, user: str | None
) -> None:
    response = client.get(path, params={"run_id": RUN_ID}, headers=as_user(tokens, user))

    assert response.status_code in ((200, 403) if user else (401,))  # the viewer may not fetch the dead letters
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == "frame-ancestors 'self'"


# -- the report's aggregates -----------------------------------------------------------------------------------------


def test_latency_histogram_counts_every_sent_batch() -> None:
    aggregates = throughput([{"batch_metrics": batch_metrics(1000)}, {"batch_metrics": batch_metrics(10, latency_ms=0)}],
                            None)
    latency = aggregates["batch_latency"]
    assert sum(latency["counts"]) == latency["batches"] == 1009  # latency 0: resumed without a request
    assert len(latency["counts"]) == len(latency["upper_bounds_ms"]) + 1
    assert 180 <= latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"] <= 579


def test_request_timeline_spreads_every_attempt_and_finds_the_busiest_minute() -> None:
    metrics_ = batch_metrics(3000, spacing_s=0.05)  # 20 batches/s = 1200 per minute for 150 s
    rate = throughput([{"batch_metrics": metrics_}], 1000.0)["request_rate"]
    assert rate["bucket_seconds"] == 2
    assert sum(rate["attempts"]) == sum(m["attempts"] for m in metrics_)
    assert len(rate["attempts"]) == 76
    assert 1200 <= rate["peak_requests_per_minute"] <= 1300
    assert rate["budget_requests_per_minute"] == 1000.0


def test_the_busiest_60_s_of_a_short_run_holds_all_its_requests() -> None:
    """194 requests in 12 s at a budget of 1,000/min: the busiest 60 s holds 194 (not the busiest second scaled),
    and the first second's burst is reported as such."""
    burst = [0.02 * i for i in range(33)]  # the limiter's catch-up burst: 33 in the first 0.66 s
    steady = [1.0 + i * 11.0 / 161 for i in range(161)]  # then about 14.6 a second
    metrics_ = [{"batch_id": f"b{i}", "batch_index": i, "records": 100, "latency_ms": 50.0, "attempts": 1,
                 "requests": 1, "rate_limited": 0, "started_at": (T0 + timedelta(seconds=t)).isoformat(),
                 "finished_at": (T0 + timedelta(seconds=t + 0.001)).isoformat()} for i, t in enumerate(burst + steady)]

    rate = throughput([{"batch_metrics": metrics_}], 1000.0)["request_rate"]

    assert rate["peak_requests_per_minute"] == 194
    assert rate["first_second_requests"] == 33 and rate["steady_requests_per_second"] == 16.67
    report = make_report(RUN_ID)
    report["throughput"]["request_rate"] = rate
    from cxone_runs.pages import RunLinks, render_run_report

    page = render_run_report(report, dag_id=DAG_ID, run_id=RUN_ID, run_state="success",
                             links=RunLinks("r.json", "rejects.csv", None))
    shown = metrics(page)
    assert shown_int(shown["peak_requests_per_minute"]) == 194 and shown_int(shown["first_second_requests"]) == 33
    assert "start-up burst" in page and "within budget" in page


def test_trend_points_tell_runs_of_one_day_apart() -> None:
    from cxone_runs.pages import trend_labels

    nightly = [T0 + timedelta(days=d) for d in range(3)]
    same_day = [T0, T0 + timedelta(hours=3), T0 + timedelta(hours=3, seconds=20)]
    assert trend_labels(nightly) == ["11-30", "12-01", "12-02"]
    assert trend_labels(same_day) == ["11-30 02:00:05", "11-30 05:00:05", "11-30 05:00:25"]
    assert trend_labels([T0, T0]) == ["11-30 02:00:05 #1", "11-30 02:00:05 #2"]


def test_request_timeline_of_a_long_run_stays_compact() -> None:
    rate = throughput([{"batch_metrics": batch_metrics(5000, spacing_s=20)}], 1000.0)["request_rate"]  # ~28 h
    assert len(rate["attempts"]) <= 120 and rate["bucket_seconds"] == 900


def test_nothing_sent_gives_empty_aggregates() -> None:
    aggregates = throughput([], None)
    assert aggregates["batch_latency"]["batches"] == 0 and aggregates["request_rate"]["attempts"] == []
