"""The vectorised pre-pass: every rule of ``ContactRecordSchema`` decided for a whole chunk with Arrow and numpy,
so that pandera's lazy validation, which writes every reason, runs only on the rows that break a rule.

The pandera model stays the one declared schema: the pre-pass computes the columns it checks (the same ones
``prepare`` derives) and, per rule, the rows whose check would fail. The rows it flags, with those columns, are
validated by the model; if the model does not confirm exactly those rows, that is a bug in one of the two and the
chunk fails loudly (``SchemaContractError``). A rule the pre-pass does not know sends the chunk through the model
whole (``validate_chunk_whole``), so a new rule is never skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from include.cxone_import.arrow_text import (
    format_utc_milliseconds,
    parse_iso8601,
    string_buffers,
    valid_mask,
)
from include.cxone_import.schema import (
    _DERIVED,
    ALLOWED_OPT_IN,
    CLOCK_SKEW,
    CONSENT_AT,
    CONSENT_UNPARSED,
    CONSENT_ZONELESS,
    CONTACT_ID_REPEAT,
    E164_PATTERN,
    LONGEST_FIELD,
    LONGEST_FIELD_COLUMN,
    MAX_FIELD_LENGTH,
    PHONE_COUNT,
    RECORD_CHARS,
    SOURCE_RULES,
    ChunkValidation,
    ContactRecordSchema,
    SchemaContractError,
    SeenContactIds,
    csv_record_chars,
    model_reasons,
    normalise,
)
from include.cxone_import.sources import (
    CUSTOM_PREFIX,
    PHONE_PREFIX,
    ROW_NUMBER,
    SOURCE_ERROR,
    arrow_strings,
    display_column,
)

log = logging.getLogger(__name__)

# every rule the pre-pass decides; a schema declaring another one is validated whole
PREPASS_RULES = frozenset(
    {
        "json_parseable", "csv_field_count", "line_too_long", "json_depth", "custom_field_count", "phone_number_count",
        "contact_id_present", "contact_id_unique", "phone_present", "phone_e164",
        "phone_invalid_for_region", "consent_present", "consent_parseable", "consent_timezone", "consent_not_future",
        "consent_max_age", "opt_in_status_allowed", "field_too_long", "record_too_long",
    }
)  # fmt: skip
_MICROS = pd.Timedelta(microseconds=1)


@dataclass
class Decided:
    """What the pre-pass found for one chunk: the derived columns and, per rule, the rows that break it."""

    derived: dict[str, np.ndarray]
    consent_micros: np.ndarray  # UTC microseconds (0 where consent did not parse)
    consent_parsed: np.ndarray
    failing: dict[str, np.ndarray]

    @property
    def flagged(self) -> np.ndarray:
        """Per row: does it break any rule?"""
        rows = len(self.consent_micros)
        return np.logical_or.reduce([*self.failing.values(), np.zeros(rows, dtype=bool)])


@cache
def schema_rules(schema: type[ContactRecordSchema]) -> frozenset[str]:
    """The rule (check) names the model declares."""
    declared = schema.to_schema()
    checks = [check for column in declared.columns.values() for check in column.checks] + list(declared.checks)
    return frozenset(check.name for check in checks)


def decide(frame: pd.DataFrame, schema: type[ContactRecordSchema], seen: SeenContactIds) -> Decided:
    """Every rule for the whole (normalised) chunk, in Arrow and numpy; records the chunk's ids in ``seen``."""
    rows = len(frame)
    text = {column: arrow_strings(frame[column]) for column in frame.columns if column != ROW_NUMBER}
    failing: dict[str, np.ndarray] = {}
    region = schema._default_phone_region
    phone_columns = [c for c in frame.columns if c.startswith(PHONE_PREFIX)]
    phones_given = np.zeros(rows, dtype=np.int64)
    not_e164 = np.zeros(rows, dtype=bool)
    national = np.zeros(rows, dtype=bool)
    for column in phone_columns:
        phone = text[column]
        given = valid_mask(phone)
        phones_given += given
        without_plus = given & ~pc.fill_null(pc.starts_with(phone, "+"), False).to_numpy(zero_copy_only=False)
        e164 = pc.fill_null(pc.match_substring_regex(phone, E164_PATTERN), False).to_numpy(zero_copy_only=False)
        if region is None:
            not_e164 |= given & ~e164
        else:
            not_e164 |= given & ~e164 & ~without_plus
            national |= without_plus
    failing["phone_e164"] = not_e164
    failing["phone_invalid_for_region"] = national
    failing["phone_present"] = phones_given == 0

    if SOURCE_ERROR in frame.columns:
        source_error = text[SOURCE_ERROR]
        for rule in SOURCE_RULES:
            failing[rule] = pc.fill_null(pc.starts_with(source_error, rule), False).to_numpy(zero_copy_only=False)

    contact_ids = frame["contact_id"]
    failing["contact_id_present"] = ~valid_mask(text["contact_id"])
    repeat = seen.repeats(contact_ids)
    failing["contact_id_unique"] = repeat

    consent = text["consent_timestamp"]
    given = valid_mask(consent)
    micros, parsed, zoned = parse_iso8601(consent)
    unparsed = given & ~parsed
    zoneless = parsed & ~zoned
    now = schema._now()
    epoch = pd.Timestamp(0, tz="UTC")
    latest = (now + CLOCK_SKEW - epoch) // _MICROS
    earliest = (now - pd.Timedelta(days=schema._max_consent_age_days) - epoch) // _MICROS
    failing["consent_present"] = ~given
    failing["consent_parseable"] = unparsed
    failing["consent_timezone"] = zoneless
    failing["consent_not_future"] = parsed & (micros > latest)
    failing["consent_max_age"] = parsed & (micros < earliest)

    opt_in = text["opt_in_status"]
    failing["opt_in_status_allowed"] = ~pc.fill_null(pc.is_in(opt_in, pa.array(ALLOWED_OPT_IN)), False).to_numpy(
        zero_copy_only=False
    )

    longest = np.zeros(rows, dtype=np.int64)
    longest_column = np.full(rows, "", dtype=object)
    for column in frame.columns:
        if column in _DERIVED or column == ROW_NUMBER:
            continue
        values = text[column]
        offsets, _ = string_buffers(values)
        if not rows or int(np.diff(offsets).max()) <= MAX_FIELD_LENGTH:
            continue  # bytes bound characters: no value here can be too long
        length = pc.fill_null(pc.utf8_length(values), 0).to_numpy(zero_copy_only=False)
        longer = length > longest
        longest_column[longer] = display_column(column)
        longest = np.maximum(longest, length)
    failing["field_too_long"] = longest > MAX_FIELD_LENGTH

    derived = {
        PHONE_COUNT: phones_given,
        CONTACT_ID_REPEAT: repeat,
        CONSENT_UNPARSED: unparsed,
        CONSENT_ZONELESS: zoneless,
        LONGEST_FIELD: longest,
        LONGEST_FIELD_COLUMN: longest_column,
    }
    if schema._max_record_chars:
        record_chars = csv_record_chars(frame)
        derived[RECORD_CHARS] = record_chars
        failing["record_too_long"] = record_chars > schema._max_record_chars
    return Decided(derived=derived, consent_micros=micros, consent_parsed=parsed, failing=failing)


def derived_frame(frame: pd.DataFrame, decided: Decided, rows: np.ndarray) -> pd.DataFrame:
    """Those rows of the chunk with the columns the model checks, as ``prepare`` would have built them."""
    checked = [c for c in frame.columns if not c.startswith(CUSTOM_PREFIX)]  # custom fields: no rule reads them
    subset = frame.take(rows)[checked].reset_index(drop=True)
    for name, values in decided.derived.items():
        subset[name] = values[rows]
    at = pd.to_datetime(decided.consent_micros[rows], unit="us", utc=True).as_unit("us")
    subset[CONSENT_AT] = pd.Series(at, index=subset.index).where(decided.consent_parsed[rows])
    return subset


@dataclass
class PrepassedChunk:
    """A chunk after the pre-pass: the records to import, and the flagged rows (with the columns the model
    checks) whose reasons the model is still to write."""

    valid: pa.Table
    flagged: pd.DataFrame
    normalised: dict[str, int]


def prepass_chunk(frame: pd.DataFrame, schema: type[ContactRecordSchema], seen: SeenContactIds) -> PrepassedChunk:
    """Normalise, decide every rule with the pre-pass and split the chunk; the model has not run yet."""
    frame = frame.reset_index(drop=True)
    normalised = normalise(frame, schema._default_phone_region)
    decided = decide(frame, schema, seen)
    flagged = np.flatnonzero(decided.flagged)
    subset = derived_frame(frame, decided, flagged)
    keep = np.ones(len(frame), dtype=bool)
    keep[flagged] = False
    columns = [c for c in frame.columns if c not in _DERIVED and c != SOURCE_ERROR]
    valid = pa.Table.from_pandas(frame[columns], preserve_index=False)
    if len(flagged):
        valid = valid.filter(pa.array(keep))
    # sent as UTC with millisecond precision: 2024-11-01T09:15:00.000Z whatever offset or precision came in
    at = valid.schema.get_field_index("consent_timestamp")
    valid = valid.set_column(
        at, "consent_timestamp",
        format_utc_milliseconds(decided.consent_micros[keep]).cast(valid.schema.field(at).type),
    )
    return PrepassedChunk(valid=valid, flagged=subset.reset_index(drop=True), normalised=normalised)


def model_rejections(schema: type[ContactRecordSchema], flagged: pd.DataFrame) -> pd.DataFrame:
    """The model's reasons for rows the pre-pass flagged (of one chunk or several): every failing rule of every row.
    The model checks the very columns the pre-pass derived, so it must reject every one of them: a difference is a
    bug in one of the two (``SchemaContractError``)."""
    rejects = model_reasons(schema, flagged)
    confirmed = np.unique(rejects["index"].to_numpy())
    if len(confirmed) != len(flagged):
        raise SchemaContractError(f"the pre-pass flagged {len(flagged)} rows, the schema rejects {len(confirmed)} of them")
    return rejects.drop(columns=["index"])


def validate_chunk_prepassed(
    frame: pd.DataFrame, schema: type[ContactRecordSchema], seen: SeenContactIds
) -> ChunkValidation:
    """Normalise, decide every rule with the pre-pass, validate only the flagged rows with the model (lazy: every
    reason), split the chunk. Same result as validating the whole chunk with the model."""
    chunk = prepass_chunk(frame, schema, seen)
    return ChunkValidation(valid=chunk.valid, rejects=model_rejections(schema, chunk.flagged),
                           rejected_rows=len(chunk.flagged), normalised=chunk.normalised)
