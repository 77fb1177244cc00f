"""Tests of the seeded CRM export generator and of the hand-made bad-input corpus."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tools.sample_data import (
    BAD_KIND_RULES,
    CSV_COLUMNS,
    CUSTOM_FIELD_COLUMNS,
    PHONE_CAPACITY,
    PHONE_TYPES,
    _phone_numbers,
    generate_crm_export,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BAD_INPUTS = REPO_ROOT / "tests" / "data" / "bad_inputs"
NOW = datetime(2026, 11, 27, tzinfo=UTC)
MAX_CONSENT_AGE_DAYS = 1825
E164 = r"\+[1-9]\d{1,14}"
PHONE_COLUMNS = [f"{phone_type}_phone" for phone_type in PHONE_TYPES]
OPT_IN_ALLOWED = ("confirmed", "pending")
# Enough phone cells (about two per row) to run past the 82,200 fictitious numbers into the overflow range.
LARGE_ROWS = 60_000


def read_export(path: Path) -> pd.DataFrame:
    """A generated CSV as strings, empty cells as ''."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def reference_rejects(frame: pd.DataFrame, now: datetime, max_age_days: int) -> dict[int, frozenset[str]]:
    """An independent, vectorised statement of the DESIGN.md rules: 1-based row number -> rules broken."""
    phones = frame[PHONE_COLUMNS]
    filled = phones.ne("")
    not_e164 = pd.concat([~phones[column].str.fullmatch(E164) for column in PHONE_COLUMNS], axis=1)
    consent = pd.to_datetime(frame["consent_timestamp"], format="ISO8601", utc=True, errors="coerce")
    broken = pd.DataFrame(
        {
            "contact_id_present": frame["contact_id"].eq(""),
            "contact_id_unique": frame["contact_id"].ne("") & frame["contact_id"].duplicated(keep="first"),
            "phone_present": ~filled.any(axis=1),
            "phone_e164": (filled & not_e164.to_numpy()).any(axis=1),
            "consent_present": frame["consent_timestamp"].eq(""),
            "consent_parseable": consent.isna() & frame["consent_timestamp"].ne(""),
            "consent_not_future": consent > now,
            "consent_max_age": consent < now - timedelta(days=max_age_days),
            "opt_in_status_allowed": ~frame["opt_in_status"].isin(OPT_IN_ALLOWED),
        }
    )
    rows_broken = broken[broken.any(axis=1)]
    return {
        row + 1: frozenset(rows_broken.columns[flags]) for row, flags in zip(rows_broken.index, rows_broken.to_numpy(), strict=True)
    }


@pytest.fixture(scope="module")
def large_export(tmp_path_factory: pytest.TempPathFactory):
    export = generate_crm_export(tmp_path_factory.mktemp("large") / "crm.csv", LARGE_ROWS, bad_share=0.2, now=NOW)
    return export, read_export(export.path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"], ids=["csv", "jsonl"])
def test_same_seed_gives_same_bytes_and_other_seed_differs(tmp_path: Path, fmt: str) -> None:
    first = generate_crm_export(tmp_path / f"a.{fmt}", 3_000, seed=7, now=NOW, fmt=fmt)
    again = generate_crm_export(tmp_path / f"b.{fmt}", 3_000, seed=7, now=NOW, fmt=fmt)
    other = generate_crm_export(tmp_path / f"c.{fmt}", 3_000, seed=8, now=NOW, fmt=fmt)

    assert first.path.read_bytes() == again.path.read_bytes()
    assert (first.valid_contact_ids, first.expected_rejects) == (again.valid_contact_ids, again.expected_rejects)
    assert first.path.read_bytes() != other.path.read_bytes()
    assert first.expected_rejects != other.expected_rejects


@pytest.mark.parametrize("bad_share", [0.0, 0.1, 0.5, 0.9], ids=["none", "tenth", "half", "most"])
def test_bad_share_is_honoured(tmp_path: Path, bad_share: float) -> None:
    rows = 4_000
    export = generate_crm_export(tmp_path / "crm.csv", rows, bad_share=bad_share, now=NOW)

    # Exact except for the odd duplicate_id row that has no earlier good row to copy and so stays good.
    assert abs(len(export.expected_rejects) - bad_share * rows) <= 0.005 * rows
    assert len(export.valid_contact_ids) + len(export.expected_rejects) == rows


def test_every_bad_kind_appears_evenly(large_export) -> None:
    export, _ = large_export
    per_rule_set = pd.Series(list(export.expected_rejects.values())).value_counts()

    assert set(per_rule_set.index) == set(BAD_KIND_RULES.values())
    assert per_rule_set.max() - per_rule_set.min() <= 2  # round-robin over kinds, a few duplicates turned good


@pytest.mark.parametrize("kinds", [["no_phone"], ["duplicate_id", "missing_id"]], ids=["one", "two"])
def test_kinds_restricts_the_defects(tmp_path: Path, kinds: list[str]) -> None:
    export = generate_crm_export(tmp_path / "crm.csv", 2_000, bad_share=0.3, now=NOW, kinds=kinds)

    assert set(export.expected_rejects.values()) == {BAD_KIND_RULES[kind] for kind in kinds}


def test_expected_rejects_point_at_real_defects(large_export) -> None:
    export, frame = large_export

    assert len(frame) == export.rows
    assert list(frame.columns) == list(CSV_COLUMNS)
    assert reference_rejects(frame, NOW, MAX_CONSENT_AGE_DAYS) == export.expected_rejects


def test_valid_rows_have_unique_ids_and_unique_e164_phones(large_export) -> None:
    export, frame = large_export
    valid = frame[~(frame.index + 1).isin(list(export.expected_rejects))]
    phone_cells = frame[PHONE_COLUMNS].to_numpy().ravel()
    e164_cells = phone_cells[pd.Series(phone_cells).str.fullmatch(E164).to_numpy()]
    valid_phones = valid[PHONE_COLUMNS].to_numpy().ravel()
    valid_phones = valid_phones[valid_phones != ""]

    assert set(valid["contact_id"]) == export.valid_contact_ids
    assert valid["contact_id"].is_unique
    assert valid["contact_id"].str.fullmatch(r"crm-\d{7}").all()
    assert pd.Series(valid_phones).str.fullmatch(E164).all()
    assert len(set(e164_cells)) == len(e164_cells)  # unique across the whole file, bad rows included
    overflow = [phone for phone in valid_phones if phone.startswith("+1") and int(phone[-4:]) >= 200]
    assert overflow  # numbers beyond the fictitious 555-01xx ranges were needed, and stayed unique
    assert valid[PHONE_COLUMNS].ne("").sum(axis=1).between(1, 3).all()
    assert valid["email"].str.endswith("@example.com").all()
    assert valid["opt_in_status"].isin(OPT_IN_ALLOWED).all()
    assert valid["consent_timestamp"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z").all()
    consent = pd.to_datetime(valid["consent_timestamp"], utc=True)
    assert consent.min() >= NOW - timedelta(days=4 * 365) and consent.max() < NOW


def test_duplicate_rows_reuse_an_earlier_valid_id(large_export) -> None:
    export, frame = large_export
    duplicate_rows = [row for row, rules in export.expected_rejects.items() if rules == {"contact_id_unique"}]
    first_row_of_id = frame.reset_index().drop_duplicates("contact_id").set_index("contact_id")["index"] + 1

    assert duplicate_rows
    for row in duplicate_rows:
        contact_id = frame.at[row - 1, "contact_id"]
        assert contact_id in export.valid_contact_ids
        assert first_row_of_id[contact_id] < row
        assert first_row_of_id[contact_id] not in export.expected_rejects


def test_jsonl_carries_the_same_records_as_csv(tmp_path: Path) -> None:
    csv_export = generate_crm_export(tmp_path / "crm.csv", 2_000, bad_share=0.4, seed=3, now=NOW)
    jsonl_export = generate_crm_export(tmp_path / "crm.jsonl", 2_000, bad_share=0.4, seed=3, now=NOW, fmt="jsonl")
    frame = read_export(csv_export.path)
    expected_records = [
        {
            "contactId": row["contact_id"],
            "phoneNumbers": [
                {"type": phone_type, "number": row[f"{phone_type}_phone"]}
                for phone_type in PHONE_TYPES
                if row[f"{phone_type}_phone"]
            ],
            "customFields": {name: row[name] for name in CUSTOM_FIELD_COLUMNS},
            "consentTimestamp": row["consent_timestamp"],
            "optInStatus": row["opt_in_status"],
        }
        for row in frame.to_dict("records")
    ]

    records = [json.loads(line) for line in jsonl_export.path.read_text(encoding="utf-8").splitlines()]

    assert records == expected_records
    assert jsonl_export.expected_rejects == csv_export.expected_rejects
    assert jsonl_export.valid_contact_ids == csv_export.valid_contact_ids
    assert any(record["phoneNumbers"] == [] for record in records)  # no_phone rows


def test_cli_prints_one_line_summary(tmp_path: Path) -> None:
    out_path = tmp_path / "cli" / "crm.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'plugins'}"}
    command = [
        sys.executable, "-m", "tools.sample_data", str(out_path), "--rows", "500", "--bad-share", "0.2",
        "--seed", "5", "--format", "jsonl", "--now", "2026-11-27T00:00:00+00:00",
    ]  # fmt: skip

    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True, timeout=60
    )

    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {"path": str(out_path), "rows": 500, "valid": 400, "rejected": 100}
    assert len(out_path.read_text(encoding="utf-8").splitlines()) == 500


def test_two_hundred_thousand_rows_are_all_accounted_for(tmp_path: Path) -> None:
    """A large export (the generator is vectorised: about 0.5 s here) still accounts for every row."""
    export = generate_crm_export(tmp_path / "crm.csv", 200_000, now=NOW)

    assert len(export.valid_contact_ids) + len(export.expected_rejects) == 200_000


def test_phone_ranges_hold_phone_capacity_distinct_e164_numbers() -> None:
    numbers = _phone_numbers(np.random.default_rng(0), PHONE_CAPACITY)

    assert (np.diff(np.sort(numbers)) > 0).all()  # distinct (np.unique is far slower here)
    assert numbers.min() >= 10**10 and numbers.max() < 10**15  # '+' and 11 to 15 digits, first digit 1-9
    with pytest.raises(ValueError, match="phone numbers needed"):
        _phone_numbers(np.random.default_rng(0), PHONE_CAPACITY + 1)


@pytest.mark.parametrize(
    "kwargs",
    [{"fmt": "xlsx"}, {"kinds": ["bad_phone", "typo"]}, {"bad_share": 1.5}, {"kinds": []}],
    ids=["format", "kind", "share", "no-kinds"],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate_crm_export(tmp_path / "crm.csv", 10, now=NOW, **kwargs)


# --- the hand-made corpus in tests/data/bad_inputs -------------------------------------------------------------

EXPECTATIONS = json.loads((BAD_INPUTS / "expectations.json").read_text(encoding="utf-8"))
ACCEPTED_CSV_FILES = sorted(
    name for name, expectation in EXPECTATIONS.items() if expectation["file_error"] is None and name.endswith(".csv")
)


def test_expectations_cover_every_corpus_file() -> None:
    corpus_files = {path.name for path in BAD_INPUTS.iterdir()} - {"README.md", "expectations.json"}
    readme = (BAD_INPUTS / "README.md").read_text(encoding="utf-8")

    assert set(EXPECTATIONS) == corpus_files
    assert all(f"`{name}`" in readme for name in corpus_files)
    expectation_keys = {"file_error", "rejects", "normalised", "valid_contact_ids"}
    assert all(set(expectation) == expectation_keys for expectation in EXPECTATIONS.values())


def test_corpus_file_level_defects_are_real() -> None:
    raw = {name: (BAD_INPUTS / name).read_bytes() for name in EXPECTATIONS}
    with pytest.raises(UnicodeDecodeError) as decode_error:
        raw["latin1.csv"].decode("utf-8")

    assert raw["empty.csv"] == b""
    assert raw["header_only.csv"].decode().count("\n") == 1
    assert decode_error.value.start == 105  # the offset the README promises
    assert raw["utf8_bom.csv"].startswith(b"\xef\xbb\xbfcontact_id,")
    assert b"," not in raw["semicolon_delimited.csv"].splitlines()[0]


@pytest.mark.parametrize("name", ACCEPTED_CSV_FILES, ids=ACCEPTED_CSV_FILES)
def test_corpus_rows_add_up(name: str) -> None:
    """The expectations agree with the file read independently (the csv module, header matched as documented)."""
    expectation = EXPECTATIONS[name]
    with (BAD_INPUTS / name).open(encoding="utf-8-sig", newline="") as handle:
        records = [r for r in csv.reader(handle) if r]
    header = [c.strip().lower() for c in records[0]]
    frame = pd.DataFrame(
        [r if len(r) == len(header) else [""] * len(header) for r in records[1:]], columns=header, dtype=str
    )
    invisible = "\u200b\u200c\u200d\u2060\ufeff"
    frame["contact_id"] = frame["contact_id"].str.strip().str.strip(invisible).str.strip()
    rejected_rows = {int(row) for row in expectation["rejects"]}
    kept_ids = frame.loc[[row - 1 for row in range(1, len(frame) + 1) if row not in rejected_rows], "contact_id"]
    e164_after_normalising = frame.filter(like="_phone").replace(r"[ \-.()]", "", regex=True)

    assert rejected_rows <= set(range(1, len(frame) + 1))
    assert sorted(set(kept_ids)) == sorted(expectation["valid_contact_ids"])
    kept_phones = e164_after_normalising.loc[kept_ids.index]
    assert kept_phones.apply(lambda column: column.eq("") | column.str.fullmatch(E164)).all().all()