"""JiSi completions (the virtual models): the pipeline's answer, or its aggregation run, plain or as events."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from app.pipeline.prepare import Pipeline, Prepared
from app.pipeline.trace import Trace
from app.protocol.chat import ChatCompletionRequest
from app.serving.render import KEEPALIVE, StreamWriter
from app.upstream.call import CallResult


async def answer(pipeline: Pipeline, request: ChatCompletionRequest) -> tuple[CallResult, Trace]:
    """Non-streaming: the answering call and the trace."""
    prepared = await pipeline.prepare(request)
    trace = prepared.trace
    if prepared.aggregation is None:
        assert prepared.answer is not None
        result = prepared.answer
    else:
        result = [a async for a in prepared.aggregation.run(pipeline.pool, trace, stream=False)][-1]
        assert isinstance(result, CallResult)
    trace.finish()
    return result, trace


async def events(pipeline: Pipeline, request: ChatCompletionRequest, writer: StreamWriter, keepalive_s: float,
                 progress: dict[str, Any]) -> AsyncIterator[bytes]:
    """Keep-alives while the candidates run, then the answer's chunks (the aggregator's relayed live);
    `progress["trace"]` holds the trace once there is one."""
    task = asyncio.create_task(pipeline.prepare(request))
    try:
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=keepalive_s)
            if not done:
                yield KEEPALIVE
    finally:
        task.cancel()  # a no-op once done; stops the candidates if the client went away
    prepared: Prepared = task.result()
    trace = progress["trace"] = prepared.trace
    if prepared.aggregation is None:
        assert prepared.answer is not None
        for data in writer.message(prepared.answer):
            yield data
        return
    aggregator = prepared.aggregation.aggregator
    async for item in prepared.aggregation.run(pipeline.pool, trace, stream=True):
        if isinstance(item, CallResult):  # the aggregator failed before its first chunk: the fallback answer
            for data in writer.message(item):
                yield data
        else:
            for data in writer.delta(item, aggregator):
                yield data
