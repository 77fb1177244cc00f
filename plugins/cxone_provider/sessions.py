"""The provider's HTTP sessions: how a request leaves, the same for the CXone APIs, their discovery, the token
endpoints and the CRM webhook.

No redirect is ever followed. ``requests`` re-sends a POST body on 307/308 (and the form with the client secret,
a contact record, a signed event) to wherever the answer points; a 3xx here is a
:class:`~cxone_provider.errors.CXoneRedirectError` naming the location instead, raised before any second request.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from cxone_provider.errors import CXoneRedirectError
from cxone_provider.redaction import mask_uri

__all__ = ["new_session", "refuse_redirects", "warn_if_unverified"]

log = logging.getLogger(__name__)


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
