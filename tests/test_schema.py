"""The record schema: each rule on good and bad rows, every reason for a row breaking several, normalisation."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from include.cxone_import.masking import mask_phone, neutralise_formulas
from include.cxone_import.rules import RULES
from include.cxone_import.schema import ChunkValidator, ContactRecordSchema
from include.cxone_import.sources import iter_canonical_chunks

AS_OF = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
HEADER = "contact_id,first_name,mobile_phone,work_phone,consent_timestamp,opt_in_status"
GOOD = "c-1,Ann,+14155550100,,2026-06-01T09:15:00.000Z,confirmed"


def validate_csv(tmp_path: Path, *rows: str, max_age: int = 1825, chunk_rows: int = 10_000):
    path = tmp_path / "in.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    validator = ChunkValidator(ContactRecordSchema.policy(max_age, AS_OF))
    results = [validator.chunk(f) for f in iter_canonical_chunks(path, chunk_rows=chunk_rows)]
    valid = pd.concat([r.valid.to_pandas() for r in results], ignore_index=True)
    rejects = pd.concat([r.rejects for r in results] + [validator.finish()], ignore_index=True)
    normalised: dict[str, int] = {}
    for r in results:
        for k, v in r.normalised.items():
            normalised[k] = normalised.get(k, 0) + v
    return valid, rejects, normalised


def reasons(rejects: pd.DataFrame) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for row, rule in zip(rejects["row_number"], rejects["rule"], strict=True):
        out.setdefault(int(row), set()).add(rule)
    return out


def test_good_row_passes(tmp_path):
    valid, rejects, _ = validate_csv(tmp_path, GOOD)
    assert len(rejects) == 0
    assert list(valid["contact_id"]) == ["c-1"]


@pytest.mark.parametrize(
    ("row", "rule"),
    [
        pytest.param(",Ann,+14155550100,,2026-06-01T09:15:00Z,confirmed", "contact_id_present", id="no-contact-id"),
        pytest.param("c-2,Ann,,,2026-06-01T09:15:00Z,confirmed", "phone_present", id="no-phone"),
        pytest.param("c-2,Ann,4155550100,,2026-06-01T09:15:00Z,confirmed", "phone_e164", id="phone-without-plus"),
        pytest.param("c-2,Ann,+04155550100,,2026-06-01T09:15:00Z,confirmed", "phone_e164", id="phone-leading-zero"),
        pytest.param("c-2,Ann,+1415555010012345,,2026-06-01T09:15:00Z,confirmed", "phone_e164", id="phone-too-long"),
        pytest.param("c-2,Ann,+14155550100,abc,2026-06-01T09:15:00Z,confirmed", "phone_e164", id="second-phone-bad"),
        pytest.param("c-2,Ann,+14155550100,,,confirmed", "consent_present", id="no-consent"),
        pytest.param("c-2,Ann,+14155550100,,yesterday,confirmed", "consent_parseable", id="consent-words"),
        pytest.param("c-2,Ann,+14155550100,,01/06/2026,confirmed", "consent_parseable", id="consent-not-iso"),
        pytest.param("c-2,Ann,+14155550100,,2026-02-30T00:00:00Z,confirmed", "consent_parseable", id="consent-no-such-day"),
        pytest.param("c-2,Ann,+14155550100,,2026-06-01T09:15:00,confirmed", "consent_timezone", id="consent-no-zone"),
        pytest.param("c-2,Ann,+14155550100,,2026-12-01T00:00:00Z,confirmed", "consent_not_future", id="consent-future"),
        pytest.param("c-2,Ann,+14155550100,,2021-11-01T00:00:00Z,confirmed", "consent_max_age", id="consent-expired"),
        pytest.param("c-2,Ann,+14155550100,,2026-06-01T09:15:00Z,maybe", "opt_in_status_allowed", id="opt-in-unknown"),
        pytest.param("c-2,Ann,+14155550100,,2026-06-01T09:15:00Z,", "opt_in_status_allowed", id="opt-in-missing"),
        pytest.param("c-1,Ann,+14155550101,,2026-06-01T09:15:00Z,confirmed", "contact_id_unique", id="duplicate-id"),
    ],
)
def test_each_rule_rejects_its_row(tmp_path, row, rule):
    valid, rejects, _ = validate_csv(tmp_path, GOOD, row)
    assert reasons(rejects) == {2: {rule}}
    assert list(valid["contact_id"]) == ["c-1"], "the good row must survive next to the bad one"


def test_a_row_breaking_several_rules_gets_every_reason(tmp_path):
    _, rejects, _ = validate_csv(tmp_path, "c-1,Ann,12,+0,2099-01-01T00:00:00Z,maybe", GOOD.replace("c-1", ""))
    assert reasons(rejects) == {
        1: {"phone_e164", "consent_not_future", "opt_in_status_allowed"},
        2: {"contact_id_present"},
    }
    assert set(rejects.loc[rejects["rule"] == "phone_e164", "column"]) == {"phone_mobile", "phone_work"}


def test_consent_window_follows_the_param(tmp_path):
    row = "c-2,Ann,+14155550101,,2026-01-01T00:00:00Z,confirmed"
    assert reasons(validate_csv(tmp_path, row, max_age=30)[1]) == {1: {"consent_max_age"}}
    assert reasons(validate_csv(tmp_path, row, max_age=365)[1]) == {}


def test_uniqueness_holds_across_chunks(tmp_path):
    rows = [f"c-{i % 5},Ann,+1415555{i:04d},,2026-06-01T09:15:00Z,pending" for i in range(12)]
    valid, rejects, _ = validate_csv(tmp_path, *rows, chunk_rows=3)
    assert sorted(valid["contact_id"]) == [f"c-{i}" for i in range(5)]
    assert reasons(rejects) == {n: {"contact_id_unique"} for n in range(6, 13)}


def test_normalisation_is_counted_not_silent(tmp_path):
    valid, rejects, normalised = validate_csv(
        tmp_path,
        "c-1,Ann,+1 (415) 555-0100,+1.415.555.0101,2026-06-01T09:15:00Z,Confirmed",
        "c-2,Bo,+14155550102,,2026-06-01T09:15:00Z,PENDING",
        "c-3,Cy,+14155550103,,2026-06-01T09:15:00Z,yes",
    )
    assert normalised == {"phone_punctuation_removed": 1, "opt_in_status_lowercased": 2}
    assert list(valid["phone_mobile"])[:2] == ["+14155550100", "+14155550102"]
    assert list(valid["opt_in_status"]) == ["confirmed", "pending"]
    assert reasons(rejects) == {3: {"opt_in_status_allowed"}}


def test_rejects_mask_phone_numbers(tmp_path):
    _, rejects, _ = validate_csv(tmp_path, "c-9,Ann,+1415555010099999,,2026-06-01T09:15:00Z,confirmed")
    value = rejects.loc[0, "value_masked"]
    assert "1415555010099999" not in value and value.endswith("99")
    assert mask_phone("+14155550100") == "+1********00"


def test_formula_cells_are_neutralised():
    frame = pd.DataFrame({"value_masked": ['=HYPERLINK("x")', "+cmd", "@SUM(1)", "-2+3", "plain"]})
    assert list(neutralise_formulas(frame)["value_masked"]) == [
        "'=HYPERLINK(\"x\")", "'+cmd", "'@SUM(1)", "'-2+3", "plain"
    ]


def test_design_lists_every_rule_of_the_table_with_its_message():
    """docs/DESIGN.md's rule table is the rule table: every rule, no other, each with the message a reject carries."""
    design = (Path(__file__).parents[1] / "docs" / "DESIGN.md").read_text()
    section = design.split("## Validation rules", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            documented[cells[0].strip("`")] = (cells[2].startswith("reader"), cells[3])
    assert documented == {rule.name: (rule.from_source, rule.message) for rule in RULES}
