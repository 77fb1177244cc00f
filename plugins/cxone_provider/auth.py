"""OAuth2 bearer-token auth for ``requests``: the one place that fetches, caches, refreshes and sets the token.

A client's session carries the auth, so no call site touches the ``Authorization`` header; after a 401 the request
loop tells the auth (:meth:`ClientCredentialsAuth.refused`) and sends once more with a new token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
from requests.auth import AuthBase

from cxone_provider.errors import CXoneAuthError, CXoneError
from cxone_provider.retry import is_configuration_error
from cxone_provider.sessions import USER_AGENT, answer_error, no_answer_error, parse_body, refuse_redirects

__all__ = ["DEFAULT_SCOPE", "ClientCredentialsAuth"]

log = logging.getLogger(__name__)

DEFAULT_SCOPE = "contactlists:write contactlists:read"
TOKEN_REFRESH_MARGIN_S = 60.0
DEFAULT_TOKEN_LIFETIME_S = 300.0  # assumed when the token response has no usable expires_in
_BEARER = "Bearer "


class ClientCredentialsAuth(AuthBase):
    """
    OAuth2 client-credentials auth for ``requests``: fetches, caches and refreshes the bearer token.

    Thread-safe: many sender threads share one instance; only one of them fetches a token while the
    others wait for it. A cached token is used until ``refresh_margin_s`` before it expires.
    """

    def __init__(self, token_url: str, client_id: str, client_secret: str, *, scope: str = DEFAULT_SCOPE,
                 timeout: float = 30.0, verify: bool | str = True, refresh_margin_s: float = TOKEN_REFRESH_MARGIN_S,
                 on_token: Callable[[str], None] | None = None, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
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
        request.headers["Authorization"] = _BEARER + self.get_token()
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

    def refused(self, request: requests.PreparedRequest | None) -> None:
        """The server answered 401 to ``request``: forget the token it carried (if still cached), so that the next
        request fetches a new one."""
        header = request.headers.get("Authorization", "") if request is not None else ""
        self.invalidate(header[len(_BEARER):] if header.startswith(_BEARER) else None)

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
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
                timeout=self.timeout,
                verify=self.verify,
            )
        except requests.RequestException as exc:  # nothing was sent on the data call that needed this token
            raise no_answer_error(exc, f"token request to {self.token_url}", self.timeout) from exc
        request_id = response.headers.get("X-Request-Id")
        self.token_requests += 1
        if not 200 <= response.status_code < 300:
            raise answer_error(response, "token request", token_endpoint=True)
        body = parse_body(response)
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


def _expires_in_s(body: Mapping[str, Any]) -> float:
    try:
        lifetime_s = float(body.get("expires_in"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_TOKEN_LIFETIME_S
    return lifetime_s if lifetime_s > 0 else DEFAULT_TOKEN_LIFETIME_S
