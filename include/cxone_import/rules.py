"""The validation rules, each written once: its name, the column it is reported on, its message and its vectorised
predicate. ``schema.py`` generates both the pandera model and the pre-pass from ``RULES``; the rule list of
docs/DESIGN.md is checked against it (tests/test_schema.py).

A predicate reads one column of a chunk and says, per row, whether the row breaks the rule (``True``: it does).
The column comes as the pre-pass holds it: a user's column as an Arrow string array, a column ``schema.prepare``
derives as a numpy array (``consent_at``: ``datetime64[us]``, UTC, NaT where the consent did not parse).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from include.cxone_import.sources import (
    CSV_FIELD_COUNT,
    CUSTOM_FIELD_COUNT,
    JSON_DEPTH,
    JSON_PARSEABLE,
    LINE_TOO_LONG,
    MAX_CUSTOM_FIELDS,
    MAX_JSON_DEPTH,
    MAX_PHONE_COLUMNS,
    MAX_PHONE_NUMBERS,
    MAX_RECORD_BYTES,
    PHONE_NUMBER_COUNT,
    PHONE_PREFIX,
    SOURCE_ERROR,
)

E164_PATTERN = r"^\+[1-9]\d{1,14}$"
ALLOWED_OPT_IN = ("confirmed", "pending")
DEFAULT_MAX_CONSENT_AGE_DAYS = 1825
MAX_FIELD_LENGTH = 10_000
CLOCK_SKEW = timedelta(minutes=5)
# The calling-list API takes at most 512 characters a CSV record (the call_lists profile, docs/api-call-lists.md)
CALL_LIST_MAX_RECORD_CHARS = 512

# The columns schema.prepare derives for the rules about several columns (or about a column's parsed value)
PHONE_COUNT = "phones_given"
CONTACT_ID_REPEAT = "contact_id_repeat"
CONSENT_AT = "consent_at"
CONSENT_UNPARSED = "consent_unparsed"
CONSENT_ZONELESS = "consent_zoneless"
LONGEST_FIELD = "longest_field"
LONGEST_FIELD_COLUMN = "longest_field_column"  # the user's name of each row's longest field
RECORD_CHARS = "record_chars"
PHONES = f"^{PHONE_PREFIX}"  # every phone column (a pattern, as pandera reads a regex column name)

# The rules decided while reading the source are named in sources.py (the reader writes them); these are the others
CONTACT_ID_PRESENT = "contact_id_present"
CONTACT_ID_UNIQUE = "contact_id_unique"
PHONE_PRESENT = "phone_present"
PHONE_E164 = "phone_e164"
PHONE_INVALID_FOR_REGION = "phone_invalid_for_region"
CONSENT_PRESENT = "consent_present"
CONSENT_PARSEABLE = "consent_parseable"
CONSENT_TIMEZONE = "consent_timezone"
CONSENT_NOT_FUTURE = "consent_not_future"
CONSENT_MAX_AGE = "consent_max_age"
OPT_IN_STATUS_ALLOWED = "opt_in_status_allowed"
FIELD_TOO_LONG = "field_too_long"
RECORD_TOO_LONG = "record_too_long"


@dataclass(frozen=True)
class RunLimits:
    """What the rules read of a run: its consent window (``as_of``: None is now), the region numbers without +
    are parsed for (None: every number must be E.164) and the longest record as a calling-list CSV line (None: no
    limit)."""

    max_consent_age_days: int = DEFAULT_MAX_CONSENT_AGE_DAYS
    as_of: datetime | None = None
    default_phone_region: str | None = None
    max_record_chars: int | None = None

    def now(self) -> pd.Timestamp:
        return pd.Timestamp(self.as_of or datetime.now(timezone.utc)).tz_convert("UTC")


Predicate = Callable[[Any, RunLimits], np.ndarray]


@dataclass(frozen=True)
class Rule:
    """One validation rule. ``reads``: the column its predicate reads (``PHONES``: each phone column); ``column``:
    the column a rejection names (None: the one read; ``LONGEST_FIELD_COLUMN``: each row's own)."""

    name: str
    reads: str
    message: str
    fails: Predicate
    column: str | None = None
    from_source: bool = False  # decided by the reader: the row's ``source_error`` starts with the rule's name

    def reads_column(self, column: str) -> bool:
        return re.match(self.reads, column) is not None if self.reads.startswith("^") else column == self.reads


def _flags(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False)


def _missing(values: pa.Array, limits: RunLimits) -> np.ndarray:
    return ~pc.is_valid(values).to_numpy(zero_copy_only=False)


def _flagged(values: np.ndarray, limits: RunLimits) -> np.ndarray:
    """A derived column that is the failure itself (a repeat, an unparsed or zoneless consent)."""
    return values


def _source_rule(name: str, message: str) -> Rule:
    def fails(source_error: pa.Array, limits: RunLimits) -> np.ndarray:
        return _flags(pc.starts_with(source_error, name))

    return Rule(name, SOURCE_ERROR, message, fails, from_source=True)


def _not_e164(phone: pa.Array, limits: RunLimits) -> np.ndarray:
    bad = pc.invert(pc.match_substring_regex(phone, E164_PATTERN))
    if limits.default_phone_region is not None:  # a number without + is judged by phone_invalid_for_region
        bad = pc.and_(bad, pc.starts_with(phone, "+"))
    return _flags(bad)


def _national_number(phone: pa.Array, limits: RunLimits) -> np.ndarray:
    """With a region, a number still without + after normalising is not a valid number of it."""
    if limits.default_phone_region is None:
        return np.zeros(len(phone), dtype=bool)
    return _flags(pc.invert(pc.starts_with(phone, "+")))


def _no_phone(phones_given: np.ndarray, limits: RunLimits) -> np.ndarray:
    return phones_given == 0


def _micros(at: pd.Timestamp) -> np.datetime64:
    return np.datetime64((at - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1), "us")


def _in_future(consent_at: np.ndarray, limits: RunLimits) -> np.ndarray:
    return consent_at > _micros(limits.now() + CLOCK_SKEW)  # NaT (not parsed) compares False


def _too_old(consent_at: np.ndarray, limits: RunLimits) -> np.ndarray:
    return consent_at < _micros(limits.now() - pd.Timedelta(days=limits.max_consent_age_days))


def _opt_in_not_allowed(opt_in: pa.Array, limits: RunLimits) -> np.ndarray:
    return ~_flags(pc.is_in(opt_in, pa.array(ALLOWED_OPT_IN)))  # missing is not allowed either


def _field_too_long(longest: np.ndarray, limits: RunLimits) -> np.ndarray:
    return longest > MAX_FIELD_LENGTH


def _record_too_long(record_chars: np.ndarray, limits: RunLimits) -> np.ndarray:
    return record_chars > (limits.max_record_chars or np.iinfo(np.int64).max)


RULES: tuple[Rule, ...] = (
    # decided by the reader: a record that could not be read carries only that reason
    _source_rule(JSON_PARSEABLE, "the line is not a valid JSON record"),
    _source_rule(CSV_FIELD_COUNT, "the record has a different number of fields than the header"),
    _source_rule(LINE_TOO_LONG,
                 f"the record is longer than {MAX_RECORD_BYTES} bytes (CSV: characters) and was not read"),
    _source_rule(JSON_DEPTH, f"the JSON record nests deeper than {MAX_JSON_DEPTH} levels"),
    _source_rule(CUSTOM_FIELD_COUNT, f"the record has more than {MAX_CUSTOM_FIELDS} custom fields (JSON Lines: or "
                 f"custom field names beyond the file's first {MAX_CUSTOM_FIELDS})"),
    _source_rule(PHONE_NUMBER_COUNT, f"the record has more than {MAX_PHONE_NUMBERS} phone numbers (JSON Lines: or "
                 f"phone columns beyond the file's first {MAX_PHONE_COLUMNS})"),
    Rule(CONTACT_ID_PRESENT, "contact_id", "contactId is missing", _missing),
    Rule(CONTACT_ID_UNIQUE, CONTACT_ID_REPEAT, "contactId appears earlier in the input", _flagged, "contact_id"),
    Rule(PHONE_PRESENT, PHONE_COUNT, "the record has no phone number", _no_phone, "phoneNumbers"),
    Rule(PHONE_E164, PHONES, "phone number is not E.164 (+ then 2 to 15 digits, no leading 0)", _not_e164),
    Rule(PHONE_INVALID_FOR_REGION, PHONES, "phone number without + is not a valid number of default_phone_region",
         _national_number),
    Rule(CONSENT_PRESENT, "consent_timestamp", "consentTimestamp is missing", _missing),
    Rule(CONSENT_PARSEABLE, CONSENT_UNPARSED, "consentTimestamp is not an ISO-8601 date-time", _flagged,
         "consent_timestamp"),
    Rule(CONSENT_TIMEZONE, CONSENT_ZONELESS, "consentTimestamp has no time zone (add Z or an offset)", _flagged,
         "consent_timestamp"),
    Rule(CONSENT_NOT_FUTURE, CONSENT_AT, "consentTimestamp is in the future", _in_future, "consent_timestamp"),
    Rule(CONSENT_MAX_AGE, CONSENT_AT, "consent is older than max_consent_age_days", _too_old, "consent_timestamp"),
    Rule(OPT_IN_STATUS_ALLOWED, "opt_in_status", "optInStatus must be confirmed or pending", _opt_in_not_allowed),
    Rule(FIELD_TOO_LONG, LONGEST_FIELD, f"a field is longer than {MAX_FIELD_LENGTH} characters", _field_too_long,
         LONGEST_FIELD_COLUMN),
    Rule(RECORD_TOO_LONG, RECORD_CHARS,
         f"the record is longer than {CALL_LIST_MAX_RECORD_CHARS} characters as a calling-list CSV line",
         _record_too_long, "record"),
)
RULE_BY_NAME = {rule.name: rule for rule in RULES}
SOURCE_RULES = tuple(rule.name for rule in RULES if rule.from_source)
