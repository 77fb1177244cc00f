"""Retry policy for CXone calls: data (how often, how long to wait) plus one pure predicate (what to retry)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from cxone_provider.errors import (
    CXoneConnectionError,
    CXoneError,
    CXoneRateLimitError,
    CXoneServerError,
)


def is_retryable(error: BaseException) -> bool:
    """
    Whether sending the same request again can succeed.

    429, 5xx, dropped connections and timeouts: yes. 400, 403, 409 and anything else: no.
    401 is not retryable here: the client handles it apart (new token, then exactly one more try).
    """
    return isinstance(error, (CXoneRateLimitError, CXoneServerError, CXoneConnectionError))


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

    def delay_for(self, attempt: int, error: CXoneError | BaseException | None = None) -> float:
        """
        Seconds to wait after failed attempt number ``attempt`` (1-based).

        A 429 with Retry-After waits what the server asked, capped at ``retry_after_cap_s``.
        Anything else waits ``backoff_base_s * 2 ** (attempt - 1)`` capped at ``backoff_max_s``,
        drawn uniformly from [0, that] when ``jitter`` is on ("full jitter").
        """
        if isinstance(error, CXoneRateLimitError) and error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self.retry_after_cap_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** min(max(attempt - 1, 0), 32))
        return random.uniform(0.0, ceiling) if self.jitter else ceiling
