"""default_phone_region: numbers without + parsed for the region and sent in E.164, invalid ones rejected."""

from __future__ import annotations

import csv
from datetime import datetime, timezone

import pandas as pd
import pytest

from include.cxone_import.schema import ChunkValidator, ContactRecordSchema
from include.cxone_import.sources import iter_canonical_chunks
from tests.conftest import CONTACT_LIST_ID

AS_OF = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
HEADER = "contact_id,mobile_phone,work_phone,consent_timestamp,opt_in_status"
CONSENT = "2026-06-01T09:15:00Z"


def validate_rows(tmp_path, rows: list[str], region: str | None):
    path = tmp_path / "in.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    validator = ChunkValidator(ContactRecordSchema.policy(1825, AS_OF, default_phone_region=region))
    results = [validator.chunk(f) for f in iter_canonical_chunks(path)]
    valid = pd.concat([r.valid.to_pandas() for r in results], ignore_index=True)
    rejects = pd.concat([r.rejects for r in results] + [validator.finish()], ignore_index=True)
    normalised = {k: v for r in results for k, v in r.normalised.items()}
    return valid, rejects, normalised


@pytest.mark.parametrize(
    ("region", "cell", "e164"),
    [
        pytest.param("US", "(415) 555-0100", "+14155550100", id="us-national-punctuated"),
        pytest.param("us", "4155550100", "+14155550100", id="region-lower-case"),
        pytest.param("GB", "020 7946 0000", "+442079460000", id="gb-trunk-zero"),
        pytest.param("GB", "0044 20 7946 0000", "+442079460000", id="gb-international-prefix"),
        pytest.param("DE", "030 123456", "+4930123456", id="de-berlin"),
    ],
)
def test_national_numbers_become_e164(tmp_path, region, cell, e164):
    valid, rejects, normalised = validate_rows(tmp_path, [f'c-1,"{cell}",+14155550199,{CONSENT},confirmed'], region)
    assert rejects.empty, rejects.to_dict("records")
    assert list(valid["phone_mobile"]) == [e164]
    assert list(valid["phone_work"]) == ["+14155550199"], "an E.164 number is left as it is"
    assert normalised["phone_region_to_e164"] == 1


def test_numbers_invalid_for_the_region_are_rejected_with_their_own_rule(tmp_path):
    rows = [
        f"c-1,4155550100,,{CONSENT},confirmed",  # valid in US
        f"c-2,12345,,{CONSENT},confirmed",  # too short for US
        f"c-3,4155550100,+0123,{CONSENT},confirmed",  # a bad E.164 cell is still phone_e164
    ]
    valid, rejects, normalised = validate_rows(tmp_path, rows, "US")
    assert list(valid["contact_id"]) == ["c-1"]
    by_row = {(int(r.row_number), r.column, r.rule) for r in rejects.itertuples()}
    assert by_row == {(2, "phone_mobile", "phone_invalid_for_region"), (3, "phone_work", "phone_e164")}
    assert "12345" not in set(rejects["value_masked"]), "the number is masked"
    assert normalised["phone_region_to_e164"] == 2


def test_without_a_region_a_number_without_plus_is_not_e164(tmp_path):
    valid, rejects, normalised = validate_rows(tmp_path, [f"c-1,4155550100,,{CONSENT},confirmed"], None)
    assert valid.empty
    assert list(rejects["rule"]) == ["phone_e164"]
    assert "phone_region_to_e164" not in normalised


def test_unknown_region_is_refused():
    with pytest.raises(ValueError, match="default_phone_region"):
        ContactRecordSchema.policy(1825, AS_OF, default_phone_region="XX")


def test_whole_run_sends_e164_and_rejects_invalid_for_region(run_import, cxone_sandbox, tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text("\n".join([
        HEADER,
        f"c-1,(415) 555-0100,,{CONSENT},confirmed",
        f"c-2,+442079460000,,{CONSENT},pending",
        f"c-3,555-01,,{CONSENT},confirmed",
    ]) + "\n")

    run = run_import({"source_uri": f"file://{path}", "default_phone_region": "US", "max_reject_share": 0.5})

    assert run.state == "success"
    stored = {r["contactId"]: [p["number"] for p in r["phoneNumbers"]] for r in cxone_sandbox.records(CONTACT_LIST_ID)}
    assert stored == {"c-1": ["+14155550100"], "c-2": ["+442079460000"]}
    assert run.report["normalised"]["phone_region_to_e164"] == 1
    assert run.report["rejects_by_rule"] == {"phone_invalid_for_region": 1}
    with run.file("rejects.csv").open() as handle:
        rejects = list(csv.DictReader(handle))
    assert [(r["row_number"], r["column"], r["rule"]) for r in rejects] == [("3", "phone_mobile", "phone_invalid_for_region")]
    assert run.report["reconciliation"]["ok"]
