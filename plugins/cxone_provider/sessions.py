"""The provider's HTTP sessions: how a request leaves and how its answer is read, the same for the CXone APIs, their
discovery, the token endpoints and the CRM webhook.

No redirect is ever followed. ``requests`` re-sends a POST body on 307/308 (and the form with the client secret,
a contact record, a signed event) to wherever the answer points; a 3xx here is a
:class:`~cxone_provider.errors.CXoneRedirectError` naming the location instead, raised before any second request.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from cxone_provider import __version__
from cxone_provider.errors import (
    CXoneConnectionError,
    CXoneRedirectError,
    CXoneStatusError,
    CXoneTimeoutError,
    status_error,
)
from cxone_provider.redaction import mask_uri
from cxone_provider.retry import retry_after_s

__all__ = [
    "USER_AGENT",
    "answer_error",
    "new_session",
    "no_answer_error",
    "parse_body",
    "refuse_redirects",
    "request_may_have_been_sent",
    "warn_if_unverified",
]

log = logging.getLogger(__name__)

USER_AGENT = f"cxone-airflow-provider/{__version__} python-requests/{requests.__version__}"
_OBJECT_REPR = re.compile(r"<[^<>]+ at 0x[0-9a-f]+>:?\s*")


def new_session(*, pool_connections: int = 4, pool_maxsize: int = 16) -> requests.Session:
    """A session with a connection pool of that size, no urllib3 retries (the retry policy decides) and no redirect
    followed."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool_connections, pool_maxsize=max(pool_maxsize, 1), max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return refuse_redirects(session)


def refuse_redirects(session: requests.Session) -> requests.Session:
    """Make ``session`` (also one a caller passed in) raise on every 3xx answer instead of following it.

    A response hook runs before ``requests`` resolves redirects, whatever ``allow_redirects`` a call passes, so
    it covers every call made through the session; ``max_redirects = 0`` is the backstop should the hook be
    removed (``requests`` then raises before sending a second request)."""
    if _raise_on_redirect not in session.hooks["response"]:
        session.hooks["response"].append(_raise_on_redirect)
    session.max_redirects = 0
    return session


def warn_if_unverified(verify: bool | str, what: str) -> None:
    """Say so in the log when TLS certificates are not checked (``verify_ssl: false``): anyone on the path can then
    read and change what is sent, credentials included."""
    if verify is False:
        log.warning("%s: TLS certificate verification is OFF (verify_ssl false): credentials and records can be read "
                    "and changed on the way; turn it on outside a test set-up", what)


def _raise_on_redirect(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    if not 300 <= response.status_code < 400:
        return response
    location = response.headers.get("Location")
    shown = mask_uri(location) if location else None
    request = response.request
    response.close()  # the body is not read: the connection is dropped, not reused
    what = f"{request.method} {mask_uri(str(request.url))}" if request is not None else "a request"
    raise CXoneRedirectError(
        f"{what} answered {response.status_code} {response.reason or ''}".rstrip()
        + f" pointing to {shown or 'no Location'}; redirects are not followed (set the URL it should use)",
        status_code=response.status_code,
        request_id=response.headers.get("X-Request-Id"),
        location=shown,
    )


def parse_body(response: requests.Response) -> Any:
    """The answer's JSON, or its text when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return response.text


def answer_error(response: requests.Response, operation: str, *, token_endpoint: bool = False) -> CXoneStatusError:
    """The typed error of a non-2xx answer (:func:`~cxone_provider.errors.status_error`), with its request id, body
    and Retry-After."""
    return status_error(
        response.status_code,
        operation=operation,
        request_id=response.headers.get("X-Request-Id"),
        body=parse_body(response),
        retry_after=retry_after_s(response.headers.get("Retry-After")),
        token_endpoint=token_endpoint,
    )


def no_answer_error(exc: requests.RequestException, operation: str, timeout: float, *,
                    outcome_uncertain: bool = False) -> CXoneConnectionError:
    """The typed error of a request that got no answer: a timeout, or a connection that failed or was dropped."""
    if isinstance(exc, requests.Timeout):
        return CXoneTimeoutError(f"CXone {operation} timed out after {timeout:g}s", outcome_uncertain=outcome_uncertain)
    return CXoneConnectionError(f"CXone {operation} got no answer: {_connection_reason(exc)}",
                                outcome_uncertain=outcome_uncertain)


def request_may_have_been_sent(exc: requests.RequestException) -> bool:
    """False only when the connection was never established (refused, DNS, connect timeout)."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    from urllib3.exceptions import NewConnectionError  # also covers NameResolutionError

    return not any(isinstance(link, NewConnectionError) for link in _exception_chain(exc))


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


def _connection_reason(exc: BaseException) -> str:
    """The innermost cause of a connection failure, short and free of object reprs."""
    text = ""
    for link in reversed(_exception_chain(exc)):
        text = _OBJECT_REPR.sub("", str(link)).strip()
        if text:
            break
    text = text or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
