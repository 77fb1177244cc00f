"""
A run's hold on a contact list, as its senders see it: :class:`ListLease` keeps the lease's fencing token (see
:class:`~cxone_provider.ratelimit.Lease`), renews it in a thread and answers :meth:`ListLease.check` before every
request without asking the store.

The check is local: the lease cannot pass to another owner before it expires in the store, and this side counts its
lifetime from *before* each successful renewal was sent, less a margin; so when ``check`` passes, the store still
holds the lease for this run. A renewal the store refuses (another token or owner: the lease lapsed and was taken)
or no successful renewal for the lease's lifetime (the store unreachable) loses the lease for good: every later
``check`` raises :class:`~cxone_provider.errors.ListLeaseLostError`, and the same lease is never taken again under
a new token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cxone_provider.errors import ListLeaseLostError
from cxone_provider.ratelimit import BudgetStore, Lease, RateLimiter

log = logging.getLogger(__name__)

MAX_MARGIN_S = 5.0  # checks stop this much before the store's expiry (clock rates, the store's own latency)


class ListLease:
    """
    One owner's tenure of one lease in a budget store.

    :param store: the tenant's budget store.
    :param key: the lease's key in the store.
    :param owner: who holds it (a DAG run).
    :param ttl_s: the lease lapses this long after the last renewal.
    :param label: how logs and errors name the list (never a secret).
    """

    def __init__(self, store: BudgetStore, key: str, owner: str, ttl_s: float, *, label: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.key, self.owner, self.ttl_s, self.label = store, key, owner, ttl_s, label
        self._clock = clock
        self._margin_s = min(MAX_MARGIN_S, ttl_s / 10)
        self._deadline = 0.0
        self._lost: ListLeaseLostError | None = None
        self.token = 0
        self.holder = ""

    def take(self) -> Lease:
        """Take (or renew, as the same owner) the lease; the holder and its token (another owner's when it holds it)."""
        sent = self._clock()
        lease = self.store.take_lease(self.key, self.owner, self.ttl_s)
        self.holder = lease.holder
        if lease.holder == self.owner:
            self.token, self._deadline = lease.token, sent + self.ttl_s - self._margin_s
        return lease

    def renew(self, ttl_s: float | None = None) -> bool:
        """Extend this tenure (to ``ttl_s``, default the lease's lifetime); False, and lost for good, when the store
        no longer holds it for this owner and token. A store error propagates (the deadline stays)."""
        if self._lost is not None:
            return False
        ttl_s = self.ttl_s if ttl_s is None else ttl_s
        sent = self._clock()
        if self.store.renew_lease(self.key, self.owner, self.token, ttl_s):
            self._deadline = max(self._deadline, sent + ttl_s - self._margin_s)
            return True
        self.lose("the store no longer holds it for this run (it lapsed, or another run took it)")
        return False

    def lose(self, reason: str) -> None:
        if self._lost is None:
            self._lost = ListLeaseLostError(self.label, reason)
            log.warning("lost the lease on %s (token %d): %s", self.label, self.token, reason)

    @property
    def lost(self) -> ListLeaseLostError | None:
        return self._lost

    def check(self) -> None:
        """Raise :class:`ListLeaseLostError` unless this tenure is certainly still held (no store call)."""
        if self._lost is None and self._clock() >= self._deadline:
            self.lose(f"not renewed for its lifetime of {self.ttl_s:g}s (the budget store did not answer)")
        if self._lost is not None:
            raise self._lost

    def keep_renewed(self, every_s: float) -> Callable[[], None]:
        """Renew every ``every_s`` in a daemon thread until the returned function is called (it joins the thread)."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(every_s) and self._lost is None:
                try:
                    self.renew()
                except Exception:  # noqa: BLE001 - a store hiccup; check() fails once the lifetime has passed
                    log.warning("could not renew the lease on %s", self.label, exc_info=True)

        thread = threading.Thread(target=renew, name="list-lease", daemon=True)
        thread.start()

        def stop_renewing() -> None:
            stop.set()
            thread.join(timeout=5)

        return stop_renewing

    def fenced(self, limiter: RateLimiter) -> FencedRateLimiter:
        """``limiter`` checking this lease after each slot is granted, right before the request goes out."""
        return FencedRateLimiter(limiter, self.check)


class FencedRateLimiter:
    """A rate limiter that checks a fence after every slot it grants: a sender that waited for a slot (or for a store
    that did not answer) never sends once the fence is down. Everything else is the wrapped limiter's."""

    def __init__(self, limiter: RateLimiter, fence: Callable[[], None]) -> None:
        self._limiter = limiter
        self._fence = fence

    def acquire(self) -> float:
        self._fence()
        waited = self._limiter.acquire()
        self._fence()
        return waited

    def __getattr__(self, name: str) -> Any:
        return getattr(self._limiter, name)

    def __repr__(self) -> str:
        return repr(self._limiter)
