"""A request budget shared by every sender thread of a task, so the task as a whole stays under the limit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateLimiterStats:
    """Counters since the limiter was built."""

    acquired: int
    total_waited_s: float
    penalties: int
    paused_until: float
    """Clock reading until which all senders are held back by penalize() (0 when never penalized)."""


class RateLimiter:
    """
    Thread-safe token bucket, implemented as its virtual-scheduling twin (GCRA).

    Every ``acquire()`` reserves the next free send slot, ``60 / requests_per_minute`` seconds after
    the previous one, and sleeps until it. ``burst`` slots may be taken back to back; after that the
    sends are evenly spaced. In any window of 60 s at most ``requests_per_minute + burst - 1``
    acquisitions succeed, so the default ``burst=1`` never exceeds the budget even on a server
    that counts requests in a sliding window (a bursty start is what provokes 429s there).

    ``penalize(delay_s)`` holds back every sender, including those already waiting for a slot,
    until ``now + delay_s``: on a 429 the whole task backs off together.

    :param requests_per_minute: the budget; must be positive.
    :param burst: how many requests may go out back to back (default 1: strictly even spacing).
    :param clock: monotonic clock in seconds, injectable for tests.
    :param sleep: sleep function, injectable for tests.
    """

    def __init__(
        self,
        requests_per_minute: float,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be positive")
        burst = 1 if burst is None else burst
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.requests_per_minute = float(requests_per_minute)
        self.burst = burst
        self.interval_s = 60.0 / self.requests_per_minute
        self._tolerance_s = (burst - 1) * self.interval_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot: float | None = None  # GCRA "theoretical arrival time"
        self._paused_until = 0.0
        self._acquired = 0
        self._total_waited_s = 0.0
        self._penalties = 0

    def acquire(self) -> float:
        """Block until a request may be sent; return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                next_slot = now if self._next_slot is None else self._next_slot
                send_at = max(now, next_slot - self._tolerance_s, self._paused_until)
                self._next_slot = max(next_slot, send_at) + self.interval_s
            if send_at > now:
                self._sleep(send_at - now)
                waited += send_at - now
            with self._lock:
                # a penalty that arrived while we slept voids the slot we reserved
                if self._paused_until <= send_at:
                    self._acquired += 1
                    self._total_waited_s += waited
                    return waited

    def penalize(self, delay_s: float) -> None:
        """Hold back every sender until ``now + delay_s`` (an existing longer pause is kept)."""
        with self._lock:
            until = self._clock() + max(delay_s, 0.0)
            self._penalties += 1
            if until > self._paused_until:
                self._paused_until = until
        log.info("rate limiter: all senders paused for %.2fs", max(delay_s, 0.0))

    @property
    def stats(self) -> RateLimiterStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return RateLimiterStats(
                acquired=self._acquired,
                total_waited_s=self._total_waited_s,
                penalties=self._penalties,
                paused_until=self._paused_until,
            )

    def __repr__(self) -> str:
        return f"RateLimiter(requests_per_minute={self.requests_per_minute:g}, burst={self.burst})"
