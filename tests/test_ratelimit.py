"""RateLimiter: one budget held across threads, limiter objects and processes, on every store (memory, SQLite,
a real redis-server); penalties pause every sender. Simulated time only: no assertion depends on how long a real
wait took (the cross-process tests check the slots the store handed out, in the store's own clock)."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator

import pytest

from cxone_provider.ratelimit import (
    BudgetStore,
    MemoryBudgetStore,
    RateLimiter,
    SQLiteBudgetStore,
    budget_store,
    tenant_key,
)
from tests.redis_server import redis_server

THREADS = 8
SIMULATED_MINUTE_S = 60.0
PROCESSES = 4
SLOTS_PER_PROCESS = 60
STORES = ["memory", "sqlite", "redis"]
SHARED_STORES = ["sqlite", "redis"]  # the ones several processes can share


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh store of the kind named by the test's `store_kind` parameter."""
    kind = request.param
    if kind == "memory":
        return "memory://" + uuid.uuid4().hex  # an own object per test (budget_store caches by URL)
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'budget.sqlite'}"
    return request.getfixturevalue("redis_url")


def open_store(url: str) -> BudgetStore:
    return MemoryBudgetStore() if url.startswith("memory://") else budget_store(url)


def fresh_key() -> str:
    return tenant_key("https://api-" + uuid.uuid4().hex + ".example", "client")


class ThreadLocalClock:
    """Simulated time per thread: sleep() advances only the calling thread's clock, instantly."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return getattr(self._local, "now", 0.0)

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        with self._lock:
            self.sleeps.append(seconds)
        self._local.now = self.now() + seconds


def max_in_any_window(send_times: list[float], window_s: float) -> int:
    """Largest number of send times inside any half-open window [t, t + window_s)."""
    window: deque[float] = deque()
    best = 0
    for send_time in sorted(send_times):
        window.append(send_time)
        while window[0] <= send_time - window_s:
            window.popleft()
        best = max(best, len(window))
    return best


def run_senders(limiter: RateLimiter, clock: ThreadLocalClock, per_thread: int) -> list[float]:
    """Each of THREADS threads acquires `per_thread` times; returns every send time."""
    send_times: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def sender() -> None:
        start.wait()
        for _ in range(per_thread):
            limiter.acquire()
            with lock:
                send_times.append(clock.now())

    threads = [threading.Thread(target=sender) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return send_times


@pytest.mark.parametrize(
    ("requests_per_minute", "burst"),
    [
        pytest.param(120, None, id="default-burst"),
        pytest.param(120, 10, id="burst-10"),
        pytest.param(1000, None, id="cxone-default-rpm"),
        pytest.param(45.5, 3, id="fractional-rpm"),
    ],
)
def test_budget_holds_across_concurrent_threads(requests_per_minute: float, burst: int | None) -> None:
    clock = ThreadLocalClock()
    limiter = RateLimiter(requests_per_minute, burst=burst, clock=clock.now, sleep=clock.sleep)
    per_thread = int(requests_per_minute * 3 / THREADS) + 1  # about three simulated minutes of sends

    send_times = run_senders(limiter, clock, per_thread)

    assert len(send_times) == THREADS * per_thread
    assert limiter.stats.acquired == THREADS * per_thread
    assert max_in_any_window(send_times, SIMULATED_MINUTE_S) <= requests_per_minute + (burst or 1)
    # and the budget is used, not starved: three minutes of sends take about three minutes
    assert max(send_times) == pytest.approx((len(send_times) - (burst or 1)) * 60.0 / requests_per_minute)


def test_default_burst_spaces_every_request_evenly() -> None:
    clock = ThreadLocalClock()
    limiter = RateLimiter(600, clock=clock.now, sleep=clock.sleep)

    send_times = sorted(run_senders(limiter, clock, per_thread=25))

    gaps = [later - earlier for earlier, later in zip(send_times, send_times[1:], strict=False)]
    assert gaps == pytest.approx([0.1] * (len(send_times) - 1))
    assert max_in_any_window(send_times, SIMULATED_MINUTE_S) <= 600


def test_burst_allows_back_to_back_start_then_spacing() -> None:
    clock = ThreadLocalClock()
    limiter = RateLimiter(60, burst=5, clock=clock.now, sleep=clock.sleep)

    waits = [limiter.acquire() for _ in range(7)]

    assert waits[:5] == [0.0] * 5
    assert waits[5:] == pytest.approx([1.0, 1.0])


def test_penalize_blocks_every_new_sender() -> None:
    clock = ThreadLocalClock()
    limiter = RateLimiter(6000, burst=THREADS, clock=clock.now, sleep=clock.sleep)

    limiter.penalize(30.0)
    send_times = run_senders(limiter, clock, per_thread=1)

    assert len(send_times) == THREADS
    assert min(send_times) >= 30.0
    assert limiter.stats.penalties == 1


def test_penalize_holds_back_senders_already_waiting_for_a_slot() -> None:
    """A sender asleep on a reserved slot re-queues behind a penalty that arrived meanwhile."""
    clock = ThreadLocalClock()
    asleep = threading.Event()
    release = threading.Event()

    def first_sleep_blocks(seconds: float) -> None:
        if not asleep.is_set():
            asleep.set()
            assert release.wait(timeout=10)
        clock.sleep(seconds)

    limiter = RateLimiter(60, clock=clock.now, sleep=first_sleep_blocks)
    limiter.acquire()  # t=0; the next slot is at t=1
    result: dict[str, float] = {}
    waiter = threading.Thread(target=lambda: result.update(waited=limiter.acquire(), at=clock.now()))
    waiter.start()
    assert asleep.wait(timeout=10)

    limiter.penalize(20.0)  # from this thread's clock, t=0: everyone waits until t=20
    release.set()
    waiter.join(timeout=10)

    assert result["at"] >= 20.0
    assert result["waited"] >= 20.0
    assert limiter.stats.acquired == 2


@pytest.mark.parametrize(
    ("delays", "paused_until"),
    [
        pytest.param([10.0, 5.0], 10.0, id="shorter-penalty-keeps-longer-pause"),
        pytest.param([5.0, 20.0], 20.0, id="longer-penalty-extends-pause"),
        pytest.param([-3.0], 0.0, id="negative-delay-is-no-pause"),
    ],
)
def test_penalize_keeps_the_longest_pause(delays: list[float], paused_until: float) -> None:
    clock = ThreadLocalClock()
    limiter = RateLimiter(60, clock=clock.now, sleep=clock.sleep)

    for delay in delays:
        limiter.penalize(delay)

    assert limiter.stats.paused_until == paused_until
    assert limiter.stats.penalties == len(delays)
    assert limiter.acquire() == paused_until


def test_stats_count_waits() -> None:
    clock = ThreadLocalClock()
    limiter = RateLimiter(120, clock=clock.now, sleep=clock.sleep)

    for _ in range(4):
        limiter.acquire()

    stats = limiter.stats
    assert stats.acquired == 4
    assert stats.total_waited_s == pytest.approx(1.5)  # 0 + 0.5 + 0.5 + 0.5
    assert clock.sleeps == pytest.approx([0.5, 0.5, 0.5])


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"requests_per_minute": 0}, id="zero-rpm"),
        pytest.param({"requests_per_minute": -5}, id="negative-rpm"),
        pytest.param({"requests_per_minute": 60, "burst": 0}, id="zero-burst"),
    ],
)
def test_rejects_invalid_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)


# -- one budget shared through a store ------------------------------------------------------------------------


def run_limiters(limiters: list[RateLimiter], clock: ThreadLocalClock, per_thread: int) -> list[float]:
    """THREADS threads spread over several limiter objects (as over several tasks), all acquiring."""
    send_times: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def sender(limiter: RateLimiter) -> None:
        start.wait()
        for _ in range(per_thread):
            limiter.acquire()
            with lock:
                send_times.append(clock.now())

    threads = [threading.Thread(target=sender, args=(limiters[i % len(limiters)],)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return send_times


@pytest.mark.parametrize("store_url", STORES, indirect=True)
@pytest.mark.parametrize("budget", [60, 600, 6000], ids=lambda budget: f"{budget}rpm")
def test_limiters_of_one_tenant_share_one_budget(store_url: str, budget: int) -> None:
    """Four limiter objects (four tasks) on one key: no 60 s window above the budget, and the budget is used."""
    clock = ThreadLocalClock()
    store, key = open_store(store_url), fresh_key()
    limiters = [RateLimiter.for_budget(budget, store=store, key=key, clock=clock.now, sleep=clock.sleep) for _ in range(4)]
    per_thread = int(budget * 2 / THREADS) + 1  # about two simulated minutes

    send_times = run_limiters(limiters, clock, per_thread)

    assert len(send_times) == THREADS * per_thread
    assert sum(limiter.stats.acquired for limiter in limiters) == THREADS * per_thread
    assert max_in_any_window(send_times, SIMULATED_MINUTE_S) <= budget
    assert len(send_times) / max(send_times) * 60 >= 0.99 * budget


@pytest.mark.parametrize("store_url", STORES, indirect=True)
def test_penalty_pauses_every_limiter_of_the_tenant(store_url: str) -> None:
    clock = ThreadLocalClock()
    store, key = open_store(store_url), fresh_key()
    penalized, other = (RateLimiter.for_budget(6000, store=store, key=key, clock=clock.now, sleep=clock.sleep)
                        for _ in range(2))
    bystander = RateLimiter.for_budget(6000, store=store, key=fresh_key(), clock=clock.now, sleep=clock.sleep)

    penalized.penalize(30.0)

    assert other.acquire() >= 30.0
    assert bystander.acquire() == 0.0  # another tenant's budget is not paused


@pytest.mark.parametrize("store_url", STORES, indirect=True)
def test_list_lease_admits_one_owner_at_a_time(store_url: str) -> None:
    store, key = open_store(store_url), fresh_key() + ":list-1"

    assert store.acquire_lease(key, "run-a", ttl_s=600) == "run-a"
    assert store.acquire_lease(key, "run-b", ttl_s=600) == "run-a"
    assert store.acquire_lease(key, "run-a", ttl_s=600) == "run-a"  # renewal by the holder
    assert store.release_lease(key, "run-b") is False
    assert store.release_lease(key, "run-a") is True
    assert store.acquire_lease(key, "run-b", ttl_s=600) == "run-b"


@pytest.mark.parametrize("store_url", STORES, indirect=True)
def test_a_lease_taken_anew_gets_a_higher_fencing_token(store_url: str) -> None:
    """The fencing rules every store keeps: renewing keeps the token, a lease taken anew (after a release, or by
    another owner) gets a higher one, and a renewal under a token that is no longer current is refused, even by
    the same owner once someone else held the list in between."""
    store, key = open_store(store_url), fresh_key() + ":list-1"

    first = store.take_lease(key, "run-a", ttl_s=600)
    assert first.holder == "run-a"
    assert store.renew_lease(key, "run-a", first.token, ttl_s=600) is True
    assert store.take_lease(key, "run-a", ttl_s=600).token == first.token  # the holder again: same tenure
    refused = store.take_lease(key, "run-b", ttl_s=600)
    assert refused.holder == "run-a" and store.renew_lease(key, "run-b", first.token, ttl_s=600) is False

    assert store.release_lease(key, "run-a") is True
    second = store.take_lease(key, "run-b", ttl_s=600)
    assert second.holder == "run-b" and second.token > first.token
    assert store.renew_lease(key, "run-a", first.token, ttl_s=600) is False  # run A's tenure is over
    store.release_lease(key, "run-b")
    third = store.take_lease(key, "run-a", ttl_s=600)
    assert third.token > second.token
    assert store.renew_lease(key, "run-a", first.token, ttl_s=600) is False  # an old token stays refused


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_an_expired_lease_goes_to_the_next_owner(kind: str, tmp_path) -> None:
    """A run that died without releasing its list blocks it only until the lease expires (simulated clock)."""
    store = MemoryBudgetStore() if kind == "memory" else SQLiteBudgetStore(tmp_path / "budget.sqlite")

    assert store.acquire_lease("list", "run-a", ttl_s=60, now=1000.0) == "run-a"
    assert store.acquire_lease("list", "run-b", ttl_s=60, now=1059.0) == "run-a"
    assert store.acquire_lease("list", "run-b", ttl_s=60, now=1060.0) == "run-b"


def _reserve_slots(url: str, key: str, interval_s: float, count: int, ready: Callable, results) -> None:
    store = budget_store(url)
    ready.wait()
    results.put([store.reserve(key, interval_s, 0.0).send_at for _ in range(count)])


@pytest.mark.parametrize("store_url", SHARED_STORES, indirect=True)
def test_processes_never_get_the_same_slot(store_url: str) -> None:
    """PROCESSES processes reserving at once, in the store's real clock: every slot is its own, evenly spaced."""
    interval_s = 60.0 / 6000
    key = fresh_key()
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    workers = [context.Process(target=_reserve_slots, args=(store_url, key, interval_s, SLOTS_PER_PROCESS, ready, results))
               for _ in range(PROCESSES)]
    for worker in workers:
        worker.start()
    ready.set()
    slots = sorted(slot for _ in workers for slot in results.get(timeout=60))
    for worker in workers:
        worker.join(timeout=30)

    assert len(slots) == PROCESSES * SLOTS_PER_PROCESS
    gaps = [later - earlier for earlier, later in zip(slots, slots[1:], strict=False)]
    assert min(gaps) >= interval_s - 2e-6  # Redis keeps microseconds


def _penalize(url: str, key: str, delay_s: float) -> None:
    RateLimiter.for_budget(6000, store=budget_store(url), key=key).penalize(delay_s)


@pytest.mark.parametrize("store_url", SHARED_STORES, indirect=True)
def test_a_429_in_one_process_pauses_the_others(store_url: str) -> None:
    key = fresh_key()
    context = multiprocessing.get_context("spawn")
    other = context.Process(target=_penalize, args=(store_url, key, 30.0))
    other.start()
    other.join(timeout=60)
    assert other.exitcode == 0

    slot = budget_store(store_url).reserve(key, 0.01, 0.0)

    assert slot.send_at - slot.now >= 29.0  # measured in the store's clock, not by waiting


def test_store_urls() -> None:
    assert budget_store("memory://shared") is budget_store("memory://shared")
    with pytest.raises(ValueError, match="absolute path"):
        budget_store("sqlite:///relative.sqlite")
    with pytest.raises(ValueError) as refused:
        budget_store("postgresql://user:s3cret@db/airflow")
    assert "s3cret" not in str(refused.value)


def test_tenant_key_names_the_tenant_not_the_secret() -> None:
    key = tenant_key("https://api-na1.niceincontact.com/", "client-a")

    assert key == tenant_key("https://API-na1.niceincontact.com", "client-a")
    assert key != tenant_key("https://api-na1.niceincontact.com", "client-b")
    assert key != tenant_key("https://api-eu1.niceincontact.com", "client-a")
    assert "client-a" not in key and "niceincontact" not in key
