"""Record JSON built with Arrow kernels equals what json.dumps would send, for awkward values too."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from include.cxone_import.payloads import record_json

AWKWARD = ['plain', 'quote " inside', "back\\slash", "new\nline", "tab\tand\rcr", "Zoë Müller 東京", "bell\x07", "=HYPERLINK(\"x\")"]


@pytest.mark.parametrize("value", AWKWARD, ids=range(len(AWKWARD)))
def test_record_json_round_trips(value):
    frame = pd.DataFrame(
        {
            "row_number": [1, 2],
            "contact_id": [f"id-{value}", "id-2"],
            "phone_mobile": ["+14155550100", None],
            "phone_work": [None, "+442071234567"],
            "cf_first_name": [value, None],
            "cf_tier": ["gold", "silver"],
            "consent_timestamp": ["2026-06-01T00:00:00Z", "2026-06-02T00:00:00+02:00"],
            "opt_in_status": ["confirmed", "pending"],
        }
    ).astype({c: "str" for c in ["contact_id", "phone_mobile", "phone_work", "cf_first_name", "cf_tier", "consent_timestamp", "opt_in_status"]})
    records = [json.loads(text) for text in record_json(frame).to_pylist()]
    assert records == [
        {
            "contactId": f"id-{value}",
            "phoneNumbers": [{"type": "mobile", "number": "+14155550100"}],
            "customFields": {"first_name": value, "tier": "gold"},
            "consentTimestamp": "2026-06-01T00:00:00Z",
            "optInStatus": "confirmed",
        },
        {
            "contactId": "id-2",
            "phoneNumbers": [{"type": "work", "number": "+442071234567"}],
            "customFields": {"tier": "silver"},
            "consentTimestamp": "2026-06-02T00:00:00+02:00",
            "optInStatus": "pending",
        },
    ]


def test_no_phone_or_custom_columns():
    frame = pd.DataFrame({"row_number": [1], "contact_id": ["a"], "consent_timestamp": ["t"], "opt_in_status": ["pending"]})
    assert json.loads(record_json(frame).to_pylist()[0]) == {
        "contactId": "a", "phoneNumbers": [], "customFields": {}, "consentTimestamp": "t", "optInStatus": "pending"
    }


def test_fast_path_is_byte_identical_to_json_dumps():
    """The Arrow-built text is exactly what ``json.dumps`` gives (batch ids and change detection hash it), for
    awkward values and column names, rare control characters and empty (null) cells included."""
    from include.cxone_import.payloads import _record_json_slow

    values = [*AWKWARD, None, "ctrl\x1fend", 'both "\\" and \n', "ünïcödé \u2028"]
    frame = pd.DataFrame(
        {
            "row_number": range(len(values)),
            "contact_id": [f"id-{i}-{v}" for i, v in enumerate(values)],
            "phone_mobile": [v if i % 2 else "+14155550100" for i, v in enumerate(values)],
            'phone_we"ird\\type': ["+442071234567" if i % 3 else None for i in range(len(values))],
            "cf_first_name": values,
            'cf_na"me\twith\\escapes': list(reversed(values)),
            "consent_timestamp": "2026-06-01T00:00:00Z",
            "opt_in_status": "confirmed",
        }
    ).astype({c: "str" for c in ["contact_id", "phone_mobile", "cf_first_name", "consent_timestamp", "opt_in_status"]})
    phones = [c for c in frame.columns if c.startswith("phone_")]
    customs = [c for c in frame.columns if c.startswith("cf_")]
    fast = record_json(frame).to_pylist()
    assert fast == [_record_json_slow(frame.iloc[i], phones, customs) for i in range(len(frame))]
    # and per column, whichever path each takes: a frame of plain values only
    plain = frame.iloc[[0]].reset_index(drop=True)
    assert record_json(plain).to_pylist() == [_record_json_slow(plain.iloc[0], phones, customs)]


def test_rows_whose_phone_or_custom_cells_are_all_empty():
    frame = pd.DataFrame({"row_number": [1, 2], "contact_id": ["a", "b"], "phone_mobile": [None, "+14155550100"],
                          "cf_x": ["1", None], "cf_y": [None, None], "consent_timestamp": "t", "opt_in_status": "pending"})
    assert [json.loads(text) for text in record_json(frame).to_pylist()] == [
        {"contactId": "a", "phoneNumbers": [], "customFields": {"x": "1"}, "consentTimestamp": "t", "optInStatus": "pending"},
        {"contactId": "b", "phoneNumbers": [{"type": "mobile", "number": "+14155550100"}], "customFields": {},
         "consentTimestamp": "t", "optInStatus": "pending"},
    ]
