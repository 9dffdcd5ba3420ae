"""Pass-through: a request for an upstream by name goes to it alone, with the same accounting and errors."""

from __future__ import annotations

import time
from typing import AsyncIterator

from app.observability.metrics import Metrics
from app.pipeline.trace import Trace
from app.protocol.chat import ChatCompletionRequest
from app.serving.render import StreamWriter
from app.upstream.call import CallResult, StreamState, UpstreamError, chunk_deltas
from app.upstream.pool import UpstreamPool


def passthrough_trace() -> Trace:
    return Trace(requested_mode="passthrough", mode="passthrough")


def _answered(trace: Trace, call: CallResult) -> None:
    trace.calls.append(call)
    trace.final, trace.answered, trace.answered_by = [call.model], [call.model], call.model
    trace.finish_reason = call.finish_reason


async def answer(pool: UpstreamPool, request: ChatCompletionRequest,
                 metrics: Metrics) -> tuple[CallResult, Trace]:
    """Non-streaming; an upstream failure is the client's error (502/503/504, with the upstream's details)."""
    trace = passthrough_trace()
    t = time.perf_counter()
    try:
        result = await pool.complete(request.model, request.upstream_body(request.model), "passthrough")
    except UpstreamError as exc:
        metrics.observe_error(exc.summary())  # no trace reaches the request's metrics: count it here
        raise exc.client_error() from None
    trace.phase("fanout", t)
    _answered(trace, result)
    trace.finish()
    return result, trace


async def events(pool: UpstreamPool, request: ChatCompletionRequest, writer: StreamWriter,
                 trace: Trace) -> AsyncIterator[bytes]:
    """The upstream's stream relayed chunk by chunk, then accounted for in `trace`."""
    model, body = request.model, request.upstream_body(request.model)
    state = StreamState()
    t = time.perf_counter()
    try:
        async for chunk in pool.stream(model, body, state, deadline=trace.deadline, role="passthrough"):
            for delta in chunk_deltas(chunk):
                for data in writer.delta(delta, model):
                    yield data
    except UpstreamError:
        if state.chunks:  # part of the answer is out: account for it, then fail loudly
            trace.calls.append(pool.stream_result(model, body, state, "passthrough", time.perf_counter() - t))
        raise
    trace.phase("fanout", t)
    _answered(trace, pool.stream_result(model, body, state, "passthrough", time.perf_counter() - t))
