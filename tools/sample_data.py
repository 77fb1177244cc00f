"""Seeded generator of fake CRM exports (CSV or JSON Lines) with a known set of bad rows.

Every row is either valid or breaks exactly one kind of rule, and the generator returns which: the contact ids that
must be imported and, per 1-based data row number, the rule names (docs/DESIGN.md) the row breaks. Everything is
built column-wise with numpy/pyarrow, so millions of rows take seconds. The same seed, ``now`` and arguments give the
same bytes; pass ``now`` explicitly when you need byte-identical files (it defaults to the current UTC time).

Fake data only: names from small built-in lists, e-mails at example.com, and phone numbers from these ranges, taken
in this order of preference. ``PHONE_CAPACITY`` = 7,843,800 numbers in all: every valid phone cell of a file gets
its own, enough for ~4.5 million rows at the average 12/7 phones per row (2.6 million even at three per row).

* ``+1 NPA 555 0100..0199``: the NANP numbers reserved for fiction, for every area code NPA 200-999 except the N11
  service codes (792 area codes x 100 = 79,200 numbers).
* ``+44 7700 900000..900999``, ``+44 20 7946 0000..0999``, ``+44 161 496 0000..0999``: Ofcom's drama ranges
  (3,000 numbers); about one phone in ten is drawn from here while they last.
* ``+1 NPA 555 0200..9999`` for the same area codes (7,761,600 numbers): used only once the fictitious ranges are
  used up. These are E.164-shaped and not handed out to subscribers in practice, but not formally reserved.

CLI: ``python -m tools.sample_data OUT_PATH --rows N --bad-share 0.1 --seed 42 [--format csv|jsonl]``
prints a one-line JSON summary ``{"path", "rows", "valid", "rejected"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from include.cxone_import import rules

# The bad-row kinds and the validation rules (include/cxone_import/rules.py) a row of that kind breaks.
BAD_KIND_RULES: dict[str, frozenset[str]] = {
    "bad_phone": frozenset({rules.PHONE_E164}),
    "no_phone": frozenset({rules.PHONE_PRESENT}),
    "expired_consent": frozenset({rules.CONSENT_MAX_AGE}),
    "future_consent": frozenset({rules.CONSENT_NOT_FUTURE}),
    "unparseable_consent": frozenset({rules.CONSENT_PARSEABLE}),
    "bad_opt_in": frozenset({rules.OPT_IN_STATUS_ALLOWED}),
    "duplicate_id": frozenset({rules.CONTACT_ID_UNIQUE}),
    "missing_id": frozenset({rules.CONTACT_ID_PRESENT}),
}
BAD_KINDS: tuple[str, ...] = tuple(BAD_KIND_RULES)
FORMATS = ("csv", "jsonl")

PHONE_TYPES: tuple[str, ...] = ("mobile", "work", "home")
CSV_COLUMNS: tuple[str, ...] = (
    "contact_id",
    "first_name",
    "last_name",
    "email",
    *(f"{phone_type}_phone" for phone_type in PHONE_TYPES),
    "consent_timestamp",
    "opt_in_status",
    "tier",
)
CUSTOM_FIELD_COLUMNS: tuple[str, ...] = ("first_name", "last_name", "email", "tier")
CONTACT_ID_PREFIX = "crm-"
CONTACT_ID_DIGITS = 7

FIRST_NAMES = (
    "Ada", "Amara", "Ben", "Carla", "Chen", "Dmitri", "Eleanor", "Farah", "Grace", "Hiro",
    "Ines", "Jonas", "Kofi", "Lena", "Mateo", "Nadia", "Oscar", "Priya", "Quinn", "Rosa",
    "Sami", "Tomas", "Uma", "Victor", "Wen", "Yara", "Zoe",
)  # fmt: skip
LAST_NAMES = (
    "Adams", "Baker", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Haddad", "Ito", "Jensen",
    "Kowalski", "Lopez", "Moreau", "Nakamura", "Okafor", "Petrov", "Quist", "Rossi", "Silva", "Tanaka",
    "Umar", "Vance", "Weber", "Xu", "Yilmaz", "Zimmer",
)  # fmt: skip
TIERS = ("bronze", "silver", "gold", "platinum")
OPT_IN_VALUES = ("confirmed", "pending")
OPT_IN_GOOD_WEIGHTS = (0.7, 0.3)
BAD_OPT_IN_VALUES = ("maybe", "unknown", "yes", "no", "opted-in")
# Stay invalid after the importer strips spaces, dashes, dots and brackets (a counted normalisation).
BAD_PHONE_VALUES = ("415-555-01", "phone-unknown", "+1 415 CALL NOW", "00441632960000", "+0441632960999",
                    "+1415555010012345", "4155550199")  # fmt: skip
# None of these parse as ISO-8601 (and none is pandas' special "now"/"today").
UNPARSEABLE_CONSENT_VALUES = ("not-a-date", "01/11/2024", "2024-13-45T25:61:00Z", "N/A", "last tuesday")

GOOD_CONSENT_MAX_DAYS = 4 * 365  # good rows: consent within the last ~4 years ...
GOOD_CONSENT_MARGIN_DAYS = 30  # ... and at least this far inside the max age, so files stay valid for a while
MS_PER_DAY = 86_400_000

# Phone number ranges (see module docstring). NANP area codes 200-999 without the N11 service codes.
_NPA = np.array([npa for npa in range(200, 1000) if npa % 100 != 11], dtype=np.int64)
_US_FICTION_PER_NPA = 100  # 555-0100..0199
_US_FICTION_CAPACITY = len(_NPA) * _US_FICTION_PER_NPA
_US_OVERFLOW_PER_NPA = 9_800  # 555-0200..9999
_US_CAPACITY = _US_FICTION_CAPACITY + len(_NPA) * _US_OVERFLOW_PER_NPA
_UK_RANGE_BASES = np.array([447700900000, 442079460000, 441614960000], dtype=np.int64)  # 1,000 numbers each
_UK_CAPACITY = len(_UK_RANGE_BASES) * 1_000
_UK_SHARE = 0.1
PHONE_CAPACITY = _US_CAPACITY + _UK_CAPACITY


@dataclass(frozen=True)
class GeneratedExport:
    """A generated file and what an importer must make of it."""

    path: Path
    rows: int
    valid_contact_ids: frozenset[str]  # rows that must be imported
    expected_rejects: dict[int, frozenset[str]]  # 1-based data row number (header excluded) -> rule names broken


def generate_crm_export(
    path: str | Path,
    rows: int,
    *,
    bad_share: float = 0.1,
    seed: int = 42,
    now: datetime | None = None,
    fmt: str = "csv",
    max_consent_age_days: int = 1825,
    kinds: Sequence[str] | None = None,
) -> GeneratedExport:
    """Write a fake CRM export of ``rows`` rows to ``path``; ``round(rows * bad_share)`` of them are bad.

    Bad rows are spread evenly over ``kinds`` (default: all of ``BAD_KINDS``) at seeded random positions. ``now``
    (naive means UTC) anchors the consent timestamps; ``max_consent_age_days`` is the age the importer will enforce.
    """
    path = Path(path)
    kinds = BAD_KINDS if kinds is None else tuple(kinds)
    unknown_kinds = sorted(set(kinds) - set(BAD_KINDS))
    if unknown_kinds:
        raise ValueError(f"unknown bad kinds {unknown_kinds}; known: {list(BAD_KINDS)}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if not 0.0 <= bad_share <= 1.0:
        raise ValueError(f"bad_share must be within [0, 1], got {bad_share}")
    if max_consent_age_days < 2:
        raise ValueError(f"max_consent_age_days must be >= 2, got {max_consent_age_days}")
    n_bad = round(rows * bad_share)
    if n_bad and not kinds:
        raise ValueError("bad_share > 0 needs at least one bad kind")
    now = datetime.now(UTC) if now is None else now
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)

    rng = np.random.default_rng(seed)
    kind_of_row = _assign_bad_kinds(rng, rows, n_bad, kinds)
    columns = _build_columns(rng, kind_of_row, kinds, now, max_consent_age_days)

    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        _write_csv(path, columns)
    else:
        _write_jsonl(path, columns)

    contact_ids = columns["contact_id"]
    good_rows = np.flatnonzero(kind_of_row < 0)
    bad_rows = np.flatnonzero(kind_of_row >= 0)
    rule_sets = [BAD_KIND_RULES[kind] for kind in kinds]
    return GeneratedExport(
        path=path,
        rows=rows,
        valid_contact_ids=frozenset(contact_ids.take(pa.array(good_rows)).to_pylist()),
        expected_rejects={
            row + 1: rule_sets[kind] for row, kind in zip(bad_rows.tolist(), kind_of_row[bad_rows].tolist(), strict=True)
        },
    )


def _assign_bad_kinds(rng: np.random.Generator, rows: int, n_bad: int, kinds: Sequence[str]) -> np.ndarray:
    """Per row, the index into ``kinds`` of its bad kind, or -1 for a good row; kinds are spread evenly."""
    kind_of_row = np.full(rows, -1, dtype=np.int64)
    if n_bad:
        bad_rows = rng.choice(rows, size=n_bad, replace=False)
        kind_of_row[bad_rows] = rng.permutation(np.resize(np.arange(len(kinds)), n_bad))
    if "duplicate_id" in kinds:
        # A duplicate needs an earlier good row to copy from; without one the row simply stays good.
        is_dup = kind_of_row == kinds.index("duplicate_id")
        good_before = np.cumsum(kind_of_row < 0) - (kind_of_row < 0)
        kind_of_row[is_dup & (good_before == 0)] = -1
    return kind_of_row


def _build_columns(
    rng: np.random.Generator,
    kind_of_row: np.ndarray,
    kinds: Sequence[str],
    now: datetime,
    max_consent_age_days: int,
) -> dict[str, pa.Array]:
    """All CSV columns as pyarrow string arrays; null means an empty cell."""
    rows = len(kind_of_row)

    def rows_of(kind: str) -> np.ndarray:
        return kind_of_row == kinds.index(kind) if kind in kinds else np.zeros(rows, dtype=bool)

    # contact_id: crm-<row number>, a duplicate copies the id of a random earlier good row, a missing one is null.
    id_number = np.arange(1, rows + 1, dtype=np.int64)
    is_dup = rows_of("duplicate_id")
    if is_dup.any():
        good_rows = np.flatnonzero(kind_of_row < 0)
        good_before = np.cumsum(kind_of_row < 0)[is_dup] - 1  # index into good_rows of the last earlier good row
        id_number[is_dup] = id_number[good_rows[(rng.random(is_dup.sum()) * (good_before + 1)).astype(np.int64)]]
    id_text = pc.utf8_lpad(pc.cast(pa.array(id_number), pa.string()), width=CONTACT_ID_DIGITS, padding="0")
    contact_id = pc.binary_join_element_wise(CONTACT_ID_PREFIX, id_text, "")
    contact_id = pc.if_else(pa.array(rows_of("missing_id")), pa.scalar(None, pa.string()), contact_id)

    first_name = pa.array(FIRST_NAMES).take(pa.array(rng.integers(0, len(FIRST_NAMES), rows)))
    last_name = pa.array(LAST_NAMES).take(pa.array(rng.integers(0, len(LAST_NAMES), rows)))
    row_text = pc.cast(pa.array(np.arange(1, rows + 1, dtype=np.int64)), pa.string())
    email = pc.binary_join_element_wise(
        pc.utf8_lower(first_name), ".", pc.utf8_lower(last_name), ".", row_text, "@example.com", ""
    )
    tier = pa.array(TIERS).take(pa.array(rng.integers(0, len(TIERS), rows)))

    phones = _build_phones(rng, rows_of("no_phone"), rows_of("bad_phone"))
    consent_timestamp = _build_consent(
        rng, rows_of("expired_consent"), rows_of("future_consent"), rows_of("unparseable_consent"),
        now, max_consent_age_days,
    )  # fmt: skip

    opt_in_vocabulary = pa.array(OPT_IN_VALUES + BAD_OPT_IN_VALUES)
    opt_in_code = rng.choice(len(OPT_IN_VALUES), size=rows, p=OPT_IN_GOOD_WEIGHTS)
    is_bad_opt_in = rows_of("bad_opt_in")
    opt_in_code[is_bad_opt_in] = len(OPT_IN_VALUES) + rng.integers(0, len(BAD_OPT_IN_VALUES), is_bad_opt_in.sum())
    opt_in_status = opt_in_vocabulary.take(pa.array(opt_in_code))

    return {
        "contact_id": contact_id,
        "first_name": first_name,
        "last_name": last_name,
        "email": email,
        **phones,
        "consent_timestamp": consent_timestamp,
        "opt_in_status": opt_in_status,
        "tier": tier,
    }


def _build_phones(rng: np.random.Generator, is_no_phone: np.ndarray, is_bad_phone: np.ndarray) -> dict[str, pa.Array]:
    """One to three filled phone columns per row, every valid number unique across the file."""
    rows = len(is_no_phone)
    filled_mask = rng.integers(1, 2 ** len(PHONE_TYPES), rows)  # non-empty subset of the phone columns, as bits
    bad_column = rng.integers(0, len(PHONE_TYPES), rows)
    filled_mask[is_bad_phone] |= 1 << bad_column[is_bad_phone]  # the broken cell is always filled
    filled_mask[is_no_phone] = 0
    filled = (filled_mask[:, None] >> np.arange(len(PHONE_TYPES))) & 1 == 1  # rows x columns, row-major
    is_bad_cell = np.zeros_like(filled)
    is_bad_cell[np.flatnonzero(is_bad_phone), bad_column[is_bad_phone]] = True

    # Number every valid cell in file order and turn that sequence number into a phone number.
    is_valid_cell = (filled & ~is_bad_cell).ravel()
    numbers = np.zeros(is_valid_cell.size, dtype=np.int64)
    numbers[is_valid_cell] = _phone_numbers(rng, int(is_valid_cell.sum()))
    numbers_text = pc.binary_join_element_wise("+", pc.cast(pa.array(numbers), pa.string()), "")

    bad_values = pa.array(BAD_PHONE_VALUES).take(pa.array(rng.integers(0, len(BAD_PHONE_VALUES), is_bad_phone.sum())))
    cell_text = pc.replace_with_mask(numbers_text, pa.array(is_bad_cell.ravel()), bad_values)
    cell_text = pc.if_else(pa.array(filled.ravel()), cell_text, pa.scalar(None, pa.string()))
    column_of_cell = np.tile(np.arange(len(PHONE_TYPES)), rows)
    return {
        f"{phone_type}_phone": cell_text.filter(pa.array(column_of_cell == column))
        for column, phone_type in enumerate(PHONE_TYPES)
    }


def _phone_numbers(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` distinct phone numbers (E.164 digits without '+') from the ranges in the module docstring."""
    if count > PHONE_CAPACITY:
        raise ValueError(f"{count} phone numbers needed, the generator's ranges hold {PHONE_CAPACITY}")
    is_uk = rng.random(count) < _UK_SHARE
    is_uk &= np.cumsum(is_uk) <= _UK_CAPACITY  # once the drama ranges run out, the rest are US numbers
    uk_seq = np.arange(int(is_uk.sum()))  # n-th UK number, n-th US number, in file order
    us_seq = np.arange(count - uk_seq.size)
    if us_seq.size > _US_CAPACITY:
        raise ValueError(f"{count} phone numbers needed, the generator's ranges hold {PHONE_CAPACITY}")

    numbers = np.empty(count, dtype=np.int64)
    uk_range, uk_line = np.divmod(uk_seq, 1_000)
    numbers[is_uk] = _UK_RANGE_BASES[uk_range] + uk_line
    # US: sequence numbers below the fictitious capacity map to 555-0100..0199, the rest to 555-0200..9999.
    fiction_seq, overflow_seq = us_seq[: _US_FICTION_CAPACITY], us_seq[_US_FICTION_CAPACITY:] - _US_FICTION_CAPACITY
    fiction_npa, fiction_line = np.divmod(fiction_seq, _US_FICTION_PER_NPA)
    overflow_npa, overflow_line = np.divmod(overflow_seq, _US_OVERFLOW_PER_NPA)
    npa = _NPA[np.concatenate([fiction_npa, overflow_npa])]
    line = np.concatenate([100 + fiction_line, 200 + overflow_line])
    numbers[~is_uk] = 10_000_000_000 + npa * 10_000_000 + 555 * 10_000 + line
    return numbers


def _build_consent(
    rng: np.random.Generator,
    is_expired: np.ndarray,
    is_future: np.ndarray,
    is_unparseable: np.ndarray,
    now: datetime,
    max_consent_age_days: int,
) -> pa.Array:
    """ISO-8601 UTC consent timestamps (``2024-11-01T09:15:00.000Z``), whole seconds."""
    rows = len(is_expired)
    now_ms = int(now.timestamp() * 1000) // 1000 * 1000
    good_window_days = min(GOOD_CONSENT_MAX_DAYS, max(1, max_consent_age_days - GOOD_CONSENT_MARGIN_DAYS))
    age_ms = rng.integers(60_000, good_window_days * MS_PER_DAY, rows)
    # expired: 1 to 366 days past the max age; future: 1 to 366 days ahead (ages are negative)
    age_ms[is_expired] = (max_consent_age_days + 1) * MS_PER_DAY + rng.integers(0, 365 * MS_PER_DAY, is_expired.sum())
    age_ms[is_future] = -(MS_PER_DAY + rng.integers(0, 365 * MS_PER_DAY, is_future.sum()))
    text = _iso_utc((now_ms - age_ms) // 1000 * 1000)
    bad_values = pa.array(UNPARSEABLE_CONSENT_VALUES).take(
        pa.array(rng.integers(0, len(UNPARSEABLE_CONSENT_VALUES), is_unparseable.sum()))
    )
    return pc.replace_with_mask(text, pa.array(is_unparseable), bad_values)


def _iso_utc(timestamp_ms: np.ndarray) -> pa.Array:
    """Epoch milliseconds as ``YYYY-MM-DDTHH:MM:SS.mmmZ``, assembled from lookup tables of days, seconds of the
    day and milliseconds (several times faster than strftime over millions of values)."""
    if not timestamp_ms.size:
        return pa.array([], pa.string())
    day = timestamp_ms // MS_PER_DAY
    first_day = int(day.min())
    day_table = pa.array(np.datetime_as_string(np.arange(first_day, int(day.max()) + 1).astype("datetime64[D]")))
    time_of_day = np.arange(86_400)
    time_table = pa.array([f"T{h:02d}:{m:02d}:{s:02d}." for h, m, s in
                           zip(time_of_day // 3600, time_of_day // 60 % 60, time_of_day % 60, strict=True)])  # fmt: skip
    millis_table = pa.array([f"{ms:03d}Z" for ms in range(1000)])
    return pc.binary_join_element_wise(
        day_table.take(pa.array(day - first_day)),
        time_table.take(pa.array(timestamp_ms % MS_PER_DAY // 1000)),
        millis_table.take(pa.array(timestamp_ms % 1000)),
        "",
    )


def _write_csv(path: Path, columns: dict[str, pa.Array]) -> None:
    """Plain comma-delimited UTF-8, header unquoted, nulls as empty cells (generated values never need quoting)."""
    table = pa.table({name: columns[name] for name in CSV_COLUMNS})
    with path.open("wb") as sink:
        sink.write((",".join(CSV_COLUMNS) + "\n").encode())
        pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=False, quoting_style="none"))


def _json_escape(values: pa.Array) -> pa.Array:
    """Values made safe inside a JSON string literal; null stays null. Generated values hold no control characters,
    and the backslash/quote replacements only run when some value needs them."""
    if pc.any(pc.match_substring_regex(values, r'[\\"]')).as_py():
        values = pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), '"', '\\"')
    return values


def _write_jsonl(path: Path, columns: dict[str, pa.Array]) -> None:
    """One API-shaped record per line, assembled column-wise (a missing contact id is written as "")."""
    # Each filled phone becomes ', {"type": ..., "number": ...}', an empty one ''; the leading ', ' is trimmed off.
    # (binary_join_element_wise's null_handling="skip" is not used: it drops all-null rows in pyarrow 26.)
    phone_items = [
        pc.fill_null(
            pc.binary_join_element_wise(
                f', {{"type": "{phone_type}", "number": "', _json_escape(columns[f"{phone_type}_phone"]), '"}', ""
            ),
            "",
        )
        for phone_type in PHONE_TYPES
    ]
    phone_list = pc.utf8_ltrim(pc.binary_join_element_wise(*phone_items, ""), characters=", ")
    custom_field_pieces = []
    for position, name in enumerate(CUSTOM_FIELD_COLUMNS):
        custom_field_pieces += [f'{", " if position else ""}"{name}": "', _json_escape(columns[name]), '"']
    line = pc.binary_join_element_wise(
        '{"contactId": "', _json_escape(pc.fill_null(columns["contact_id"], "")),
        '", "phoneNumbers": [', phone_list,
        '], "customFields": {', *custom_field_pieces,
        '}, "consentTimestamp": "', _json_escape(columns["consent_timestamp"]),
        '", "optInStatus": "', _json_escape(columns["opt_in_status"]),
        '"}\n',
        "",
    )  # fmt: skip
    # The data buffer of a string array is its values back to back: with a "\n" on each, that is the file.
    line = line.cast(pa.large_string())
    offsets = np.frombuffer(line.buffers()[1], dtype=np.int64)[line.offset : line.offset + len(line) + 1]
    with path.open("wb") as sink:
        if len(line):
            sink.write(memoryview(line.buffers()[2])[offsets[0] : offsets[-1]])


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: generate a file and print a one-line JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_path", type=Path)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--bad-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--format", choices=FORMATS, default="csv", dest="fmt")
    parser.add_argument("--now", type=datetime.fromisoformat, default=None, help="ISO-8601 instant (default: now)")
    parser.add_argument("--max-consent-age-days", type=int, default=1825)
    parser.add_argument("--kinds", default=None, help=f"comma-separated subset of {','.join(BAD_KINDS)}")
    args = parser.parse_args(argv)
    export = generate_crm_export(
        args.out_path,
        args.rows,
        bad_share=args.bad_share,
        seed=args.seed,
        now=args.now,
        fmt=args.fmt,
        max_consent_age_days=args.max_consent_age_days,
        kinds=None if args.kinds is None else [kind.strip() for kind in args.kinds.split(",") if kind.strip()],
    )
    summary = {
        "path": str(export.path),
        "rows": export.rows,
        "valid": len(export.valid_contact_ids),
        "rejected": len(export.expected_rejects),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
