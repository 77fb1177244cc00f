"""A hostile row costs one row: a deeply nested JSON line, a record with too many custom fields or phone numbers, a
file bringing a new custom field name on every line, an over-long line or field are each that row's rejection with
its rule (in rejects.csv and the report's rejects_by_rule); the rest of the file is imported, and the reader's
memory does not grow with the names a file brings."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from upath import UPath

from include.cxone_import import pipeline
from include.cxone_import.sources import MAX_CUSTOM_FIELDS, MAX_RECORD_BYTES, iter_canonical_chunks
from cxone_runs.layout import RunLayout

CONSENT = "2026-01-01T00:00:00Z"
HEADER = "contact_id,consent_timestamp,opt_in_status,mobile_phone,notes\n"


def record(i: int, **extra: Any) -> dict[str, Any]:
    return {"contactId": f"c-{i}", "phoneNumbers": [{"type": "mobile", "number": f"+1415555{i:04d}"}],
            "consentTimestamp": CONSENT, "optInStatus": "confirmed", **extra}


def csv_row(i: int, notes: str = "hi") -> str:
    return f"c-{i},{CONSENT},confirmed,+1415555{i:04d},{notes}\n"


def import_file(tmp_path: Path, name: str, content: str | bytes) -> tuple[dict[str, Any], dict[str, list[str]], RunLayout]:
    """extract + validate; the validate result and each rejected row's rules by row number."""
    source = tmp_path / name
    source.write_bytes(content.encode() if isinstance(content, str) else content)
    layout = RunLayout.for_run(UPath(f"file://{tmp_path}/storage"), "dag", "run")
    extracted = pipeline.extract(UPath(source), layout)
    validated = pipeline.validate(layout, parts=extracted["parts"], max_consent_age_days=3650)
    with layout.rejects_csv.open("r") as handle:
        rejects = list(csv.DictReader(handle))
    rules: dict[str, list[str]] = {}
    for row in rejects:
        rules.setdefault(row["row_number"], []).append(row["rule"])
    return validated, rules, layout


def jsonl(records: list[dict[str, Any] | str]) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


HOSTILE_JSONL = {
    "nested-array": ("[" * 100_000 + "]" * 100_000, "json_depth"),
    "nested-in-custom-field": (json.dumps(record(2, customFields={"x": json.loads("[" * 500 + "]" * 500)})), "json_depth"),
    "too-many-custom-fields": (json.dumps(record(2, customFields={f"f{n}": "v" for n in range(51)})), "custom_field_count"),
    "too-many-phones": (json.dumps({**record(2), "phoneNumbers": [{"type": "mobile", "number": "+14155550100"}] * 11}),
                        "phone_number_count"),
    "line-too-long": (json.dumps(record(2, customFields={"notes": "x" * (MAX_RECORD_BYTES + 1)})), "line_too_long"),
}


@pytest.mark.parametrize(("line", "rule"), HOSTILE_JSONL.values(), ids=HOSTILE_JSONL.keys())
def test_a_hostile_json_line_is_one_rejected_row(tmp_path, line, rule):
    validated, rules, _ = import_file(tmp_path, "contacts.jsonl", jsonl([record(1), line, record(3)]))

    assert rules == {"2": [rule]}
    assert (validated["valid_rows"], validated["rejected_rows"]) == (2, 1)
    assert validated["rejects_by_rule"] == {rule: 1}


def test_new_custom_field_names_on_every_line_add_no_columns(tmp_path):
    lines = [record(i, customFields={f"key_{i}": "v"}) for i in range(3000)]

    validated, rules, layout = import_file(tmp_path, "contacts.jsonl", jsonl(lines))

    columns = pq.read_schema(layout.extract_part(0)).names
    assert sum(c.startswith("cf_") for c in columns) == MAX_CUSTOM_FIELDS, "the file's first 50 names, no more"
    assert validated["valid_rows"] == MAX_CUSTOM_FIELDS
    assert validated["rejects_by_rule"] == {"custom_field_count": 3000 - MAX_CUSTOM_FIELDS}
    assert set(rules["51"]) == {"custom_field_count"}


def test_new_phone_types_on_every_line_add_no_columns(tmp_path):
    lines = [{**record(i), "phoneNumbers": [{"type": f"t{i}", "number": "+14155550100"}]} for i in range(100)]

    validated, _, layout = import_file(tmp_path, "contacts.jsonl", jsonl(lines))

    assert sum(c.startswith("phone_") for c in pq.read_schema(layout.extract_part(0)).names) == 20
    assert validated["rejects_by_rule"] == {"phone_number_count": 80}


@pytest.mark.parametrize("size", [2 << 20, 20 << 20], ids=["2MiB", "20MiB"])
@pytest.mark.parametrize("quoted", [False, True], ids=["unquoted", "quoted"])
def test_an_over_long_csv_field_is_one_rejected_row(tmp_path, size, quoted):
    field = "x" * size
    content = HEADER + csv_row(1) + csv_row(2, f'"{field}"' if quoted else field) + csv_row(3)

    validated, rules, _ = import_file(tmp_path, "contacts.csv", content)

    assert rules == {"2": ["line_too_long"]}
    assert (validated["valid_rows"], validated["rejected_rows"]) == (2, 1)


def test_a_csv_record_with_too_many_custom_fields_is_rejected(tmp_path):
    header = HEADER.rstrip("\n") + "".join(f",f{n}" for n in range(MAX_CUSTOM_FIELDS)) + "\n"
    full = csv_row(1).rstrip("\n") + ",v" * MAX_CUSTOM_FIELDS + "\n"  # notes + 50 more: 51 custom fields
    sparse = csv_row(2, "").rstrip("\n") + ",v" * MAX_CUSTOM_FIELDS + "\n"  # notes empty: 50

    validated, rules, _ = import_file(tmp_path, "contacts.csv", header + full + sparse)

    assert rules == {"1": ["custom_field_count"]}
    assert validated["valid_rows"] == 1


def test_the_reader_never_holds_an_over_long_line(tmp_path):
    """A 64 MiB line without a line break is read in bounded blocks: the reader yields its rejection, not the line."""
    source = tmp_path / "contacts.jsonl"
    with source.open("w") as handle:
        handle.write(json.dumps(record(1)) + "\n" + "x" * (64 << 20))
    tracemalloc.start()
    try:
        chunks = list(iter_canonical_chunks(UPath(source)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB held for a 64 MiB line"
    assert [len(c) for c in chunks] == [2]
    assert chunks[0]["source_error"].iloc[1].startswith("line_too_long")
