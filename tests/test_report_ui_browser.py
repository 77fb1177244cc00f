"""The CXone report tab and the CXone imports page in the real Airflow UI, in headless Chromium, against the session's
stack: one finished run, its tab's numbers against its report.json, the history listing it, the downloads, and who
is refused (anonymous 401, a user without a role 403, a viewer 403 on the dead letters).

Screenshots go to ``artifacts/browser/``; with ``UPDATE_SCREENSHOTS=1`` the report tab and history page ones are
also copied to ``docs/screenshots/`` (README, docs/ui.md).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, FrameLocator, Page, expect, sync_playwright

from tests.stack import DAG_ID, AirflowStack, airflow_stack  # noqa: F401 - the session's stack
from tools.sample_data import generate_crm_export

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]
INSTALL_BROWSER_SH = ROOT / "scripts" / "install_browser.sh"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]  # fmt: skip
ARTIFACTS = ROOT / "artifacts" / "browser"
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
UPDATE_SCREENSHOTS = os.environ.get("UPDATE_SCREENSHOTS") == "1"
VIEWPORT = {"width": 1400, "height": 1300}  # the whole report tab
HISTORY_VIEWPORT = {"width": 1400, "height": 820}
UI_TIMEOUT_MS = 30_000
RUN_TIMEOUT_S = 300
ROWS = 120
BAD_SHARE = 0.1
SEED = 20261201
BATCH_SIZE = 10
TAB = "CXone report"
NAV = "CXone imports"
SHOWN_TOTALS = ("input", "imported", "duplicates", "failed", "rejected", "batches", "requests", "rate_limited")


def _screenshot(page: Page, name: str, *, docs: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))
    if docs and UPDATE_SCREENSHOTS:
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACTS / name, DOCS_SCREENSHOTS / name)


def _login(page: Page, stack: AirflowStack, username: str, password: str) -> None:
    page.goto(stack.api_url)
    expect(page).to_have_url(re.compile(r"/auth/login"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).not_to_have_url(re.compile(r"/auth/login"))


def _shown(frame: FrameLocator, metric: str) -> str:
    return frame.locator(f'[data-metric="{metric}"]').inner_text().strip()


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _file(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (scripts/install_browser.sh installs it when missing; the module skips if it cannot)."""
    result = subprocess.run(["bash", str(INSTALL_BROWSER_SH)], capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        pytest.skip(f"Chromium could not be installed (scripts/install_browser.sh): {result.stderr.strip()[-1500:]}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def stack(browser: Browser, request: pytest.FixtureRequest) -> AirflowStack:
    """The session's stack, requested only once Chromium is there (a skip costs no start-up)."""
    return request.getfixturevalue("airflow_stack")


def _reported_runs(stack: AirflowStack) -> list[dict[str, Any]]:
    """The DAG's runs (newest first) with their report.json, or None where there is none."""
    return [{**run, "report": stack.run_report(run["dag_run_id"])} for run in stack.dag_runs(DAG_ID)]


@pytest.fixture(scope="module")
def finished_run(stack: AirflowStack) -> dict[str, Any]:
    """A finished, successful run of the import DAG with rejected rows: one that earlier modules of the session left
    (tests/test_browser.py's, the backfills), else a new one. Its id, contact list and report.json."""
    for run in _reported_runs(stack):
        report = run["report"]
        if run["state"] == "success" and report and report["status"] == "success" and report["rejects_by_rule"]:
            return {"run_id": run["dag_run_id"], "contact_list_id": report["run"]["contact_list_id"], "report": report}
    contact_list_id = f"ui-report-{secrets.token_hex(4)}"
    source = stack.storage_base / "incoming" / f"{contact_list_id}.csv"
    generate_crm_export(source, ROWS, bad_share=BAD_SHARE, seed=SEED, now=datetime.now(UTC))
    run = stack.trigger(DAG_ID, conf={"source_uri": str(source), "contact_list_id": contact_list_id,
                                      "batch_size": BATCH_SIZE})
    run_id = run["dag_run_id"]
    run = stack.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_S)
    assert run["state"] == "success", stack.describe_run(DAG_ID, run_id)
    report = stack.run_report(run_id)
    assert report is not None
    return {"run_id": run_id, "contact_list_id": contact_list_id, "report": report}


def _context(browser: Browser, stack: AirflowStack, username: str | None) -> BrowserContext:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    if username:
        page = context.new_page()
        password = stack.password if username == stack.username else stack.extra_users[username][1]
        _login(page, stack, username, password)
        page.close()
    return context


@pytest.fixture(scope="module")
def admin(browser: Browser, stack: AirflowStack) -> Iterator[BrowserContext]:
    context = _context(browser, stack, stack.username)
    yield context
    context.close()


@pytest.fixture(scope="module")
def viewer(browser: Browser, stack: AirflowStack) -> Iterator[BrowserContext]:
    context = _context(browser, stack, "viewer")
    yield context
    context.close()


def _report_urls(stack: AirflowStack, run_id: str) -> dict[str, str]:
    query = f"run_id={quote(run_id, safe='')}"
    base = f"{stack.api_url}/cxone/dags/{DAG_ID}"
    return {name: f"{base}/{name}?{query}" for name in ("report", "report.json", "rejects.csv", "dead_letter.jsonl")}


def _open_tab(page: Page, stack: AirflowStack, run_id: str) -> FrameLocator:
    """The run's page, then its CXone report tab; returns the tab's iframe."""
    page.goto(f"{stack.api_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
    expect(page.get_by_role("heading", name=run_id)).to_be_visible()
    page.get_by_role("link", name=TAB).or_(page.get_by_role("tab", name=TAB)).first.click()
    expect(page).to_have_url(re.compile(r"/plugin/cxone-report$"))
    frame = page.frame_locator(f'iframe[title="{TAB}"]')
    expect(frame.get_by_role("heading", name=re.compile("CXone import report"))).to_be_visible()
    return frame


# -- tests ----------------------------------------------------------------------------------------------------------


def test_report_tab_shows_the_runs_report(admin: BrowserContext, stack: AirflowStack, finished_run: dict) -> None:
    page = admin.new_page()
    report, totals = finished_run["report"], finished_run["report"]["totals"]
    frame = _open_tab(page, stack, finished_run["run_id"])
    for key in SHOWN_TOTALS:
        assert _int(_shown(frame, key)) == totals[key], key
    assert _shown(frame, "success_rate_percent") == f"{totals['success_rate_percent']:.2f}%"
    assert _shown(frame, "status") == report["status"] == "success"
    assert _shown(frame, "contact_list_id") == finished_run["contact_list_id"]
    assert _shown(frame, "reconciliation") == "OK"
    assert _int(_shown(frame, "webhook_delivered")) == report["webhook"]["delivered"]
    assert _int(_shown(frame, "webhook_events")) == report["webhook"]["events"]
    assert float(_shown(frame, "latency_p95")) == report["throughput"]["batch_latency"]["p95_ms"]
    assert _int(_shown(frame, "peak_requests_per_minute")) == report["throughput"]["request_rate"]["peak_requests_per_minute"]
    for rule, count in report["rejects_by_rule"].items():
        expect(frame.locator(f'[data-chart="rejects-by-rule"] g[data-name="{rule}"]')).to_have_attribute(
            "data-value", str(count))
    expect(frame.locator('[data-chart="outcomes"] g[data-name="Imported"]')).to_have_attribute(
        "data-value", str(totals["imported"]))
    for chart in ("batch-latency", "request-rate"):
        expect(frame.locator(f'[data-chart="{chart}"] rect').first).to_be_visible()
    _screenshot(page, "report-tab.png", docs=True)

    # rejects.csv downloads from the tab, byte for byte the run's file
    with page.expect_download() as download:
        frame.locator('a[data-download="rejects"]').click()
    assert Path(download.value.path()).read_bytes() == _file(report["files"]["rejects_csv"]).read_bytes()
    expect(frame.locator('a[data-download="dead_letter"]')).to_have_count(1)
    page.close()


def test_history_page_lists_the_runs(admin: BrowserContext, stack: AirflowStack, finished_run: dict) -> None:
    page = admin.new_page()
    page.goto(stack.api_url)
    page.get_by_role("link", name=NAV).or_(page.get_by_role("button", name=NAV)).first.click()
    expect(page).to_have_url(re.compile(r"/plugin/cxone-imports"))
    frame = page.frame_locator(f'iframe[title="{NAV}"]')
    rows = frame.locator(f'table[data-table=runs] tbody tr[data-dag-id="{DAG_ID}"]')  # other import DAGs may list too
    listed = stack.dag_runs(DAG_ID)
    expect(rows).to_have_count(len(listed))
    row = frame.locator(f'tr[data-run-id="{finished_run["run_id"]}"]')
    totals = finished_run["report"]["totals"]
    for column in ("input", "imported", "rejected"):
        assert _int(row.locator(f'[data-col="{column}"]').inner_text()) == totals[column]
    expect(row.locator('[data-col="list"]')).to_have_text(finished_run["contact_list_id"])
    expect(row.locator('[data-col="success_rate"]')).to_have_text(f"{totals['success_rate_percent']:.2f}%")
    expect(frame.locator('[data-chart="trend"] circle').first).to_be_visible()
    page.set_viewport_size(HISTORY_VIEWPORT)
    _screenshot(page, "history-page.png", docs=True)

    # filter by the run's contact list, then open the run's tab from its row
    frame.locator("select#list").select_option(finished_run["contact_list_id"])
    same_list = [r for r in _reported_runs(stack) if (r["report"] or {}).get("run", {}).get("contact_list_id")
                 == finished_run["contact_list_id"]]
    expect(frame.locator(f'table[data-table=runs] tbody tr[data-dag-id="{DAG_ID}"]')).to_have_count(len(same_list))
    frame.locator(f'tr[data-run-id="{finished_run["run_id"]}"] a').click()
    expect(page).to_have_url(re.compile(r"/runs/[^/]+/plugin/cxone-report$"))
    tab = page.frame_locator(f'iframe[title="{TAB}"]')
    assert _int(_shown(tab, "input")) == totals["input"]
    page.close()


def test_anonymous_is_refused(browser: Browser, stack: AirflowStack, finished_run: dict) -> None:
    context = _context(browser, stack, None)
    try:
        for url in [*_report_urls(stack, finished_run["run_id"]).values(), f"{stack.api_url}/cxone/imports"]:
            response = context.request.get(url)
            assert response.status == 401, url
            assert finished_run["contact_list_id"] not in response.text()
        page = context.new_page()
        page.goto(_report_urls(stack, finished_run["run_id"])["report"])
        expect(page.locator('[data-metric="error"]')).to_contain_text("sign in")
    finally:
        context.close()


def test_user_without_a_role_is_refused(browser: Browser, stack: AirflowStack, finished_run: dict) -> None:
    """Signed in (its JWT in the UI's ``_token`` cookie) but allowed nothing by the auth manager: 403 everywhere."""
    context = _context(browser, stack, None)
    try:
        context.add_cookies([{"name": "_token", "value": stack.login_token("outsider"), "url": stack.api_url}])
        for url in [*_report_urls(stack, finished_run["run_id"]).values(), f"{stack.api_url}/cxone/imports"]:
            response = context.request.get(url)
            assert response.status == 403, url
        page = context.new_page()
        page.goto(f"{stack.api_url}/cxone/imports")
        expect(page.locator('[data-metric="error"]')).to_contain_text("may not see this")
    finally:
        context.close()


def test_viewer_reads_the_report_but_not_the_dead_letters(
    viewer: BrowserContext, admin: BrowserContext, stack: AirflowStack, finished_run: dict
) -> None:
    urls = _report_urls(stack, finished_run["run_id"])
    page = viewer.new_page()
    frame = _open_tab(page, stack, finished_run["run_id"])
    assert _int(_shown(frame, "input")) == finished_run["report"]["totals"]["input"]
    expect(frame.locator('a[data-download="dead_letter"]')).to_have_count(0)
    expect(frame.get_by_text("needs the permission to edit")).to_be_visible()
    page.close()
    assert viewer.request.get(urls["rejects.csv"]).status == 200
    assert viewer.request.get(urls["dead_letter.jsonl"]).status == 403
    assert admin.request.get(urls["dead_letter.jsonl"]).status == 200
