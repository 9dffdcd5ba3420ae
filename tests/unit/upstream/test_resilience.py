"""Unit tests of the retry policy, Retry-After parsing, the circuit breaker (fake clock) and the quorum gather."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

import pytest

from app.upstream.resilience import (
    CircuitBreaker, ConcurrencyLimit, QueueFull, RetryPolicy, gather_quorum, parse_retry_after, quorum_cut,
    retryable_status,
)
from app.config import ResilienceSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_is_full_jitter_within_the_exponential_cap():
    settings = ResilienceSettings(backoff_base_s=0.25, backoff_max_s=4.0)
    assert RetryPolicy(settings, rand=lambda: 1.0).backoff(0) == 0.25
    assert RetryPolicy(settings, rand=lambda: 1.0).backoff(2) == 1.0
    assert RetryPolicy(settings, rand=lambda: 1.0).backoff(10) == 4.0  # capped
    assert RetryPolicy(settings, rand=lambda: 0.0).backoff(3) == 0.0
    policy = RetryPolicy(settings)
    for attempt in range(8):
        for _ in range(50):
            assert 0 <= policy.backoff(attempt) <= min(4.0, 0.25 * 2 ** attempt)


def test_delay_honours_retries_status_retry_after_and_the_deadline():
    policy = RetryPolicy(ResilienceSettings(retries=2), rand=lambda: 0.5)
    assert policy.delay(0, 500, None, 100) == 0.125
    assert policy.delay(0, None, None, 100) == 0.125  # connection error / timeout
    assert policy.delay(1, 429, 3.0, 100) == 3.0  # Retry-After wins over the backoff
    assert policy.delay(2, 500, None, 100) is None  # out of retries
    assert policy.delay(0, 400, None, 100) is None and policy.delay(0, 404, None, 100) is None
    assert policy.delay(0, 408, None, 100) == 0.125
    assert policy.delay(0, 429, 10.0, 5.0) is None  # the wait would overrun the deadline
    assert [s for s in (400, 401, 403, 404, 408, 422, 429, 500, 502, 503) if retryable_status(s)] == [
        408, 429, 500, 502, 503]


def test_a_timeout_is_retried_only_when_configured():
    policy = RetryPolicy(ResilienceSettings(retries=2), rand=lambda: 0.5)
    assert policy.delay(0, None, None, 100, timeout=True) is None  # the default: a hung upstream costs one try
    assert policy.delay(0, None, None, 100, timeout=False) == 0.125  # a refused connection is still retried
    assert policy.delay(0, 503, None, 100) == 0.125
    retrying = RetryPolicy(ResilienceSettings(retries=2, retry_timeouts=True), rand=lambda: 0.5)
    assert retrying.delay(0, None, None, 100, timeout=True) == 0.125


def test_the_default_quorum_is_all_candidates_but_one():
    default = ResilienceSettings()
    assert [default.quorum_of(k) for k in (1, 2, 3, 5)] == [1, 1, 2, 4]
    assert [ResilienceSettings(quorum_slack=0).quorum_of(k) for k in (1, 3)] == [1, 3]  # wait for every one
    assert [ResilienceSettings(quorum=2).quorum_of(k) for k in (1, 3, 5)] == [1, 2, 2]  # an absolute quorum
    assert ResilienceSettings(quorum_slack=5).quorum_of(3) == 1


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_breaker_opens_after_n_failures_within_the_window():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, window_s=10, open_s=5, clock=clock)
    breaker.record_failure()
    clock.now += 11  # the first failure leaves the window
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.available() and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.available() and not breaker.allow()


def test_breaker_success_resets_the_failure_count():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=2, window_s=10, open_s=5, clock=clock)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"


def test_breaker_half_open_lets_one_probe_through_then_closes_or_reopens():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, window_s=10, open_s=5, clock=clock)
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.state == "half_open" and breaker.available()
    assert breaker.allow()  # the probe
    assert not breaker.available() and not breaker.allow()  # only one
    breaker.record_failure()  # probe failed: open again, for another open_s
    assert breaker.state == "open"
    clock.now += 5
    assert breaker.allow()
    breaker.release()  # a cancelled probe gives its slot back
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


@pytest.mark.anyio
async def test_gather_quorum_cancels_stragglers_after_the_grace_period():
    cancelled = []

    async def answer(value, delay):
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            cancelled.append(value)
            raise
        return value

    async def fail():
        raise ValueError("boom")

    started = time.monotonic()
    calls = {"a": answer("a", 0.01), "b": fail(), "c": answer("c", 0.02), "d": answer("d", 30)}
    results, late, at_deadline = await gather_quorum(calls, 2, 0.1, time.monotonic() + 10)
    assert time.monotonic() - started < 1
    assert results["a"] == "a" and results["c"] == "c" and isinstance(results["b"], ValueError)
    assert late == ["d"] and at_deadline == [] and cancelled == ["d"]

    calls = {"a": answer("a", 0.01), "d": answer("d", 30)}
    results, late, at_deadline = await gather_quorum(calls, 2, 0.1, time.monotonic() + 0.2)
    assert results == {"a": "a"} and late == [] and at_deadline == ["d"]


@pytest.mark.anyio
async def test_the_grace_period_grows_with_the_time_the_quorum_took():
    async def answer(value, delay):
        await asyncio.sleep(delay)
        return value

    # the quorum took 0.3 s: with grace_ratio 1 a straggler answering 0.2 s later is still waited for ...
    calls = {"a": answer("a", 0.3), "b": answer("b", 0.5)}
    results, late, _ = await gather_quorum(calls, 1, 0.05, time.monotonic() + 10, grace_ratio=1.0)
    assert results == {"a": "a", "b": "b"} and late == []
    # ... but not with the fixed grace alone
    calls = {"a": answer("a", 0.3), "b": answer("b", 0.5)}
    results, late, _ = await gather_quorum(calls, 1, 0.05, time.monotonic() + 10)
    assert results == {"a": "a"} and late == ["b"]


@pytest.mark.anyio
@pytest.mark.parametrize("delays, quorum, grace_s, ratio", [
    ((0.05, 0.1, 0.6), 2, 0.1, 0.0),  # the third answers 0.5 s after the quorum: cut
    ((0.05, 0.1, 0.15), 2, 0.2, 0.0),  # inside the grace: kept
    ((0.3, 0.35, 0.55), 2, 0.05, 1.0),  # the grace grows with the quorum's time (0.35 s): kept
    ((0.3, 0.35, 0.9), 2, 0.05, 1.0),  # past it: cut
    ((0.05, 0.5, 0.6), 1, 0.1, 0.0),  # quorum 1: both slower ones cut
])
async def test_the_evaluators_quorum_model_cuts_what_gather_quorum_cancels(delays, quorum, grace_s, ratio):
    """quorum_cut is how `jisi-bank evaluate --quorum` replays the fan-out: it must cut exactly the calls the real
    gather_quorum cancels (every delay here is >= 0.05 s from a boundary, far above the event loop's jitter)."""
    async def answer(i):
        await asyncio.sleep(delays[i])
        return i

    calls = {i: answer(i) for i in range(len(delays))}
    _, late, _ = await gather_quorum(calls, quorum, grace_s, time.monotonic() + 10, grace_ratio=ratio)
    assert quorum_cut(list(delays), quorum, grace_s, ratio) == [i in late for i in range(len(delays))]


@pytest.mark.anyio
async def test_concurrency_limit_queues_up_to_max_queue_then_refuses():
    limit = ConcurrencyLimit(limit=1, max_queue=1)
    await limit.acquire(1.0)
    waiter = asyncio.ensure_future(limit.acquire(1.0))
    await asyncio.sleep(0.01)
    assert (limit.in_flight, limit.waiting) == (1, 1)
    with pytest.raises(QueueFull):  # one in flight, one waiting: the third is refused at once
        await limit.acquire(1.0)
    limit.release()
    await waiter  # the waiter got the freed slot
    assert (limit.in_flight, limit.waiting) == (1, 0)
    with pytest.raises(TimeoutError):  # a wait longer than its budget gives up and leaves the line
        await limit.acquire(0.02)
    assert limit.waiting == 0
    limit.release()
    await limit.acquire(0.01)
    assert limit.in_flight == 1
