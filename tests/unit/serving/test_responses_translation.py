"""The Responses API translation, without a server: requests into chat completions, chat deltas into the
Responses API's events (what the SDK tests in tests/gateway/test_responses_api.py do not reach)."""

from __future__ import annotations

import json

import pytest

from app.errors import ErrorKind, GatewayError
from app.pipeline.trace import Trace
from app.protocol.responses import ResponsesRequest
from app.serving.responses import ResponseWriter, in_responses_terms, responses_param, to_chat


def request(**fields) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "jisi", "input": "hi", **fields})


def events(data: list[bytes]) -> list[dict]:
    out = []
    for raw in data:
        head, body = raw.decode().split("\n", 1)
        event = json.loads(body.removeprefix("data: "))
        assert head == f"event: {event['type']}" and raw.endswith(b"\n\n")
        out.append(event)
    return out


def test_consecutive_function_calls_become_one_assistant_message_and_unknown_fields_go_upstream():
    chat = to_chat(request(input=[
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"type": "function_call", "call_id": "a", "name": "w", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "w", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "a", "output": [{"type": "input_text", "text": "sunny"}]},
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA=="}]}],
        top_k=5, reasoning={"effort": "low"}))
    body = chat.upstream_body("m")
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "user"]
    assert [c["id"] for c in body["messages"][1]["tool_calls"]] == ["a", "b"]
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "a", "content": "sunny"}
    assert body["messages"][3]["content"] == [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
    assert body["top_k"] == 5 and body["reasoning_effort"] == "low"  # forwarded, as on chat completions
    assert "input" not in body and "reasoning" not in body


@pytest.mark.parametrize(("fields", "param"), [
    ({"input": [{"type": "function_call", "name": "w", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    ({"input": []}, "input"),
    ({"tools": [{"type": "function"}]}, "tools[0].name"),
    ({"tool_choice": {"type": "web_search"}}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
])
def test_what_cannot_be_served_is_a_400_naming_the_parameter(fields, param):
    with pytest.raises(GatewayError) as refused:
        to_chat(request(**fields))
    assert refused.value.kind is ErrorKind.INVALID_REQUEST and refused.value.body.param == param


def test_chat_parameters_are_named_in_the_responses_terms():
    assert [responses_param(p) for p in ("messages", "messages.0.content", "max_tokens", "jisi.t", None)] == [
        "input", "input", "max_output_tokens", "jisi.t", None]
    with pytest.raises(GatewayError) as raised, in_responses_terms():
        raise GatewayError(ErrorKind.INVALID_REQUEST, "too many", "max_completion_tokens")
    assert raised.value.body.param == "max_output_tokens"


def test_writer_closes_each_item_before_the_next_and_numbers_every_event():
    writer = ResponseWriter(request(), "resp_1")
    out = writer.delta({"role": "assistant", "content": ""}, "m")
    out += writer.delta({"content": "Let me check."}, "m")
    out += writer.delta({"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "w", "arguments": '{"a"'}}]}, "m")
    out += writer.delta({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}, "m")
    trace = Trace(requested_mode="route", answered_by="m", finish_reason="tool_calls")
    out += writer.finish(trace, include_usage=False)
    seen = events(out)
    assert [e["sequence_number"] for e in seen] == list(range(len(seen)))
    assert [e["type"] for e in seen] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    final = seen[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert final["output"][1]["arguments"] == '{"a": 1}' and final["output"][1]["call_id"] == "c0"
    assert final["usage"]["total_tokens"] == 0 and writer.end() == []


def test_writer_failures_and_empty_answers():
    error = GatewayError(ErrorKind.UPSTREAM_FAILED, "every candidate failed", code="upstream_error")
    (before,) = events(ResponseWriter(request(), "resp_2").error(error))
    assert before["type"] == "error" and before["code"] == "upstream_error" and before["sequence_number"] == 0
    writer = ResponseWriter(request(), "resp_3")
    started = events(writer.delta({"content": "par"}, "m") + writer.error(error))
    assert started[-1]["type"] == "response.failed"
    assert started[-1]["response"]["error"] == {"code": "upstream_error", "message": "every candidate failed"}
    empty = events(ResponseWriter(request(), "resp_4").finish(
        Trace(requested_mode="route", answered_by="m", finish_reason="length"), include_usage=True))
    assert empty[-1]["type"] == "response.incomplete"
    assert empty[-1]["response"]["output"][0]["content"][0]["text"] == ""
    assert empty[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
