"""Step 4, the fan-out: the request sent to several models at once, each answer's r_k = f1(y_k) computed
while the slower candidates are still answering.

The call stops at the quorum plus its grace period (app/upstream/resilience.py); whoever is still running
then, or at the request deadline, is cancelled, reported and counted against its circuit breaker, so a
hung model costs the request the grace period and is not called again in it.

Embedding all K answers after the last one arrives puts K texts of model time on the request's critical
path. Embedding each as it arrives leaves only the last answer's embedding there; answers that arrive
together (within COALESCE_S of each other, as from fast upstreams) still share one model call.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

import numpy as np

from app.pipeline.budget import Budget
from app.pipeline.trace import Trace
from app.upstream.call import CallResult, UpstreamError
from app.upstream.pool import UpstreamPool
from app.upstream.resilience import gather_quorum


def response_text(call: CallResult) -> str:
    """What gets embedded and aggregated: the content, or the tool calls when there is none."""
    if call.text:
        return call.text
    tool_calls = call.message.get("tool_calls")
    return json.dumps(tool_calls, sort_keys=True) if tool_calls else ""


async def call_all(pool: UpstreamPool, names: list[str], models: list[int], role: str, body: dict[str, Any],
                   answered: dict[int, CallResult], budget: Budget, trace: Trace,
                   live: LiveEmbeddings | None = None) -> set[int]:
    """Call these models (bank indices) concurrently; answers go into `answered` and the trace, failures into
    the trace (degraded). Candidates stop at the quorum; returns the models that failed or were cancelled."""

    async def call(j: int) -> CallResult:
        try:
            result = await pool.complete(names[j], body, role, deadline=trace.deadline)
        except BaseException:
            if live is not None:
                live.failed()
            raise
        if live is not None:
            live.answered(j, response_text(result))  # embedded right away, while slower candidates answer
        return result

    settings = pool.resilience
    quorum = settings.quorum_of(len(models)) if role == "candidate" else len(models)
    # a safety net just past the deadline: the calls' own timeouts (clearer errors) normally fire first
    results, after_quorum, at_deadline = await gather_quorum(
        {j: call(j) for j in models}, quorum, settings.quorum_grace_s, (trace.deadline or pool.deadline()) + 0.1,
        settings.quorum_grace_ratio)
    failed: set[int] = set(after_quorum) | set(at_deadline)
    for j, when in [*((j, "after quorum") for j in after_quorum),
                    *((j, "at the request deadline") for j in at_deadline)]:
        pool.record_unanswered(names[j])
        trace.errors.append({"model": names[j], "status": None, "timeout": True, "overloaded": False,
                             "circuit_open": False, "message": f"no answer: cancelled {when}"})
        trace.degraded.append(f"{role} {names[j]} cancelled {when}")
    for j, result in results.items():
        if isinstance(result, UpstreamError):
            failed.add(j)
            trace.errors.append(result.summary())
            trace.degraded.append(f"{role} {names[j]} failed")
        elif isinstance(result, BaseException):
            raise result
        else:
            answered[j] = result
            trace.calls.append(result)
            budget.spend(result.cost_usd)
    return failed


COALESCE_S = 0.003  # how long an answer waits for near-simultaneous ones while other candidates still run


class LiveEmbeddings:
    def __init__(self, embed: Callable[[list[str]], Awaitable[np.ndarray]], expected: int) -> None:
        self._embed = embed
        self.expected = expected  # candidates that have neither answered nor failed yet
        self.r: dict[int, np.ndarray] = {}  # candidate -> r_j
        self._arrived: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
        self._pump = asyncio.get_running_loop().create_task(self._run())

    def answered(self, j: int, text: str) -> None:
        self.expected -= 1
        self._arrived.put_nowait((j, text))

    def failed(self) -> None:
        self.expected -= 1
        self._arrived.put_nowait(None)  # wakes the pump: it need not wait for this candidate any more

    async def finish(self) -> None:
        """Every answer received so far embedded (call once the candidates have settled or been cancelled)."""
        self.expected = 0
        self._arrived.put_nowait(None)
        await self._pump

    def cancel(self) -> None:
        self._pump.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._arrived.get()
            batch = [first] if first else []
            until = loop.time() + COALESCE_S
            while self.expected > 0 and (remaining := until - loop.time()) > 0:
                try:
                    async with asyncio.timeout(remaining):
                        item = await self._arrived.get()
                except TimeoutError:
                    break
                if item:
                    batch.append(item)
            while not self._arrived.empty():
                item = self._arrived.get_nowait()
                if item:
                    batch.append(item)
            if batch:
                vectors = await self._embed([text for _, text in batch])
                self.r.update((j, vectors[i]) for i, (j, _) in enumerate(batch))
            if self.expected <= 0 and self._arrived.empty():
                return
