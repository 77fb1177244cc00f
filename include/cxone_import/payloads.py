"""Canonical rows -> the CXone API record shape, serialised once as JSON text per record.

Built column-wise with Arrow string kernels (no Python loop per record): values are JSON-escaped, wrapped and
joined; empty cells are skipped. Rows holding rare control characters fall back to ``json.dumps``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from include.cxone_import.arrow_text import arrow_strings
from include.cxone_import.sources import CUSTOM_PREFIX, PHONE_PREFIX, phone_type_of

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_RARE_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"
_STR = pa.large_string()
_COMMA = pa.scalar(",", _STR)
_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))
_CAREFUL_BYTES = np.zeros(256, dtype=bool)  # the bytes of what _escape replaces or _RARE_CONTROL finds
_CAREFUL_BYTES[[*range(0x20), ord('"'), ord("\\")]] = True


def _escape(values: pa.Array) -> pa.Array:
    """JSON string escaping for backslash, quote, newline, carriage return and tab."""
    if not pc.any(pc.match_substring_regex(values, r'[\\"\n\r\t]')).as_py():
        return values  # the common case: one scan instead of five replacements
    for raw, escaped in _ESCAPES:
        values = pc.replace_substring(values, raw, escaped)
    return values


def _escape_text(text: str) -> str:
    """``_escape`` of one constant (a phone type, a custom field's name)."""
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return text


def _escape_column(values: pa.Array) -> tuple[pa.Array, np.ndarray | None]:
    """A column escaped, and which of its values hold a rare control character (None: none does). One scan for
    the common column with nothing to escape."""
    if not _needs_care(values):
        return values, None
    escaped = _escape(values)
    return escaped, pc.fill_null(pc.match_substring_regex(escaped, _RARE_CONTROL), False).to_numpy(zero_copy_only=False)


def _needs_care(values: pa.Array) -> bool:
    """Whether a value may hold a byte below 0x20, a quote or a backslash, from one pass over the column's bytes
    (no byte of a multi-byte UTF-8 character is below 0x80; what a null slot spans only costs a closer look)."""
    if values.null_count == len(values):
        return False
    _, offsets, data = values.cast(_STR).buffers()
    if data is None:
        return False
    ends = np.frombuffer(offsets, dtype=np.int64)[values.offset : values.offset + len(values) + 1]
    return bool(_CAREFUL_BYTES[np.frombuffer(data, dtype=np.uint8)[ends[0] : ends[-1]]].any())


def _concat(*parts: pa.Array | str) -> pa.Array:
    """Element-wise concatenation; a null part makes the whole element null (used to skip empty cells)."""
    arrays = [pa.scalar(p, _STR) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*arrays, pa.scalar("", _STR), null_handling="emit_null")


def _join_skipping_nulls(parts: list[pa.Array], length: int) -> pa.Array:
    """The non-null parts of each row joined by commas ("" when all are null). Arrow's own
    ``null_handling="skip"`` drops the rows whose parts are all null (pyarrow 26: a shorter array), so the
    joins are pairwise: both present -> "a,b", else whichever is present."""
    if not parts:
        return pa.array([""] * length, _STR)
    joined = parts[0]
    for part in parts[1:]:
        both = pc.binary_join_element_wise(joined, part, _COMMA, null_handling="emit_null")
        joined = pc.coalesce(both, joined, part)
    return pc.fill_null(joined, "")


def record_json(frame: pd.DataFrame) -> pa.Array:
    """One JSON object per row: contactId, phoneNumbers (in column order), customFields, consent, opt-in."""
    n = len(frame)
    if n == 0:
        return pa.array([], _STR)
    phone_columns = [c for c in frame.columns if c.startswith(PHONE_PREFIX)]
    custom_columns = [c for c in frame.columns if c.startswith(CUSTOM_PREFIX)]
    escaped: dict[str, pa.Array] = {}
    rare = np.zeros(n, dtype=bool)
    for c in ["contact_id", "consent_timestamp", "opt_in_status", *phone_columns, *custom_columns]:
        escaped[c], rare_in_column = _escape_column(arrow_strings(frame[c]))
        if rare_in_column is not None:
            rare |= rare_in_column
    phones = [_concat('{"type":"' + _escape_text(phone_type_of(c)) + '","number":"', escaped[c], '"}') for c in phone_columns]
    customs = [_concat('"' + _escape_text(c[len(CUSTOM_PREFIX) :]) + '":"', escaped[c], '"') for c in custom_columns]
    records = _concat(
        '{"contactId":"', escaped["contact_id"],
        '","phoneNumbers":[', _join_skipping_nulls(phones, n),
        '],"customFields":{', _join_skipping_nulls(customs, n),
        '},"consentTimestamp":"', escaped["consent_timestamp"],
        '","optInStatus":"', escaped["opt_in_status"], '"}',
    )
    if not rare.any():
        return records
    out = records.to_pylist()
    for i in np.flatnonzero(rare):
        out[i] = _record_json_slow(frame.iloc[i], phone_columns, custom_columns)
    return pa.array(out, _STR)


def _record_json_slow(row: pd.Series, phone_columns: list[str], custom_columns: list[str]) -> str:
    def present(value: object) -> bool:
        return isinstance(value, str) and value != ""

    return _dumps(
        {
            "contactId": row["contact_id"],
            "phoneNumbers": [{"type": phone_type_of(c), "number": row[c]} for c in phone_columns if present(row[c])],
            "customFields": {c[len(CUSTOM_PREFIX) :]: row[c] for c in custom_columns if present(row[c])},
            "consentTimestamp": row["consent_timestamp"],
            "optInStatus": row["opt_in_status"],
        }
    )
