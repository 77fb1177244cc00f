"""Backfills of the import DAG on a running Airflow stack (scheduler, LocalExecutor, api-server; tests/stack.py).

Three days' CRM exports lie in the source base as ``contacts_YYYY-MM-DD.csv``; ``airflow backfill create`` over those
days makes one run per day, each reading its own day's file (the DAG derives the path from the logical date). Then
one day is backfilled again with ``--reprocess-behavior completed``, which clears and re-runs the finished run: it
resumes every batch from its checkpoints and creates nothing new on CXone.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from tools.sample_data import PHONE_TYPES, generate_crm_export
from tests.stack import DAG_ID, AirflowStack

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]

CONTACT_LIST_ID = "list-backfill"
ROWS_PER_DAY = 50
DAYS_AGO = (4, 3, 2)  # three consecutive past days: backfills only cover intervals that have ended
SEED = 20261127
RUN_TIMEOUT_S = 240
PHONE_COLUMNS = tuple(f"{phone_type}_phone" for phone_type in PHONE_TYPES)


@dataclass(frozen=True)
class DayExport:
    """One day's source file and the contacts it holds (all valid)."""

    day: date
    path: Path
    contact_ids: frozenset[str]
    phones: frozenset[str]


def _backfill_window(first: date, last: date) -> list[str]:
    # The nightly cron run of a day D has logical date D 02:00 UTC, so the window runs to the end of the last day.
    return ["--from-date", first.isoformat(), "--to-date", f"{last.isoformat()}T23:59:59+00:00"]


def _run_of_day(runs: list[dict], day: date) -> dict:
    matching = [r for r in runs if r["logical_date"] and r["logical_date"].startswith(day.isoformat())]
    assert len(matching) == 1, f"expected one run for {day}, got {[r['dag_run_id'] for r in matching]}"
    return matching[0]


@pytest.fixture(scope="module")
def day_exports(airflow_stack: AirflowStack, tmp_path_factory: pytest.TempPathFactory) -> list[DayExport]:
    """Three days' files in ``{storage_base}/incoming``, with disjoint contact ids and phone numbers.

    The generator names contacts ``crm-<row number>`` and hands out phone numbers in file order from fixed ranges,
    so separately generated files share ids and phones whatever the seed (and CXone rejects a record whose id or
    phone it already has). One 150-row export cut into three days keeps every contact unique.
    """
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=n) for n in DAYS_AGO]
    export = generate_crm_export(
        tmp_path_factory.mktemp("crm") / "export.csv", ROWS_PER_DAY * len(days), bad_share=0.0, seed=SEED,
        now=datetime.now(UTC),
    )
    with export.path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header, rows = reader.fieldnames, list(reader)
    incoming = airflow_stack.storage_base / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    exports = []
    for index, day in enumerate(days):
        day_rows = rows[index * ROWS_PER_DAY : (index + 1) * ROWS_PER_DAY]
        path = incoming / f"contacts_{day.isoformat()}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
            writer.writeheader()
            writer.writerows(day_rows)
        exports.append(
            DayExport(
                day=day,
                path=path,
                contact_ids=frozenset(row["contact_id"] for row in day_rows),
                phones=frozenset(row[column] for row in day_rows for column in PHONE_COLUMNS if row[column]),
            )
        )
    assert frozenset().union(*(e.contact_ids for e in exports)) == export.valid_contact_ids
    for earlier, later in pairwise(exports):
        assert not earlier.contact_ids & later.contact_ids and not earlier.phones & later.phones
    airflow_stack.set_variable("cxone_contact_list_id", CONTACT_LIST_ID)
    return exports


@pytest.fixture(scope="module")
def backfilled(airflow_stack: AirflowStack, day_exports: list[DayExport]) -> dict[date, dict]:
    """Backfill the three days and wait for their runs; returns the finished run per day."""
    airflow_stack.airflow(
        "backfill", "create", "--dag-id", DAG_ID, *_backfill_window(day_exports[0].day, day_exports[-1].day),
        "--max-active-runs", "1",  # one day after the other: every day imports into the same contact list
    )
    runs = airflow_stack.dag_runs(DAG_ID, run_type="backfill")
    assert len(runs) == len(day_exports), [r["dag_run_id"] for r in runs]
    finished = {}
    for export in day_exports:
        run_id = _run_of_day(runs, export.day)["dag_run_id"]
        finished[export.day] = airflow_stack.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_S)
    airflow_stack.wait_for_backfills(DAG_ID)
    return finished


def test_backfill_imports_each_days_file_once(airflow_stack: AirflowStack, day_exports, backfilled):
    for export in day_exports:
        run = backfilled[export.day]
        assert run["state"] == "success", airflow_stack.describe_run(DAG_ID, run["dag_run_id"])
        report = airflow_stack.run_report(run["dag_run_id"])
        assert report is not None, f"no report.json for {run['dag_run_id']}"
        assert report["run"]["logical_date"].startswith(export.day.isoformat())
        totals = report["totals"]
        assert (totals["input"], totals["imported"], totals["duplicates"], totals["rejected"], totals["failed"]) == (
            ROWS_PER_DAY, ROWS_PER_DAY, 0, 0, 0,
        ), totals

    stored_ids = [record["contactId"] for record in airflow_stack.sandbox_records(CONTACT_LIST_ID)]
    assert len(stored_ids) == len(set(stored_ids)), "a contact was created twice"
    assert set(stored_ids) == frozenset().union(*(e.contact_ids for e in day_exports))


def test_backfilling_a_day_again_creates_nothing_new(airflow_stack: AirflowStack, day_exports, backfilled):
    export = day_exports[1]
    run_id = backfilled[export.day]["dag_run_id"]
    records_before = airflow_stack.sandbox_records(CONTACT_LIST_ID)
    created_before = airflow_stack.sandbox_stats()["records_created"]
    asked_at = datetime.now(UTC)

    airflow_stack.airflow(
        "backfill", "create", "--dag-id", DAG_ID, *_backfill_window(export.day, export.day),
        "--reprocess-behavior", "completed", "--max-active-runs", "1",
    )
    run = airflow_stack.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_S, finished_after=asked_at)

    assert run["state"] == "success", airflow_stack.describe_run(DAG_ID, run_id)
    assert len(airflow_stack.dag_runs(DAG_ID, run_type="backfill")) == len(day_exports), "the day got a second run"
    assert airflow_stack.sandbox_records(CONTACT_LIST_ID) == records_before
    assert airflow_stack.sandbox_stats()["records_created"] == created_before
    totals = airflow_stack.run_report(run_id)["totals"]
    assert totals["batches"] >= 1 and totals["batches_resumed"] == totals["batches"], totals
    assert totals["imported"] + totals["duplicates"] == ROWS_PER_DAY and totals["failed"] == 0, totals
