"""The sandbox's records contract as pure functions: field rules, batch limits, duplicate detection (no HTTP)."""

from __future__ import annotations

from typing import Any

import pytest

from include.cxone_sandbox.contract import MAX_BATCH_RECORDS, ContactList, batch_errors, find_duplicates, record_errors

VALID_RECORD = {
    "contactId": "crm-00001",
    "phoneNumbers": [{"type": "mobile", "number": "+14155550001"}],
    "customFields": {"first_name": "Eleanor"},
    "consentTimestamp": "2024-11-01T09:15:00.000Z",
    "optInStatus": "confirmed",
}


def record(contact_id: str = "crm-00001", number: str = "+14155550001", **fields: Any) -> dict[str, Any]:
    return {**VALID_RECORD, "contactId": contact_id, "phoneNumbers": [{"type": "mobile", "number": number}], **fields}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({}, [], id="valid"),
        pytest.param({"customFields": None}, [], id="custom-fields-optional"),
        pytest.param({"contactId": "  "}, [("contactId", "MISSING_FIELD")], id="blank-contact-id"),
        pytest.param({"contactId": 7}, [("contactId", "MISSING_FIELD")], id="contact-id-not-text"),
        pytest.param({"phoneNumbers": "+14155550001"}, [("phoneNumbers", "MISSING_FIELD")], id="phones-not-list"),
        pytest.param({"phoneNumbers": [{"type": "work"}]}, [("phoneNumbers[0].number", "MISSING_FIELD")],
                     id="phone-without-number"),
        pytest.param({"phoneNumbers": [{"number": 14155550001}]}, [("phoneNumbers[0].number", "INVALID_E164")],
                     id="phone-not-text"),
        pytest.param({"consentTimestamp": ""}, [("consentTimestamp", "MISSING_FIELD")], id="empty-consent"),
        pytest.param({"consentTimestamp": 20241101}, [("consentTimestamp", "INVALID_TIMESTAMP")],
                     id="consent-not-text"),
        pytest.param({"optInStatus": ["confirmed"]}, [("optInStatus", "INVALID_OPT_IN")], id="opt-in-not-text"),
        pytest.param({"customFields": []}, [("customFields", "INVALID_CUSTOM_FIELD")], id="custom-fields-not-object"),
        pytest.param({"contactId": "", "optInStatus": "maybe"},
                     [("contactId", "MISSING_FIELD"), ("optInStatus", "INVALID_OPT_IN")], id="every-error-in-order"),
    ],
)
def test_record_errors(changes, expected):
    errors = record_errors(3, {**VALID_RECORD, **changes})

    assert [(error["field"], error["code"]) for error in errors] == expected
    assert all(error["index"] == 3 for error in errors)


def test_record_that_is_not_an_object():
    assert [error["code"] for error in record_errors(0, ["crm-1"])] == ["INVALID_PAYLOAD"]


@pytest.mark.parametrize(
    ("records", "expected_codes"),
    [
        pytest.param(None, ["INVALID_PAYLOAD"], id="no-records-list"),
        pytest.param([record(f"crm-{n}", f"+1415555{n:04d}") for n in range(MAX_BATCH_RECORDS)], [], id="full-batch"),
        pytest.param([record(f"crm-{n}", f"+1415555{n:04d}") for n in range(MAX_BATCH_RECORDS + 1)],
                     ["BATCH_TOO_LARGE"], id="over-the-limit"),
        pytest.param([record(), {**VALID_RECORD, "optInStatus": "maybe"}], ["INVALID_OPT_IN"], id="one-bad-record"),
    ],
)
def test_batch_errors(records, expected_codes):
    assert [error["code"] for error in batch_errors(records)] == expected_codes


def test_duplicates_of_stored_and_earlier_records_of_the_batch():
    stored = ContactList()
    stored.add(record("crm-stored", "+14155550100"))
    batch = [
        record("crm-stored", "+14155550999"),  # stored contactId
        record("crm-new-1", "+14155550100"),  # stored phone
        record("crm-new-2", "+14155550200"),
        record("crm-new-2", "+14155550201"),  # contactId earlier in the batch
        record("crm-new-3", "+14155550200"),  # phone earlier in the batch
        record("crm-new-4", "+14155550400"),
    ]

    warnings, accepted = find_duplicates(stored, batch)

    assert [(w["index"], w["code"]) for w in warnings] == [
        (0, "DUPLICATE_CONTACT_ID"),
        (1, "DUPLICATE_PHONE"),
        (3, "DUPLICATE_CONTACT_ID"),
        (4, "DUPLICATE_PHONE"),
    ]
    assert [r["contactId"] for r in accepted] == ["crm-new-2", "crm-new-4"]
    assert "+1415" not in str(warnings)  # warnings never echo phone numbers
