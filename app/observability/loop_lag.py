"""Event-loop lag: how far asyncio.sleep(interval) overshoots. Blocking work on the loop (a model call, a
big JSON parse) shows up here as lag, so a probe near zero under load means the loop kept serving."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from typing import Callable


class LoopLagProbe:
    def __init__(self, interval_s: float = 0.01, observe: Callable[[float], None] | None = None,
                 keep: int = 100_000) -> None:
        self.interval_s = interval_s
        self.observe = observe  # called with each lag in seconds (e.g. a Prometheus histogram)
        self.lags_ms: deque[float] = deque(maxlen=keep)  # bounded: the probe runs for the server's lifetime
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start on the running loop (call from a coroutine on the loop being probed)."""
        self._task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            lag_s = max(0.0, time.perf_counter() - t - self.interval_s)
            self.lags_ms.append(1000 * lag_s)
            if self.observe is not None:
                self.observe(lag_s)

    async def stop(self) -> dict[str, float]:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        return self.summary()

    def summary(self) -> dict[str, float]:
        lags = sorted(self.lags_ms)
        if not lags:
            return {"samples": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        return {"samples": len(lags), "p50_ms": statistics.median(lags),
                "p99_ms": lags[min(len(lags) - 1, int(0.99 * len(lags)))], "max_ms": lags[-1]}
