"""Value objects returned by the CXone client: one batch result and the records it names."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cxone_provider.redaction import scrub_text

TRANSIENT_RECORD_CODES = frozenset({"TEMPORARY_FAILURE", "INTERNAL_ERROR"})
"""Codes of a 200's ``errors[]`` item that refuse a record for now, not for what it holds: sent again."""


@dataclass(frozen=True)
class RecordIssue:
    """One record the server named in ``warnings`` (a duplicate) or ``errors`` (a field error), by position in
    the batch and/or contactId."""

    index: int | None
    contact_id: str | None
    code: str | None
    message: str
    field: str | None = None

    @classmethod
    def from_api(cls, item: Any) -> RecordIssue:
        """Parse one ``warnings``/``errors`` item, tolerating missing or oddly typed fields; its message is the server's
        text with personal data scrubbed (it may quote the record)."""
        if not isinstance(item, dict):
            return cls(index=None, contact_id=None, code=None, message=scrub_text(str(item)))
        index = item.get("index")
        contact_id = item.get("contactId")
        code = item.get("code")
        field = item.get("field")
        return cls(
            index=index if isinstance(index, int) and not isinstance(index, bool) else None,
            contact_id=str(contact_id) if contact_id is not None else None,
            code=str(code) if code is not None else None,
            message=scrub_text(str(item.get("message") or "")),
            field=str(field) if field is not None else None,
        )

    @property
    def transient(self) -> bool:
        """The server refused the record for now (``TRANSIENT_RECORD_CODES``), not for its content."""
        return self.code in TRANSIENT_RECORD_CODES


def parse_record_issues(items: Iterable[Any] | None) -> tuple[RecordIssue, ...]:
    """Turn a response's ``warnings`` or ``errors`` list into RecordIssue values (an absent list gives none)."""
    if not isinstance(items, list):
        return ()
    return tuple(RecordIssue.from_api(item) for item in items)


@dataclass(frozen=True)
class RecordCallResult:
    """What the server said about one ``PUT`` or ``DELETE`` of a stored record, and what it took to get there."""

    found: bool
    """False: the server answered 404, the list holds no record with this contactId."""
    latency_ms: float
    request_id: str | None
    attempts: int
    status_code: int
    outcome_uncertain: bool
    """True when an earlier attempt ended without an answer (or with a 5xx): it may have been applied."""
    rate_limited: int


@dataclass(frozen=True)
class BatchResult:
    """What the server said about one accepted batch, and what it took to get there."""

    created: int
    duplicates: tuple[RecordIssue, ...]
    latency_ms: float
    """Wall time of the final, successful attempt."""
    total_latency_ms: float
    """Wall time of the whole call: every attempt, rate-limiter waits and backoff."""
    request_id: str | None
    response_id: str | None
    attempts: int
    status_code: int
    outcome_uncertain: bool
    """True when an earlier attempt ended without an answer, so it may have created records too."""
    rate_limited: int
    """How many 429 responses the call saw."""
    errors: tuple[RecordIssue, ...] = ()
    """Records the accepted batch names in ``errors[]``: not created (see :attr:`RecordIssue.transient`)."""
    records: int = 0
    """How many records the request held (to check the answer's counts against)."""
