"""The contact record schema, generated from the rule table (``rules.RULES``), and the one way to validate: a
:class:`ChunkValidator`.

Per chunk the validator normalises what may be normalised (and counts it), derives the columns the rules read,
and decides every rule for every row with the table's vectorised predicates (the pre-pass). Only the rows that
break a rule go through the pandera model, generated from the same table, which writes every reason of each (lazy
validation): rejections with row number, contactId, column, rule, message and masked value. The model must reject
exactly the rows the pre-pass flagged; anything else is a bug here (``SchemaContractError``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pyarrow.compute as pc

from include.cxone_import.arrow_text import (
    arrow_strings,
    csv_field_chars,
    format_utc_milliseconds,
    pandas_strings,
    parse_iso8601,
    rows_with_bytes,
    rows_with_edge_bytes,
    string_buffers,
    string_hashes,
)
from include.cxone_import.masking import mask_value
from include.cxone_import.rules import (
    ALLOWED_OPT_IN,
    CONSENT_AT,
    CONSENT_UNPARSED,
    CONSENT_ZONELESS,
    CONTACT_ID_REPEAT,
    LONGEST_FIELD,
    LONGEST_FIELD_COLUMN,
    MAX_FIELD_LENGTH,
    PHONE_COUNT,
    PHONES,
    RECORD_CHARS,
    RULE_BY_NAME,
    RULES,
    SOURCE_RULES,
    Rule,
    RunLimits,
)
from include.cxone_import.sources import CUSTOM_PREFIX, PHONE_PREFIX, ROW_NUMBER, SOURCE_ERROR, display_column

log = logging.getLogger(__name__)

WITHDRAWN_OPT_IN = ("revoked", "opted_out")  # consent withdrawn: a removal under sync (a reject either way)
_PHONE_PUNCTUATION = r"[\s\-\.\(\)]"
_PHONE_PUNCTUATION_BYTES = b" \t\n\v\f\r-.()"  # every byte the regex removes (RE2's \s is ASCII), and \v
# whitespace (Unicode) and the invisible characters a CRM export carries around ids: ZWSP/ZWNJ/ZWJ, word joiner, BOM
_EDGE_BYTES = bytes([*b" \t\n\v\f\r", *range(0x80, 0x100)])  # what such an edge can start with in UTF-8
_EDGE_INVISIBLE = r"^[\s\p{Z}\x{200B}-\x{200D}\x{2060}\x{FEFF}]+|[\s\p{Z}\x{200B}-\x{200D}\x{2060}\x{FEFF}]+$"
CONSENT_SENT_CHARS = len("2024-11-01T09:15:00.000Z")  # consent as sent (UTC, milliseconds), whatever came in
# the first and last UTC microsecond a consent can be written in ISO-8601 (years 0000-9999)
_FIRST_WRITABLE = np.datetime64("0000-01-01T00:00:00", "us").astype(np.int64)
_LAST_WRITABLE = np.datetime64("9999-12-31T23:59:59.999999", "us").astype(np.int64)
REJECT_COLUMNS = ("row_number", "contact_id", "column", "rule", "message", "value_masked")
# The columns the model checks: the canonical frame's (custom fields travel alongside, unchecked) and the derived
_CHECKED_COLUMNS: dict[str, dict[str, Any]] = {
    ROW_NUMBER: {"dtype": np.int64, "unique": True},
    "contact_id": {"dtype": str, "nullable": True},
    PHONES: {"dtype": str, "nullable": True, "regex": True},
    "consent_timestamp": {"dtype": str, "nullable": True},
    "opt_in_status": {"dtype": str, "nullable": True},
    SOURCE_ERROR: {"dtype": str, "nullable": True, "required": False},  # only where the reader refused a record
    PHONE_COUNT: {"dtype": np.int64},
    CONTACT_ID_REPEAT: {"dtype": bool},
    CONSENT_AT: {"dtype": pd.DatetimeTZDtype(unit="us", tz="UTC"), "nullable": True},
    CONSENT_UNPARSED: {"dtype": bool},
    CONSENT_ZONELESS: {"dtype": bool},
    LONGEST_FIELD: {"dtype": np.int64},
    RECORD_CHARS: {"dtype": np.int64, "required": False},  # only when the run has a record limit
}
_DERIVED = (PHONE_COUNT, CONTACT_ID_REPEAT, CONSENT_AT, CONSENT_UNPARSED, CONSENT_ZONELESS, LONGEST_FIELD,
            LONGEST_FIELD_COLUMN, RECORD_CHARS)


def consent_withdrawn(opt_in: Any) -> np.ndarray:
    """Which ``optInStatus`` values say the contact withdrew consent: ``revoked`` or ``opted_out``, compared
    case-insensitively after trimming (vectorised)."""
    values = arrow_strings(opt_in) if not isinstance(opt_in, (pa.Array, pa.ChunkedArray)) else opt_in
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(values))
    return pc.fill_null(pc.is_in(lowered, pa.array(WITHDRAWN_OPT_IN)), False).to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class ContactRecordSchema(RunLimits):
    """The record schema of one run: the rule table with this run's limits, as a pandera model (:attr:`model`) and
    as the pre-pass (:meth:`failing`)."""

    @classmethod
    def policy(
        cls, max_consent_age_days: int, as_of: datetime, default_phone_region: str | None = None,
        max_record_chars: int | None = None,
    ) -> ContactRecordSchema:
        """The schema with this run's consent window, phone region (numbers without + are parsed for it) and record
        limit (the call_lists profile: a record as a CSV line; None: no limit)."""
        if max_consent_age_days < 1:
            raise ValueError("max_consent_age_days must be at least 1")
        return cls(int(max_consent_age_days), as_of, phone_region(default_phone_region), max_record_chars)

    @cached_property
    def model(self) -> pandera.DataFrameSchema:
        """The pandera model: each rule a check named after it on the column it reads, so each failure case is one
        (row, column, rule). Lazy validation writes every reason of a row breaking several rules."""
        columns = {name: pandera.Column(**spec, checks=[self._check(rule) for rule in RULES if rule.reads == name])
                   for name, spec in _CHECKED_COLUMNS.items()}
        return pandera.DataFrameSchema(columns, strict=False, coerce=False)  # prepare() builds the right types

    def _check(self, rule: Rule) -> pandera.Check:
        def passes(column: pd.Series) -> pd.Series:
            return pd.Series(~rule.fails(_predicate_input(column), self), index=column.index)

        return pandera.Check(passes, name=rule.name, ignore_na=False)  # the predicate says what a null means

    def failing(self, columns: dict[str, Any]) -> dict[str, np.ndarray]:
        """The pre-pass: per rule, the rows that break it (a rule reading a column the chunk lacks is not decided)."""
        failing: dict[str, np.ndarray] = {}
        for rule in RULES:
            read = [column for column in columns if rule.reads_column(column)]
            if read:
                failing[rule.name] = np.logical_or.reduce([rule.fails(columns[c], self) for c in read])
        return failing


def _predicate_input(column: pd.Series) -> Any:
    """A column of the model's frame as the predicates take it (as the pre-pass holds it)."""
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        return column.dt.tz_localize(None).to_numpy()
    if column.dtype == object or pd.api.types.is_string_dtype(column.dtype):
        return arrow_strings(column)
    return column.to_numpy()


def phone_region(value: str | None) -> str | None:
    """A ``default_phone_region`` param as phonenumbers' region code (``gb`` -> ``GB``); empty means none."""
    if not value or not str(value).strip():
        return None
    import phonenumbers

    region = str(value).strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"default_phone_region {value!r} is not a region phonenumbers knows (e.g. US, GB, DE)")
    return region


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

    def repeats(self, hashes: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Per row (``hashes`` of its id, ``present``: has it one): does this id appear earlier in the chunk or in an
        earlier chunk? Then remember the chunk."""
        candidates = np.flatnonzero(present)
        hashes = hashes[candidates]
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
    region written in E.164 (the others stay, for the region rule to reject), whitespace and invisible
    characters around contactIds, opt-in letter case."""
    counts: dict[str, int] = {}
    punctuated_rows = np.zeros(len(frame), dtype=bool)
    regional_rows = np.zeros(len(frame), dtype=bool)
    for column in (c for c in frame.columns if c.startswith(PHONE_PREFIX)):
        raw = arrow_strings(frame[column])
        cleaned = raw
        punctuated = np.flatnonzero(rows_with_bytes(raw, _PHONE_PUNCTUATION_BYTES))
        if len(punctuated):  # else nothing for the regex to remove (the usual case: a byte scan, no regex pass)
            before = raw.take(punctuated)
            after = pc.replace_substring_regex(before, _PHONE_PUNCTUATION, "")
            differs = pc.fill_null(pc.not_equal(before, after), False).to_numpy(zero_copy_only=False)
            if differs.any():
                after = pc.if_else(pc.equal(after, ""), pa.scalar(None, raw.type), after)
                changed = np.zeros(len(frame), dtype=bool)
                changed[punctuated[differs]] = True
                cleaned = pc.replace_with_mask(raw, pa.array(changed), after.filter(pa.array(differs)))
                punctuated_rows |= changed
        national = (pc.fill_null(pc.invert(pc.starts_with(cleaned, "+")), False).to_numpy(zero_copy_only=False)
                    if default_phone_region else np.zeros(0, dtype=bool))
        if national.any():
            # each distinct number without + parsed once (for the region); a valid one replaced by its E.164 form
            at = np.flatnonzero(national)
            given = cleaned.take(at).to_numpy(zero_copy_only=False)
            e164 = {value: _e164(value, default_phone_region) for value in pd.unique(given)}
            converted = np.array([e164[v] for v in given], dtype=object)
            ok = np.array([v is not None for v in converted], dtype=bool)
            if ok.any():
                rewritten = np.zeros(len(frame), dtype=bool)
                rewritten[at[ok]] = True
                cleaned = pc.replace_with_mask(cleaned, pa.array(rewritten), pa.array(converted[ok], cleaned.type))
                regional_rows |= rewritten
        if cleaned is not raw:
            frame[column] = pandas_strings(cleaned, frame.index)
    if punctuated_rows.any():
        counts["phone_punctuation_removed"] = int(punctuated_rows.sum())
    if regional_rows.any():
        counts["phone_region_to_e164"] = int(regional_rows.sum())
    raw = arrow_strings(frame["contact_id"])
    # only an id starting or ending with ASCII whitespace or a non-ASCII character can have something to trim
    if rows_with_edge_bytes(raw, _EDGE_BYTES).any():
        trimmed = pc.replace_substring_regex(raw, _EDGE_INVISIBLE, "")
        changed = pc.fill_null(pc.not_equal(raw, trimmed), False).to_numpy(zero_copy_only=False)
        if changed.any():
            # an id that is only whitespace or invisible characters is no id (rejected as missing)
            emptied = pc.equal(trimmed, "")
            frame["contact_id"] = pandas_strings(pc.if_else(emptied, pa.scalar(None, pa.large_string()), trimmed),
                                                 frame.index)
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
        frame["opt_in_status"] = pandas_strings(repaired, frame.index)
        counts["opt_in_status_lowercased"] = int(fixable.sum())
    return counts


def _e164(number: str, region: str) -> str | None:
    """A number without + in E.164 when it is a valid number of ``region``, else None."""
    import phonenumbers

    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


@dataclass
class Prepared:
    """One normalised chunk as the rules read it: ``columns`` (the user's as Arrow strings, the derived as numpy),
    and its consent parsed and as sent (UTC, milliseconds)."""

    normalised: dict[str, int]
    columns: dict[str, Any]
    consent_micros: np.ndarray  # UTC microseconds (0 where consent did not parse)
    consent_parsed: np.ndarray
    consent_sent: pa.Array


def prepare(frame: pd.DataFrame, schema: ContactRecordSchema, seen: SeenContactIds) -> Prepared:
    """Normalise the chunk (in place), then derive the columns the rules read about several columns (phones given,
    the consent parsed, each row's longest field and, with a record limit, its length as a CSV line, and whether its
    contactId came before: recorded in ``seen``)."""
    normalised = normalise(frame, schema.default_phone_region)
    rows = len(frame)
    columns: dict[str, Any] = {c: arrow_strings(frame[c]) for c in frame.columns if c != ROW_NUMBER}
    phones_given = np.zeros(rows, dtype=np.int64)
    for column in (c for c in frame.columns if c.startswith(PHONE_PREFIX)):
        phones_given += pc.is_valid(columns[column]).to_numpy(zero_copy_only=False)
    ids = columns["contact_id"]
    consent = columns["consent_timestamp"]
    micros, parsed, zoned = parse_iso8601(consent)
    given = pc.is_valid(consent).to_numpy(zero_copy_only=False)
    # written for every row, the flagged ones too: a consent outside the years 0000-9999 (in UTC) is in the future
    # or older than any consent window, so its row is never sent and its value may be clipped to be written
    sent = format_utc_milliseconds(micros.clip(_FIRST_WRITABLE, _LAST_WRITABLE))
    hashes = string_hashes(ids)
    if schema.max_record_chars:
        user_columns = [c for c in frame.columns if c not in (ROW_NUMBER, SOURCE_ERROR)]
        record_chars = np.full(rows, len(user_columns) - 1, dtype=np.int64)  # the commas
        for column in user_columns:
            if column == "consent_timestamp":
                record_chars += CONSENT_SENT_CHARS  # written as sent, whatever came in
            else:
                record_chars += csv_field_chars(columns[column])
        columns[RECORD_CHARS] = record_chars
    longest = np.zeros(rows, dtype=np.int64)
    longest_column = np.full(rows, "", dtype=object)
    for column in (c for c in frame.columns if c != ROW_NUMBER):
        values = columns[column]
        offsets, _ = string_buffers(values)
        if not rows or int(np.diff(offsets).max()) <= MAX_FIELD_LENGTH:
            continue  # bytes bound characters: no value here can be too long
        length = pc.fill_null(pc.utf8_length(values), 0).to_numpy(zero_copy_only=False)
        longer = length > longest
        longest_column[longer] = display_column(column)
        longest = np.maximum(longest, length)
    columns.update({
        PHONE_COUNT: phones_given, CONSENT_UNPARSED: given & ~parsed, CONSENT_ZONELESS: parsed & ~zoned,
        CONSENT_AT: np.where(parsed, micros, np.iinfo(np.int64).min).view("datetime64[us]"),  # NaT: not parsed
        LONGEST_FIELD: longest, LONGEST_FIELD_COLUMN: longest_column,
        CONTACT_ID_REPEAT: seen.repeats(hashes, pc.is_valid(ids).to_numpy(zero_copy_only=False)),
    })
    return Prepared(normalised=normalised, columns=columns, consent_micros=micros, consent_parsed=parsed,
                    consent_sent=sent)


class ChunkValidator:
    """Validates one file chunk by chunk (the one way to validate). :meth:`chunk` normalises and splits a chunk
    (the pre-pass decides every rule for every row); the model writes the reasons of the flagged rows of several
    chunks in one call, up to ``model_rows`` rows at a time: a model call costs about as much for 4,000 rows as for
    20,000 (pandera consolidates each failing check's cases once per call). A chunk's :class:`ChunkValidation`
    therefore carries the rejections that became final while it was validated (possibly earlier chunks');
    :meth:`finish` returns the rest. Its valid records and ``rejected_rows`` are its own."""

    def __init__(self, schema: ContactRecordSchema, *, model_rows: int = 100_000) -> None:
        self.schema = schema
        self.seen = SeenContactIds()
        self._model_rows = model_rows
        self._flagged: list[pd.DataFrame] = []
        self._pending = 0

    def chunk(self, frame: pd.DataFrame) -> ChunkValidation:
        frame = frame.reset_index(drop=True)
        prepared = prepare(frame, self.schema, self.seen)
        failing = self.schema.failing(prepared.columns)
        flagged = np.logical_or.reduce([*failing.values(), np.zeros(len(frame), dtype=bool)])
        if flagged.any():
            self._flagged.append(_model_frame(frame, prepared, np.flatnonzero(flagged)))
            self._pending += int(flagged.sum())
        sent, normalised = prepared.consent_sent, prepared.normalised
        del prepared  # the chunk's Arrow columns are not held while its valid records are written
        columns = [c for c in frame.columns if c not in _DERIVED and c != SOURCE_ERROR]
        valid = pa.Table.from_pandas(frame[columns], preserve_index=False)
        # sent as UTC with millisecond precision: 2024-11-01T09:15:00.000Z whatever offset or precision came in
        at = valid.schema.get_field_index("consent_timestamp")
        valid = valid.set_column(at, "consent_timestamp", sent.cast(valid.schema.field(at).type))
        if flagged.any():
            valid = valid.filter(pa.array(~flagged))
        rejects = self._model() if self._pending >= self._model_rows else _no_rejects()
        return ChunkValidation(valid=valid, rejects=rejects, rejected_rows=int(flagged.sum()), normalised=normalised)

    def finish(self) -> pd.DataFrame:
        """The rejections not yet returned."""
        return self._model()

    def _model(self) -> pd.DataFrame:
        """The model's reasons for the flagged rows held: it checks the very columns the pre-pass read, so it must
        reject every one of them (a difference is a bug in the generated schema or the pre-pass)."""
        if not self._flagged:
            return _no_rejects()
        flagged = pd.concat(self._flagged, ignore_index=True) if len(self._flagged) > 1 else self._flagged[0]
        self._flagged, self._pending = [], 0
        rejects = model_reasons(self.schema, flagged)
        confirmed = np.unique(rejects["index"].to_numpy())
        if len(confirmed) != len(flagged):
            raise SchemaContractError(
                f"the pre-pass flagged {len(flagged)} rows, the schema rejects {len(confirmed)} of them"
            )
        return rejects.drop(columns=["index"])


def _model_frame(frame: pd.DataFrame, prepared: Prepared, rows: np.ndarray) -> pd.DataFrame:
    """Those rows of the chunk with the columns the model checks."""
    checked = [c for c in frame.columns if not c.startswith(CUSTOM_PREFIX)]  # custom fields: no rule reads them
    subset = frame.take(rows)[checked].reset_index(drop=True)
    for name in _DERIVED:
        if name in prepared.columns and name != CONSENT_AT:
            subset[name] = prepared.columns[name][rows]
    at = pd.to_datetime(prepared.consent_micros[rows], unit="us", utc=True).as_unit("us")
    subset[CONSENT_AT] = pd.Series(at, index=subset.index).where(prepared.consent_parsed[rows])
    return subset


def _no_rejects() -> pd.DataFrame:
    """No rejections, typed as the model's (row numbers int64)."""
    return pd.DataFrame(columns=REJECT_COLUMNS).astype({"row_number": "int64"})


def model_reasons(schema: ContactRecordSchema, frame: pd.DataFrame) -> pd.DataFrame:
    """Validate ``frame`` with the model (lazy: every failing check of every row) and turn its failure cases into
    rejections (``index``: the row's position in ``frame``)."""
    try:
        schema.model.validate(frame, lazy=True)
        failures = pd.DataFrame({"index": pd.Series(dtype="int64"), "column": [], "check": []})
    except pandera.errors.SchemaErrors as exc:
        failures = exc.failure_cases
    return _rejections(frame, failures)


def _rejections(frame: pd.DataFrame, failures: pd.DataFrame) -> pd.DataFrame:
    """failure_cases -> one row per (row, column, rule) with the user-facing column and a masked value."""
    unknown = failures[failures["index"].isna() | ~failures["check"].isin(RULE_BY_NAME.keys())]
    if len(unknown):
        raise SchemaContractError(unknown.head(5).to_string())
    rows = pd.DataFrame(
        {
            "index": failures["index"].astype("int64").to_numpy(),
            "rule": failures["check"].astype("str").to_numpy(),
            "column": failures["column"].astype("str").to_numpy(),
        }
    )
    for rule in (RULE_BY_NAME[name] for name in rows["rule"].unique()):
        at = (rows["rule"] == rule.name).to_numpy()
        if rule.column == LONGEST_FIELD_COLUMN:  # each row names its own
            rows.loc[at, "column"] = frame[LONGEST_FIELD_COLUMN].to_numpy(dtype=object)[rows.loc[at, "index"]]
        elif rule.column is not None:
            rows.loc[at, "column"] = rule.column
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
            "message": rows["rule"].map({name: rule.message for name, rule in RULE_BY_NAME.items()}).to_numpy(),
            "value_masked": values,
        }
    )


class SchemaContractError(RuntimeError):
    """pandera reported a failure this module does not map to a rule (a bug here, not bad input)."""
