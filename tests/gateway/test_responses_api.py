"""POST /v1/responses with the real `openai` package (sync, async, streamed; text and function calling)
against the gateway served by uvicorn on loopback, whose upstreams are a small OpenAI-compatible chat
completions server on loopback (sdk_upstream.py; the gateway keeps calling upstreams through chat completions)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from sdk_upstream import (
    ARGUMENTS, BROKEN_MODEL, CUT, QUESTION, SLOW_MARK, aggregate_answer, answer, pieces, tool_answer,
)

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def jisi_of(response) -> dict[str, Any]:
    return response.model_extra["jisi"]


def check_usage(response, upstream_calls) -> None:
    """The usage sums every upstream call, which the upstream server saw."""
    calls = jisi_of(response)["calls"]
    assert len(calls) == len(upstream_calls)
    assert response.usage.input_tokens == sum(c["usage"]["prompt_tokens"] for c in calls)
    assert response.usage.output_tokens == sum(c["usage"]["completion_tokens"] for c in calls)
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens > 0


# ------------------------------------------------------------------------------------------------
# plain
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["jisi", "jisi-route", "jisi-aggregate", "passthrough"])
def test_create_text(client, bank_models, upstream_calls, model):
    model = bank_models[1] if model == "passthrough" else model
    raw = client.responses.with_raw_response.create(model=model, input=QUESTION, metadata={"team": "qa"})
    response = raw.parse()
    info = jisi_of(response)
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.model == info["answered_by"] and response.metadata == {"team": "qa"}
    assert response.store is False  # stateless, and says so
    expected = aggregate_answer(info["aggregator"]) if info["mode"] == "aggregate" else answer(info["answered_by"])
    assert response.output_text == expected
    assert [item.type for item in response.output] == ["message"]
    check_usage(response, upstream_calls)
    assert raw.headers["x-jisi-mode"] == info["mode"] and raw.headers["x-jisi-upstream-calls"] == str(
        len(upstream_calls))
    assert {"jisi-route": "route", "jisi-aggregate": "aggregate", "jisi": info["mode"]}.get(model, "passthrough") \
        == info["mode"]
    assert all("metadata" not in c["body"] and "input" not in c["body"] for c in upstream_calls)


def test_instructions_and_input_items_become_the_conversation(client, upstream_calls):
    response = client.responses.create(
        model="jisi-route", instructions="Answer briefly.", temperature=0.3, max_output_tokens=200,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hello."}]},
               {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi!"}]},
               {"role": "user", "content": QUESTION}])
    assert response.output_text == answer(response.model)
    assert response.instructions == "Answer briefly." and response.max_output_tokens == 200
    body = upstream_calls[0]["body"]
    assert body["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Hello."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]},
        {"role": "user", "content": QUESTION}]
    assert body["temperature"] == 0.3 and body["max_tokens"] == 200


def test_function_calling_round_trip(client, upstream_calls):
    """Tools force route mode; the call comes back as a function_call item, and its output goes upstream as
    a tool message after the assistant's tool call."""
    first = client.responses.create(model="jisi", input="What is the weather in Paris?", tools=[WEATHER_TOOL],
                                    tool_choice="auto")
    assert jisi_of(first)["mode"] == "route"
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == ARGUMENTS
    assert call.call_id.startswith("call_") and first.tools[0].name == "get_weather"
    sent = [c["body"] for c in upstream_calls]
    assert all(b["tools"] == [{"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items()
                                                                  if k != "type"}}] for b in sent)
    upstream_calls.clear()
    second = client.responses.create(
        model="jisi-route", tools=[WEATHER_TOOL],
        input=[{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'}])
    assert second.output_text == tool_answer(second.model)
    messages = upstream_calls[0]["body"]["messages"]
    assert messages[1] == {"role": "assistant", "tool_calls": [
        {"id": call.call_id, "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}]}
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": '{"sky": "sunny"}'}


def test_json_schema_format_forces_route_and_reaches_the_upstream(client, upstream_calls):
    schema = {"type": "object", "properties": {"pages": {"type": "integer"}}, "required": ["pages"]}
    response = client.responses.create(model="jisi", input=QUESTION, text={"format": {
        "type": "json_schema", "name": "pages", "schema": schema, "strict": True}})
    assert jisi_of(response)["mode"] == "route"
    assert response.text.format.type == "json_schema"
    assert all(c["body"]["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "pages", "schema": schema, "strict": True}} for c in upstream_calls)


def test_token_limit_is_incomplete(client):
    response = client.responses.create(model="jisi-route", input=f"{QUESTION} {CUT}", max_output_tokens=5)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"


# ------------------------------------------------------------------------------------------------
# refused, with typed errors
# ------------------------------------------------------------------------------------------------

REFUSED = [
    ({"store": True}, "store"),
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"conversation": "conv_123"}, "conversation"),
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"include": ["file_search_call.results"]}, "include"),
    ({"truncation": "auto"}, "truncation"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
]


@pytest.mark.parametrize(("extra", "param"), REFUSED, ids=[p for _, p in REFUSED])
def test_stateful_features_are_refused_naming_the_parameter(client, upstream_calls, extra, param):
    kwargs: dict[str, Any] = {"model": "jisi", "input": QUESTION, **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(**kwargs)
    assert refused.value.param == param and refused.value.code == "unsupported_parameter"
    assert param.split("[")[0].split(".")[0] in refused.value.message
    assert upstream_calls == []  # refused before any upstream call


def test_errors_name_the_responses_parameters(client):
    with pytest.raises(openai.NotFoundError) as not_found:
        client.responses.create(model="no-such-model", input=QUESTION)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="jisi", input=QUESTION, extra_body={"jisi": {"t": 2}})
    assert bad.value.param == "jisi.t"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.responses.create(model="jisi", input=QUESTION, max_output_tokens=10**7)
    assert too_many.value.param == "max_output_tokens"
    with pytest.raises(openai.BadRequestError) as nothing:
        client.responses.create(model="jisi", input=[{"role": "user", "content": "   "}])
    assert nothing.value.param == "input"


# ------------------------------------------------------------------------------------------------
# streamed
# ------------------------------------------------------------------------------------------------

TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", "response.output_text.delta", "response.output_text.done",
               "response.content_part.done", "response.output_item.done", "response.completed"]


def squeeze(types: list[str]) -> list[str]:
    """Runs of the same event type as one (the deltas)."""
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


@pytest.mark.parametrize("model", ["jisi-route", "jisi-aggregate", "passthrough"])
def test_stream_helper_events_in_order(client, bank_models, upstream_calls, model):
    model = bank_models[0] if model == "passthrough" else model
    with client.responses.stream(model=model, input=QUESTION) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert squeeze([e.type for e in events]) == TEXT_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    info = jisi_of(final)
    expected = aggregate_answer(info["aggregator"]) if info["mode"] == "aggregate" else answer(info["answered_by"])
    assert text == final.output_text == expected
    assert final.status == "completed" and final.id == events[0].response.id
    check_usage(final, upstream_calls)


def test_stream_true_function_call_and_incomplete(client):
    events = list(client.responses.create(model="jisi", input="Weather in Paris?", tools=[WEATHER_TOOL],
                                          stream=True))
    types = squeeze([e.type for e in events])
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    done = events[-1].response
    assert done.output[0].type == "function_call" and done.output[0].arguments == ARGUMENTS
    assert "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta") == ARGUMENTS
    cut = list(client.responses.create(model="jisi-route", input=f"{QUESTION} {CUT}", stream=True))
    assert cut[-1].type == "response.incomplete" and cut[-1].response.incomplete_details.reason == "max_output_tokens"


def test_stream_failing_midway_is_response_failed(client):
    events = list(client.responses.create(model=BROKEN_MODEL, input=QUESTION, stream=True))
    assert events[-1].type == "response.failed"
    assert "upstream" in events[-1].response.error.message
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "".join(pieces(answer(BROKEN_MODEL))[:2])  # what went out is not taken back, and not cut silently


def test_stream_errors_before_the_first_event_are_http_errors(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="jisi", input=QUESTION, store=True, stream=True)
    assert refused.value.param == "store"


def test_stream_keepalives_over_http_and_no_done(gateway_url):
    with httpx.stream("POST", f"{gateway_url}/v1/responses", timeout=30,
                      json={"model": "jisi-route", "stream": True, "input": f"{QUESTION} {SLOW_MARK}"}) as response:
        lines = [line for line in response.iter_lines() if line]
    first = next(i for i, line in enumerate(lines) if line.startswith("event:"))
    assert ": keep-alive" in lines[:first] and lines[first] == "event: response.created"
    assert lines[-2] == "event: response.completed" and "[DONE]" not in "".join(lines)


# ------------------------------------------------------------------------------------------------
# async
# ------------------------------------------------------------------------------------------------


def test_async_create_and_stream(gateway_url, bank_models):
    async def main():
        async with openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="x", max_retries=0, timeout=30) as c:
            route, passthrough = await asyncio.gather(c.responses.create(model="jisi-route", input=QUESTION),
                                                      c.responses.create(model=bank_models[3], input=QUESTION))
            async with c.responses.stream(model="jisi", input=QUESTION) as stream:
                events = [e async for e in stream]
                final = await stream.get_final_response()
            with pytest.raises(openai.BadRequestError):
                await c.responses.create(model="jisi", input=QUESTION, previous_response_id="resp_1")
        return route, passthrough, events, final

    route, passthrough, events, final = asyncio.run(main())
    assert route.output_text == answer(route.model) and passthrough.model == bank_models[3]
    assert events[-1].type == "response.completed" and final.output_text
    assert jisi_of(final)["answered_by"] == final.model
