"""Canonical rows -> the CXone API record shape, serialised once as JSON text per record."""

from __future__ import annotations

import json

import pandas as pd

from include.cxone_import.sources import CUSTOM_PREFIX, PHONE_PREFIX, phone_type_of

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _present(value: object) -> bool:
    return value is not None and value == value and value != ""  # NaN != NaN


def record_json(frame: pd.DataFrame) -> list[str]:
    """One JSON object per row: contactId, phoneNumbers (in column order), customFields, consent, opt-in."""
    phone_columns = [c for c in frame.columns if c.startswith(PHONE_PREFIX)]
    custom_columns = [c for c in frame.columns if c.startswith(CUSTOM_PREFIX)]
    phone_types = [phone_type_of(c) for c in phone_columns]
    custom_names = [c[len(CUSTOM_PREFIX) :] for c in custom_columns]
    columns = ["contact_id", "consent_timestamp", "opt_in_status", *phone_columns, *custom_columns]
    n_phone = len(phone_columns)
    out: list[str] = []
    for contact_id, consent, opt_in, *rest in frame[columns].itertuples(index=False, name=None):
        phones = [{"type": t, "number": v} for t, v in zip(phone_types, rest[:n_phone], strict=True) if _present(v)]
        custom = {k: v for k, v in zip(custom_names, rest[n_phone:], strict=True) if _present(v)}
        out.append(
            _dumps(
                {
                    "contactId": contact_id,
                    "phoneNumbers": phones,
                    "customFields": custom,
                    "consentTimestamp": consent,
                    "optInStatus": opt_in,
                }
            )
        )
    return out
