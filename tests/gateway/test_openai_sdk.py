"""The real `openai` package (sync, async, streaming) against the gateway served by uvicorn on loopback, whose
upstreams are a tiny real OpenAI-compatible server on loopback too (its streams carry no usage)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from sdk_upstream import (
    BROKEN_MODEL, QUESTION, SLOW_MARK, SLOW_MODEL, aggregate_answer, answer, pieces,
)

def jisi_of(obj) -> dict[str, Any]:
    extra = obj.model_extra["jisi"]
    assert extra == obj.to_dict()["jisi"]
    return extra


def user(text: str = QUESTION) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------------------------
# sync
# ------------------------------------------------------------------------------------------------


def test_sync_virtual_models(client, bank_models, upstream_calls):
    for model in ("jisi", "jisi-route", "jisi-aggregate"):
        upstream_calls.clear()
        completion = client.chat.completions.create(model=model, messages=user())
        info = jisi_of(completion)
        assert completion.object == "chat.completion"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.model == info["answered_by"]
        if info["mode"] == "aggregate":
            assert completion.choices[0].message.content == aggregate_answer(info["aggregator"])
            assert completion.model == info["aggregator"]
        else:
            assert completion.choices[0].message.content == answer(info["final"][0])
        assert {"jisi-route": "route", "jisi-aggregate": "aggregate"}.get(model, info["mode"]) == info["mode"]
        # usage sums every upstream call, which the upstream server saw
        calls = info["calls"]
        assert len(calls) == len(upstream_calls)
        assert completion.usage.total_tokens == sum(c["usage"]["total_tokens"] for c in calls)
        assert completion.usage.prompt_tokens == sum(c["usage"]["prompt_tokens"] for c in calls)
        assert completion.usage.completion_tokens == sum(c["usage"]["completion_tokens"] for c in calls)
        assert completion.usage.total_tokens == sum(
            40 + bank_models.index(c["model"]) + 10 + bank_models.index(c["model"]) for c in calls)


def test_sync_passthrough_and_headers(client, bank_models, upstream_calls):
    model = bank_models[1]
    raw = client.chat.completions.with_raw_response.create(model=model, messages=user(), temperature=0.5)
    completion = raw.parse()
    assert completion.model == model
    assert completion.choices[0].message.content == answer(model)
    assert completion.usage.total_tokens == 40 + 1 + 10 + 1
    assert raw.headers["x-jisi-mode"] == "passthrough" and raw.headers["x-jisi-models"] == model
    assert raw.headers["x-jisi-upstream-calls"] == "1"
    assert float(raw.headers["x-jisi-cost-usd"]) == pytest.approx((41 * 1.5 + 11 * 5.0) / 1e6, abs=1e-8)
    assert raw.headers["x-request-id"]
    assert [(c["model"], c["body"]["temperature"]) for c in upstream_calls] == [(model, 0.5)]


def test_sync_extra_body_overrides_reach_the_gateway(client, upstream_calls):
    completion = client.chat.completions.create(model="jisi", messages=user(),
                                                extra_body={"jisi": {"k": 2, "mode": "aggregate"}})
    info = jisi_of(completion)
    assert info["requested_mode"] == "aggregate" and info["mode"] == "aggregate"
    assert len(info["candidates"]) == 2 and len(info["final"]) == 2
    assert "jisi" not in upstream_calls[0]["body"]  # never forwarded upstream
    (agg,) = [c for c in upstream_calls if c["aggregation"]]
    system = agg["body"]["messages"][0]["content"]
    assert all(answer(m) in system for m in info["final"])


def test_sync_errors_raise_the_sdk_exceptions(client, upstream_calls):
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=user())
    assert not_found.value.status_code == 404 and not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="jisi", messages=user(), extra_body={"jisi": {"t": 2}})
    assert bad.value.param == "jisi.t"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="jisi", messages=user(), n=2)
    with pytest.raises(openai.InternalServerError) as timeout:  # pass-through upstream timed out
        client.chat.completions.create(model=SLOW_MODEL, messages=user())
    assert timeout.value.status_code == 504 and timeout.value.code == "upstream_timeout"
    assert [c["model"] for c in upstream_calls] == [SLOW_MODEL]


# ------------------------------------------------------------------------------------------------
# streaming
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["jisi-route", "jisi-aggregate", "passthrough"])
def test_sync_streaming_with_usage(client, bank_models, upstream_calls, model):
    model = bank_models[0] if model == "passthrough" else model
    stream = client.chat.completions.create(model=model, messages=user(), stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    info = jisi_of(last)
    assert last.usage.total_tokens == sum(c["usage"]["total_tokens"] for c in info["calls"])
    assert len(info["calls"]) == len(upstream_calls)
    if model == "jisi-aggregate":
        assert info["mode"] == "aggregate" and text == aggregate_answer(info["aggregator"])
        agg = info["calls"][-1]
        # the aggregator streamed without usage: counted, one token per content chunk
        assert agg["usage_estimated"] is True
        assert agg["usage"]["completion_tokens"] == len(pieces(aggregate_answer(info["aggregator"])))
    elif model == "jisi-route":
        assert info["mode"] == "route" and text == answer(info["final"][0])
        assert all(not c["stream"] for c in upstream_calls)
    else:
        assert info["mode"] == "passthrough" and text == answer(model)
        assert info["calls"][0]["usage_estimated"] is True and upstream_calls[0]["stream"] is True
        assert last.usage.completion_tokens == len(pieces(answer(model)))
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]


def test_sync_streaming_without_usage_and_with_keepalives(client, gateway_url):
    stream = client.chat.completions.create(model="jisi-route", messages=user(f"{QUESTION} {SLOW_MARK}"),
                                            stream=True)
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    info = jisi_of(chunks[-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer(info["final"][0])
    # over real HTTP the keep-alive comments are there (and the SDK above skipped them)
    with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", timeout=30,
                      json={"model": "jisi-route", "stream": True,
                            "messages": user(f"{QUESTION} {SLOW_MARK}")}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert ": keep-alive" in lines[:lines.index(next(l for l in lines if l.startswith("data:")))]
    assert lines[-1] == "data: [DONE]"


def test_sync_stream_failing_midway_raises_in_the_sdk(client):
    stream = client.chat.completions.create(model=BROKEN_MODEL, messages=user(), stream=True)
    received = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            received.append(chunk)
    assert "upstream" in str(raised.value.message)
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == "".join(
        pieces(answer(BROKEN_MODEL))[:2])


# ------------------------------------------------------------------------------------------------
# async
# ------------------------------------------------------------------------------------------------


def test_async_client_concurrent_requests_and_streaming(gateway_url, bank_models):
    async def main():
        async with openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="x", max_retries=0, timeout=30) as c:
            route, aggregate, passthrough = await asyncio.gather(
                c.chat.completions.create(model="jisi-route", messages=user()),
                c.chat.completions.create(model="jisi-aggregate", messages=user()),
                c.chat.completions.create(model=bank_models[3], messages=user()),
            )
            stream = await c.chat.completions.create(model="jisi", messages=user(), stream=True,
                                                     stream_options={"include_usage": True},
                                                     extra_body={"jisi": {"mode": "aggregate"}})
            chunks = [chunk async for chunk in stream]
            with pytest.raises(openai.NotFoundError):
                await c.chat.completions.create(model="jisi-fastest", messages=user())
        return route, aggregate, passthrough, chunks

    route, aggregate, passthrough, chunks = asyncio.run(main())
    assert route.choices[0].message.content == answer(jisi_of(route)["final"][0])
    assert aggregate.choices[0].message.content == aggregate_answer(jisi_of(aggregate)["aggregator"])
    assert passthrough.choices[0].message.content == answer(bank_models[3])
    for completion in (route, aggregate, passthrough):
        assert completion.usage.total_tokens == sum(c["usage"]["total_tokens"] for c in jisi_of(completion)["calls"])
    info = jisi_of(chunks[-1])
    assert info["mode"] == "aggregate" and info["requested_mode"] == "aggregate"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == aggregate_answer(info["aggregator"])
    assert chunks[-1].usage.total_tokens == sum(c["usage"]["total_tokens"] for c in info["calls"])
