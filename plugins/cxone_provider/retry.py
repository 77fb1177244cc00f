"""Retry policy for the provider's HTTP calls: data (how often, how long to wait) plus one pure predicate
(what to retry), turned once into a tenacity ``Retrying`` by :meth:`RetryPolicy.retrying`.

The CXone client and the CRM webhook sender both retry through it, so this module is the one place that
says how a call is retried.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import tenacity

from cxone_provider.errors import (
    CXoneAuthError,
    CXoneConnectionError,
    CXoneRateLimitError,
    CXoneRedirectError,
    CXoneServerError,
    CXoneStatusError,
    CXoneUntrustedHostError,
)

log = logging.getLogger(__name__)

TOO_MANY_REQUESTS = 429


class SharedPause(Protocol):
    """What a retrying needs of a rate limiter: hold back every sender for some seconds."""

    def penalize(self, seconds: float) -> None: ...


def is_retryable(error: BaseException) -> bool:
    """
    Whether sending the same CXone request again can succeed.

    429, 5xx, dropped connections and timeouts: yes. 400, 403, 409 and anything else: no.
    401 is not retryable here: the client handles it apart (new token, then exactly one more try).
    """
    return isinstance(error, (CXoneRateLimitError, CXoneServerError, CXoneConnectionError))


def is_configuration_error(error: BaseException) -> bool:
    """
    Whether the error shows a wrong setting that no retry can fix: a refused credential (the token endpoint's
    ``invalid_client``/``invalid_grant``, a 401 after a fresh token, a 403), a redirect (never followed), a 404 (the
    list does not exist), an untrusted discovery host. The import stops at the first one and fails without retries.
    """
    return isinstance(error, (CXoneAuthError, CXoneRedirectError, CXoneUntrustedHostError)) or (
        isinstance(error, CXoneStatusError) and error.status_code == 404
    )


def is_rate_limited(error: BaseException | None) -> bool:
    """A 429: the server wants every sender to slow down, not just this one."""
    return getattr(error, "status_code", None) == TOO_MANY_REQUESTS


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a call gets and how long to wait between them."""

    max_attempts: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_cap_s: float = 60.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.backoff_base_s, self.backoff_max_s, self.retry_after_cap_s) < 0:
            raise ValueError("backoff and cap values must not be negative")

    def delay_for(self, attempt: int, error: BaseException | None = None) -> float:
        """
        Seconds to wait after failed attempt number ``attempt`` (1-based).

        An error carrying the server's Retry-After (``retry_after``, seconds) waits that, capped at
        ``retry_after_cap_s``. Anything else waits ``backoff_base_s * 2 ** (attempt - 1)`` capped at
        ``backoff_max_s``, drawn uniformly from [0, that] when ``jitter`` is on ("full jitter").
        """
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** min(max(attempt - 1, 0), 32))
        return random.uniform(0.0, ceiling) if self.jitter else ceiling

    def retrying(
        self,
        retryable: Callable[[BaseException], bool],
        *,
        shared_pause: SharedPause | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> tenacity.Retrying:
        """
        A tenacity ``Retrying`` for this policy; build it once and call it with each attempt function.

        Thread-safe (tenacity keeps each call's state per thread). The attempt function raises on failure;
        after the last attempt the last error is re-raised as it is.

        :param retryable: whether an error may succeed when the call is made again.
        :param shared_pause: the rate limiter of every sender; a 429's wait pauses them all (this sender
            waits in its next ``acquire()``) instead of sleeping here.
        :param sleep: how this sender waits for any other retryable error.
        """

        def wait(state: tenacity.RetryCallState) -> float:
            return self.delay_for(state.attempt_number, _error_of(state))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            error = _error_of(state)
            log.warning(
                "attempt %d/%d failed (%s); retrying in %.2fs",
                state.attempt_number,
                self.max_attempts,
                error,
                state.upcoming_sleep,
            )
            if shared_pause is not None and is_rate_limited(error):
                shared_pause.penalize(state.upcoming_sleep)
                state.upcoming_sleep = 0.0  # read by tenacity after this hook: no second, local wait

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(retryable),
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=wait,
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header in seconds, from either of its forms (delta-seconds or HTTP date); None when absent
    or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _error_of(state: tenacity.RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None
