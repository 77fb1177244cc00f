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

from include.cxone_import.sources import CUSTOM_PREFIX, arrow_strings, PHONE_PREFIX, phone_type_of

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_RARE_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"
_STR = pa.large_string()


def _escape(values: pa.Array) -> pa.Array:
    """JSON string escaping for backslash, quote, newline, carriage return and tab."""
    if not pc.any(pc.match_substring_regex(values, r'[\\"\n\r\t]')).as_py():
        return values  # the common case: one scan instead of five replacements
    for raw, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        values = pc.replace_substring(values, raw, escaped)
    return values


def _concat(*parts: pa.Array | str) -> pa.Array:
    """Element-wise concatenation; a null part makes the whole element null (used to skip empty cells)."""
    arrays = [pa.scalar(p, _STR) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*arrays, pa.scalar("", _STR), null_handling="emit_null")


def _join_skipping_nulls(parts: list[pa.Array], length: int) -> pa.Array:
    if not parts:
        return pa.array([""] * length, _STR)
    joined = pc.binary_join_element_wise(*parts, pa.scalar(",", _STR), null_handling="skip")
    return pc.fill_null(joined, "")


def record_json(frame: pd.DataFrame) -> pa.Array:
    """One JSON object per row: contactId, phoneNumbers (in column order), customFields, consent, opt-in."""
    n = len(frame)
    if n == 0:
        return pa.array([], _STR)
    phone_columns = [c for c in frame.columns if c.startswith(PHONE_PREFIX)]
    custom_columns = [c for c in frame.columns if c.startswith(CUSTOM_PREFIX)]
    escaped = {c: _escape(arrow_strings(frame[c])) for c in ["contact_id", "consent_timestamp", "opt_in_status", *phone_columns, *custom_columns]}
    phones = [
        _concat('{"type":"', _escape(pa.array([phone_type_of(c)] * n, _STR)), '","number":"', escaped[c], '"}')
        for c in phone_columns
    ]
    customs = [
        _concat('"', _escape(pa.array([c[len(CUSTOM_PREFIX) :]] * n, _STR)), '":"', escaped[c], '"')
        for c in custom_columns
    ]
    records = _concat(
        '{"contactId":"', escaped["contact_id"],
        '","phoneNumbers":[', _join_skipping_nulls(phones, n),
        '],"customFields":{', _join_skipping_nulls(customs, n),
        '},"consentTimestamp":"', escaped["consent_timestamp"],
        '","optInStatus":"', escaped["opt_in_status"], '"}',
    )
    rare = np.zeros(n, dtype=bool)
    for c in escaped:
        rare |= pc.fill_null(pc.match_substring_regex(escaped[c], _RARE_CONTROL), False).to_numpy(zero_copy_only=False)
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
