"""Aggregation (Eq. 5): the aggregator's prompt (the f3 of the paper), the choice of the aggregator among
the models still usable in this request, and the aggregator's call, plain or streamed, in one
implementation with its fall back to the best candidate's answer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import numpy as np

from app import engine
from app.pipeline.trace import Trace
from app.upstream.call import CallResult, StreamState, UpstreamError, chunk_deltas
from app.upstream.pool import UpstreamPool

AGGREGATION_INSTRUCTIONS = (
    "You are given several candidate answers, written by different AI assistants, to the user's last "
    "message in the conversation that follows. Some of them may be wrong, incomplete or contradict each "
    "other. Evaluate them critically, correct their mistakes, and write the single best answer to the "
    "user's last message yourself. Answer in exactly the format the user asked for. Do not mention the "
    "candidate answers or that you were given any.\n\nCandidate answers:"
)


def aggregation_messages(messages: list[dict[str, Any]], responses: list[str]) -> list[dict[str, Any]]:
    """MoA-style: a system message with the instructions and the numbered candidates, then the conversation.

    The user's own system prompt follows ours unchanged, so their instructions still apply.
    """
    candidates = "\n\n".join(f"[Answer {i}]\n{text.strip()}" for i, text in enumerate(responses, start=1))
    return [{"role": "system", "content": f"{AGGREGATION_INSTRUCTIONS}\n\n{candidates}"}, *messages]


def choose_aggregator(g: np.ndarray, natural: int, usable: np.ndarray, models: list[str],
                      trace: Trace) -> int | None:
    """A_agg = argmax g among the `usable` models (not failed in this request, callable now), or None.

    A model that timed out or was cancelled as a candidate is never called again for the same request
    (issue 11: a hung natural aggregator cost a second 30 s); the next-best by g takes its place."""
    ranked = engine.top_k(g, 1, usable)
    if ranked.size == 0:
        return None
    chosen = int(ranked[0])
    if chosen != natural:
        trace.degraded.append(f"aggregator {models[natural]} failed in this request: {models[chosen]} "
                              "aggregates instead")
        trace.aggregator = models[chosen]
    return chosen


@dataclass
class Aggregation:
    """What the aggregator is asked, and the answer to fall back on if it fails."""

    aggregator: str
    body: dict[str, Any]
    fallback: CallResult  # the best answer of the final set

    async def run(self, pool: UpstreamPool, trace: Trace, *, stream: bool,
                  ) -> AsyncIterator[dict[str, Any] | CallResult]:
        """The aggregator's answer: streamed as deltas (`stream`) or as one CallResult.

        If the aggregator fails before any of its answer went out, the best candidate's answer (one
        CallResult) comes instead, and the trace says so; once part of a stream is out, the error is raised
        (never cut an answer silently). Either way the trace accounts for the call.
        """
        started = time.perf_counter()
        state = StreamState()
        try:
            if stream:
                async for chunk in pool.stream(self.aggregator, self.body, state, deadline=trace.deadline,
                                             role="aggregator"):
                    for delta in chunk_deltas(chunk):
                        yield delta
                answer = pool.stream_result(self.aggregator, self.body, state, "aggregator",
                                            time.perf_counter() - started)
            else:
                answer = await pool.complete(self.aggregator, self.body, "aggregator", deadline=trace.deadline)
        except UpstreamError as exc:
            if state.chunks:
                trace.calls.append(pool.stream_result(self.aggregator, self.body, state, "aggregator",
                                                      time.perf_counter() - started))
                raise
            trace.errors.append(exc.summary())
            trace.degraded.append(f"aggregator {exc.model} failed: answered with the best candidate")
            trace.answered_with(self.fallback)
            trace.phase("aggregate", started)
            yield self.fallback
            return
        trace.phase("aggregate", started)
        trace.calls.append(answer)
        trace.finish_reason = answer.finish_reason
        if not stream:
            yield answer
