"""The contact record schema: one pandera model, validated lazily, turned into per-row rejections.

``validate_chunk`` normalises what may be normalised (and counts it), validates the whole chunk in one lazy
pass so that a row breaking several rules gets every reason, and splits the chunk into valid records and
rejections (row number, contactId, column, rule, message, masked value). Everything is vectorised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Optional

import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pyarrow.compute as pc
from pandera.typing import Series

from include.cxone_import import arrow_text
from include.cxone_import.masking import mask_value
from include.cxone_import.sources import (
    MAX_CUSTOM_FIELDS,
    MAX_JSON_DEPTH,
    MAX_PHONE_COLUMNS,
    MAX_PHONE_NUMBERS,
    MAX_RECORD_BYTES,
    PHONE_PREFIX,
    ROW_NUMBER,
    SOURCE_ERROR,
    arrow_strings,
    display_column,
)

log = logging.getLogger(__name__)

E164_PATTERN = r"^\+[1-9]\d{1,14}$"
ALLOWED_OPT_IN = ("confirmed", "pending")
WITHDRAWN_OPT_IN = ("revoked", "opted_out")  # consent withdrawn: a removal under sync (a reject either way)


def consent_withdrawn(opt_in: Any) -> np.ndarray:
    """Which ``optInStatus`` values say the contact withdrew consent: ``revoked`` or ``opted_out``, compared
    case-insensitively after trimming (vectorised)."""
    values = arrow_strings(opt_in) if not isinstance(opt_in, (pa.Array, pa.ChunkedArray)) else opt_in
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(values))
    return pc.fill_null(pc.is_in(lowered, pa.array(WITHDRAWN_OPT_IN)), False).to_numpy(zero_copy_only=False)
DEFAULT_MAX_CONSENT_AGE_DAYS = 1825
MAX_FIELD_LENGTH = 10_000
CLOCK_SKEW = timedelta(minutes=5)
_ISO_8601 = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|z|[+-]\d{2}:?\d{2})?$"
_HAS_ZONE = r"(?:Z|z|[+-]\d{2}:?\d{2})$"
_PHONE_PUNCTUATION = r"[\s\-\.\(\)]"
_PHONE_PUNCTUATION_BYTES = b" \t\n\v\f\r-.()"  # every byte the regex removes (RE2's \s is ASCII), and \v
# whitespace (Unicode) and the invisible characters a CRM export carries around ids: ZWSP/ZWNJ/ZWJ, word joiner, BOM
_EDGE_BYTES = bytes([*b" \t\n\v\f\r", *range(0x80, 0x100)])  # what such an edge can start with in UTF-8
_EDGE_INVISIBLE = r"^[\s\p{Z}\x{200B}-\x{200D}\x{2060}\x{FEFF}]+|[\s\p{Z}\x{200B}-\x{200D}\x{2060}\x{FEFF}]+$"

PHONE_COUNT = "phones_given"
CONTACT_ID_REPEAT = "contact_id_repeat"
CONSENT_AT = "consent_at"
CONSENT_UNPARSED = "consent_unparsed"
CONSENT_ZONELESS = "consent_zoneless"
LONGEST_FIELD = "longest_field"
LONGEST_FIELD_COLUMN = "longest_field_column"
RECORD_CHARS = "record_chars"
_DERIVED = (PHONE_COUNT, CONTACT_ID_REPEAT, CONSENT_AT, CONSENT_UNPARSED, CONSENT_ZONELESS, LONGEST_FIELD, LONGEST_FIELD_COLUMN,
            RECORD_CHARS)
# The calling-list API takes at most 512 characters a CSV record (the call_lists profile, docs/api-call-lists.md)
CALL_LIST_MAX_RECORD_CHARS = 512
CONSENT_SENT_CHARS = len("2024-11-01T09:15:00.000Z")  # consent as sent (UTC, milliseconds), whatever came in
# Rules decided while reading the source (its ``source_error`` column starts with the rule's name): a record
# that could not be read carries only that reason, the rest would be noise about an unreadable record.
SOURCE_RULES = ("json_parseable", "csv_field_count", "line_too_long", "json_depth", "custom_field_count",
                "phone_number_count")

RULE_MESSAGES = {
    "json_parseable": "the line is not a valid JSON record",
    "csv_field_count": "the record has a different number of fields than the header",
    "line_too_long": f"the record is longer than {MAX_RECORD_BYTES} bytes (CSV: characters) and was not read",
    "json_depth": f"the JSON record nests deeper than {MAX_JSON_DEPTH} levels",
    "custom_field_count": f"the record has more than {MAX_CUSTOM_FIELDS} custom fields (JSON Lines: or custom field "
    f"names beyond the file's first {MAX_CUSTOM_FIELDS})",
    "phone_number_count": f"the record has more than {MAX_PHONE_NUMBERS} phone numbers (JSON Lines: or phone columns "
    f"beyond the file's first {MAX_PHONE_COLUMNS})",
    "contact_id_present": "contactId is missing",
    "contact_id_unique": "contactId appears earlier in the input",
    "phone_present": "the record has no phone number",
    "phone_e164": "phone number is not E.164 (+ then 2 to 15 digits, no leading 0)",
    "phone_invalid_for_region": "phone number without + is not a valid number of default_phone_region",
    "consent_present": "consentTimestamp is missing",
    "consent_parseable": "consentTimestamp is not an ISO-8601 date-time",
    "consent_timezone": "consentTimestamp has no time zone (add Z or an offset)",
    "consent_not_future": "consentTimestamp is in the future",
    "consent_max_age": "consent is older than max_consent_age_days",
    "opt_in_status_allowed": "optInStatus must be confirmed or pending",
    "field_too_long": f"a field is longer than {MAX_FIELD_LENGTH} characters",
    "record_too_long": f"the record is longer than {CALL_LIST_MAX_RECORD_CHARS} characters as a calling-list CSV line",
}
# The column a rule is reported on (rules checked on a derived column name the user's column instead).
RULE_COLUMN = {
    "record_too_long": "record",
    "consent_present": "consent_timestamp",
    "json_parseable": SOURCE_ERROR,
    "csv_field_count": SOURCE_ERROR,
    "line_too_long": SOURCE_ERROR,
    "json_depth": SOURCE_ERROR,
    "custom_field_count": SOURCE_ERROR,
    "phone_number_count": SOURCE_ERROR,
    "contact_id_present": "contact_id",
    "contact_id_unique": "contact_id",
    "phone_present": "phoneNumbers",
    "consent_parseable": "consent_timestamp",
    "consent_timezone": "consent_timestamp",
    "consent_not_future": "consent_timestamp",
    "consent_max_age": "consent_timestamp",
    "opt_in_status_allowed": "opt_in_status",
}
REJECT_COLUMNS = ("row_number", "contact_id", "column", "rule", "message", "value_masked")


class ContactRecordSchema(pandera.DataFrameModel):
    """A contact record ready for the CXone records API (one row of the canonical frame).

    Every rule is a column check named after the rule, so each failure case is one (row, column, rule):
    rules about several columns check a column that ``prepare`` derives (``phones_given``, ``consent_at``, ...).
    Limits that vary per run (``max_consent_age_days``, ``as_of``) are class attributes; ``policy`` makes a
    subclass with them set.
    """

    row_number: Series[np.int64] = pandera.Field(unique=True)
    contact_id: Series[str] = pandera.Field(nullable=True)
    phone: Series[str] = pandera.Field(alias=f"^{PHONE_PREFIX}", regex=True, nullable=True)
    consent_timestamp: Series[str] = pandera.Field(nullable=True)
    opt_in_status: Series[str] = pandera.Field(nullable=True)
    source_error: Optional[Series[str]] = pandera.Field(nullable=True)
    # derived by prepare()
    phones_given: Series[np.int64]
    contact_id_repeat: Series[bool]
    consent_at: Series[pd.DatetimeTZDtype(unit="us", tz="UTC")] = pandera.Field(nullable=True)  # type: ignore[valid-type]
    consent_unparsed: Series[bool]
    consent_zoneless: Series[bool]
    longest_field: Series[np.int64]
    record_chars: Optional[Series[np.int64]]  # set by validate_chunk when the run has a record limit

    _max_consent_age_days: ClassVar[int] = DEFAULT_MAX_CONSENT_AGE_DAYS
    _as_of: ClassVar[datetime | None] = None
    _default_phone_region: ClassVar[str | None] = None
    _max_record_chars: ClassVar[int | None] = None

    class Config:
        strict = False  # custom fields (cf_*) travel alongside
        coerce = False  # prepare() builds the right types; a mismatch is our bug, not the user's

    @classmethod
    def policy(
        cls, max_consent_age_days: int, as_of: datetime, default_phone_region: str | None = None,
        max_record_chars: int | None = None,
    ) -> type[ContactRecordSchema]:
        """The schema with this run's consent window, phone region (numbers without + are parsed for it) and record
        limit (the call_lists profile: a record as a CSV line; None: no limit)."""
        if max_consent_age_days < 1:
            raise ValueError("max_consent_age_days must be at least 1")
        region = phone_region(default_phone_region)
        attrs = {"_max_consent_age_days": int(max_consent_age_days), "_as_of": as_of, "_default_phone_region": region,
                 "_max_record_chars": max_record_chars}
        return type("ContactRecordPolicy", (cls,), attrs)  # type: ignore[return-value]

    @classmethod
    def _now(cls) -> pd.Timestamp:
        return pd.Timestamp(cls._as_of or datetime.now(timezone.utc)).tz_convert("UTC")

    @pandera.check("source_error", ignore_na=False)
    def json_parseable(cls, source_error: Series[str]) -> Series[bool]:
        return ~source_error.str.startswith("json_parseable").fillna(False).astype(bool)

    @pandera.check("source_error", ignore_na=False)
    def csv_field_count(cls, source_error: Series[str]) -> Series[bool]:
        return ~source_error.str.startswith("csv_field_count").fillna(False).astype(bool)

    @pandera.check("source_error", ignore_na=False)
    def line_too_long(cls, source_error: Series[str]) -> Series[bool]:
        return ~source_error.str.startswith("line_too_long").fillna(False).astype(bool)

    @pandera.check("source_error", ignore_na=False)
    def json_depth(cls, source_error: Series[str]) -> Series[bool]:
        return ~source_error.str.startswith("json_depth").fillna(False).astype(bool)

    @pandera.check("source_error", ignore_na=False)
    def custom_field_count(cls, source_error: Series[str]) -> Series[bool]:
        return ~source_error.str.startswith("custom_field_count").fillna(False).astype(bool)

    @pandera.check("source_error", ignore_na=False)
    def phone_number_count(cls, source_error: Series[str]) -> Series[bool]:
        return ~source_error.str.startswith("phone_number_count").fillna(False).astype(bool)

    @pandera.check("contact_id", ignore_na=False)
    def contact_id_present(cls, contact_id: Series[str]) -> Series[bool]:
        return contact_id.notna()

    @pandera.check("contact_id_repeat")
    def contact_id_unique(cls, repeat: Series[bool]) -> Series[bool]:
        return ~repeat

    @pandera.check(f"^{PHONE_PREFIX}")
    def phone_e164(cls, phone: Series[str]) -> Series[bool]:
        if cls._default_phone_region is None:
            return phone.str.fullmatch(E164_PATTERN)
        # with a region, a number without + is judged by phone_invalid_for_region (normalise made the valid E.164)
        return phone.str.fullmatch(E164_PATTERN) | ~phone.str.startswith("+")

    @pandera.check(f"^{PHONE_PREFIX}")
    def phone_invalid_for_region(cls, phone: Series[str]) -> Series[bool]:
        if cls._default_phone_region is None:
            return pd.Series(True, index=phone.index)  # no region: nothing to judge, no scan
        return phone.str.startswith("+")

    @pandera.check("phones_given")
    def phone_present(cls, phones_given: Series[np.int64]) -> Series[bool]:
        return phones_given > 0

    @pandera.check("consent_timestamp", ignore_na=False)
    def consent_present(cls, consent: Series[str]) -> Series[bool]:
        return consent.notna()

    @pandera.check("consent_unparsed")
    def consent_parseable(cls, unparsed: Series[bool]) -> Series[bool]:
        return ~unparsed

    @pandera.check("consent_zoneless")
    def consent_timezone(cls, zoneless: Series[bool]) -> Series[bool]:
        return ~zoneless

    @pandera.check("consent_at")
    def consent_not_future(cls, consent_at: Series[pd.Timestamp]) -> Series[bool]:
        return consent_at <= cls._now() + CLOCK_SKEW

    @pandera.check("consent_at")
    def consent_max_age(cls, consent_at: Series[pd.Timestamp]) -> Series[bool]:
        return consent_at >= cls._now() - timedelta(days=cls._max_consent_age_days)

    @pandera.check("opt_in_status", ignore_na=False)
    def opt_in_status_allowed(cls, opt_in: Series[str]) -> Series[bool]:
        return opt_in.isin(ALLOWED_OPT_IN)  # missing is not allowed either

    @pandera.check("longest_field")
    def field_too_long(cls, longest: Series[np.int64]) -> Series[bool]:
        return longest <= MAX_FIELD_LENGTH

    @pandera.check("record_chars")
    def record_too_long(cls, record_chars: Series[np.int64]) -> Series[bool]:
        return record_chars <= (cls._max_record_chars or np.iinfo(np.int64).max)


@dataclass
class ChunkValidation:
    """One validated chunk: the records to import (arrow), the rejections, and what was normalised."""

    valid: pa.Table
    rejects: pd.DataFrame
    rejected_rows: int
    normalised: dict[str, int] = field(default_factory=dict)


class SeenContactIds:
    """The uniqueness rule across a whole file, in flat memory: contactIds kept as sorted 64-bit hashes
    (16 MB for 2M ids). Two different ids sharing a hash would be reported as a repeat: at 2M ids the chance
    is about 1 in 10^7 per file."""

    def __init__(self) -> None:
        self._seen = np.empty(0, dtype=np.uint64)  # the hashes of earlier chunks, sorted

    def repeats(self, contact_ids: pd.Series) -> np.ndarray:
        """Per row: does this id appear earlier in the chunk or in an earlier chunk? Then remember the chunk."""
        ids = arrow_strings(contact_ids)
        present = pc.is_valid(ids).to_numpy(zero_copy_only=False)
        candidates = np.flatnonzero(present)
        hashes = arrow_text.string_hashes(ids)[candidates]
        if not len(hashes):
            return present  # no id at all: nothing repeats
        order = np.argsort(hashes)
        ordered = hashes[order]
        # within a run of equal hashes the earliest row is the original, every other one a repeat
        new_run = np.concatenate([[True], ordered[1:] != ordered[:-1]])
        original = np.minimum.reduceat(order, np.flatnonzero(new_run))
        repeat_ordered = order != original[np.cumsum(new_run) - 1]
        if len(self._seen):
            at = np.searchsorted(self._seen, ordered).clip(max=len(self._seen) - 1)  # sorted queries: one sweep
            repeat_ordered |= self._seen[at] == ordered
        repeat = np.zeros(len(present), dtype=bool)
        repeat[candidates[order]] = repeat_ordered
        # two sorted runs: the stable sort merges them in one pass
        self._seen = np.sort(np.concatenate([self._seen, ordered[~repeat_ordered]]), kind="stable")
        return repeat


def normalise(frame: pd.DataFrame, default_phone_region: str | None = None) -> dict[str, int]:
    """Repairs we allow, in place, each counted in rows: phone punctuation, numbers without + in the default
    region written in E.164, whitespace around contactIds, opt-in letter case."""
    counts: dict[str, int] = {}
    changed_rows = np.zeros(len(frame), dtype=bool)
    for column in (c for c in frame.columns if c.startswith(PHONE_PREFIX)):
        raw = arrow_strings(frame[column])
        punctuated = np.flatnonzero(arrow_text.rows_with_bytes(raw, _PHONE_PUNCTUATION_BYTES))
        if not len(punctuated):
            continue  # nothing for the regex to remove (the usual case: one byte scan instead of a regex pass)
        before = raw.take(punctuated)
        after = pc.replace_substring_regex(before, _PHONE_PUNCTUATION, "")
        differs = pc.fill_null(pc.not_equal(before, after), False).to_numpy(zero_copy_only=False)
        if differs.any():
            after = pc.if_else(pc.equal(after, ""), pa.scalar(None, raw.type), after)
            changed = np.zeros(len(frame), dtype=bool)
            changed[punctuated[differs]] = True
            cleaned = pc.replace_with_mask(raw, pa.array(changed), after.filter(pa.array(differs)))
            frame[column] = _series(cleaned, frame.index)
            changed_rows |= changed
    if changed_rows.any():
        counts["phone_punctuation_removed"] = int(changed_rows.sum())
    if default_phone_region:
        regional = _phones_in_region(frame, default_phone_region)
        if regional:
            counts["phone_region_to_e164"] = regional
    raw = arrow_strings(frame["contact_id"])
    # only an id starting or ending with ASCII whitespace or a non-ASCII character can have something to trim
    edged = arrow_text.rows_with_edge_bytes(raw, _EDGE_BYTES).any()
    trimmed = pc.replace_substring_regex(raw, _EDGE_INVISIBLE, "") if edged else raw
    changed = pc.fill_null(pc.not_equal(raw, trimmed), False).to_numpy(zero_copy_only=False) if edged else None
    if edged and changed.any():
        # an id that is only whitespace or invisible characters is no id: contact_id_present rejects it
        emptied = pc.equal(trimmed, "")
        trimmed = pc.if_else(emptied, pa.scalar(None, pa.large_string()), trimmed)
        frame["contact_id"] = _series(trimmed, frame.index)
        kept = changed & ~pc.fill_null(emptied, False).to_numpy(zero_copy_only=False)
        if kept.any():
            counts["contact_id_trimmed"] = int(kept.sum())
    raw = arrow_strings(frame["opt_in_status"])
    allowed = pc.fill_null(pc.is_in(raw, pa.array(ALLOWED_OPT_IN)), True).to_numpy(zero_copy_only=False)
    others = np.flatnonzero(~allowed)  # only values not already allowed can be repaired
    if not len(others):
        return counts
    given = raw.take(others)
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(given))
    repairable = pc.fill_null(
        pc.and_(pc.not_equal(given, lowered), pc.is_in(lowered, pa.array(ALLOWED_OPT_IN))), False
    ).to_numpy(zero_copy_only=False)
    if repairable.any():
        fixable = np.zeros(len(frame), dtype=bool)
        fixable[others[repairable]] = True
        repaired = pc.replace_with_mask(raw, pa.array(fixable), lowered.filter(pa.array(repairable)))
        frame["opt_in_status"] = _series(repaired, frame.index)
        counts["opt_in_status_lowercased"] = int(fixable.sum())
    return counts


def phone_region(value: str | None) -> str | None:
    """A ``default_phone_region`` param as phonenumbers' region code (``gb`` -> ``GB``); empty means none."""
    if not value or not str(value).strip():
        return None
    import phonenumbers

    region = str(value).strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"default_phone_region {value!r} is not a region phonenumbers knows (e.g. US, GB, DE)")
    return region


def _phones_in_region(frame: pd.DataFrame, region: str) -> int:
    """Numbers without + parsed for ``region``: valid ones replaced by their E.164 form, in place; the others stay
    as they are (``phone_invalid_for_region`` rejects them). Only those cells reach the parser, each distinct
    value once. Returns how many rows had a number rewritten."""
    import phonenumbers

    rewritten_rows = np.zeros(len(frame), dtype=bool)
    for column in (c for c in frame.columns if c.startswith(PHONE_PREFIX)):
        raw = arrow_strings(frame[column])
        national = pc.fill_null(pc.invert(pc.starts_with(raw, "+")), False).to_numpy(zero_copy_only=False)
        if not national.any():
            continue
        values = frame[column].to_numpy(dtype=object)
        e164: dict[str, str | None] = {}
        for value in pd.unique(values[national]):
            try:
                number = phonenumbers.parse(value, region)
            except phonenumbers.NumberParseException:
                e164[value] = None
                continue
            valid = phonenumbers.is_valid_number(number)
            e164[value] = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) if valid else None
        at = np.flatnonzero(national)
        converted = np.array([e164[v] for v in values[at]], dtype=object)
        ok = np.array([v is not None for v in converted], dtype=bool)
        if ok.any():
            values = values.copy()
            values[at[ok]] = converted[ok]
            frame[column] = pd.Series(values, index=frame.index).astype(frame[column].dtype)
            rewritten_rows[at[ok]] = True
    return int(rewritten_rows.sum())


def _series(values: pa.Array, index: pd.Index) -> pd.Series:
    return pd.Series(values.to_pandas(types_mapper=pd.ArrowDtype).astype("str"), index=index)


def prepare(frame: pd.DataFrame, seen: SeenContactIds) -> pd.DataFrame:
    """Add the derived columns the schema checks; each is a plain vectorised computation."""
    phone_columns = [c for c in frame.columns if c.startswith(PHONE_PREFIX)]
    frame[PHONE_COUNT] = frame[phone_columns].notna().sum(axis=1).astype("int64") if phone_columns else 0
    frame[CONTACT_ID_REPEAT] = seen.repeats(frame["contact_id"])
    consent = arrow_strings(frame["consent_timestamp"])
    iso = pc.fill_null(pc.match_substring_regex(consent, _ISO_8601), False)
    # beyond microseconds nothing is kept (the API gets milliseconds); parsing at microsecond resolution also
    # keeps a far-future year a date (consent_not_future) instead of a nanosecond overflow
    to_parse = pc.replace_substring_regex(consent, r"(\.\d{6})\d+", r"\1")
    parsed = pd.to_datetime(
        pd.Series(pc.if_else(iso, to_parse, pa.scalar(None, pa.large_string())).to_pandas(), dtype=object),
        utc=True, format="ISO8601", errors="coerce",
    )
    frame[CONSENT_AT] = parsed.astype("datetime64[us, UTC]").array
    given = pc.is_valid(consent).to_numpy(zero_copy_only=False)
    frame[CONSENT_UNPARSED] = given & parsed.isna().to_numpy()
    has_zone = pc.fill_null(pc.match_substring_regex(consent, _HAS_ZONE), False).to_numpy(zero_copy_only=False)
    frame[CONSENT_ZONELESS] = parsed.notna().to_numpy() & ~has_zone
    lengths = np.zeros(len(frame), dtype=np.int64)
    longest_column = np.full(len(frame), "", dtype=object)
    for column in frame.columns:
        if column in _DERIVED or column == ROW_NUMBER:
            continue
        values = arrow_strings(frame[column])
        if (pc.max(pc.binary_length(values)).as_py() or 0) <= MAX_FIELD_LENGTH:
            continue  # bytes bound characters: no value here can be too long
        length = pc.fill_null(pc.utf8_length(values), 0).to_numpy(zero_copy_only=False)
        longer = length > lengths
        longest_column[longer] = display_column(column)
        lengths = np.maximum(lengths, length)
    frame[LONGEST_FIELD] = lengths
    frame[LONGEST_FIELD_COLUMN] = longest_column
    return frame


def csv_record_chars(frame: pd.DataFrame) -> np.ndarray:
    """Each record's length as the calling-list CSV line the call_lists import writes (uploads.csv_files): every
    column once, comma-separated, a cell quoted when it holds a comma, quote or line break (quotes doubled), the
    consent as sent (UTC, milliseconds). Vectorised; the line break is not counted."""
    columns = [c for c in frame.columns if c not in _DERIVED and c not in (ROW_NUMBER, SOURCE_ERROR)]
    total = np.full(len(frame), len(columns) - 1, dtype=np.int64)
    for column in columns:
        if column == "consent_timestamp":
            total += CONSENT_SENT_CHARS
            continue
        values = arrow_strings(frame[column])
        length = pc.fill_null(pc.utf8_length(values), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        quoted = pc.fill_null(pc.match_substring_regex(values, r'[,"\r\n]'), False).to_numpy(zero_copy_only=False)
        quotes = pc.fill_null(pc.count_substring(values, '"'), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        total += length + np.where(quoted, 2 + quotes, 0)
    return total


def validate_chunk(
    frame: pd.DataFrame,
    schema: type[ContactRecordSchema],
    seen: SeenContactIds,
) -> ChunkValidation:
    """Normalise, validate (every reason of every failing row) and split one canonical chunk: a vectorised
    pre-pass decides every rule for the whole chunk and only the rows it flags go through the model
    (``prepass``); a schema declaring a rule the pre-pass does not know is validated whole."""
    from include.cxone_import import prepass  # builds on this module

    if _prepass_decides(schema):
        return prepass.validate_chunk_prepassed(frame, schema, seen)
    return validate_chunk_whole(frame, schema, seen)


def _prepass_decides(schema: type[ContactRecordSchema]) -> bool:
    """Whether the pre-pass knows every rule the schema declares; when not, says which it lacks (the chunks are then
    validated whole)."""
    from include.cxone_import import prepass  # builds on this module

    unknown = sorted(prepass.schema_rules(schema) - prepass.PREPASS_RULES)
    if unknown:
        log.warning("rules %s have no pre-pass: the chunk is validated whole", unknown)
    return not unknown


class ChunkValidator:
    """Validates one file chunk by chunk (what the validate task does): like :func:`validate_chunk`, except that the
    model writes the reasons of the flagged rows of several chunks in one call, up to ``model_rows`` rows at a time:
    a model call costs about as much for 4,000 rows as for 20,000 (pandera consolidates each failing check's cases
    once per call). A chunk's :class:`ChunkValidation` therefore carries the rejections that became final while it
    was validated (possibly earlier chunks'); :meth:`finish` returns the rest. Its valid records and
    ``rejected_rows`` are its own, decided by the pre-pass."""

    def __init__(self, schema: type[ContactRecordSchema], *, model_rows: int = 100_000) -> None:
        from include.cxone_import import prepass  # builds on this module

        self._prepass = prepass
        self.schema = schema
        self.seen = SeenContactIds()
        self._model_rows = model_rows
        self._flagged: list[pd.DataFrame] = []
        self._pending = 0
        self._whole = not _prepass_decides(schema)

    def chunk(self, frame: pd.DataFrame) -> ChunkValidation:
        if self._whole:
            return validate_chunk_whole(frame, self.schema, self.seen)
        split = self._prepass.prepass_chunk(frame, self.schema, self.seen)
        if len(split.flagged):
            self._flagged.append(split.flagged)
            self._pending += len(split.flagged)
        rejects = self._model() if self._pending >= self._model_rows else _no_rejects()
        return ChunkValidation(valid=split.valid, rejects=rejects, rejected_rows=len(split.flagged),
                               normalised=split.normalised)

    def finish(self) -> pd.DataFrame:
        """The rejections not yet returned."""
        return self._model()

    def _model(self) -> pd.DataFrame:
        if not self._flagged:
            return _no_rejects()
        flagged = pd.concat(self._flagged, ignore_index=True) if len(self._flagged) > 1 else self._flagged[0]
        self._flagged, self._pending = [], 0
        return self._prepass.model_rejections(self.schema, flagged)


def _no_rejects() -> pd.DataFrame:
    return pd.DataFrame(columns=REJECT_COLUMNS)


def validate_chunk_whole(
    frame: pd.DataFrame,
    schema: type[ContactRecordSchema],
    seen: SeenContactIds,
) -> ChunkValidation:
    """The reference: normalise, derive, validate every row with the model (lazy) and split one chunk."""
    frame = frame.reset_index(drop=True)
    normalised = normalise(frame, schema._default_phone_region)
    prepare(frame, seen)
    if schema._max_record_chars:
        frame[RECORD_CHARS] = csv_record_chars(frame)
    rejects = model_reasons(schema, frame)
    keep = np.ones(len(frame), dtype=bool)
    keep[rejects["index"].to_numpy()] = False
    columns = [c for c in frame.columns if c not in _DERIVED and c != SOURCE_ERROR]
    valid = pa.Table.from_pandas(frame[columns], preserve_index=False).filter(pa.array(keep))
    consent_utc = pa.array(frame[CONSENT_AT].to_numpy()[keep]).cast(pa.timestamp("ms", tz="UTC"), safe=False)
    # sent as UTC with millisecond precision: 2024-11-01T09:15:00.000Z whatever offset or precision came in
    valid = valid.set_column(
        valid.schema.get_field_index("consent_timestamp"), "consent_timestamp",
        pc.strftime(consent_utc, format="%Y-%m-%dT%H:%M:%SZ").cast(valid.schema.field("consent_timestamp").type),
    )
    return ChunkValidation(
        valid=valid,
        rejects=rejects.drop(columns=["index"]),
        rejected_rows=int((~keep).sum()),
        normalised=normalised,
    )


def model_reasons(schema: type[ContactRecordSchema], frame: pd.DataFrame) -> pd.DataFrame:
    """Validate ``frame`` with the model (lazy: every failing check of every row) and turn its failure cases into
    rejections (``index``: the row's position in ``frame``)."""
    try:
        schema.validate(frame, lazy=True)
        failures = pd.DataFrame({"index": pd.Series(dtype="int64"), "column": [], "check": []})
    except pandera.errors.SchemaErrors as exc:
        failures = exc.failure_cases
    return _rejections(frame, failures)


def _rejections(frame: pd.DataFrame, failures: pd.DataFrame) -> pd.DataFrame:
    """failure_cases -> one row per (row, column, rule) with the user-facing column and a masked value."""
    unknown = failures[failures["index"].isna() | ~failures["check"].isin(RULE_MESSAGES.keys())]
    if len(unknown):
        raise SchemaContractError(unknown.head(5).to_string())
    rows = pd.DataFrame(
        {
            "index": failures["index"].astype("int64").to_numpy(),
            "rule": failures["check"].astype("str").to_numpy(),
            "column": failures["column"].astype("str").to_numpy(),
        }
    )
    derived = rows["rule"].isin(RULE_COLUMN.keys())
    rows.loc[derived, "column"] = rows.loc[derived, "rule"].map(RULE_COLUMN)
    too_long = (rows["rule"] == "field_too_long").to_numpy()
    if too_long.any():
        rows.loc[too_long, "column"] = frame[LONGEST_FIELD_COLUMN].to_numpy(dtype=object)[rows.loc[too_long, "index"]]
    unreadable = rows.loc[rows["rule"].isin(SOURCE_RULES), "index"]
    if len(unreadable):
        rows = rows[~rows["index"].isin(unreadable) | rows["rule"].isin(SOURCE_RULES)]
    rows = rows.drop_duplicates().sort_values(["index", "rule", "column"], kind="stable").reset_index(drop=True)
    index = rows["index"].to_numpy()
    values = np.full(len(rows), "", dtype=object)
    for column in rows["column"].unique():
        if column not in frame.columns:
            continue
        at = (rows["column"] == column).to_numpy()
        raw = frame[column].to_numpy(dtype=object)[index[at]]
        values[at] = [mask_value(column, str(v)) if isinstance(v, str) else "" for v in raw]
    return pd.DataFrame(
        {
            "index": index,
            "row_number": frame[ROW_NUMBER].to_numpy()[index],
            "contact_id": frame["contact_id"].to_numpy(dtype=object)[index],
            "column": rows["column"].to_numpy(),
            "rule": rows["rule"].to_numpy(),
            "message": rows["rule"].map(RULE_MESSAGES).to_numpy(),
            "value_masked": values,
        }
    )


class SchemaContractError(RuntimeError):
    """pandera reported a failure this module does not map to a rule (a bug here, not bad input)."""
