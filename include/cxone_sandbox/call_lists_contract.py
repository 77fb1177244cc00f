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


def parse_upload(body: Any, *, max_bytes: int = MAX_FILE_BYTES, max_records: int = MAX_FILE_RECORDS,
                 max_record_chars: int = MAX_RECORD_CHARS) -> Upload:
    """Check an upload body against the documented limits and decode its CSV; any breach refuses the file."""
    if not isinstance(body, dict):
        raise ContractError("InvalidRequest", "the body must be a JSON object")
    encoded, file_name = body.get("listFile"), body.get("fileName")
    if not isinstance(encoded, str) or not encoded:
        raise ContractError("InvalidListFile", "listFile (base64 CSV) is required")
    if not isinstance(file_name, str) or not file_name:
        raise ContractError("InvalidFileName", "fileName is required")
    force_overwrite = body.get("forceOverwrite", False)
    if not isinstance(force_overwrite, bool):
        raise ContractError("InvalidRequest", "forceOverwrite must be a boolean")
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
    return Upload(file_name, force_overwrite, header, rows)


def check_header(calling_list: CallingList, header: list[str]) -> None:
    """The file must carry the list's external id column (GUESS: other mapped columns may be missing)."""
    if calling_list.external_id_column not in header:
        raise ContractError("MissingExternalIdColumn", f"the file has no column {calling_list.external_id_column!r}")


def stored_record(calling_list: CallingList, row: dict[str, str], updated: str) -> dict[str, Any] | None:
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
    return {"externalId": external_id, "destinations": destinations, "otherFields": other, "_updated": updated}


def id_token(claims: dict[str, Any]) -> str:
    """A JWT-shaped id_token (``alg: none``: the client reads claims, it does not verify a signature)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
