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
