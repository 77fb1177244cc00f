"""What both CXone API clients share: one request loop (modelled on openai-python's ``_base_client.py``).

:class:`~cxone_provider.client.CXoneClient` (the records API) and
:class:`~cxone_provider.call_lists.CallListClient` (the calling-list API) differ in paths and payloads, not in how
a request is sent. Every call of either goes through :meth:`BaseClient._request`: each attempt takes a slot of the
tenant's rate limiter before it sends, the session's auth sets the bearer token, a non-2xx answer becomes its typed
error (:mod:`cxone_provider.errors`), an attempt that may have reached the server without an answer marks the call's
outcome uncertain, and a first 401 gets a new token and one more send. Retries are the tenacity retrying of the
client's :class:`~cxone_provider.retry.RetryPolicy`; a 429 pauses every sender of the limiter.
"""

from __future__ import annotations

import logging
import time
from typing import TypeVar

import requests

from cxone_provider.auth import ClientCredentialsAuth
from cxone_provider.errors import CXoneError, CXoneRateLimitError
from cxone_provider.ratelimit import RateLimiter
from cxone_provider.retry import RetryPolicy, is_retryable, not_sent_or_rate_limited
from cxone_provider.sessions import (
    USER_AGENT,
    answer_error,
    no_answer_error,
    request_may_have_been_sent,
    warn_if_unverified,
)

__all__ = ["BaseClient", "Call"]

log = logging.getLogger(__name__)

_JSON_BODY = {"Content-Type": "application/json"}
_Client = TypeVar("_Client", bound="BaseClient")


class Call:
    """What one call has seen so far, across its attempts: the book-keeping its result or its error reports."""

    __slots__ = ("operation", "subject", "started", "attempts", "rate_limited", "outcome_uncertain", "token_refreshed")

    def __init__(self, operation: str, subject: str = "") -> None:
        self.operation = operation
        self.subject = subject
        self.started = time.monotonic()
        self.attempts = 0
        self.rate_limited = 0
        self.outcome_uncertain = False
        """True once an attempt ended without a definitive answer (no answer after sending, or a 5xx)."""
        self.token_refreshed = False

    @property
    def what(self) -> str:
        """How errors and logs name the call (built only when one needs it): ``record import to list 42``."""
        return f"{self.operation} {self.subject}" if self.subject else self.operation


class BaseClient:
    """
    An API client of one tenant: an auth that owns the token, a session carrying it, and the request loop.

    :param auth: sets the bearer token on every request and fetches a new one after a 401.
    :param session: the client's connection pool; it gets the auth, TLS verification and the default headers.
    :param timeout: seconds to wait for a connection and for an answer, per attempt.
    :param verify: TLS verification (``requests`` semantics: bool or CA bundle path).
    :param retry_policy: attempts and backoff for retryable failures.
    :param rate_limiter: the tenant's shared limiter; every attempt takes a slot, a 429 pauses all its senders.
    :param api_name: how the TLS warning names the API.
    :param owns_session: close the session with the client (False: the caller passed it in and closes it).
    """

    def __init__(self, auth: ClientCredentialsAuth, session: requests.Session, *, timeout: float,
                 verify: bool | str, retry_policy: RetryPolicy, rate_limiter: RateLimiter | None, api_name: str,
                 owns_session: bool = True) -> None:
        self.auth = auth
        self.timeout = timeout
        self.retry_policy = retry_policy
        self.rate_limiter = rate_limiter
        session.headers.update({"Accept": "application/json", "User-Agent": USER_AGENT})
        session.verify = verify
        session.auth = auth
        warn_if_unverified(verify, api_name)
        self._session = session
        self._owns_session = owns_session
        self._retrying = retry_policy.retrying(is_retryable, shared_pause=rate_limiter)
        self._retrying_creation = retry_policy.retrying(not_sent_or_rate_limited, shared_pause=rate_limiter)

    def __enter__(self: _Client) -> _Client:
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

    def _request(self, call: Call, method: str, url: str, *, data: bytes | None = None,
                 params: dict[str, str] | None = None, creates: bool = False) -> tuple[requests.Response, float]:
        """
        Send one call with retries; return its 2xx answer and the latency of the attempt that got it (ms).

        :param call: the call's book-keeping, updated by every attempt.
        :param data: a JSON body, already encoded.
        :param creates: the call creates something (a list, an upload job): retried only when it provably never
            arrived or was refused with 429, so that it is never made twice.
        :raises CXoneError: a typed subclass, with ``attempts`` and ``outcome_uncertain`` of the whole call.
        """
        try:
            return (self._retrying_creation if creates else self._retrying)(
                self._attempt, call, method, url, data, params
            )
        except CXoneError as error:
            error.attempts = call.attempts
            error.outcome_uncertain = error.outcome_uncertain or call.outcome_uncertain
            raise

    def _attempt(self, call: Call, method: str, url: str, data: bytes | None,
                 params: dict[str, str] | None) -> tuple[requests.Response, float]:
        """One attempt of the retrying: take a limiter slot, send, return (response, latency) on a 2xx, else raise a
        typed error. A first 401 gets a new token and one more send within this attempt (no retry used). A
        CXoneError of the auth (the token request failed) propagates as it is: the request never left."""
        while True:
            call.attempts += 1
            if self.rate_limiter is not None:
                self.rate_limiter.acquire()
            started = time.monotonic()
            try:
                response = self._session.request(method, url, params=params, data=data,
                                                 headers=_JSON_BODY if data is not None else None, timeout=self.timeout)
            except requests.RequestException as exc:
                sent = request_may_have_been_sent(exc)
                call.outcome_uncertain |= sent
                raise no_answer_error(exc, call.what, self.timeout, outcome_uncertain=sent) from exc
            latency_ms = (time.monotonic() - started) * 1000.0
            if 200 <= response.status_code < 300:
                return response, latency_ms
            error = answer_error(response, call.what)
            if response.status_code >= 500:
                call.outcome_uncertain = error.outcome_uncertain = True
            if response.status_code == 401 and not call.token_refreshed:
                call.token_refreshed = True
                self.auth.refused(response.request)
                log.warning("%s: 401 on attempt %d (request id %s); once more with a new token", call.what,
                            call.attempts, error.request_id)
                continue
            if isinstance(error, CXoneRateLimitError):
                call.rate_limited += 1
            raise error

