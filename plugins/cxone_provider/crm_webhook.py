"""Deliver events to the CRM webhook: signed, keyed, retried through the provider's one retry mechanism.

Plain Python (no Airflow import); :class:`~cxone_provider.hooks.crm_webhook.CrmWebhookHook` builds the target
from an Airflow connection. A failed delivery is returned as a :class:`Delivery`, never raised: callers record it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from cxone_provider.errors import CXoneRedirectError
from cxone_provider.redaction import mask_uri
from cxone_provider.retry import RetryPolicy, retry_after_s
from cxone_provider.sessions import refuse_redirects, warn_if_unverified

log = logging.getLogger(__name__)

WEBHOOK_RETRY_POLICY = RetryPolicy(max_attempts=4, backoff_base_s=0.5, backoff_max_s=8.0, retry_after_cap_s=10.0)
"""Bounded so that a CRM that is down delays the run by seconds per event, not minutes."""
RETRYABLE_CLIENT_STATUSES = frozenset({408, 425, 429})
SIGNATURE_HEADER = "X-Signature"
SIGNATURE_TIMESTAMP_HEADER = "X-Signature-Timestamp"
"""Signed events carry both: the Unix time of the attempt, and ``sha256=`` + HMAC-SHA256(secret, ``{timestamp}.`` +
body) in hex. A receiver recomputes it and refuses a timestamp more than a few minutes from its clock (README,
"Security"), so a captured event cannot be replayed later."""
DEFAULT_GIVE_UP_AFTER = 20
"""Events in a row not delivered after which a sender stops trying: a CRM that is down costs a run seconds, not one
backoff per event for thousands of batch events."""


@dataclass(frozen=True)
class WebhookTarget:
    """Where and how to deliver: URL, optional signing secret, timeout, TLS verification, retries, senders. Its repr
    shows neither the secret nor credentials in the URL."""

    url: str
    secret: str | None = field(default=None, repr=False)
    timeout_s: float = 5.0
    verify: bool = True
    retry_policy: RetryPolicy = field(default=WEBHOOK_RETRY_POLICY)
    concurrency: int = 8
    give_up_after: int = DEFAULT_GIVE_UP_AFTER

    def __repr__(self) -> str:
        return (f"WebhookTarget(url={mask_uri(self.url)!r}, signed={self.secret is not None}, "
                f"timeout_s={self.timeout_s!r}, verify={self.verify!r}, concurrency={self.concurrency!r})")


@dataclass(frozen=True)
class Delivery:
    """What became of one event."""

    event_id: str
    event: str
    ok: bool
    status_code: int | None
    attempts: int
    error: str | None


class WebhookDeliveryError(Exception):
    """One delivery attempt failed: an HTTP status (with the server's Retry-After, if any) or no answer."""

    def __init__(self, reason: str, *, status_code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """No answer, 5xx, 408, 425 and 429 may succeed when sent again; other answers will not."""
        return self.status_code is None or self.status_code >= 500 or self.status_code in RETRYABLE_CLIENT_STATUSES


def is_retryable_delivery(error: BaseException) -> bool:
    return isinstance(error, WebhookDeliveryError) and error.retryable


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The ``X-Signature`` value: ``sha256=<HMAC-SHA256 of "{timestamp}." followed by the body, hex>``."""
    return "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_headers(body: bytes, secret: str, now: float | None = None) -> dict[str, str]:
    """``X-Signature-Timestamp`` and ``X-Signature`` for one attempt to deliver ``body``."""
    timestamp = int(time.time() if now is None else now)
    return {SIGNATURE_TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(body, secret, timestamp)}


class WebhookSender:
    """Posts events with bounded retries; thread-safe (one session, its pool sized to the concurrency).

    After ``target.give_up_after`` events in a row were not delivered, the sender gives up: further events are
    returned undelivered at once ("not attempted"), without a request. Any delivered event resets the count."""

    def __init__(
        self,
        target: WebhookTarget,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.target = target
        self._session = refuse_redirects(session or requests.Session())
        adapter = HTTPAdapter(pool_maxsize=max(target.concurrency, 1), max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._retrying = target.retry_policy.retrying(is_retryable_delivery, sleep=sleep)
        self._failures_in_a_row = 0
        self._lock = threading.Lock()
        if not target.secret:
            log.warning("webhook %s: events are sent unsigned (the connection has no password): the CRM cannot tell "
                        "them from forged ones", mask_uri(target.url))
        warn_if_unverified(target.verify, f"webhook {mask_uri(target.url)}")

    def send(self, event: dict[str, Any]) -> Delivery:
        """Deliver one event (``eventId`` is its idempotency key); the outcome is returned, never raised."""
        if self.gave_up:
            return Delivery(event["eventId"], event["event"], False, None, 0,
                            f"not attempted: {self.target.give_up_after} events in a row were not delivered")
        body = json.dumps(event, separators=(",", ":"), default=str).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": event["eventId"]}
        attempts: list[int] = []
        try:
            status = self._retrying(self._post, body, headers, attempts)
        except WebhookDeliveryError as error:
            log.warning("webhook event %s not delivered after %d attempt(s): %s", event["eventId"], len(attempts), error)
            self._count(delivered=False)
            return Delivery(event["eventId"], event["event"], False, error.status_code, len(attempts), str(error))
        self._count(delivered=True)
        return Delivery(event["eventId"], event["event"], True, status, len(attempts), None)

    @property
    def gave_up(self) -> bool:
        """True once ``give_up_after`` events in a row were not delivered."""
        return self._failures_in_a_row >= self.target.give_up_after

    def _count(self, *, delivered: bool) -> None:
        with self._lock:
            self._failures_in_a_row = 0 if delivered else self._failures_in_a_row + 1
            if self._failures_in_a_row == self.target.give_up_after:
                log.warning("webhook: %d events in a row not delivered; not trying the rest", self._failures_in_a_row)

    def send_all(self, events: list[dict[str, Any]]) -> list[Delivery]:
        """Deliver events concurrently (``concurrency`` senders); outcomes in the order of ``events``."""
        if not events:
            return []
        with ThreadPoolExecutor(max_workers=max(1, self.target.concurrency)) as pool:
            return list(pool.map(self.send, events))

    def _post(self, body: bytes, headers: dict[str, str], attempts: list[int]) -> int:
        attempts.append(1)
        if self.target.secret:  # signed per attempt: a retry after a long Retry-After is still within the window
            headers = {**headers, **signature_headers(body, self.target.secret)}
        try:
            response = self._session.post(
                self.target.url, data=body, headers=headers, timeout=self.target.timeout_s, verify=self.target.verify
            )
        except CXoneRedirectError as exc:  # never followed: the signed event does not go where the answer points
            raise WebhookDeliveryError(str(exc), status_code=exc.status_code) from None
        except requests.RequestException as exc:
            raise WebhookDeliveryError(type(exc).__name__) from exc
        if response.status_code < 300:
            return response.status_code
        raise WebhookDeliveryError(
            f"HTTP {response.status_code}",
            status_code=response.status_code,
            retry_after=retry_after_s(response.headers.get("Retry-After")),
        )

    def close(self) -> None:
        self._session.close()
