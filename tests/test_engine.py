"""The import engine against the sandbox: 400s isolate the records the server names, checkpoints make a second
run send nothing, and the outcome file accounts for every record of the group."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from upath import UPath

from cxone_provider.client import CXoneClient
from cxone_provider.retry import RetryPolicy
from include.cxone_import.engine import GroupImporter
from include.cxone_import.pipeline import GROUP_SCHEMA, batch_id
from include.cxone_import.storage import RunLayout, read_parquet, write_parquet

LIST = "engine-list"


def record(i: int, phone: str | None = None) -> dict:
    return {
        "contactId": f"c{i}",
        "phoneNumbers": [{"type": "mobile", "number": phone or f"+1415555{i:04d}"}],
        "customFields": {},
        "consentTimestamp": "2026-06-01T00:00:00Z",
        "optInStatus": "confirmed",
    }


@pytest.fixture
def layout(tmp_path):
    return RunLayout.for_run(UPath(f"file://{tmp_path}"), "d", "r")


def write_group(layout, records: list[dict], batch_size: int) -> None:
    rows = []
    for n, rec in enumerate(records):
        rows.append((n + 1, n // batch_size, rec["contactId"], json.dumps(rec)))
    ids = {}
    for _, b, cid, _ in rows:
        ids.setdefault(b, []).append(cid)
    table = pa.table(
        {
            "row_number": [r[0] for r in rows],
            "batch_index": [r[1] for r in rows],
            "batch_id": [batch_id(LIST, ids[r[1]]) for r in rows],
            "contact_id": [r[2] for r in rows],
            "record_json": [r[3] for r in rows],
        },
        schema=GROUP_SCHEMA,
    )
    write_parquet(layout.group_file(0), table)


@pytest.fixture
def client(cxone_sandbox):
    with CXoneClient(cxone_sandbox.url, "sandbox-client", "sandbox-secret",
                     retry_policy=RetryPolicy(backoff_base_s=0, max_attempts=3)) as c:
        yield c


def test_a_400_fails_only_the_records_the_server_names(layout, client, cxone_sandbox):
    records = [record(i) for i in range(10)]
    records[3] = record(3, phone="12345")  # the server refuses this one
    write_group(layout, records, batch_size=10)

    summary = GroupImporter(client, LIST, layout, concurrency=2).run(0)

    assert (summary["imported"], summary["failed"]) == (9, 1)
    outcomes = read_parquet(layout.outcome_file(0)).set_index("row_number")
    assert outcomes.loc[4, "outcome"] == "failed"
    assert "INVALID_E164" in outcomes.loc[4, "detail"]
    assert sorted(r["contactId"] for r in cxone_sandbox.records(LIST)) == sorted(f"c{i}" for i in range(10) if i != 3)


def test_second_run_of_a_group_sends_nothing(layout, client, cxone_sandbox):
    write_group(layout, [record(i) for i in range(25)], batch_size=10)
    first = GroupImporter(client, LIST, layout).run(0)
    requests_before = cxone_sandbox.stats()["records_requests"]
    second = GroupImporter(client, LIST, layout).run(0)

    assert cxone_sandbox.stats()["records_requests"] == requests_before
    assert second["resumed_batches"] == second["batches"] == 3
    assert (first["imported"], second["imported"]) == (25, 25)
    assert len(cxone_sandbox.records(LIST)) == 25


def test_duplicates_in_warnings_mode_are_counted_per_record(layout, client, cxone_sandbox):
    cxone_sandbox.seed_records(LIST, [record(2), record(99, phone="+14155550005")])
    write_group(layout, [record(i) for i in range(8)], batch_size=8)

    summary = GroupImporter(client, LIST, layout).run(0)

    assert (summary["imported"], summary["duplicate"]) == (6, 2)
    outcomes = read_parquet(layout.outcome_file(0)).set_index("contact_id")
    assert set(outcomes[outcomes["outcome"] == "duplicate"].index) == {"c2", "c5"}
