"""
One request budget per CXone tenant, shared by every sender: threads, tasks, processes, workers on other hosts.

:class:`RateLimiter` is a GCRA (the virtual-scheduling twin of a token bucket) whose state lives in a
:class:`BudgetStore`: a single "next free slot" time and a "paused until" time per key, read and advanced in one
atomic step. The store is chosen by URL (:func:`budget_store`):

- ``sqlite:////abs/path/file.sqlite`` (``sqlite:///`` + an absolute path): one machine, any number of processes (one row per key, updated in a
  ``BEGIN IMMEDIATE`` transaction); nothing to install or start.
- ``redis://host:port/db`` (``rediss://``, ``unix://``): any number of hosts; one Lua script per step, timed by
  the Redis server's clock, so the hosts' clocks do not matter.
- ``memory://``: this process only (tests, or a single-process tool).

Each sender reserves its own slot and then sleeps until it, so waiting senders never poll the store. A 429 calls
:meth:`RateLimiter.penalize`, which moves the key's pause forward: every sender of that key, in every process,
waits, including those already asleep on a slot reserved before the pause (they re-check after waking).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cxone_provider.redaction import mask_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateLimiterStats:
    """Counters of this limiter object since it was built (other senders of the key are not counted)."""

    acquired: int
    total_waited_s: float
    penalties: int
    paused_until: float
    """Store-clock reading until which all senders are held back by the latest pause this limiter saw (0: none)."""


@dataclass(frozen=True)
class Lease:
    """Who holds a lease and its fencing token: the token grows each time the lease is taken anew (free, expired or
    from another owner) and stays the same while its holder renews it, so a holder that finds another token has
    lost the lease in between, even when it looks free again."""

    holder: str
    token: int


@dataclass(frozen=True)
class Reservation:
    """A reserved send slot, in the store's clock."""

    send_at: float
    now: float
    paused_until: float

    @property
    def wait_s(self) -> float:
        return max(0.0, self.send_at - self.now)


class BudgetStore(ABC):
    """Where budgets (GCRA state) and per-key leases live. ``now=None`` means the store's own clock."""

    url: str

    @abstractmethod
    def reserve(self, key: str, interval_s: float, tolerance_s: float, now: float | None = None) -> Reservation:
        """Take the next free slot of ``key``: ``max(now, next_slot - tolerance, paused_until)``."""

    @abstractmethod
    def pause(self, key: str, delay_s: float, now: float | None = None) -> float:
        """Hold back every sender of ``key`` until ``now + delay_s`` (a longer pause is kept); return the pause end."""

    @abstractmethod
    def paused_until(self, key: str) -> float:
        """The end of the key's current pause (0 when never paused)."""

    def acquire_lease(self, key: str, owner: str, ttl_s: float, now: float | None = None) -> str:
        """Take or renew the lease ``key`` for ``owner`` unless another owner holds it; return the holder."""
        return self.take_lease(key, owner, ttl_s, now).holder

    @abstractmethod
    def take_lease(self, key: str, owner: str, ttl_s: float, now: float | None = None) -> Lease:
        """Take the lease ``key`` for ``owner`` (a new token) or renew it when ``owner`` holds it (the same token),
        unless another owner holds it; return the holder and its token."""

    @abstractmethod
    def renew_lease(self, key: str, owner: str, token: int, ttl_s: float, now: float | None = None) -> bool:
        """Extend the lease to ``ttl_s`` from now only while ``owner`` still holds it with ``token`` (never takes a
        lease that lapsed: a new token would be another tenure); True when it did."""

    @abstractmethod
    def release_lease(self, key: str, owner: str) -> bool:
        """Drop the lease when ``owner`` holds it; True when it did."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections."""


class MemoryBudgetStore(BudgetStore):
    """Budgets of this process only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, url: str = "memory://") -> None:
        self.url = url
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float | None, float]] = {}
        self._leases: dict[str, tuple[str, float, int]] = {}
        self._fences: dict[str, int] = {}

    def reserve(self, key: str, interval_s: float, tolerance_s: float, now: float | None = None) -> Reservation:
        with self._lock:
            now = self._clock() if now is None else now
            next_slot, paused = self._state.get(key, (None, 0.0))
            next_slot = now if next_slot is None else next_slot
            send_at = max(now, next_slot - tolerance_s, paused)
            self._state[key] = (max(next_slot, send_at) + interval_s, paused)
            return Reservation(send_at, now, paused)

    def pause(self, key: str, delay_s: float, now: float | None = None) -> float:
        with self._lock:
            now = self._clock() if now is None else now
            next_slot, paused = self._state.get(key, (None, 0.0))
            paused = max(paused, now + max(delay_s, 0.0)) if delay_s > 0 else paused
            self._state[key] = (next_slot, paused)
            return paused

    def paused_until(self, key: str) -> float:
        with self._lock:
            return self._state.get(key, (None, 0.0))[1]

    def take_lease(self, key: str, owner: str, ttl_s: float, now: float | None = None) -> Lease:
        with self._lock:
            now = self._clock() if now is None else now
            holder, expires, token = self._leases.get(key, ("", 0.0, 0))
            if holder and expires > now and holder != owner:
                return Lease(holder, token)
            if not (holder == owner and expires > now):
                token = self._fences[key] = self._fences.get(key, 0) + 1
            self._leases[key] = (owner, now + ttl_s, token)
            return Lease(owner, token)

    def renew_lease(self, key: str, owner: str, token: int, ttl_s: float, now: float | None = None) -> bool:
        with self._lock:
            now = self._clock() if now is None else now
            holder, expires, held_token = self._leases.get(key, ("", 0.0, 0))
            if holder != owner or held_token != token or expires <= now:
                return False
            self._leases[key] = (owner, now + ttl_s, token)
            return True

    def release_lease(self, key: str, owner: str) -> bool:
        with self._lock:
            if self._leases.get(key, ("", 0.0, 0))[0] == owner:
                del self._leases[key]
                return True
            return False


class SQLiteBudgetStore(BudgetStore):
    """Budgets in one SQLite file: every process on the machine that opens it shares them (wall clock)."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS budget (key TEXT PRIMARY KEY, next_slot REAL NOT NULL, paused_until REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS lease (key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS lease_fence (key TEXT PRIMARY KEY, token INTEGER NOT NULL)",
    )

    def __init__(self, path: str | os.PathLike[str], clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._clock = clock
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._transaction() as db:
            for statement in self.SCHEMA:
                db.execute(statement)
            if "token" not in {row[1] for row in db.execute("PRAGMA table_info(lease)")}:  # a file from before tokens
                db.execute("ALTER TABLE lease ADD COLUMN token INTEGER NOT NULL DEFAULT 0")

    def _connection(self) -> sqlite3.Connection:
        # one connection per thread and process (a connection must not cross a fork)
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    class _Transaction:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")  # the write lock first: read-modify-write is atomic across processes
            return self.db

        def __exit__(self, exc_type: Any, *exc: Any) -> None:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _transaction(self) -> SQLiteBudgetStore._Transaction:
        return self._Transaction(self._connection())

    def reserve(self, key: str, interval_s: float, tolerance_s: float, now: float | None = None) -> Reservation:
        with self._transaction() as db:
            now = self._clock() if now is None else now
            row = db.execute("SELECT next_slot, paused_until FROM budget WHERE key = ?", (key,)).fetchone()
            next_slot, paused = row if row else (now, 0.0)
            send_at = max(now, next_slot - tolerance_s, paused)
            db.execute(
                "INSERT INTO budget (key, next_slot, paused_until) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET next_slot = excluded.next_slot",
                (key, max(next_slot, send_at) + interval_s, paused),
            )
        return Reservation(send_at, now, paused)

    def pause(self, key: str, delay_s: float, now: float | None = None) -> float:
        with self._transaction() as db:
            now = self._clock() if now is None else now
            row = db.execute("SELECT next_slot, paused_until FROM budget WHERE key = ?", (key,)).fetchone()
            next_slot, paused = row if row else (now, 0.0)
            if delay_s > 0:
                paused = max(paused, now + delay_s)
            db.execute(
                "INSERT INTO budget (key, next_slot, paused_until) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET paused_until = excluded.paused_until",
                (key, next_slot, paused),
            )
        return paused

    def paused_until(self, key: str) -> float:
        row = self._connection().execute("SELECT paused_until FROM budget WHERE key = ?", (key,)).fetchone()
        return row[0] if row else 0.0

    def take_lease(self, key: str, owner: str, ttl_s: float, now: float | None = None) -> Lease:
        with self._transaction() as db:
            now = self._clock() if now is None else now
            row = db.execute("SELECT owner, expires, token FROM lease WHERE key = ?", (key,)).fetchone()
            if row and row[0] != owner and row[1] > now:
                return Lease(row[0], int(row[2]))
            if row and row[0] == owner and row[1] > now:
                token = int(row[2])
            else:
                db.execute("INSERT INTO lease_fence (key, token) VALUES (?, 1) "
                           "ON CONFLICT(key) DO UPDATE SET token = token + 1", (key,))
                token = db.execute("SELECT token FROM lease_fence WHERE key = ?", (key,)).fetchone()[0]
            db.execute("INSERT OR REPLACE INTO lease (key, owner, expires, token) VALUES (?, ?, ?, ?)",
                       (key, owner, now + ttl_s, token))
        return Lease(owner, int(token))

    def renew_lease(self, key: str, owner: str, token: int, ttl_s: float, now: float | None = None) -> bool:
        with self._transaction() as db:
            now = self._clock() if now is None else now
            return db.execute("UPDATE lease SET expires = ? WHERE key = ? AND owner = ? AND token = ? AND expires > ?",
                              (now + ttl_s, key, owner, int(token), now)).rowcount > 0

    def release_lease(self, key: str, owner: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM lease WHERE key = ? AND owner = ?", (key, owner)).rowcount > 0

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


# Times travel as strings with microseconds: Lua would turn a returned number into an integer, and tostring()
# keeps only 14 significant digits (0.1 ms of an epoch time).
_REDIS_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""
_REDIS_RESERVE = _REDIS_NOW + """
local interval, tolerance = tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'next_slot', 'paused_until')
local next_slot = tonumber(state[1]) or now
local paused = tonumber(state[2]) or 0
local send_at = math.max(now, next_slot - tolerance, paused)
next_slot = math.max(next_slot, send_at) + interval
redis.call('HSET', KEYS[1], 'next_slot', string.format('%.6f', next_slot))
redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(next_slot, paused) - now + 3600) * 1000))
return {string.format('%.6f', send_at), string.format('%.6f', now), string.format('%.6f', paused)}
"""
_REDIS_PAUSE = _REDIS_NOW + """
local delay = tonumber(ARGV[2])
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
if delay > 0 and now + delay > paused then
  paused = now + delay
  redis.call('HSET', KEYS[1], 'paused_until', string.format('%.6f', paused))
  redis.call('PEXPIRE', KEYS[1], math.ceil((delay + 3600) * 1000))
end
return string.format('%.6f', paused)
"""
# A lease is the string "{token}|{owner}" (expiring); KEYS[2] counts the tenures (no expiry: the next token is
# always higher, even after the lease lapsed). A value without "|" is a lease written before tokens (token 0).
_REDIS_LEASE_HOLDER = """
local function holder_of(value)
  local bar = string.find(value, '|', 1, true)
  if bar and string.match(string.sub(value, 1, bar - 1), '^%d+$') then
    return string.sub(value, bar + 1), string.sub(value, 1, bar - 1)
  end
  return value, '0'
end
"""
_REDIS_TAKE_LEASE = _REDIS_LEASE_HOLDER + """
local value = redis.call('GET', KEYS[1])
local token
if value then
  local holder, held = holder_of(value)
  if holder ~= ARGV[1] then return {holder, held} end
  token = held
else
  token = tostring(redis.call('INCR', KEYS[2]))
end
redis.call('SET', KEYS[1], token .. '|' .. ARGV[1], 'PX', ARGV[2])
return {ARGV[1], token}
"""
_REDIS_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_REDIS_RELEASE_LEASE = _REDIS_LEASE_HOLDER + """
local value = redis.call('GET', KEYS[1])
if value and holder_of(value) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisBudgetStore(BudgetStore):
    """Budgets in Redis, timed by the Redis server's clock: shared by every host that reaches it."""

    def __init__(self, url: str, *, client: Any = None) -> None:
        import redis  # only deployments that name a Redis store need the package

        self.url = url
        self._redis = client or redis.Redis.from_url(url, socket_timeout=30, health_check_interval=30)
        self._reserve = self._redis.register_script(_REDIS_RESERVE)
        self._pause = self._redis.register_script(_REDIS_PAUSE)
        self._take_lease = self._redis.register_script(_REDIS_TAKE_LEASE)
        self._renew_lease = self._redis.register_script(_REDIS_RENEW_LEASE)
        self._release_lease = self._redis.register_script(_REDIS_RELEASE_LEASE)

    @staticmethod
    def _now_arg(now: float | None) -> str:
        return "" if now is None else repr(float(now))

    def reserve(self, key: str, interval_s: float, tolerance_s: float, now: float | None = None) -> Reservation:
        send_at, store_now, paused = self._reserve(
            keys=[key], args=[self._now_arg(now), repr(interval_s), repr(tolerance_s)]
        )
        return Reservation(float(send_at), float(store_now), float(paused))

    def pause(self, key: str, delay_s: float, now: float | None = None) -> float:
        return float(self._pause(keys=[key], args=[self._now_arg(now), repr(float(delay_s))]))

    def paused_until(self, key: str) -> float:
        value = self._redis.hget(key, "paused_until")
        return float(value) if value is not None else 0.0

    def take_lease(self, key: str, owner: str, ttl_s: float, now: float | None = None) -> Lease:
        # Redis expires the lease by its own clock; `now` (simulated time) does not apply here
        holder, token = self._take_lease(keys=[key, f"{key}:fence"], args=[owner, max(1, int(ttl_s * 1000))])
        return Lease(_text(holder), int(_text(token)))

    def renew_lease(self, key: str, owner: str, token: int, ttl_s: float, now: float | None = None) -> bool:
        return bool(self._renew_lease(keys=[key], args=[f"{int(token)}|{owner}", max(1, int(ttl_s * 1000))]))

    def release_lease(self, key: str, owner: str) -> bool:
        return bool(self._release_lease(keys=[key], args=[owner]))

    def close(self) -> None:
        self._redis.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_STORES: dict[str, BudgetStore] = {}
_STORES_LOCK = threading.Lock()


def budget_store(url: str) -> BudgetStore:
    """
    The store for ``url``, one object per URL and process (so all hooks of a process share its connections).

    :param url: ``sqlite:///`` + an absolute path, ``redis://host:port/db`` (also ``rediss://``, ``unix://``) or
        ``memory://``.
    """
    with _STORES_LOCK:
        store = _STORES.get(url)
        if store is None:
            store = _STORES[url] = _open_store(url)
        return store


def _open_store(url: str) -> BudgetStore:
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss", "unix"):
        return RedisBudgetStore(url)
    if scheme == "sqlite":
        path = unquote(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else ""
        if not path.startswith("/"):
            raise ValueError(f"rate budget URL {url!r}: name an absolute path, sqlite:////abs/path.sqlite")
        return SQLiteBudgetStore(path)
    if scheme == "memory":
        return MemoryBudgetStore(url=url)
    raise ValueError(f"rate budget URL {_redacted(url)!r}: expected sqlite:///<absolute path>, redis://host:port/db or memory://")


def _redacted(url: str) -> str:
    return mask_uri(url)


def tenant_key(base_url: str, client_id: str) -> str:
    """The budget key of a CXone tenant: a hash of the API base URL and the client id (never a secret)."""
    digest = hashlib.sha256(f"{base_url.rstrip('/').lower()}\n{client_id}".encode()).hexdigest()[:32]
    return f"cxone-rate:{digest}"


DELIVERY_JITTER_S = 0.25  # arrival-time spread the budget leaves room for (RateLimiter.for_budget)


class RateLimiter:
    """
    GCRA over a :class:`BudgetStore` key: every limiter on the same store and key shares one budget.

    Every ``acquire()`` reserves the next free send slot, ``60 / requests_per_minute`` seconds after the previous
    one (whoever took it), and sleeps until it. ``burst`` slots may be taken back to back; after that the sends
    are evenly spaced. In any window of 60 s at most ``requests_per_minute + burst - 1`` acquisitions succeed;
    :meth:`for_budget` lowers the steady rate by the burst so that a window never holds more than the budget.

    ``penalize(delay_s)`` holds back every sender of the key, in every process, until ``now + delay_s``: on a 429
    the whole tenant backs off together.

    :param requests_per_minute: the steady rate; must be positive.
    :param burst: how many requests may go out back to back (default 1: strictly even spacing).
    :param store: where the budget lives; default a store of this limiter alone.
    :param key: the budget's key in the store (:func:`tenant_key`).
    :param clock: simulated clock in seconds for tests; default the store's own clock.
    :param sleep: sleep function, injectable for tests.
    """

    def __init__(
        self,
        requests_per_minute: float,
        *,
        burst: int | None = None,
        store: BudgetStore | None = None,
        key: str = "cxone-rate:local",
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be positive")
        burst = 1 if burst is None else burst
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.requests_per_minute = float(requests_per_minute)
        self.budget_per_minute = self.requests_per_minute
        self.burst = burst
        self.interval_s = 60.0 / self.requests_per_minute
        self._tolerance_s = (burst - 1) * self.interval_s
        self.store = store if store is not None else MemoryBudgetStore(clock or time.monotonic)
        self.key = key
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self._acquired = 0
        self._total_waited_s = 0.0
        self._penalties = 0

    @classmethod
    def for_budget(cls, budget_per_minute: float, *, store: BudgetStore, key: str, **kwargs: Any) -> RateLimiter:
        """
        A limiter that never puts more than ``budget_per_minute`` requests in any 60 s window, yet lets a late
        sender catch up: a burst of 0.1 s worth of requests, paid for by lowering the steady rate by that burst.
        The server counts arrivals, not send slots: a request delayed on its way (a busy host, a slow connection)
        lands closer to a later one, so the steady rate also leaves ``DELIVERY_JITTER_S`` worth of requests
        unused (measured by tests/test_distributed.py: at 1,800/min, two cores under load, 60 ms of jitter put
        1,801 arrivals in one 60 s window without it).
        """
        burst = max(1, -(-int(budget_per_minute) // 600))
        headroom = burst + int(budget_per_minute * DELIVERY_JITTER_S / 60.0)
        limiter = cls(
            max(budget_per_minute - headroom, budget_per_minute / 2), burst=burst, store=store, key=key, **kwargs
        )
        limiter.budget_per_minute = float(budget_per_minute)
        return limiter

    def _now(self) -> float | None:
        return self._clock() if self._clock is not None else None

    def acquire(self) -> float:
        """Block until a request may be sent; return the seconds waited."""
        waited = 0.0
        while True:
            slot = self.store.reserve(self.key, self.interval_s, self._tolerance_s, self._now())
            if slot.wait_s > 0:
                self._sleep(slot.wait_s)
                waited += slot.wait_s
                # a pause that began while we slept voids the slot we reserved
                paused = self.store.paused_until(self.key)
                if paused > slot.send_at:
                    self._note_pause(paused)
                    continue
            with self._lock:
                self._acquired += 1
                self._total_waited_s += waited
            return waited

    def penalize(self, delay_s: float) -> None:
        """Hold back every sender of the budget until ``now + delay_s`` (an existing longer pause is kept)."""
        paused = self.store.pause(self.key, delay_s, self._now())
        with self._lock:
            self._penalties += 1
        self._note_pause(paused)
        log.info("rate limiter: all senders of the budget paused for %.2fs", max(delay_s, 0.0))

    def _note_pause(self, paused_until: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, paused_until)

    @property
    def stats(self) -> RateLimiterStats:
        """A consistent snapshot of this limiter's counters."""
        with self._lock:
            return RateLimiterStats(
                acquired=self._acquired,
                total_waited_s=self._total_waited_s,
                penalties=self._penalties,
                paused_until=self._paused_until,
            )

    def __repr__(self) -> str:
        return (
            f"RateLimiter(budget_per_minute={self.budget_per_minute:g}, rate={self.requests_per_minute:g}, "
            f"burst={self.burst}, store={_redacted(self.store.url)!r})"
        )
