"""RateLimiter: budget held across threads, penalties pause every sender. Simulated time only, no real waits."""

from __future__ import annotations

import threading
from collections import deque

import pytest

from cxone_provider.ratelimit import RateLimiter

THREADS = 8
SIMULATED_MINUTE_S = 60.0


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
