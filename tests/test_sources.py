"""The bad-input corpus (tests/data/bad_inputs): file-level problems fail naming file, column and rule;
row-level problems become rejections naming the row; normalisations are counted; nothing silently dropped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from upath import UPath

from include.cxone_import import pipeline
from include.cxone_import.sources import SourceFormatError
from cxone_runs.layout import RunLayout
from include.cxone_import.storage import read_parquet

CORPUS = Path(__file__).parent / "data" / "bad_inputs"
EXPECTATIONS = json.loads((CORPUS / "expectations.json").read_text())
FILE_ERRORS = {name: e for name, e in EXPECTATIONS.items() if e["file_error"]}
ROW_LEVEL = {name: e for name, e in EXPECTATIONS.items() if not e["file_error"]}


@pytest.fixture
def layout(tmp_path):
    return RunLayout.for_run(UPath(f"file://{tmp_path}"), "dag", "run")


@pytest.mark.parametrize("name", sorted(FILE_ERRORS), ids=sorted(FILE_ERRORS))
def test_file_level_problem_names_file_column_and_rule(name, layout):
    expected = FILE_ERRORS[name]["file_error"]
    with pytest.raises(SourceFormatError) as caught:
        pipeline.extract(UPath(CORPUS / name), layout)
    error = caught.value
    assert error.rule == expected["rule"]
    assert error.column == expected["column"]
    assert name in str(error) and expected["rule"] in str(error)


@pytest.mark.parametrize("name", sorted(ROW_LEVEL), ids=sorted(ROW_LEVEL))
def test_row_level_problems_are_rejections(name, layout):
    expected = ROW_LEVEL[name]
    extracted = pipeline.extract(UPath(CORPUS / name), layout)
    validated = pipeline.validate(layout, parts=extracted["parts"], max_consent_age_days=1825)

    with layout.rejects_csv.open("r") as handle:
        rejects = list(csv.DictReader(handle))
    got: dict[str, list[str]] = {}
    for row in rejects:
        got.setdefault(row["row_number"], []).append(row["rule"])
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in expected["rejects"].items()}
    valid_ids = [
        cid for n in range(extracted["parts"]) for cid in read_parquet(layout.valid_part(n))["contact_id"]
    ]
    assert sorted(valid_ids) == sorted(expected["valid_contact_ids"])
    assert validated["normalised"] == expected["normalised"]
    assert validated["input_rows"] == validated["valid_rows"] + validated["rejected_rows"]


def test_latin1_error_gives_the_byte_offset(layout):
    with pytest.raises(SourceFormatError, match=r"offset \d+"):
        pipeline.extract(UPath(CORPUS / "latin1.csv"), layout)


def test_wrong_delimiter_gets_a_hint(layout):
    with pytest.raises(SourceFormatError, match="comma-delimited"):
        pipeline.extract(UPath(CORPUS / "semicolon_delimited.csv"), layout)


def test_rejects_file_is_safe_in_a_spreadsheet(layout, tmp_path):
    source = tmp_path / "formula.csv"
    source.write_text(
        "contact_id,mobile_phone,consent_timestamp,opt_in_status,first_name\n"
        '=HYPERLINK("http://x"),+14155550100,2026-06-01T00:00:00Z,maybe,Ann\n'
    )
    extracted = pipeline.extract(UPath(source), layout)
    pipeline.validate(layout, parts=extracted["parts"], max_consent_age_days=1825)
    text = layout.rejects_csv.read_text()
    assert "\n=" not in text and ",=" not in text
    assert "'=HYPERLINK" in text


def _run_validation(layout, source):
    extracted = pipeline.extract(UPath(source), layout)
    pipeline.validate(layout, parts=extracted["parts"], max_consent_age_days=1825)
    with layout.rejects_csv.open("r") as handle:
        rejects = list(csv.DictReader(handle))
    valid = read_parquet(layout.valid_part(0)) if extracted["parts"] else None
    return rejects, valid


def test_field_too_long_names_its_column(layout):
    rejects, _ = _run_validation(layout, CORPUS / "very_long_fields.csv")
    assert [(r["row_number"], r["rule"], r["column"]) for r in rejects] == [("1", "field_too_long", "notes")]


def test_consent_is_sent_in_utc_with_milliseconds(layout):
    _, valid = _run_validation(layout, CORPUS / "consent_far_future.csv")
    assert list(valid["consent_timestamp"]) == ["2024-11-01T07:15:00.123Z"]


@pytest.mark.parametrize(
    "body",
    [
        'C1,2026-06-01T00:00:00Z,confirmed,"+14155550100,"unterminated\n',
        "C1,2026-06-01T00:00:00Z,confirmed,+14155550100\nC2,+14155550101,\"x\"y\"\n",
    ],
    ids=["unterminated-quote", "stray-quote"],
)
def test_csv_errors_never_quote_a_record(layout, tmp_path, body):
    source = tmp_path / "broken.csv"
    source.write_text("contact_id,consent_timestamp,opt_in_status,mobile_phone\n" + body)
    try:
        rejects, _ = _run_validation(layout, source)
    except SourceFormatError as error:
        assert error.rule == "csv_syntax" and "record" in str(error)
        text = str(error) + repr(error.__cause__) + repr(error.__context__)
    else:
        text = json.dumps(rejects)
    assert "4155550" not in text


def test_a_ragged_row_costs_one_row_and_shows_no_data(layout):
    rejects, _ = _run_validation(layout, CORPUS / "ragged_rows.csv")
    assert {r["row_number"]: r["rule"] for r in rejects} == {"2": "csv_field_count", "4": "csv_field_count"}
    assert all("555" not in value for r in rejects for value in r.values())
    assert "expected 5 fields, got 6" in rejects[0]["value_masked"]


def test_a_directory_is_not_a_source(layout, tmp_path):
    folder = tmp_path / "contacts.csv"
    folder.mkdir()
    with pytest.raises(SourceFormatError) as caught:
        pipeline.extract(UPath(folder), layout)
    assert caught.value.rule == "file_format" and str(folder) in str(caught.value)
