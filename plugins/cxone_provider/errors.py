"""Typed errors raised by the CXone client; callers decide what to do by type, not by message.

Modelled on openai-python's ``_exceptions.py``: a status error carrying status code, request id and
parsed body, with one subclass per kind of answer, and a separate connection/timeout branch.
``str()`` of every error is one line naming the status, the request id and a short reason; it never
contains a token, a secret or a full phone number.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from cxone_provider.models import RecordIssue, parse_record_issues
from cxone_provider.redaction import MASK, scrub_text

__all__ = [
    "CXoneAuthError",
    "CXoneConfigurationError",
    "CXoneConflictError",
    "CXoneConnectionError",
    "CXoneError",
    "CXoneJobWaitError",
    "CXoneRateLimitError",
    "CXoneRedirectError",
    "CXoneServerError",
    "CXoneStatusError",
    "CXoneTimeoutError",
    "CXoneUntrustedHostError",
    "CXoneValidationError",
    "ListLeaseLostError",
    "status_error",
]

_SECRET_KEYS = frozenset({"access_token", "refresh_token", "id_token", "client_secret", "password"})
# keys of an error body whose values are the server's free text (they may quote a record); ids, codes and field paths
# elsewhere in the body stay as they are, so that callers can still tell which record an error names
_TEXT_KEYS = frozenset({"message", "error_description", "errorDescription", "error", "detail", "description", "title"})
_MAX_REASON_CHARS = 160
_MAX_TEXT_BODY_CHARS = 2000


class CXoneError(Exception):
    """Base class of every error the CXone client raises."""

    attempts: int
    """How many HTTP attempts the failed call made."""
    outcome_uncertain: bool
    """True when an attempt ended without a definitive answer (drop, timeout, 5xx): it may have been processed."""

    def __init__(self, message: str, *, attempts: int = 1, outcome_uncertain: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts
        self.outcome_uncertain = outcome_uncertain

    def __str__(self) -> str:
        notes = []
        if self.attempts > 1:
            notes.append(f"after {self.attempts} attempts")
        if self.outcome_uncertain:
            notes.append("outcome uncertain")
        return f"{self.message} [{', '.join(notes)}]" if notes else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # keyword-only constructors do not survive the default Exception pickling
        return _rebuild_error, (type(self), self.args, self.__dict__.copy())


def _rebuild_error(cls: type[CXoneError], args: tuple[Any, ...], state: dict[str, Any]) -> CXoneError:
    error = Exception.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class CXoneStatusError(CXoneError):
    """The server answered with an error status; carries status code, request id and parsed body."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        request_id: str | None = None,
        body: Any = None,
        attempts: int = 1,
        outcome_uncertain: bool = False,
    ) -> None:
        super().__init__(message, attempts=attempts, outcome_uncertain=outcome_uncertain)
        self.status_code = status_code
        self.request_id = request_id
        self.body = body


class CXoneAuthError(CXoneStatusError):
    """Credentials or token rejected: 401/403 on a data call, or the token endpoint refused to issue one."""


class CXoneRateLimitError(CXoneStatusError):
    """429 Too Many Requests; ``retry_after`` is the server's Retry-After in seconds, if it sent one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class CXoneValidationError(CXoneStatusError):
    """400 Bad Request: the payload or some fields were rejected and nothing was created."""

    def __init__(self, message: str, *, errors: list[Any] | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.errors = list(errors or [])


class CXoneConflictError(CXoneStatusError):
    """409 Conflict: the batch held duplicates and, being atomic, created nothing."""

    def __init__(self, message: str, *, duplicates: tuple[RecordIssue, ...] = (), **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.duplicates = tuple(duplicates)


class CXoneRedirectError(CXoneStatusError):
    """3xx: the server pointed elsewhere; not followed (no body or credential went there) and not retried."""

    def __init__(self, message: str, *, location: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.location = location
        """Where the answer pointed, credentials and query values masked."""


class CXoneServerError(CXoneStatusError):
    """5xx: a transient server failure; the request may or may not have been processed."""


class CXoneConnectionError(CXoneError):
    """No HTTP answer: the connection failed or was dropped before a response arrived."""


class CXoneTimeoutError(CXoneConnectionError):
    """No HTTP answer within the configured timeout."""


class CXoneUntrustedHostError(CXoneError):
    """Discovery named an endpoint on neither NICE's domains nor the connection's hosts; nothing was sent to it."""


class CXoneConfigurationError(CXoneError):
    """A setting is wrong (a refused credential, a missing connection, a list CXone does not know, a redirect, a
    budget store that is not shared): retrying cannot help. The message names the connection and what to fix."""

    rule = "cxone_configuration"

    def __init__(self, message: str, *, conn_id: str | None = None, cause: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.conn_id = conn_id
        self.cause = cause
        """The type of the error that showed it (``CXoneAuthError``, ...), or None."""

    @classmethod
    def from_error(cls, conn_id: str, error: BaseException, *, list_id: str | None = None) -> CXoneConfigurationError:
        """The configuration error ``error`` shows, with what to change in connection ``conn_id``."""
        return cls(f"{_what_to_fix(conn_id, error, list_id)} ({error})", conn_id=conn_id, cause=type(error).__name__)


def _what_to_fix(conn_id: str, error: BaseException, list_id: str | None) -> str:
    status = getattr(error, "status_code", None)
    code = getattr(error, "body", None)
    code = code.get("error") if isinstance(code, dict) else None
    if isinstance(error, CXoneRedirectError):
        return (f"connection {conn_id}: CXone answered with a redirect to {error.location or 'another place'}, which "
                "is never followed: set the connection's host to the API's own base URL")
    if isinstance(error, CXoneUntrustedHostError):
        return f"connection {conn_id}: discovery named an untrusted host: list it in the allowed_hosts extra if it is yours"
    if isinstance(error, CXoneAuthError) and status == 403:
        return f"connection {conn_id}: the credential was accepted but may not do this: grant it the contact-list scopes"
    if isinstance(error, CXoneAuthError):
        which = {"invalid_client": "the client id or client secret", "invalid_grant": "the access key id or secret"}
        return (f"connection {conn_id}: CXone refused {which.get(str(code), 'the credential')}"
                f"{f' ({code})' if code else ''}: correct the connection's login and password (and the "
                "client_id/client_secret extras on the call_lists profile)")
    if status == 404:
        return (f"connection {conn_id}: CXone has no contact list {list_id or ''} on this tenant: check the "
                "contact_list_id param (or the cxone_contact_list_id Variable) and the connection's host").replace("  ", " ")
    return f"connection {conn_id}: {type(error).__name__}"


class CXoneJobWaitError(CXoneError):
    """Waiting on the triggerer for upload jobs ended in an error (the trigger's ``error`` event); the task's retry
    waits again."""


class ListLeaseLostError(Exception):
    """This run no longer holds its contact list (the lease lapsed, or another run took it): nothing more is sent,
    and retrying the task would only send into a list another run may now hold."""

    rule = "list_lease_lost"

    def __init__(self, list_label: str, reason: str, *, holder: str | None = None) -> None:
        self.list_label = list_label
        self.reason = reason
        self.holder = holder
        super().__init__(
            f"lost the lease on {list_label}: {reason}; this task stopped sending and checkpointed what CXone "
            "answered. Clear the run from its chunk task once the other run is done (it compares the list again)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_lease_lost, (self.list_label, self.reason, self.holder)


def _rebuild_lease_lost(list_label: str, reason: str, holder: str | None) -> ListLeaseLostError:
    return ListLeaseLostError(list_label, reason, holder=holder)


def status_error(
    status_code: int,
    *,
    operation: str,
    request_id: str | None = None,
    body: Any = None,
    retry_after: float | None = None,
    token_endpoint: bool = False,
) -> CXoneStatusError:
    """
    Build the typed error for one non-2xx answer.

    On the token endpoint every rejection (400 invalid_request, 401 invalid_client, ...) is a
    CXoneAuthError, while 429 and 5xx keep their own types so they can be retried.
    """
    body = _scrub(body)
    message = _describe(operation, status_code, request_id, _reason(status_code, body))
    common: dict[str, Any] = {"status_code": status_code, "request_id": request_id, "body": body}
    if status_code == 429:
        return CXoneRateLimitError(message, retry_after=retry_after, **common)
    if status_code >= 500:
        return CXoneServerError(message, **common)
    if token_endpoint or status_code in (401, 403):
        return CXoneAuthError(message, **common)
    if status_code == 400:
        errors = body.get("errors") if isinstance(body, dict) else None
        return CXoneValidationError(message, errors=errors if isinstance(errors, list) else [], **common)
    if status_code == 409:
        warnings = body.get("warnings") if isinstance(body, dict) else None
        return CXoneConflictError(message, duplicates=parse_record_issues(warnings), **common)
    return CXoneStatusError(message, **common)


def _describe(operation: str, status_code: int, request_id: str | None, reason: str) -> str:
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        phrase = "Unknown Status"
    text = f"CXone {operation} failed: {status_code} {phrase} (request id {request_id or 'n/a'})"
    return f"{text}: {reason}" if reason else text


def _reason(status_code: int, body: Any) -> str:
    """A short, one-line, phone-number-free summary of an error body."""
    reason = ""
    if isinstance(body, dict):
        if isinstance(body.get("warnings"), list) and status_code == 409:
            reason = f"{len(body['warnings'])} duplicate record(s); nothing in the batch was created"
        elif isinstance(body.get("errors"), list) and body["errors"]:
            errors = body["errors"]
            reason = _error_item_text(errors[0])
            if len(errors) > 1:
                reason = f"{len(errors)} errors, first: {reason}"
        else:
            for key in ("error_description", "errorDescription", "message", "error", "detail"):
                if isinstance(body.get(key), str) and body[key]:
                    reason = body[key]
                    break
    elif isinstance(body, str):
        reason = body.strip().splitlines()[0] if body.strip() else ""
    reason = scrub_text(" ".join(reason.split()))
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[: _MAX_REASON_CHARS - 3] + "..."
    return reason


def _error_item_text(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    message = str(item.get("message") or item.get("code") or "")
    field = str(item.get("field") or item.get("path") or "")
    where = field if field not in message else ""  # skip the field when the message names it
    if item.get("index") is not None:
        where = f"record {item['index']}" + (f" {where}" if where else "")
    return f"{where}: {message}" if where else message


def _scrub(body: Any) -> Any:
    """Drop anything that looks like a credential from a parsed body, scrub personal data from its free text
    (:func:`~cxone_provider.redaction.scrub_text`); truncate long text bodies."""
    if isinstance(body, dict):
        return {key: MASK if key in _SECRET_KEYS else scrub_text(value) if key in _TEXT_KEYS and isinstance(value, str)
                else _scrub(value) for key, value in body.items()}
    if isinstance(body, list):
        return [_scrub(item) for item in body]
    if isinstance(body, str):
        return scrub_text(body[:_MAX_TEXT_BODY_CHARS] + "..." if len(body) > _MAX_TEXT_BODY_CHARS else body)
    return body
