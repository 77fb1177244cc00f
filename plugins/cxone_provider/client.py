"""
HTTP client for the CXone contact-list records API (plain Python, no Airflow imports).

The session carries a :class:`~cxone_provider.auth.ClientCredentialsAuth` that owns the OAuth2 token cache, so call
sites never touch headers. Every call goes through the request loop both clients share
(:class:`~cxone_provider.base_client.BaseClient`): a slot of the shared
:class:`~cxone_provider.ratelimit.RateLimiter` per attempt, typed errors, retries per the
:class:`~cxone_provider.retry.RetryPolicy`, and a 429 pausing every sender of that limiter.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import requests

from cxone_provider.auth import DEFAULT_SCOPE, ClientCredentialsAuth
from cxone_provider.base_client import BaseClient, Call
from cxone_provider.errors import CXoneError, CXoneStatusError
from cxone_provider.models import BatchResult, RecordCallResult, RecordIssue, parse_record_issues
from cxone_provider.ratelimit import RateLimiter
from cxone_provider.retry import RetryPolicy, is_retryable
from cxone_provider.sessions import new_session, parse_body, refuse_redirects

__all__ = [
    "DEFAULT_SCOPE",
    "MAX_RECORDS_PER_BATCH",
    "REGION_BASE_URLS",
    "BatchResult",
    "ClientCredentialsAuth",
    "CXoneClient",
    "RecordIssue",
    "base_url_for",
]

log = logging.getLogger(__name__)

MAX_RECORDS_PER_BATCH = 100
REGION_BASE_URLS = {
    "us": "https://api.cloud.nice-incontact.com",
    "eu": "https://api-eu.cloud.nice-incontact.com",
}
IMPORT = "record import to list"


def _check_batch_size(n_records: int) -> None:
    if n_records > MAX_RECORDS_PER_BATCH:
        raise ValueError(f"a batch holds at most {MAX_RECORDS_PER_BATCH} records, got {n_records}; split it first")
    if not n_records:
        raise ValueError("a batch needs at least one record")


def base_url_for(region: str | None = None, host: str | None = None) -> str:
    """
    Base URL of the CXone API: an explicit ``host`` wins, otherwise the ``region`` (us, eu; default us).

    ``host`` may come with or without a scheme (``api.example.com`` means https) and with a port.
    """
    if host and host.strip():
        url = host.strip().rstrip("/")
        return url if "://" in url else f"https://{url}"
    key = (region or "us").strip().lower()
    try:
        return REGION_BASE_URLS[key]
    except KeyError:
        raise ValueError(
            f"unknown CXone region {region!r}: expected one of {', '.join(REGION_BASE_URLS)}, or set a host"
        ) from None


class CXoneClient(BaseClient):
    """
    Client for one CXone tenant; safe to share between sender threads.

    :param base_url: API base URL, see :func:`base_url_for`.
    :param client_id: OAuth2 client id.
    :param client_secret: OAuth2 client secret; never logged, never part of an error message.
    :param scope: OAuth2 scope requested with each token.
    :param timeout: seconds to wait for a connection and for an answer, per attempt.
    :param verify: TLS verification (``requests`` semantics: bool or CA bundle path).
    :param retry_policy: attempts and backoff for retryable failures.
    :param rate_limiter: shared limiter; every attempt takes a slot, a 429 pauses all its senders.
    :param pool_size: HTTP connections kept per host; at least the number of sender threads.
    :param on_token: called with every new token (e.g. to register it with a log masker).
    :param session: a ``requests.Session`` to use instead of a new one; the client sets its auth and makes it refuse
        redirects (:func:`~cxone_provider.sessions.refuse_redirects`).
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str = DEFAULT_SCOPE,
        timeout: float = 30.0,
        verify: bool | str = True,
        retry_policy: RetryPolicy = RetryPolicy(),
        rate_limiter: RateLimiter | None = None,
        pool_size: int = 16,
        on_token: Callable[[str], None] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if not base_url or not base_url.strip():
            raise ValueError("CXone base URL is required (see base_url_for)")
        if not client_id or not client_secret:
            raise ValueError("CXone client id and client secret are both required")
        self.base_url = base_url_for(host=base_url)
        auth = ClientCredentialsAuth(f"{self.base_url}/oauth2/token", client_id, client_secret, scope=scope,
                                     timeout=timeout, verify=verify, on_token=on_token)
        super().__init__(
            auth,
            refuse_redirects(session) if session is not None else new_session(pool_maxsize=pool_size),
            timeout=timeout,
            verify=verify,
            retry_policy=retry_policy,
            rate_limiter=rate_limiter,
            api_name=f"CXone API {self.base_url}",
            owns_session=session is None,
        )

    def __repr__(self) -> str:
        return f"CXoneClient(base_url={self.base_url!r}, client_id={self.auth.client_id!r})"

    def import_batch(self, contact_list_id: str, records: Sequence[Mapping[str, Any]]) -> BatchResult:
        """
        Send one batch of at most 100 records to a contact list.

        Retryable failures (429, 5xx, dropped connections, timeouts) are retried per the retry
        policy; a 401 gets a new token and exactly one more attempt.

        :param contact_list_id: the CXone contact list to add the records to.
        :param records: records in the API shape (contactId, phoneNumbers, customFields, ...).
        :return: what the server reported for the accepted batch.
        :raises ValueError: more than 100 records, or none, before anything is sent.
        :raises CXoneError: a typed subclass, with ``attempts`` and ``outcome_uncertain`` set.
        """
        _check_batch_size(len(records))
        payload = json.dumps({"records": [dict(record) for record in records]}).encode()
        return self._post_with_retries(self._records_url(contact_list_id), payload, contact_list_id, len(records))

    def import_batch_json(self, contact_list_id: str, records_json: Sequence[str]) -> BatchResult:
        """
        Like :meth:`import_batch` for records already serialised as JSON objects (one string each):
        the body is joined, not re-encoded, which saves a decode/encode per record on large imports.

        :param contact_list_id: the CXone contact list to add the records to.
        :param records_json: each a JSON object in the API record shape.
        """
        _check_batch_size(len(records_json))
        payload = ('{"records":[' + ",".join(records_json) + "]}").encode()
        return self._post_with_retries(self._records_url(contact_list_id), payload, contact_list_id, len(records_json))

    def update_record_json(self, contact_list_id: str, contact_id: str, record_json: str) -> RecordCallResult:
        """
        Replace the stored record ``contact_id`` of a contact list (``PUT .../records/{contactId}``).

        Retries, the new token on a 401 and the rate limiter are those of :meth:`import_batch`.

        :param contact_list_id: the CXone contact list holding the record.
        :param contact_id: the record's contactId (the body must name the same).
        :param record_json: the record in the POST record shape, as a JSON object.
        :return: ``found`` False when the list holds no such record (404).
        :raises CXoneError: a typed subclass, with ``attempts`` and ``outcome_uncertain`` set.
        """
        return self._record_call("PUT", contact_list_id, contact_id, record_json.encode())

    def delete_record(self, contact_list_id: str, contact_id: str) -> RecordCallResult:
        """
        Remove the stored record ``contact_id`` of a contact list (``DELETE .../records/{contactId}``).

        :return: ``found`` False when the list holds no such record (404).
        :raises CXoneError: a typed subclass, with ``attempts`` and ``outcome_uncertain`` set.
        """
        return self._record_call("DELETE", contact_list_id, contact_id, None)

    def _record_call(self, method: str, contact_list_id: str, contact_id: str, payload: bytes | None) -> RecordCallResult:
        url = f"{self._records_url(contact_list_id)}/{quote(str(contact_id), safe='')}"
        call = Call(f"record {'update' if method == 'PUT' else 'removal'} on list", contact_list_id)
        try:
            response, latency_ms = self._request(call, method, url, data=payload)
        except CXoneStatusError as error:
            if error.status_code == 404:
                return RecordCallResult(False, 0.0, error.request_id, call.attempts, 404, call.outcome_uncertain,
                                        call.rate_limited)
            raise
        return RecordCallResult(True, latency_ms, response.headers.get("X-Request-Id"), call.attempts,
                                response.status_code, call.outcome_uncertain, call.rate_limited)

    def _records_url(self, contact_list_id: str) -> str:
        return f"{self.base_url}/api/v2/contactlists/{quote(str(contact_list_id), safe='')}/records"

    def _post_with_retries(self, url: str, payload: bytes, contact_list_id: str, n_records: int) -> BatchResult:
        call = Call(IMPORT, contact_list_id)
        try:
            response, latency_ms = self._request(call, "POST", url, data=payload)
        except CXoneError as error:
            if is_retryable(error):
                log.warning("list %s: giving up after %d attempt(s): %s", contact_list_id, call.attempts, error)
            else:
                log.info("list %s: not retryable: %s", contact_list_id, error)
            raise
        return self._batch_result(
            response,
            contact_list_id=contact_list_id,
            n_records=n_records,
            latency_ms=latency_ms,
            total_latency_ms=(time.monotonic() - call.started) * 1000.0,
            attempts=call.attempts,
            outcome_uncertain=call.outcome_uncertain,
            rate_limited=call.rate_limited,
        )

    def _batch_result(
        self,
        response: requests.Response,
        *,
        contact_list_id: str,
        n_records: int,
        latency_ms: float,
        total_latency_ms: float,
        attempts: int,
        outcome_uncertain: bool,
        rate_limited: int,
    ) -> BatchResult:
        request_id = response.headers.get("X-Request-Id")
        body = parse_body(response)
        if not isinstance(body, dict) or not isinstance(body.get("recordsCreated"), int):
            raise CXoneStatusError(
                f"CXone {IMPORT} {contact_list_id}: {response.status_code} answer without "
                f"recordsCreated (request id {request_id or 'n/a'}); records may have been created",
                status_code=response.status_code,
                request_id=request_id,
                body=None,
                attempts=attempts,
                outcome_uncertain=True,
            )
        duplicates = parse_record_issues(body.get("warnings"))
        errors = parse_record_issues(body.get("errors"))
        if body.get("errors") and not errors:  # an errors value that is not a list names no record: count it as one
            errors = (RecordIssue(index=None, contact_id=None, code=None, message="unparseable errors value"),)
        result = BatchResult(
            created=body["recordsCreated"],
            duplicates=duplicates,
            latency_ms=latency_ms,
            total_latency_ms=total_latency_ms,
            request_id=request_id,
            response_id=str(body["id"]) if body.get("id") is not None else None,
            attempts=attempts,
            status_code=response.status_code,
            outcome_uncertain=outcome_uncertain,
            rate_limited=rate_limited,
            errors=errors,
            records=n_records,
        )
        log.debug(  # per batch: debug, since a nightly list makes thousands of them (the engine logs progress)
            "list %s: batch of %d sent, %d created, %d duplicate warning(s), %d record error(s); status %d, "
            "request id %s, %d attempt(s), %.0f ms%s",
            contact_list_id,
            n_records,
            result.created,
            len(duplicates),
            len(errors),
            result.status_code,
            request_id,
            attempts,
            latency_ms,
            " (outcome of an earlier attempt uncertain)" if outcome_uncertain else "",
        )
        return result

