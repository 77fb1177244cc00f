"""
HTTP client for the CXone contact-list records API (plain Python, no Airflow imports).

The session carries a :class:`ClientCredentialsAuth` that owns the OAuth2 token cache, so call
sites never touch headers. Retries are the tenacity retrying of a :class:`~cxone_provider.retry.RetryPolicy`;
every attempt first takes a slot from the shared :class:`~cxone_provider.ratelimit.RateLimiter`, and a
429 pauses every sender of that limiter, not just the request that got it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import requests
from requests.auth import AuthBase

from cxone_provider import __version__
from cxone_provider.errors import (
    CXoneAuthError,
    CXoneConnectionError,
    CXoneError,
    CXoneRateLimitError,
    CXoneStatusError,
    CXoneTimeoutError,
    status_error,
)
from cxone_provider.models import BatchResult, RecordCallResult, RecordIssue, parse_record_issues
from cxone_provider.ratelimit import RateLimiter
from cxone_provider.retry import RetryPolicy, is_configuration_error, is_retryable, retry_after_s
from cxone_provider.sessions import new_session, refuse_redirects, warn_if_unverified

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
DEFAULT_SCOPE = "contactlists:write contactlists:read"
TOKEN_REFRESH_MARGIN_S = 60.0
DEFAULT_TOKEN_LIFETIME_S = 300.0  # assumed when the token response has no usable expires_in
REGION_BASE_URLS = {
    "us": "https://api.cloud.nice-incontact.com",
    "eu": "https://api-eu.cloud.nice-incontact.com",
}
_USER_AGENT = f"cxone-airflow-provider/{__version__} python-requests/{requests.__version__}"
_OBJECT_REPR = re.compile(r"<[^<>]+ at 0x[0-9a-f]+>:?\s*")


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


class ClientCredentialsAuth(AuthBase):
    """
    OAuth2 client-credentials auth for ``requests``: fetches, caches and refreshes the bearer token.

    Thread-safe: many sender threads share one instance; only one of them fetches a token while the
    others wait for it. A cached token is used until ``refresh_margin_s`` before it expires.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str = DEFAULT_SCOPE,
        timeout: float = 30.0,
        verify: bool | str = True,
        refresh_margin_s: float = TOKEN_REFRESH_MARGIN_S,
        on_token: Callable[[str], None] | None = None,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self.timeout = timeout
        self.verify = verify
        self.refresh_margin_s = refresh_margin_s
        self._on_token = on_token
        self._session = refuse_redirects(session or requests.Session())
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[str, float] | None = None  # (token, expires_at on self._clock)
        self._refused: CXoneError | None = None  # the credential's refusal: not asked again by this auth
        self.token_requests = 0

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.get_token()}"
        return request

    def __repr__(self) -> str:
        return f"ClientCredentialsAuth(token_url={self.token_url!r}, client_id={self.client_id!r})"

    def get_token(self) -> str:
        """The cached token, or a new one when there is none or it is within the refresh margin."""
        token = self._usable_token()
        if token is not None:
            return token
        with self._lock:
            token = self._usable_token()
            return token if token is not None else self._fetch_locked()

    def fetch_token(self) -> str:
        """Request a new token now, whatever the cache holds, and cache it."""
        with self._lock:
            return self._fetch_locked()

    def invalidate(self, token: str | None = None) -> None:
        """
        Forget the cached token.

        :param token: forget it only if it is still this one, so that many threads reacting to
            the same revoked token cause one refresh, not one each.
        """
        with self._lock:
            if self._cached is not None and (token is None or self._cached[0] == token):
                self._cached = None

    def close(self) -> None:
        self._session.close()

    def _usable_token(self) -> str | None:
        cached = self._cached
        if cached is not None and self._clock() < cached[1] - self.refresh_margin_s:
            return cached[0]
        return None

    def _token_request(self) -> dict[str, Any]:
        """The form and client authentication of a token request (the client-credentials grant, secret in the
        form); a subclass speaking another grant overrides this."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "scope": self.scope,
        }
        return {"data": form}

    def _token_answered(self, body: Mapping[str, Any]) -> None:
        """Called with a successful token answer before its token is cached (a subclass reads more of it)."""

    def _fetch_locked(self) -> str:
        """Fetch a token; a refused credential (or a redirect) is remembered and raised again without asking: the
        sender threads waiting for this token, and every later request, fail with it at once."""
        if self._refused is not None:
            raise self._refused
        try:
            return self._request_token()
        except CXoneError as error:
            if is_configuration_error(error):
                self._refused = error
            raise

    def _request_token(self) -> str:
        try:
            response = self._session.post(
                self.token_url,
                **self._token_request(),
                headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
                timeout=self.timeout,
                verify=self.verify,
            )
        except requests.Timeout as exc:
            raise CXoneTimeoutError(
                f"CXone token request timed out after {self.timeout:g}s ({self.token_url})"
            ) from exc
        except requests.RequestException as exc:
            raise CXoneConnectionError(
                f"CXone token request failed: no answer from {self.token_url}: {_connection_reason(exc)}"
            ) from exc
        request_id = response.headers.get("X-Request-Id")
        body = _parse_body(response)
        self.token_requests += 1
        if not 200 <= response.status_code < 300:
            raise status_error(
                response.status_code,
                operation="token request",
                request_id=request_id,
                body=body,
                retry_after=retry_after_s(response.headers.get("Retry-After")),
                token_endpoint=True,
            )
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise CXoneAuthError(
                f"CXone token request failed: {response.status_code} answer without an access_token "
                f"(request id {request_id or 'n/a'})",
                status_code=response.status_code,
                request_id=request_id,
                body=None,
            )
        self._token_answered(body)
        if self._on_token is not None:
            try:
                self._on_token(token)
            except Exception:
                log.warning("on_token callback failed", exc_info=True)
        lifetime_s = _expires_in_s(body)
        self._cached = (token, self._clock() + lifetime_s)
        log.info("fetched a CXone access token (expires in %.0fs, request id %s)", lifetime_s, request_id)
        return token


class _Call:
    """What one import call has seen so far, across its attempts."""

    def __init__(self, contact_list_id: str, operation: str = "record import to list") -> None:
        self.contact_list_id = contact_list_id
        self.operation = operation
        self.started = time.monotonic()
        self.attempts = 0
        self.rate_limited = 0
        self.outcome_uncertain = False
        self.token_refreshed = False

    def may_have_been_sent(self, exc: requests.RequestException) -> bool:
        """Whether the failed send may have reached the server; remembered for the whole call."""
        sent = _request_may_have_been_sent(exc)
        self.outcome_uncertain |= sent
        return sent


class CXoneClient:
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
        self.timeout = timeout
        self.retry_policy = retry_policy
        self.rate_limiter = rate_limiter
        self._retrying = retry_policy.retrying(is_retryable, shared_pause=rate_limiter)
        self._owns_session = session is None
        session = refuse_redirects(session) if session is not None else new_session(pool_maxsize=pool_size)
        session.headers.update({"Accept": "application/json", "User-Agent": _USER_AGENT})
        session.verify = verify
        warn_if_unverified(verify, f"CXone API {self.base_url}")
        self.auth = ClientCredentialsAuth(
            f"{self.base_url}/oauth2/token",
            client_id,
            client_secret,
            scope=scope,
            timeout=timeout,
            verify=verify,
            on_token=on_token,
        )
        session.auth = self.auth
        self._session = session

    def __repr__(self) -> str:
        return f"CXoneClient(base_url={self.base_url!r}, client_id={self.auth.client_id!r})"

    def __enter__(self) -> CXoneClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections."""
        self.auth.close()
        if self._owns_session:
            self._session.close()

    def fetch_token(self) -> str:
        """Request a new access token now (also a cheap check that the credentials work)."""
        return self.auth.fetch_token()

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
        call = _Call(contact_list_id, operation=f"record {'update' if method == 'PUT' else 'removal'} on list")
        try:
            response, latency_ms = self._retrying(self._attempt, call, url, payload, method)
        except CXoneStatusError as error:
            error.attempts = call.attempts
            error.outcome_uncertain = call.outcome_uncertain
            if error.status_code == 404:
                return RecordCallResult(False, 0.0, error.request_id, call.attempts, 404, call.outcome_uncertain,
                                        call.rate_limited)
            raise
        except CXoneError as error:
            error.attempts = call.attempts
            error.outcome_uncertain = call.outcome_uncertain
            raise
        return RecordCallResult(True, latency_ms, response.headers.get("X-Request-Id"), call.attempts,
                                response.status_code, call.outcome_uncertain, call.rate_limited)

    def _records_url(self, contact_list_id: str) -> str:
        return f"{self.base_url}/api/v2/contactlists/{quote(str(contact_list_id), safe='')}/records"

    def _post_with_retries(self, url: str, payload: bytes, contact_list_id: str, n_records: int) -> BatchResult:
        call = _Call(contact_list_id)
        try:
            response, latency_ms = self._retrying(self._attempt, call, url, payload)
        except CXoneError as error:
            error.attempts = call.attempts
            error.outcome_uncertain = call.outcome_uncertain
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

    def _attempt(self, call: _Call, url: str, payload: bytes | None, method: str = "POST") -> tuple[requests.Response, float]:
        """
        One attempt of the retrying: take a limiter slot, send (POST, or PUT/DELETE of one record), return (response, latency) on a 2xx, else raise
        a typed error. A first 401 gets a new token and one more send within this attempt (no retry used).
        """
        while True:
            call.attempts += 1
            if self.rate_limiter is not None:
                self.rate_limiter.acquire()
            started = time.monotonic()
            try:  # a CXoneError from the auth (the token request failed) propagates: the POST never left
                response = self._session.request(
                    method, url, data=payload,
                    headers={"Content-Type": "application/json"} if payload is not None else None, timeout=self.timeout,
                )
            except requests.Timeout as exc:
                sent = call.may_have_been_sent(exc)
                raise CXoneTimeoutError(
                    f"CXone {call.operation} {call.contact_list_id} timed out after {self.timeout:g}s",
                    outcome_uncertain=sent,
                ) from exc
            except requests.RequestException as exc:
                sent = call.may_have_been_sent(exc)
                raise CXoneConnectionError(
                    f"CXone {call.operation} {call.contact_list_id} got no answer: {_connection_reason(exc)}",
                    outcome_uncertain=sent,
                ) from exc
            latency_ms = (time.monotonic() - started) * 1000.0
            if 200 <= response.status_code < 300:
                return response, latency_ms
            error = status_error(
                response.status_code,
                operation=f"{call.operation} {call.contact_list_id}",
                request_id=response.headers.get("X-Request-Id"),
                body=_parse_body(response),
                retry_after=retry_after_s(response.headers.get("Retry-After")),
            )
            if response.status_code >= 500:
                call.outcome_uncertain = True
            if response.status_code == 401 and not call.token_refreshed:
                call.token_refreshed = True
                self.auth.invalidate(_bearer_token(response.request))
                log.warning(
                    "list %s: 401 on attempt %d (request id %s); retrying once with a new token",
                    call.contact_list_id,
                    call.attempts,
                    error.request_id,
                )
                continue
            if isinstance(error, CXoneRateLimitError):
                call.rate_limited += 1
            raise error

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
        body = _parse_body(response)
        if not isinstance(body, dict) or not isinstance(body.get("recordsCreated"), int):
            raise CXoneStatusError(
                f"CXone record import to list {contact_list_id}: {response.status_code} answer without "
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


def _parse_body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _expires_in_s(body: Mapping[str, Any]) -> float:
    try:
        lifetime_s = float(body.get("expires_in"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_TOKEN_LIFETIME_S
    return lifetime_s if lifetime_s > 0 else DEFAULT_TOKEN_LIFETIME_S


def _bearer_token(request: requests.PreparedRequest | None) -> str | None:
    header = request.headers.get("Authorization", "") if request is not None else ""
    return header[len("Bearer ") :] if header.startswith("Bearer ") else None


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps (requests -> urllib3 -> socket), outermost first."""
    chain = [exc]
    while len(chain) < 8:
        current = chain[-1]
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((arg for arg in reversed(current.args) if isinstance(arg, BaseException)), None)
        if inner is None:
            inner = current.__cause__ or current.__context__
        if inner is None or inner in chain:
            break
        chain.append(inner)
    return chain


def _request_may_have_been_sent(exc: requests.RequestException) -> bool:
    """False only when the connection was never established (refused, DNS, connect timeout)."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    from urllib3.exceptions import NewConnectionError  # also covers NameResolutionError

    return not any(isinstance(link, NewConnectionError) for link in _exception_chain(exc))


def _connection_reason(exc: BaseException) -> str:
    """The innermost cause of a connection failure, short and free of object reprs."""
    text = ""
    for link in reversed(_exception_chain(exc)):
        text = _OBJECT_REPR.sub("", str(link)).strip()
        if text:
            break
    text = text or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
