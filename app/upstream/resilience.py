"""Upstream fault handling: the retry policy (which statuses, backoff with jitter, Retry-After), the
per-upstream circuit breaker, the bounded concurrency limit and the quorum gather.

Everything here is pure bookkeeping over an injectable clock and random source, so it is tested without
sockets; app/upstream/pool.py applies it to real calls (and the remote embedder its retry policy), and
app/pipeline to candidate selection and the fan-out. Settings: app.config.ResilienceSettings.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from email.utils import parsedate_to_datetime
from typing import Any, Awaitable, Callable, Hashable, Literal, Sequence, TypeVar

from app.config import ResilienceSettings

Clock = Callable[[], float]
K = TypeVar("K", bound=Hashable)
BreakerState = Literal["closed", "open", "half_open"]


def retryable_status(status: int | None) -> bool:
    """None (connection error, timeout), 408, 429 and 5xx may succeed on a second try; other 4xx never will."""
    return status is None or status in (408, 429) or status >= 500


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds to wait: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RetryPolicy:
    def __init__(self, settings: ResilienceSettings, rand: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self.rand = rand

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^attempt)] so retrying clients spread out."""
        cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** attempt)
        return cap * self.rand()

    def delay(self, attempt: int, status: int | None, retry_after: float | None,
              remaining_s: float, *, timeout: bool = False) -> float | None:
        """Seconds to wait before retry number attempt+1, or None to give up now.

        The upstream's Retry-After wins over our backoff; a wait that would not leave time for another
        attempt before the deadline is not worth taking. A timeout is retried only with retry_timeouts.
        """
        if attempt >= self.settings.retries or not retryable_status(status):
            return None
        if timeout and not self.settings.retry_timeouts:
            return None
        wait = retry_after if retry_after is not None else self.backoff(attempt)
        if wait >= remaining_s:
            return None
        return wait


class CircuitBreaker:
    """closed -> open after N failures within the window -> half-open after open_s (ONE probe) -> closed/open."""

    def __init__(self, failures: int, window_s: float, open_s: float, clock: Clock = time.monotonic) -> None:
        self.failures = failures
        self.window_s = window_s
        self.open_s = open_s
        self.clock = clock
        self._recent: deque[float] = deque()
        self._opened_at: float | None = None
        self._probe = False  # a half-open probe is in flight

    @classmethod
    def from_settings(cls, settings: ResilienceSettings, clock: Clock = time.monotonic) -> CircuitBreaker:
        return cls(settings.breaker_failures, settings.breaker_window_s, settings.breaker_open_s, clock)

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self._opened_at >= self.open_s else "open"

    def available(self) -> bool:
        """Would a call be let through now? No side effect: used for candidate selection."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self._probe)

    def allow(self) -> bool:
        """Take permission for one call; in half-open only the first caller (the probe) gets it."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probe:
            self._probe = True
            return True
        return False

    def record_success(self) -> None:
        self._recent.clear()
        self._opened_at, self._probe = None, False

    def record_failure(self) -> None:
        now = self.clock()
        if self._opened_at is not None:  # the half-open probe failed (or a late call did): open again
            self._opened_at, self._probe = now, False
            return
        self._recent.append(now)
        while self._recent and now - self._recent[0] > self.window_s:
            self._recent.popleft()
        if len(self._recent) >= self.failures:
            self._opened_at = now
            self._recent.clear()

    def release(self) -> None:
        """A call ended without a verdict (cancelled, or the request's own fault): free the probe slot."""
        self._probe = False


class QueueFull(Exception):
    """Every slot of an upstream is taken and its waiting line is full: refuse now rather than hang."""


class ConcurrencyLimit:
    """At most `limit` calls in flight, at most `max_queue` more waiting for a slot; the rest refused at once.

    An unbounded wait line turns overload into hangs and memory growth; a bounded one turns it into a
    clear, immediate error the client can retry elsewhere or later.
    """

    def __init__(self, limit: int, max_queue: int) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(limit)
        self.in_flight = 0
        self.waiting = 0

    async def acquire(self, timeout_s: float) -> None:
        """Take a slot, waiting at most timeout_s (TimeoutError); QueueFull at once when the line is full."""
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise QueueFull(f"{self.in_flight} calls in flight and {self.waiting} waiting (the limits)")
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout_s):
                await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._slots.release()


def quorum_cut(latencies_s: Sequence[float], quorum: int, grace_s: float, grace_ratio: float = 0.0) -> list[bool]:
    """Which of these calls gather_quorum cancels when every call succeeds after its latency: those still running
    once the quorum-th fastest has answered and the grace max(grace_s, grace_ratio x that time) has passed. The
    evaluator's model of the fan-out (`jisi-bank evaluate --quorum`), so it scores the cut-offs the gateway makes."""
    if not latencies_s:
        return []
    quorum = max(1, min(quorum, len(latencies_s)))
    met = sorted(latencies_s)[quorum - 1]
    until = met + max(grace_s, grace_ratio * met)
    return [t > until for t in latencies_s]


async def gather_quorum(calls: dict[K, Awaitable[Any]], quorum: int, grace_s: float, deadline: float,
                        grace_ratio: float = 0.0) -> tuple[dict[K, Any], list[K], list[K]]:
    """Run the calls concurrently until `quorum` of them succeeded, then give the rest
    max(grace_s, grace_ratio x the time the quorum took) more.

    Returns (results: value or exception per finished call, cancelled after the quorum, cancelled at the
    deadline `deadline` (time.monotonic)). Stragglers are cancelled, so their connections are closed.
    """
    started = time.monotonic()
    tasks = {asyncio.ensure_future(call): key for key, call in calls.items()}
    pending = set(tasks)
    quorum = min(quorum, len(tasks))
    met = False
    try:
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if met:  # the quorum is in: the stragglers get the grace period, no more
                grace = max(grace_s, grace_ratio * (time.monotonic() - started))
                _, pending = await asyncio.wait(pending, timeout=min(grace, remaining))
                break
            _, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            ok = sum(1 for t in tasks if t.done() and not t.cancelled() and t.exception() is None)
            met = ok >= quorum
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    results = {key: (t.exception() or t.result()) for t, key in tasks.items() if t not in pending}
    late = [tasks[t] for t in tasks if t in pending]
    return results, (late if met else []), ([] if met else late)
