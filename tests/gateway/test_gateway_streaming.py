"""Streaming (SSE) through the gateway with respx-mocked upstreams: route and aggregate modes and pass-through,
with and without include_usage, keep-alive comments while the candidates run, upstreams that send no usage,
and failures before and in the middle of a stream."""

from __future__ import annotations

import pytest

from gateway_helpers import SSE, Behaviour, chat_body, running_gateway, stream_chat, stream_pieces, summed_usage

pytestmark = pytest.mark.anyio

QUESTION = "A farmer has 12 cows and sells 4 of them. How many cows are left on the farm?"


def assert_well_formed(response, sse: SSE) -> None:
    """What every gateway stream looks like: SSE, one completion id, chunk objects, [DONE] last."""
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"]
    assert sse.events[-1] == "[DONE]"
    assert sse.events.count("[DONE]") == 1
    assert len({c["id"] for c in sse.chunks}) == 1
    for c in sse.chunks:
        assert c["object"] == "chat.completion.chunk" and isinstance(c["created"], int)


def finish_chunks(sse: SSE) -> list[dict]:
    return [c for c in sse.chunks for ch in c["choices"] if ch.get("finish_reason")]


def summary_of(sse: SSE) -> dict:
    """The jisi summary rides on the last chunk before [DONE]."""
    last = sse.events[-2]
    assert "jisi" in last
    assert [c for c in sse.chunks if "jisi" in c] == [last]
    return last["jisi"]


# ------------------------------------------------------------------------------------------------
# route mode: the chosen answer sent as chunks
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
async def test_route_mode_streams_the_chosen_answer(settings, fake, minilm, include_usage):
    body = chat_body("jisi-route", QUESTION)
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    async with running_gateway(settings, minilm, fake) as (app, client):
        response, sse = await stream_chat(client, body, headers={"x-request-id": "stream-req-7"})
    assert_well_formed(response, sse)
    assert response.headers["x-request-id"] == "stream-req-7"
    info = summary_of(sse)
    routed = info["final"][0]
    assert info["mode"] == "route" and info["answered_by"] == routed
    assert sse.text == fake.answer(routed)
    # candidates are asked without streaming; the answer is re-sent as chunks by the gateway
    assert all(not c.stream for c in fake.calls) and fake.aggregations == []
    content_chunks = [c for c in sse.chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert content_chunks and all(c["model"] == routed for c in content_chunks)
    assert sse.chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finish = finish_chunks(sse)
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "stop"
    last = sse.events[-2]
    if include_usage:
        # OpenAI's shape: the finish chunk, then a chunk with no choices carrying usage (and the summary)
        assert last["choices"] == [] and last["usage"] == summed_usage(info["calls"])
        assert last["usage"]["total_tokens"] > 0
        assert sse.events[-3] == finish[0]
    else:
        assert "usage" not in last and last == finish[0]
        assert all("usage" not in c for c in sse.chunks)


# ------------------------------------------------------------------------------------------------
# aggregate mode: the aggregator's tokens relayed
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("upstream_usage", [True, False], ids=["upstream-usage", "no-upstream-usage"])
async def test_aggregate_mode_relays_the_aggregator_stream(settings, fake, minilm, bank_models, include_usage,
                                                          upstream_usage):
    body = chat_body("jisi-aggregate", QUESTION)
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    fake.aggregator_behaviour = {m: Behaviour(usage=upstream_usage) for m in bank_models}
    async with running_gateway(settings, minilm, fake) as (app, client):
        response, sse = await stream_chat(client, body)
    assert_well_formed(response, sse)
    info = summary_of(sse)
    aggregator = info["aggregator"]
    assert info["mode"] == "aggregate" and info["answered_by"] == aggregator
    assert sse.text == fake.aggregate_answer(aggregator)

    # the aggregator was asked to stream (and for usage); its chunks came through one by one
    (agg,) = fake.aggregations
    assert agg.model == aggregator and agg.stream is True
    assert agg.body["stream_options"] == {"include_usage": True}
    for n, model in enumerate(info["final"], start=1):
        assert f"[Answer {n}]\n{fake.answer(model)}" in agg.system_prompt
    pieces = stream_pieces(fake.aggregate_answer(aggregator))
    relayed = [c["choices"][0]["delta"]["content"] for c in sse.chunks
               if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert relayed == pieces
    assert all(c["model"] == aggregator for c in sse.chunks if c["choices"])

    agg_call = info["calls"][-1]
    assert agg_call["role"] == "aggregator"
    if upstream_usage:
        assert agg_call["usage_estimated"] is False
        assert agg_call["usage"] == fake.usage_of(aggregator, True)
    else:  # counted: the prompt from its characters, the completion one token per content chunk
        prompt = "\n".join(m["content"] for m in agg.body["messages"])
        assert agg_call["usage_estimated"] is True
        assert agg_call["usage"]["completion_tokens"] == len(pieces)
        assert agg_call["usage"]["prompt_tokens"] == (len(prompt) + 3) // 4
    assert finish_chunks(sse)[0]["choices"][0]["finish_reason"] == "stop"
    if include_usage:
        usage = sse.events[-2]["usage"]
        assert usage == summed_usage(info["calls"])
        assert usage["completion_tokens"] == sum(c["usage"]["completion_tokens"] for c in info["calls"])
    else:
        assert all("usage" not in c for c in sse.chunks)


async def test_keepalive_comments_while_the_candidates_run(settings, fake, minilm, bank_models):
    fake.behaviour = {m: Behaviour(delay=0.3) for m in bank_models}
    async with running_gateway(settings, minilm, fake, keepalive_s=0.02) as (app, client):
        response, sse = await stream_chat(client, chat_body("jisi-route", QUESTION))
    assert_well_formed(response, sse)
    assert len(sse.comments) >= 3
    assert set(sse.comments) == {": keep-alive"}
    first_data = next(i for i, line in enumerate(sse.lines) if line.startswith("data:"))
    last_comment = max(i for i, line in enumerate(sse.lines) if line.startswith(":"))
    assert last_comment < first_data  # keep-alives only while waiting, before the answer
    assert sse.text == fake.answer(summary_of(sse)["final"][0])


async def test_no_keepalive_when_the_candidates_are_fast(settings, fake, minilm):
    async with running_gateway(settings, minilm, fake, keepalive_s=5.0) as (app, client):
        response, sse = await stream_chat(client, chat_body("jisi-route", QUESTION))
    assert_well_formed(response, sse)
    assert sse.comments == []


# ------------------------------------------------------------------------------------------------
# pass-through
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("upstream_usage", [True, False], ids=["upstream-usage", "no-upstream-usage"])
async def test_passthrough_stream_is_relayed_and_counted(settings, fake, minilm, bank_models, include_usage,
                                                        upstream_usage):
    model = bank_models[3]
    fake.behaviour[model] = Behaviour(usage=upstream_usage)
    body = chat_body(model, QUESTION, temperature=0.1)
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    async with running_gateway(settings, minilm, fake) as (app, client):
        response, sse = await stream_chat(client, body)
    assert_well_formed(response, sse)
    assert [c.model for c in fake.calls] == [model]
    assert fake.calls[0].stream is True and fake.calls[0].body["temperature"] == 0.1
    assert sse.text == fake.answer(model)
    assert all(c["model"] == model for c in sse.chunks)
    info = summary_of(sse)
    assert info["mode"] == "passthrough" and info["final"] == [model] and info["answered_by"] == model
    (call,) = info["calls"]
    pieces = stream_pieces(fake.answer(model))
    if upstream_usage:
        assert call["usage"] == fake.usage_of(model, False) and call["usage_estimated"] is False
    else:
        assert call["usage_estimated"] is True
        assert call["usage"]["prompt_tokens"] == (len(QUESTION) + 3) // 4
        assert call["usage"]["completion_tokens"] == len(pieces)
    assert call["cost_usd"] > 0 and info["total_cost_usd"] == pytest.approx(call["cost_usd"])
    if include_usage:
        assert sse.events[-2]["choices"] == [] and sse.events[-2]["usage"] == call["usage"]
    else:
        assert all("usage" not in c for c in sse.chunks)


# ------------------------------------------------------------------------------------------------
# failures
# ------------------------------------------------------------------------------------------------


async def test_aggregator_failing_mid_stream_ends_with_an_error_event_before_done(settings, fake, minilm,
                                                                                 bank_models):
    fake.aggregator_behaviour = {m: Behaviour(stream_fail_after=2) for m in bank_models}
    async with running_gateway(settings, minilm, fake) as (app, client):
        response, sse = await stream_chat(client, chat_body("jisi-aggregate", QUESTION,
                                                            stream_options={"include_usage": True}))
    assert response.status_code == 200
    assert sse.events[-1] == "[DONE]"
    assert isinstance(sse.events[-2], dict) and "error" in sse.events[-2]
    (error,) = sse.errors
    assert error["type"] == "upstream_error" and error["code"] == "upstream_error"
    aggregator = fake.aggregations[0].model
    assert "stream failed" in error["message"] and error["details"][0]["model"] == aggregator
    # what was already sent stays sent; no finish chunk, no usage, no summary pretending it went well
    assert sse.text == "".join(stream_pieces(fake.aggregate_answer(aggregator))[:2])
    assert finish_chunks(sse) == [] and all("usage" not in c and "jisi" not in c for c in sse.chunks)


async def test_aggregator_failing_before_its_first_token_falls_back_to_the_best_candidate(settings, fake, minilm,
                                                                                         bank_models):
    fake.aggregator_behaviour = {m: Behaviour(status=502) for m in bank_models}
    async with running_gateway(settings, minilm, fake) as (app, client):
        response, sse = await stream_chat(client, chat_body("jisi-aggregate", QUESTION))
    assert_well_formed(response, sse)
    assert sse.errors == []
    info = summary_of(sse)
    best = info["final"][0]
    assert info["mode"] == "route" and info["answered_by"] == best and info["degraded"] is True
    assert sse.text == fake.answer(best)
    assert len(fake.aggregations) == 1


async def test_passthrough_failing_mid_stream_ends_with_an_error_event(settings, fake, minilm, bank_models):
    model = bank_models[1]
    fake.behaviour[model] = Behaviour(stream_fail_after=3)
    async with running_gateway(settings, minilm, fake) as (app, client):
        response, sse = await stream_chat(client, chat_body(model, QUESTION))
    assert sse.events[-1] == "[DONE]" and "error" in sse.events[-2]
    assert sse.text == "".join(stream_pieces(fake.answer(model))[:3])
    assert sse.errors[0]["code"] == "upstream_error"


@pytest.mark.parametrize("failure, status, code", [(Behaviour(status=500), 502, "upstream_error"),
                                                   (Behaviour(timeout=True), 504, "upstream_timeout")],
                         ids=["http500", "timeout"])
async def test_passthrough_stream_that_fails_at_once_is_a_plain_http_error(settings, fake, minilm, bank_models,
                                                                          failure, status, code):
    # nothing was sent yet, so the client gets the status (SDKs retry 5xx on it), not a 200 with an error event
    model = bank_models[1]
    fake.behaviour[model] = failure
    async with running_gateway(settings, minilm, fake) as (app, client):
        response = await client.post("/v1/chat/completions", json={**chat_body(model, QUESTION), "stream": True})
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "upstream_error"
    assert error["details"][0]["model"] == model


async def test_every_candidate_failing_in_a_stream_is_a_plain_http_error(settings, fake, minilm, bank_models):
    fake.behaviour = {m: Behaviour(status=503) for m in bank_models}
    async with running_gateway(settings, minilm, fake) as (app, client):
        response = await client.post("/v1/chat/completions", json={**chat_body("jisi", QUESTION), "stream": True})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstreams_failed" and error["type"] == "upstream_error"
    assert len(error["details"]) == 3


async def test_a_streamed_cost_cap_below_every_model_is_a_400_like_a_plain_one(settings, fake, minilm):
    body = {**chat_body("jisi", QUESTION, jisi={"max_cost_usd": 1e-12}), "stream": True}
    async with running_gateway(settings, minilm, fake) as (app, client):
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "cost_cap_too_low" and error["param"] == "jisi.max_cost_usd"
    assert fake.calls == []


async def test_tool_calls_stream_in_route_mode(settings, fake, minilm, bank_models):
    tool_calls = [{"id": "call_9", "type": "function", "function": {"name": "count", "arguments": "{}"}}]
    fake.behaviour = {m: Behaviour(tool_calls=tool_calls) for m in bank_models}
    tools = [{"type": "function", "function": {"name": "count", "parameters": {"type": "object"}}}]
    async with running_gateway(settings, minilm, fake) as (app, client):
        response, sse = await stream_chat(client, chat_body("jisi", QUESTION, tools=tools))
    assert_well_formed(response, sse)
    deltas = [ch["delta"] for c in sse.chunks for ch in c["choices"] if ch["delta"].get("tool_calls")]
    assert deltas == [{"tool_calls": [{"index": 0, **tool_calls[0]}]}]
    assert finish_chunks(sse)[0]["choices"][0]["finish_reason"] == "tool_calls"
    assert summary_of(sse)["mode"] == "route" and fake.aggregations == []


@pytest.mark.parametrize("body, status", [
    (chat_body("no-such-model", QUESTION), 404),
    (chat_body("jisi", QUESTION, jisi={"t": 2}), 400),
    (chat_body("jisi", QUESTION, n=3), 400),
])
async def test_errors_known_before_streaming_are_plain_json(settings, fake, minilm, body, status):
    async with running_gateway(settings, minilm, fake) as (app, client):
        r = await client.post("/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/json")
    assert set(r.json()["error"]) >= {"message", "type", "param", "code"}
    assert fake.calls == []
