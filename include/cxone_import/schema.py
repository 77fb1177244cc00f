"""The contact record schema: one pandera model, validated lazily, turned into per-row rejections.

``validate_chunk`` normalises what may be normalised (and counts it), validates the whole chunk in one lazy
pass so that a row breaking several rules gets every reason, and splits the chunk into valid records and
rejections (row number, contactId, column, rule, message, masked value). Everything is vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import ClassVar

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from include.cxone_import.masking import mask_value
from include.cxone_import.sources import CUSTOM_PREFIX, PHONE_PREFIX, ROW_NUMBER, SOURCE_ERROR

E164_PATTERN = r"^\+[1-9]\d{1,14}$"
ALLOWED_OPT_IN = ("confirmed", "pending")
DEFAULT_MAX_CONSENT_AGE_DAYS = 1825
MAX_FIELD_LENGTH = 10_000
CLOCK_SKEW = timedelta(minutes=5)
_ISO_8601 = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|z|[+-]\d{2}:?\d{2})?$"
_HAS_ZONE = r"(?:Z|z|[+-]\d{2}:?\d{2})$"
_PHONE_PUNCTUATION = r"[\s\-\.\(\)]"

CONSENT_AT = "consent_at"
CONSENT_HAS_ZONE = "consent_has_zone"
SEEN_EARLIER = "contact_id_seen_earlier"
LONGEST_FIELD = "longest_field"
_DERIVED = (CONSENT_AT, CONSENT_HAS_ZONE, SEEN_EARLIER, LONGEST_FIELD)

RULE_MESSAGES = {
    "json_parseable": "the line is not a valid JSON record",
    "contact_id_present": "contactId is missing",
    "contact_id_unique": "contactId appears earlier in the input",
    "phone_present": "the record has no phone number",
    "phone_e164": "phone number is not E.164 (+ then 2 to 15 digits, no leading 0)",
    "consent_present": "consentTimestamp is missing",
    "consent_parseable": "consentTimestamp is not an ISO-8601 date-time",
    "consent_timezone": "consentTimestamp has no time zone (add Z or an offset)",
    "consent_not_future": "consentTimestamp is in the future",
    "consent_max_age": "consent is older than max_consent_age_days",
    "opt_in_status_allowed": "optInStatus must be confirmed or pending",
    "field_too_long": f"a field is longer than {MAX_FIELD_LENGTH} characters",
}
# The column a record-level (dataframe) rule is about, for the rejects report.
RULE_COLUMN = {
    "consent_present": "consent_timestamp",
    "json_parseable": SOURCE_ERROR,
    "contact_id_present": "contact_id",
    "contact_id_unique": "contact_id",
    "phone_present": "phoneNumbers",
    "consent_parseable": "consent_timestamp",
    "consent_timezone": "consent_timestamp",
    "consent_not_future": "consent_timestamp",
    "consent_max_age": "consent_timestamp",
    "opt_in_status_allowed": "opt_in_status",
    "field_too_long": "*",
}
REJECT_COLUMNS = ("row_number", "contact_id", "column", "rule", "message", "value_masked")


class ContactRecordSchema(pa.DataFrameModel):
    """A contact record ready for the CXone records API (one row of the canonical frame).

    Limits that vary per run (``max_consent_age_days``, ``as_of``) are class attributes; ``policy`` makes a
    subclass with them set. Every check is named after its rule so failure cases map one-to-one to rejections.
    """

    row_number: Series[np.int64] = pa.Field(unique=True)
    contact_id: Series[str] = pa.Field(nullable=True)
    phone: Series[str] = pa.Field(alias=f"^{PHONE_PREFIX}", regex=True, nullable=True)
    consent_timestamp: Series[str] = pa.Field(nullable=True)
    consent_at: Series[pd.DatetimeTZDtype(unit="ns", tz="UTC")] = pa.Field(nullable=True)  # type: ignore[valid-type]
    consent_has_zone: Series[bool]
    contact_id_seen_earlier: Series[bool]
    longest_field: Series[np.int64]
    opt_in_status: Series[str] = pa.Field(nullable=True)

    _max_consent_age_days: ClassVar[int] = DEFAULT_MAX_CONSENT_AGE_DAYS
    _as_of: ClassVar[datetime | None] = None

    class Config:
        strict = False  # custom fields (cf_*) and JSONL's source_error travel alongside
        coerce = False  # the frame is built with the right types; a mismatch is our bug, not the user's

    @classmethod
    def policy(cls, max_consent_age_days: int, as_of: datetime) -> type[ContactRecordSchema]:
        """The schema with this run's consent window."""
        if max_consent_age_days < 1:
            raise ValueError("max_consent_age_days must be at least 1")
        attrs = {"_max_consent_age_days": int(max_consent_age_days), "_as_of": as_of}
        return type("ContactRecordPolicy", (cls,), attrs)  # type: ignore[return-value]

    @classmethod
    def _now(cls) -> pd.Timestamp:
        return pd.Timestamp(cls._as_of or datetime.now(timezone.utc)).tz_convert("UTC")

    @pa.check(f"^{PHONE_PREFIX}")
    def phone_e164(cls, phone: Series[str]) -> Series[bool]:
        return phone.str.fullmatch(E164_PATTERN)

    @pa.dataframe_check
    def consent_parseable(cls, frame: pd.DataFrame) -> Series[bool]:
        return frame["consent_timestamp"].isna() | frame[CONSENT_AT].notna()

    @pa.dataframe_check
    def opt_in_status_allowed(cls, frame: pd.DataFrame) -> Series[bool]:
        return frame["opt_in_status"].isin(ALLOWED_OPT_IN)  # missing is not allowed either

    @pa.dataframe_check
    def json_parseable(cls, frame: pd.DataFrame) -> Series[bool]:
        if SOURCE_ERROR not in frame.columns:
            return pd.Series(True, index=frame.index)
        return frame[SOURCE_ERROR].isna()

    @pa.dataframe_check
    def contact_id_present(cls, frame: pd.DataFrame) -> Series[bool]:
        return frame["contact_id"].notna()

    @pa.dataframe_check
    def contact_id_unique(cls, frame: pd.DataFrame) -> Series[bool]:
        ids = frame["contact_id"]
        return ids.isna() | ~(ids.duplicated(keep="first") | frame[SEEN_EARLIER])

    @pa.dataframe_check
    def phone_present(cls, frame: pd.DataFrame) -> Series[bool]:
        return frame.filter(regex=f"^{PHONE_PREFIX}").notna().any(axis=1)

    @pa.dataframe_check
    def consent_present(cls, frame: pd.DataFrame) -> Series[bool]:
        return frame["consent_timestamp"].notna()

    @pa.dataframe_check
    def consent_timezone(cls, frame: pd.DataFrame) -> Series[bool]:
        return frame[CONSENT_AT].isna() | frame[CONSENT_HAS_ZONE]

    @pa.dataframe_check
    def consent_not_future(cls, frame: pd.DataFrame) -> Series[bool]:
        return ~(frame[CONSENT_AT] > cls._now() + CLOCK_SKEW)

    @pa.dataframe_check
    def consent_max_age(cls, frame: pd.DataFrame) -> Series[bool]:
        return ~(frame[CONSENT_AT] < cls._now() - timedelta(days=cls._max_consent_age_days))

    @pa.dataframe_check
    def field_too_long(cls, frame: pd.DataFrame) -> Series[bool]:
        return frame[LONGEST_FIELD] <= MAX_FIELD_LENGTH


@dataclass
class ChunkValidation:
    """One validated chunk: the records to import, the rejections, and what was normalised."""

    valid: pd.DataFrame
    rejects: pd.DataFrame
    rejected_rows: int
    normalised: dict[str, int] = field(default_factory=dict)


class SeenContactIds:
    """Remembers contactIds across chunks as sorted 64-bit hashes (16 MB for 2M ids), for the uniqueness rule."""

    def __init__(self) -> None:
        self._hashes = np.empty(0, dtype=np.uint64)

    def mark(self, contact_ids: pd.Series) -> np.ndarray:
        """Return, per row, whether the id was seen in an earlier chunk; then remember this chunk's ids."""
        present = contact_ids.notna().to_numpy()
        hashes = pd.util.hash_array(contact_ids.fillna("").to_numpy(dtype=object))
        seen = np.zeros(len(contact_ids), dtype=bool)
        if len(self._hashes):
            seen = np.isin(hashes, self._hashes, assume_unique=False) & present
        self._hashes = np.union1d(self._hashes, hashes[present])
        return seen


def normalise(frame: pd.DataFrame) -> dict[str, int]:
    """Repairs we allow, in place, each counted in rows: phone punctuation and opt-in letter case."""
    counts: dict[str, int] = {}
    phone_columns = [c for c in frame.columns if c.startswith(PHONE_PREFIX)]
    changed_rows = np.zeros(len(frame), dtype=bool)
    for column in phone_columns:
        raw = frame[column]
        cleaned = raw.str.replace(_PHONE_PUNCTUATION, "", regex=True)
        changed = ((cleaned != raw) & raw.notna()).fillna(False).to_numpy(dtype=bool)
        if changed.any():
            frame[column] = cleaned.where(cleaned != "", None)
            changed_rows |= changed
    if changed_rows.any():
        counts["phone_punctuation_removed"] = int(changed_rows.sum())
    opt_in = frame["opt_in_status"]
    lowered = opt_in.str.strip().str.lower()
    fixable = (lowered != opt_in).fillna(False) & lowered.isin(ALLOWED_OPT_IN)
    if fixable.any():
        frame.loc[fixable, "opt_in_status"] = lowered[fixable]
        counts["opt_in_status_lowercased"] = int(fixable.sum())
    return counts


def prepare(frame: pd.DataFrame, seen: SeenContactIds) -> pd.DataFrame:
    """Add the derived columns the schema checks (parsed consent time, zone flag, cross-chunk id flag, length)."""
    consent = frame["consent_timestamp"]
    iso = consent.str.fullmatch(_ISO_8601).fillna(False).astype(bool)
    parsed = pd.to_datetime(consent.where(iso), utc=True, format="ISO8601", errors="coerce")
    frame[CONSENT_AT] = parsed.astype("datetime64[ns, UTC]")
    frame[CONSENT_HAS_ZONE] = consent.str.contains(_HAS_ZONE, regex=True).fillna(False).astype(bool).to_numpy()
    frame[SEEN_EARLIER] = seen.mark(frame["contact_id"])
    text_columns = [c for c in frame.columns if c not in (ROW_NUMBER, *_DERIVED)]
    lengths = np.zeros(len(frame), dtype=np.int64)
    for column in text_columns:
        lengths = np.maximum(lengths, frame[column].str.len().fillna(0).to_numpy(dtype=np.int64))
    frame[LONGEST_FIELD] = lengths
    return frame


def validate_chunk(
    frame: pd.DataFrame,
    schema: type[ContactRecordSchema],
    seen: SeenContactIds,
) -> ChunkValidation:
    """Normalise, validate lazily and split one canonical chunk."""
    frame = frame.reset_index(drop=True)
    normalised = normalise(frame)
    prepare(frame, seen)
    try:
        schema.validate(frame, lazy=True)
        failures = pd.DataFrame(columns=["index", "column", "check", "failure_case"])
    except pa.errors.SchemaErrors as exc:
        failures = exc.failure_cases
    rejects = _rejections(frame, failures)
    bad_index = np.unique(failures["index"].dropna().astype("int64").to_numpy()) if len(failures) else []
    valid = frame.drop(index=bad_index).drop(columns=list(_DERIVED))
    if SOURCE_ERROR in valid.columns:
        valid = valid.drop(columns=[SOURCE_ERROR])
    return ChunkValidation(valid=valid, rejects=rejects, rejected_rows=len(bad_index), normalised=normalised)


def _rejections(frame: pd.DataFrame, failures: pd.DataFrame) -> pd.DataFrame:
    """failure_cases -> one row per (row, column, rule); dataframe-level rules are reported once per row."""
    if not len(failures):
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "row_number" else "str") for c in REJECT_COLUMNS})
    unknown = failures[failures["index"].isna() | ~failures["check"].isin(RULE_MESSAGES.keys())]
    if len(unknown):
        raise SchemaContractError(unknown.head(5).to_string())
    failures = failures.assign(index=failures["index"].astype("int64"))
    record_level = failures["check"].isin(RULE_COLUMN.keys())
    column_level = failures[~record_level][["index", "column", "check"]]
    per_record = failures[record_level][["index", "check"]].drop_duplicates()
    per_record = per_record.assign(column=per_record["check"].map(RULE_COLUMN))
    rows = pd.concat([column_level, per_record], ignore_index=True)
    # json_parseable rows carry only that reason: the rest would be noise about an unreadable line.
    unreadable = set(rows.loc[rows["check"] == "json_parseable", "index"])
    if unreadable:
        rows = rows[~rows["index"].isin(unreadable) | (rows["check"] == "json_parseable")]
    rows = rows.sort_values(["index", "check", "column"], kind="stable").reset_index(drop=True)
    index = rows["index"].to_numpy()
    values = [
        _value_at(frame, i, column) for i, column in zip(index, rows["column"].to_numpy(), strict=True)
    ]
    return pd.DataFrame(
        {
            "row_number": frame[ROW_NUMBER].to_numpy()[index],
            "contact_id": frame["contact_id"].to_numpy()[index],
            "column": rows["column"].to_numpy(),
            "rule": rows["check"].to_numpy(),
            "message": rows["check"].map(RULE_MESSAGES).to_numpy(),
            "value_masked": values,
        }
    )


def _value_at(frame: pd.DataFrame, index: int, column: str) -> str:
    if column not in frame.columns:
        return ""
    value = frame.at[index, column]
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    return mask_value(column, str(value))


class SchemaContractError(RuntimeError):
    """pandera reported a failure this module does not map to a rule (a bug here, not bad input)."""
