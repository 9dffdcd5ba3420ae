"""The pipeline's own decisions, without HTTP: the aggregator among the models still usable in a request,
the aggregation's fall back (plain and streamed, one implementation), the trace's overhead, what is embedded."""

from __future__ import annotations

import numpy as np
import pytest

from app.pipeline.aggregate import Aggregation, choose_aggregator
from app.pipeline.fanout import response_text
from app.pipeline.trace import Trace
from app.protocol.chat import Usage
from app.upstream.call import CallResult, StreamState, UpstreamError

pytestmark = pytest.mark.anyio

MODELS = ["a", "b", "c", "d"]
G = np.array([3.0, 2.0, 4.0, 1.0])  # argmax g is "c"


def call(model: str, text: str = "answer", role: str = "candidate") -> CallResult:
    return CallResult(model=model, role=role, message={"role": "assistant", "content": text}, finish_reason="stop",
                      usage=Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7), usage_estimated=False,
                      cost_usd=0.001, latency_s=0.01)


def test_the_natural_aggregator_aggregates_when_it_is_usable():
    trace = Trace(requested_mode="aggregate", aggregator="c")
    assert choose_aggregator(G, 2, np.ones(4, bool), MODELS, trace) == 2
    assert trace.degraded == [] and trace.aggregator == "c"


def test_a_failed_natural_aggregator_gives_way_to_the_next_best_by_g():
    trace = Trace(requested_mode="aggregate", aggregator="c")
    usable = np.array([True, True, False, True])  # "c" failed in this request
    assert choose_aggregator(G, 2, usable, MODELS, trace) == 0
    assert trace.aggregator == "a" and trace.degraded == ["aggregator c failed in this request: a aggregates instead"]
    assert choose_aggregator(G, 2, np.zeros(4, bool), MODELS, Trace(requested_mode="aggregate")) is None


class FailingPool:
    """A pool whose aggregator call fails, after `chunks` streamed content chunks."""

    def __init__(self, chunks: int = 0) -> None:
        self.chunks = chunks

    async def complete(self, name, body, role, deadline=None):
        raise UpstreamError(name, "HTTP 500: boom", 500)

    async def stream(self, name, body, state: StreamState, deadline=None, role="stream"):
        for i in range(self.chunks):
            chunk = {"choices": [{"delta": {"content": f"part{i} "}}]}
            state.record(chunk)
            yield chunk
        raise UpstreamError(name, "stream failed: ReadError")

    def stream_result(self, name, body, state: StreamState, role, latency_s):
        return call(name, "".join(state.content), role)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failed_aggregator_falls_back_to_the_best_answer_and_says_so(stream):
    trace = Trace(requested_mode="aggregate", mode="aggregate", answered_by="c")
    best = call("a", "the best candidate answer")
    out = [item async for item in Aggregation("c", {}, fallback=best).run(FailingPool(), trace, stream=stream)]
    assert out == [best]
    assert (trace.mode, trace.answered_by) == ("route", "a")
    assert trace.degraded == ["aggregator c failed: answered with the best candidate"]
    assert trace.errors[0]["model"] == "c" and "aggregate" in trace.timings_ms


async def test_a_stream_that_fails_after_its_first_chunk_is_not_replaced_silently():
    trace = Trace(requested_mode="aggregate")
    deltas = []
    with pytest.raises(UpstreamError):
        async for item in Aggregation("c", {}, fallback=call("a")).run(FailingPool(chunks=2), trace, stream=True):
            deltas.append(item)
    assert deltas == [{"content": "part0 "}, {"content": "part1 "}]
    assert [c.text for c in trace.calls] == ["part0 part1 "]  # what was sent is accounted for


def test_the_overhead_is_the_request_time_minus_the_upstream_phases():
    trace = Trace(requested_mode="route")
    trace.timings_ms.update(embed_query=10.0, fanout=2000.0, finals=500.0, aggregate=700.0)
    trace.started -= 3.3  # the request took 3.3 s
    trace.finish()
    assert trace.timings_ms["overhead"] == pytest.approx(trace.timings_ms["total"] - 3200.0)
    assert 90 <= trace.timings_ms["overhead"] < 200


def test_a_tool_call_answer_is_embedded_as_its_json():
    tool = call("a", "")
    tool.message["tool_calls"] = [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert response_text(tool).startswith('[{"function": {"arguments": "{}", "name": "f"}')
    assert response_text(call("a", "plain")) == "plain"
