"""Masking of personal data for rejects files and logs, and spreadsheet-formula neutralisation."""

from __future__ import annotations

import re

import pandas as pd

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_DIGIT = re.compile(r"\d")


def mask_phone(number: str) -> str:
    """Keep the leading ``+``/country digit and the last two digits: ``+1*********00``."""
    if len(number) <= 4:
        return "*" * len(number)
    head = 2 if number.startswith("+") else 1
    return number[:head] + _DIGIT.sub("*", number[head:-2]) + number[-2:]


def mask_text(value: str) -> str:
    """First character and the length only: ``E****** (8)``."""
    if not value:
        return value
    return f"{value[0]}{'*' * min(len(value) - 1, 6)} ({len(value)} chars)"


def mask_value(column: str, value: str) -> str:
    """Mask by column: phones and custom fields are personal data; ids, timestamps, statuses and the reader's own
    problem notes (``source_error``, which never quote the record) are not."""
    if column.startswith("phone_") or column == "phoneNumbers":
        return mask_phone(value)
    if column.startswith("cf_"):
        return mask_text(value)
    return value if len(value) <= 64 else value[:61] + "..."


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """Prefix cells that a spreadsheet would run as a formula with a quote (OWASP CSV injection advice)."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            text = out[column].astype("str")
            risky = text.str.startswith(_FORMULA_START).fillna(False)
            if risky.any():
                out[column] = text.where(~risky, "'" + text)
    return out
