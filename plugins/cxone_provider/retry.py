"""Retry policy for the provider's HTTP calls: data (how often, how long to wait, read from a connection's extras by
:meth:`RetryPolicy.from_extras`) plus pure predicates (what to retry), turned once into a tenacity ``Retrying`` by
:meth:`RetryPolicy.retrying`.

Both CXone clients (their one request loop), the CRM webhook sender and the upload-job trigger's polling (the same
:func:`backoff_s`) wait through it, so this module is the one place that says how a call is retried.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

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


def not_sent_or_rate_limited(error: BaseException) -> bool:
    """Whether a call that creates something may be made again: only when it cannot have been processed (a 429, or a
    connection that was never established)."""
    return is_rate_limited(error) or (isinstance(error, CXoneConnectionError) and not error.outcome_uncertain)


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """The exponential backoff after failed attempt number ``attempt`` (1-based): ``base_s * 2 ** (attempt - 1)``,
    capped at ``max_s``."""
    return min(max_s, base_s * 2 ** min(max(attempt - 1, 0), 32))


_EXTRAS: dict[str, Callable[[Any], Any]] = {
    "max_attempts": int, "backoff_base_s": float, "backoff_max_s": float, "retry_after_cap_s": float,
}


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

    @classmethod
    def from_extras(cls, extra: Callable[[str, Any], Any], defaults: RetryPolicy | None = None) -> RetryPolicy:
        """
        The policy a connection's extras ask for: ``max_attempts``, ``backoff_base_s``, ``backoff_max_s`` and
        ``retry_after_cap_s``, each one not set taken from ``defaults`` (default: :class:`RetryPolicy`'s own).

        :param extra: reads one extra, ``extra(name, default)`` (``dict.get`` of the extras, or a hook's reader).
        """
        defaults = defaults or cls()
        return replace(defaults, **{name: kind(extra(name, getattr(defaults, name))) for name, kind in _EXTRAS.items()})

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
        ceiling = backoff_s(attempt, self.backoff_base_s, self.backoff_max_s)
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
