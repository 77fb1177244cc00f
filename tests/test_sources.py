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
from include.cxone_import.storage import RunLayout, read_parquet

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
