"""A small real OpenAI-compatible chat completions server for the SDK tests (test_openai_sdk.py,
test_responses_api.py), served by uvicorn on loopback beside the gateway, and the gateway in front of it.

Every bank model answers at /m<i>/v1/chat/completions: a fixed text per model (the aggregator's differs), tool
calls when it is given tools, a summary when it is sent a tool's result, `finish_reason: "length"` on CUT, a
delay on SLOW_MARK, SLOW_MODEL late as a candidate, BROKEN_MODEL's streams breaking after two chunks. Its
streams carry no usage, even when asked (the gateway must count)."""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager
from typing import Any, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.http.app import create_app
from gateway_helpers import is_aggregation, make_settings, serve

QUESTION = "Tom reads 20 pages a day. How many pages does he read in a week?"
SLOW_MARK = "[please take your time]"
CUT = "[stop early]"
SLOW_MODEL = "Qwen2-7B-Instruct"  # pass-through to it times out (its upstream timeout is 0.3 s)
BROKEN_MODEL = "claude-3-haiku-20240307"  # its streams break after two chunks
ARGUMENTS = '{"city": "Paris"}'  # every tool call's arguments


def answer(model: str) -> str:
    return f"Upstream {model} says: he reads 140 pages in a week."


def aggregate_answer(model: str) -> str:
    return f"Aggregator {model} concludes: 140 pages."


def tool_answer(model: str) -> str:
    return f"{model}: it is sunny in Paris."


def pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def _reply(i: int, model: str, body: dict[str, Any], aggregation: bool) -> tuple[str, list | None, str]:
    """(text, tool calls, finish reason) for one request."""
    user_text = " ".join(str(m.get("content") or "") for m in body["messages"] if m["role"] == "user")
    finish = "length" if CUT in user_text else "stop"
    if any(m["role"] == "tool" for m in body["messages"]):
        return tool_answer(model), None, finish
    if body.get("tools"):
        return "", [{"id": f"call_{i}", "type": "function",
                     "function": {"name": body["tools"][0]["function"]["name"], "arguments": ARGUMENTS}}], "tool_calls"
    return (aggregate_answer(model) if aggregation else answer(model)), None, finish


def upstream_app(models: list[str], calls: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.post("/m{i}/v1/chat/completions")
    async def chat(i: int, request: Request):
        body = await request.json()
        model = body["model"]
        assert model == models[i], (model, i)  # the gateway used this model's own base_url
        aggregation = is_aggregation(body)
        calls.append({"model": model, "aggregation": aggregation, "stream": bool(body.get("stream")), "body": body})
        if SLOW_MARK in " ".join(str(m.get("content") or "") for m in body["messages"] if m["role"] == "user"):
            await asyncio.sleep(0.4)
        if model == SLOW_MODEL and not aggregation:
            await asyncio.sleep(1.0)
        text, tool_calls, finish = _reply(i, model, body, aggregation)
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if tool_calls:
                message["tool_calls"] = tool_calls
            return JSONResponse({"id": f"up-{i}", "object": "chat.completion", "created": 1, "model": model,
                                 "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                                 "usage": {"prompt_tokens": 40 + i, "completion_tokens": 10 + i,
                                           "total_tokens": 50 + 2 * i}})

        async def events():
            def chunk(delta, finish_reason=None):
                data = {"id": f"up-{i}", "object": "chat.completion.chunk", "created": 1, "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
                return f"data: {json.dumps(data)}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            for n, piece in enumerate(pieces(text) if text else []):
                if model == BROKEN_MODEL and n == 2:
                    raise RuntimeError("fake upstream crashed mid-stream")
                yield chunk({"content": piece})
                await asyncio.sleep(0.001)
            if tool_calls:
                yield chunk({"tool_calls": [{"index": 0, **tool_calls[0]}]})
            yield chunk({}, finish)
            yield "data: [DONE]\n\n"  # no usage, even though the gateway asks for it

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@contextmanager
def sdk_gateway(mini_bank, bank_models: list[str], embedder, cache_dir, calls: list[dict[str, Any]]) -> Iterator[str]:
    """The gateway (uvicorn, loopback) in front of `upstream_app`; yields its URL. SLOW_MODEL's upstream
    timeout is 0.3 s; keep-alives every 0.05 s."""
    with serve(upstream_app(bank_models, calls), log_level="critical") as (upstream_url, _):
        settings = make_settings(mini_bank, bank_models, cache_dir)
        upstreams = []
        for i, u in enumerate(settings.upstreams):
            update: dict[str, Any] = {"base_url": f"{upstream_url}/m{i}/v1"}
            if u.name == SLOW_MODEL:
                update["timeout_s"] = 0.3
            upstreams.append(u.model_copy(update=update))
        app = create_app(settings.model_copy(update={"upstreams": upstreams}), embedder=embedder)
        with serve(app) as (url, _):
            app.state.jisi.gateway.keepalive_s = 0.05
            yield url
