"""The calling-list API contract (docs/api-call-lists.md) as pure functions: what a create request, an upload and
an uploaded row must look like, how a list answers reads. No HTTP, no clock, no locks: `call_lists_api` adds those.

Where NICE's public sources leave a detail open the sandbox picks one reading, named ``GUESS`` in a comment; the
README's profile section lists them.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_FILE_RECORDS = 500_000
MAX_RECORD_CHARS = 512
# GUESS: which destinations a dialer accepts is not documented; E.164 with or without the +, 7 to 15 digits
_DESTINATION = re.compile(r"^\+?[1-9]\d{6,14}$")
_COLUMN_FIELDS = ("firstNameColumn", "lastNameColumn", "timeZoneColumn", "stateColumn", "zipColumn")


class ContractError(ValueError):
    """A request the API refuses as a whole: ``{error, errorDescription}`` with a 400."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "errorDescription": self.description}


@dataclass
class CallingList:
    """A calling list: its column mapping and its records by externalId (upload order kept)."""

    list_id: int
    list_name: str
    external_id_column: str
    destination_mappings: list[dict[str, str]]
    custom_field_mappings: list[dict[str, str]]
    other_columns: dict[str, str] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    invalid_records: int = 0
    upload_date: str | None = None

    def expire(self, now: float) -> int:
        """Records whose upload's ``expirationDate`` has passed leave the list; how many left."""
        gone = [k for k, r in self.records.items() if r.get("_expires") is not None and r["_expires"] <= now]
        for key in gone:
            del self.records[key]
        return len(gone)

    def summary(self) -> dict[str, Any]:
        return {
            "listId": self.list_id,
            "listName": self.list_name,
            "status": "Active",
            "totalRecords": len(self.records) + self.invalid_records,
            "validRecords": len(self.records),
            "invalidRecords": self.invalid_records,
        }

    def result_set(self, *, include_records: bool, skip: int, top: int | None, updated_since: str | None) -> dict[str, Any]:
        """The ``resultSet`` of ``GET lists/call-lists/{listId}``; records paged with skip/top."""
        result = {**self.summary(), "uploadDate": self.upload_date}
        if include_records:
            records = [r for r in self.records.values() if updated_since is None or r["_updated"] >= updated_since]
            page = records[skip : skip + top if top is not None else None]
            result["contactRecords"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in page]
        return result


def create_request(query: dict[str, str], body: Any) -> dict[str, Any]:
    """The fields of a create request, read from the query and the JSON body alike (sources disagree on where
    they go; the body wins where both name a field)."""
    fields: dict[str, Any] = dict(query)
    if isinstance(body, dict):
        fields.update({k: v for k, v in body.items() if v is not None})
    name = fields.get("listName")
    external_id = fields.get("externalIdColumn")
    if not isinstance(name, str) or not name.strip():
        raise ContractError("InvalidListName", "listName is required")
    if not isinstance(external_id, str) or not external_id.strip():
        raise ContractError("InvalidExternalIdColumn", "externalIdColumn is required")
    mappings = {}
    for key in ("destinationMappings", "customFieldMappings"):
        value = fields.get(key) or []
        if isinstance(value, str):  # a query parameter carries JSON text
            try:
                value = json.loads(value)
            except ValueError:
                raise ContractError("InvalidMapping", f"{key} is not JSON") from None
        if not isinstance(value, list) or not all(
            isinstance(m, dict) and isinstance(m.get("fieldName"), str) and isinstance(m.get("fieldValue"), str)
            for m in value
        ):
            raise ContractError("InvalidMapping", f"{key} must be a list of {{fieldName, fieldValue}}")
        mappings[key] = value
    if not mappings["destinationMappings"]:
        raise ContractError("InvalidMapping", "at least one destination mapping is required")
    return {
        "list_name": name.strip(),
        "external_id_column": external_id.strip(),
        "destination_mappings": mappings["destinationMappings"],
        "custom_field_mappings": mappings["customFieldMappings"],
        "other_columns": {k: str(fields[k]) for k in _COLUMN_FIELDS if fields.get(k)},
    }


@dataclass(frozen=True)
class Upload:
    """A decoded upload: the file's header and rows (each a dict by column)."""

    file_name: str
    force_overwrite: bool
    header: list[str]
    rows: list[dict[str, str]]
    expires_at: float  # Unix time of expirationDate: the uploaded records leave the list then


def _require(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str, *, required: bool = True) -> Any:
    """One field of a request body: present (when the published schema requires it) and of the schema's type, else
    the 400 naming it."""
    value = body.get(name)
    if value is None:
        if required:
            raise ContractError("MissingField", f"{name} is required")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ContractError("InvalidField", f"{name} must be {what}")
    return value


def parse_expiration(value: str, *, now: datetime | None = None) -> datetime:
    """``expirationDate``: an ISO 8601 date or date-time (UTC when no offset is given) that is still to come
    (GUESS: a record that expires before it is loaded is refused rather than loaded dead)."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ContractError("InvalidField", "expirationDate must be an ISO 8601 date or date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if moment <= (now or datetime.now(timezone.utc)):
        raise ContractError("InvalidField", "expirationDate must be in the future")
    return moment


def parse_upload(body: Any, *, max_bytes: int = MAX_FILE_BYTES, max_records: int = MAX_FILE_RECORDS,
                 max_record_chars: int = MAX_RECORD_CHARS) -> Upload:
    """Check an upload body against the published schema (``listFile``, ``forceOverwrite``, ``expirationDate``,
    ``startSkill`` and ``sendEmail`` required; ``fileName``, ``skillId``, ``defaultTimeZone`` optional, each of its
    type) and the documented limits, and decode its CSV; any breach refuses the file."""
    if not isinstance(body, dict):
        raise ContractError("InvalidRequest", "the body must be a JSON object")
    encoded = _require(body, "listFile", str, "a base64 CSV")
    force_overwrite = _require(body, "forceOverwrite", bool, "a boolean")
    expiration = parse_expiration(_require(body, "expirationDate", str, "an ISO 8601 date-time string"))
    _require(body, "startSkill", bool, "a boolean")
    _require(body, "sendEmail", bool, "a boolean")
    file_name = _require(body, "fileName", str, "a string", required=False) or "upload.csv"
    _require(body, "skillId", int, "an integer", required=False)
    _require(body, "defaultTimeZone", str, "a string", required=False)
    if not encoded:
        raise ContractError("InvalidListFile", "listFile (base64 CSV) is required")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ContractError("InvalidListFile", "listFile is not base64") from None
    if len(raw) > max_bytes:
        raise ContractError("FileTooLarge", f"the file is larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ContractError("InvalidListFile", "the file is not UTF-8") from None
    lines = text.splitlines()
    if not lines:
        raise ContractError("InvalidListFile", "the file is empty")
    # GUESS: the 512-character limit counts a record's line without its line break, header included
    too_long = next((n for n, line in enumerate(lines) if len(line) > max_record_chars), None)
    if too_long is not None:
        raise ContractError("RecordTooLong", f"record {too_long} is longer than {max_record_chars} characters")
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader)]
    rows = [dict(zip(header, values, strict=False)) for values in reader if values]
    if len(rows) > max_records:
        raise ContractError("TooManyRecords", f"the file holds more than {max_records} records")
    return Upload(file_name, force_overwrite, header, rows, expiration.timestamp())


def list_read_query(query: dict[str, str]) -> dict[str, Any]:
    """The query of ``GET lists/call-lists/{listId}``: ``includeRecords`` and ``finalized`` booleans, ``skip`` and
    ``top`` non-negative integers (``top`` at least 1), ``updatedSince`` a date-time; anything malformed is refused
    rather than read as its default."""
    flags = {}
    for name in ("includeRecords", "finalized"):
        value = query.get(name, "false").lower()
        if value not in ("true", "false"):
            raise ContractError("InvalidField", f"{name} must be true or false")
        flags[name] = value == "true"
    paging: dict[str, int | None] = {"skip": 0, "top": None}
    for name, least in (("skip", 0), ("top", 1)):
        if name in query:
            if not query[name].isdigit() or int(query[name]) < least:
                raise ContractError("InvalidField", f"{name} must be an integer >= {least}")
            paging[name] = int(query[name])
    since = query.get("updatedSince")
    if since is not None:
        try:
            datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise ContractError("InvalidField", "updatedSince must be an ISO 8601 date-time") from None
    return {"include_records": flags["includeRecords"], "skip": paging["skip"], "top": paging["top"],
            "updated_since": since}


MAX_DNC_PHONE_DIGITS = 15


def _required_list(body: Any, name: str) -> list[Any]:
    """The non-empty list a request body must carry under ``name``, else the 400 naming it."""
    if not isinstance(body, dict):
        raise ContractError("InvalidRequest", "the body must be a JSON object")
    items = body.get(name)
    if items is None:
        raise ContractError("MissingField", f"{name} is required")
    if not isinstance(items, list) or not items:
        raise ContractError("InvalidField", f"{name} must be a non-empty list")
    return items


def removal_request(body: Any) -> list[str]:
    """The external ids of a ``removeProspects`` body: ``prospectsToRemove`` a non-empty list of objects, each with
    an ``externalId`` (the schema types it as a number; external ids are text on the list, so a string is taken
    too). GUESS: an empty or missing list is refused rather than removing nothing."""
    ids = []
    for prospect in _required_list(body, "prospectsToRemove"):
        external_id = prospect.get("externalId") if isinstance(prospect, dict) else None
        if external_id is None:
            raise ContractError("MissingField", "prospectsToRemove[].externalId is required")
        if isinstance(external_id, bool) or not isinstance(external_id, (str, int)) or not str(external_id).strip():
            raise ContractError("InvalidField", "prospectsToRemove[].externalId must be a number or a string")
        ids.append(str(external_id).strip())
    return ids


def dnc_records_request(body: Any) -> list[tuple[str, str | None]]:
    """The ``(phoneNumber, expiredDate)`` pairs of a ``POST dnc-groups/{groupId}/records`` body: ``dncGroupRecords`` a
    non-empty list, each with a ``phoneNumber`` (digits, as a number or a string) and an optional ISO 8601
    ``expiredDate``."""
    pairs = []
    for record in _required_list(body, "dncGroupRecords"):
        phone = record.get("phoneNumber") if isinstance(record, dict) else None
        if phone is None:
            raise ContractError("MissingField", "dncGroupRecords[].phoneNumber is required")
        if isinstance(phone, bool) or not isinstance(phone, (str, int)):
            raise ContractError("InvalidField", "dncGroupRecords[].phoneNumber must be a number or a string")
        expired = record.get("expiredDate")
        if expired is not None:
            if not isinstance(expired, str):
                raise ContractError("InvalidField", "dncGroupRecords[].expiredDate must be a date-time string")
            try:
                datetime.fromisoformat(expired.replace("Z", "+00:00"))
            except ValueError:
                raise ContractError("InvalidField", "dncGroupRecords[].expiredDate must be ISO 8601") from None
        pairs.append((str(phone), expired))
    return pairs


def dnc_phone(phone: str) -> str | None:
    """A DNC number as CXone stores it (its formatting stripped), or None when it is not a phone number."""
    digits = re.sub(r"[^\d]", "", phone)
    return digits if 7 <= len(digits) <= MAX_DNC_PHONE_DIGITS else None


def check_header(calling_list: CallingList, header: list[str]) -> None:
    """The file must carry the list's external id column (GUESS: other mapped columns may be missing)."""
    if calling_list.external_id_column not in header:
        raise ContractError("MissingExternalIdColumn", f"the file has no column {calling_list.external_id_column!r}")


def stored_record(calling_list: CallingList, row: dict[str, str], updated: str,
                  expires_at: float | None = None) -> dict[str, Any] | None:
    """The record a row becomes on the list, or None when the row is invalid (counted, not stored): no external id,
    no destination, or a destination that is not a phone number."""
    external_id = (row.get(calling_list.external_id_column) or "").strip()
    if not external_id:
        return None
    destinations = []
    for mapping in calling_list.destination_mappings:
        value = (row.get(mapping["fieldValue"]) or "").strip()
        if not value:
            continue
        if not _DESTINATION.match(value):
            return None
        destinations.append({"fieldName": mapping["fieldName"], "formattedDestination": value})
    if not destinations:
        return None
    mapped = {m["fieldValue"] for m in calling_list.destination_mappings} | {calling_list.external_id_column}
    other = [{"fieldName": k, "fieldValue": v} for k, v in row.items() if k not in mapped and v]
    return {"externalId": external_id, "destinations": destinations, "otherFields": other, "_updated": updated,
            "_expires": expires_at}


def id_token(claims: dict[str, Any]) -> str:
    """A JWT-shaped id_token (``alg: none``: the client reads claims, it does not verify a signature)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
