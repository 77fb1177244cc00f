"""The records API contract as pure functions: what a valid batch is, which records are duplicates.

No HTTP and no state beyond the `ContactList` passed in, so every rule is testable on plain dicts. The contract
is described in docs/api-records.md; field rules are one table (`FIELD_RULES`), checked in its order.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MAX_BATCH_RECORDS = 100
DEFAULT_SCOPE = "contactlists:write contactlists:read"
OPT_IN_STATUSES = frozenset({"confirmed", "pending"})
E164_PATTERN = re.compile(r"^\+[1-9]\d{1,14}$")

Problem = tuple[str, str, str]
"""(field path, error code, message) of one field error."""


@dataclass
class ContactList:
    """Stored records of one contact list plus the indexes used for duplicate detection. A record is found by its
    contactId (``PUT``/``DELETE .../records/{contactId}``); a removed record leaves a hole in ``_slots`` so that
    removing stays O(1) on a large list, and ``records`` lists what is stored in creation order."""

    _slots: list[dict[str, Any] | None] = dataclasses.field(default_factory=list)
    contact_ids: dict[str, int] = dataclasses.field(default_factory=dict)  # contactId -> its slot
    phone_numbers: Counter[str] = dataclasses.field(default_factory=Counter)  # how many stored records hold each

    @property
    def records(self) -> list[dict[str, Any]]:
        return [record for record in self._slots if record is not None]

    def add(self, record: dict[str, Any]) -> None:
        self._slots.append(record)
        contact_id = record.get("contactId")
        if isinstance(contact_id, str):
            self.contact_ids[contact_id] = len(self._slots) - 1
        self.phone_numbers.update(phone_numbers_of(record))

    def get(self, contact_id: str) -> dict[str, Any] | None:
        slot = self.contact_ids.get(contact_id)
        return self._slots[slot] if slot is not None else None

    def replace(self, contact_id: str, record: dict[str, Any]) -> None:
        """Store ``record`` in place of the stored record of ``contact_id`` (which must exist)."""
        slot = self.contact_ids[contact_id]
        self._forget_phones(self._slots[slot])
        self._slots[slot] = record
        self.phone_numbers.update(phone_numbers_of(record))

    def remove(self, contact_id: str) -> bool:
        """Remove the stored record of ``contact_id``; False when there is none."""
        slot = self.contact_ids.pop(contact_id, None)
        if slot is None:
            return False
        self._forget_phones(self._slots[slot])
        self._slots[slot] = None
        return True

    def _forget_phones(self, record: dict[str, Any] | None) -> None:
        for number in phone_numbers_of(record):
            self.phone_numbers[number] -= 1
            if self.phone_numbers[number] <= 0:
                del self.phone_numbers[number]


def phone_numbers_of(record: Any) -> list[str]:
    """The phone number strings of a record, whatever else is wrong with it."""
    if not isinstance(record, dict) or not isinstance(record.get("phoneNumbers"), list):
        return []
    return [
        phone["number"]
        for phone in record["phoneNumbers"]
        if isinstance(phone, dict) and isinstance(phone.get("number"), str)
    ]


# ---- field rules -------------------------------------------------------------------------------------


def _given(value: Any) -> bool:
    return value is not None and value != ""


def _non_blank_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _non_empty_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value)


def _not_null(value: Any) -> bool:
    return value is not None


def _is_iso8601(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _no_problems(value: Any) -> Iterator[Problem]:
    return iter(())


def _phone_problems(phones: list[Any]) -> Iterator[Problem]:
    """Each number must be given and E.164; messages never echo the number."""
    for position, phone in enumerate(phones):
        field = f"phoneNumbers[{position}].number"
        number = phone.get("number") if isinstance(phone, dict) else None
        if not _given(number):
            yield field, "MISSING_FIELD", f"{field} is required"
        elif not isinstance(number, str) or not E164_PATTERN.match(number):
            yield field, "INVALID_E164", f"{field} is not an E.164 number"


def _consent_problems(consent: Any) -> Iterator[Problem]:
    if not _is_iso8601(consent):
        yield "consentTimestamp", "INVALID_TIMESTAMP", "consentTimestamp is not an ISO-8601 timestamp"


def _opt_in_problems(opt_in: Any) -> Iterator[Problem]:
    if not (isinstance(opt_in, str) and opt_in in OPT_IN_STATUSES):
        yield "optInStatus", "INVALID_OPT_IN", "optInStatus must be 'confirmed' or 'pending'"


def _custom_field_problems(custom_fields: Any) -> Iterator[Problem]:
    if not isinstance(custom_fields, dict):
        yield "customFields", "INVALID_CUSTOM_FIELD", "customFields must be an object"
        return
    for key, value in custom_fields.items():
        if not isinstance(value, str):
            yield f"customFields.{key}", "INVALID_CUSTOM_FIELD", f"customFields.{key} must be a string"


@dataclass(frozen=True)
class FieldRule:
    """One top-level record field: when it counts as present, whether it must be, and what is wrong with it."""

    field: str
    present: Callable[[Any], bool]
    required: bool
    missing_message: str
    problems: Callable[[Any], Iterator[Problem]]


FIELD_RULES: tuple[FieldRule, ...] = (
    FieldRule("contactId", _non_blank_text, True, "contactId must be a non-empty string", _no_problems),
    FieldRule("phoneNumbers", _non_empty_list, True, "phoneNumbers must be a non-empty list", _phone_problems),
    FieldRule("consentTimestamp", _given, True, "consentTimestamp is required", _consent_problems),
    FieldRule("optInStatus", _given, True, "optInStatus is required", _opt_in_problems),
    FieldRule("customFields", _not_null, False, "", _custom_field_problems),
)


def record_errors(index: int, record: Any) -> list[dict[str, Any]]:
    """Field errors of the record at `index` of a batch (empty when valid), in `FIELD_RULES` order."""
    if not isinstance(record, dict):
        return [_field_error(index, None, "", "INVALID_PAYLOAD", "record must be a JSON object")]
    contact_id = record.get("contactId")
    reported_id = contact_id if isinstance(contact_id, str) else None
    errors = []
    for rule in FIELD_RULES:
        value = record.get(rule.field)
        if not rule.present(value):
            if rule.required:
                errors.append(_field_error(index, reported_id, rule.field, "MISSING_FIELD", rule.missing_message))
            continue
        for field, code, message in rule.problems(value):
            errors.append(_field_error(index, reported_id, field, code, message))
    return errors


def _field_error(index: int, contact_id: Any, field: str, code: str, message: str) -> dict[str, Any]:
    return {"index": index, "contactId": contact_id, "field": field, "code": code, "message": message}


def batch_errors(records: Any) -> list[dict[str, Any]]:
    """The errors of a 400 answer to a records request (empty when the batch may be imported).

    `records` is the body's `records` value, or None when the body was not a JSON object with one.
    """
    if not isinstance(records, list):
        return [{"code": "INVALID_PAYLOAD", "message": "body must be a JSON object with a records list"}]
    if len(records) > MAX_BATCH_RECORDS:
        return [
            {
                "code": "BATCH_TOO_LARGE",
                "message": f"at most {MAX_BATCH_RECORDS} records per request, got {len(records)}",
            }
        ]
    return [error for index, record in enumerate(records) for error in record_errors(index, record)]


def update_errors(contact_id: str, body: Any) -> list[dict[str, Any]]:
    """The errors of a 400 answer to ``PUT .../records/{contactId}`` (empty when the update may be applied): the
    body is one record in the POST record shape, checked by the same field rules, and it must name the contactId of
    its path (a record cannot be moved to another id)."""
    errors = record_errors(0, body)
    if not errors and body.get("contactId") != contact_id:
        errors.append(_field_error(0, body.get("contactId"), "contactId", "CONTACT_ID_MISMATCH",
                                   "contactId of the body differs from the record of the path"))
    return errors


def phone_clash(contact_list: ContactList, contact_id: str, record: dict[str, Any]) -> dict[str, Any] | None:
    """The warning of a 409 when an updated record would take a phone number another stored record holds."""
    own = set(phone_numbers_of(contact_list.get(contact_id)))
    for position, number in enumerate(phone_numbers_of(record)):
        if number in contact_list.phone_numbers and number not in own:
            return {"index": 0, "contactId": contact_id, "code": "DUPLICATE_PHONE",
                    "message": f"phoneNumbers[{position}].number already exists in the contact list"}
    return None


# ---- duplicates --------------------------------------------------------------------------------------


def find_duplicates(
    contact_list: ContactList, records: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Warnings for records that repeat a stored or earlier (accepted) record of the batch, and the rest.

    The batch is processed in order, as if each accepted record were stored before the next is
    checked; one warning per duplicate record (a contactId clash wins over a phone clash).
    """
    warnings: list[dict[str, Any]] = []
    accepted: list[dict[str, Any]] = []
    batch_ids: dict[str, int] = {}
    batch_phones: dict[str, int] = {}
    for index, record in enumerate(records):
        contact_id = record["contactId"]
        numbers = phone_numbers_of(record)
        reason = _duplicate_reason(contact_list, batch_ids, batch_phones, contact_id, numbers)
        if reason is not None:
            code, message = reason
            warnings.append({"index": index, "contactId": contact_id, "code": code, "message": message})
            continue
        accepted.append(record)
        batch_ids[contact_id] = index
        for number in numbers:
            batch_phones.setdefault(number, index)
    return warnings, accepted


def _duplicate_reason(
    contact_list: ContactList,
    batch_ids: dict[str, int],
    batch_phones: dict[str, int],
    contact_id: str,
    numbers: list[str],
) -> tuple[str, str] | None:
    """(code, message) when the record repeats a stored or already accepted one, else None."""
    if contact_id in contact_list.contact_ids:
        return "DUPLICATE_CONTACT_ID", "contactId already exists in the contact list"
    if contact_id in batch_ids:
        return "DUPLICATE_CONTACT_ID", f"contactId repeats the record at index {batch_ids[contact_id]} of this batch"
    for position, number in enumerate(numbers):
        field = f"phoneNumbers[{position}].number"
        if number in contact_list.phone_numbers:
            return "DUPLICATE_PHONE", f"{field} already exists in the contact list"
        if number in batch_phones:
            return "DUPLICATE_PHONE", f"{field} repeats the record at index {batch_phones[number]} of this batch"
    return None
