"""Turns calls and traces into OpenAI responses, stream chunks (SSE framing) and JiSi headers."""

from __future__ import annotations

import json
import time
from typing import Any

from app.errors import GatewayError
from app.pipeline.trace import Trace
from app.protocol import (
    ChatCompletion, ChatCompletionChunk, Choice, ChunkChoice, ChunkDelta, ResponseMessage, Usage,
)
from app.upstream.call import CallResult


def total_usage(calls: list[CallResult]) -> Usage:
    usage = Usage()
    for call in calls:
        usage = usage + call.usage
    return usage


def completion_id(request_id: str) -> str:
    """The response's id, plain or streamed, derived from the request id (so logs, headers and ids match)."""
    return "chatcmpl-" + request_id.replace("-", "")


def completion(answer: CallResult, trace: Trace, id_: str) -> ChatCompletion:
    message = ResponseMessage.model_validate({**answer.message, "role": "assistant"})
    return ChatCompletion(
        id=id_, model=answer.model, usage=total_usage(trace.calls), jisi=trace.summary(),
        choices=[Choice(message=message, finish_reason=answer.finish_reason or "stop")],
    )


def jisi_headers(trace: Trace, request_id: str) -> dict[str, str]:
    aggregator = trace.answered_by if trace.mode == "aggregate" else ""
    return {
        "x-request-id": request_id,
        "x-jisi-mode": trace.mode,
        "x-jisi-models": ",".join(trace.final),
        "x-jisi-aggregator": aggregator or "",
        "x-jisi-cost-usd": f"{trace.cost_usd:.8f}",
        "x-jisi-upstream-calls": str(len(trace.calls)),
        "x-jisi-overhead-ms": f"{trace.timings_ms.get('overhead', 0.0):.2f}",
        "x-jisi-degraded": "true" if trace.degraded else "false",
        "x-jisi-shortcut": "true" if trace.shortcut else "false",
    }


class ChunkWriter:
    """SSE framing of chat.completion.chunk objects for one response."""

    def __init__(self, completion_id: str, model: str) -> None:
        self.id = completion_id
        self.created = int(time.time())
        self.model = model

    def chunk(self, delta: dict[str, Any] | None = None, finish_reason: str | None = None,
              usage: Usage | None = None, jisi: dict[str, Any] | None = None, model: str | None = None,
              empty: bool = False) -> bytes:
        choices = [] if empty else [ChunkChoice(delta=ChunkDelta.model_validate(delta or {}),
                                                finish_reason=finish_reason)]
        payload = ChatCompletionChunk(id=self.id, created=self.created, model=model or self.model,
                                      choices=choices, usage=usage, jisi=jisi)
        return sse(payload.model_dump(exclude_none=True))

    def message(self, call: CallResult, piece_chars: int = 64) -> list[bytes]:
        """A finished answer as chunks: role, content in pieces, tool calls."""
        model = call.model
        out = [self.chunk({"role": "assistant", "content": ""}, model=model)]
        text = call.text
        for start in range(0, len(text), piece_chars):
            out.append(self.chunk({"content": text[start:start + piece_chars]}, model=model))
        tool_calls = call.message.get("tool_calls")
        if tool_calls:
            indexed = [{"index": i, **tc} for i, tc in enumerate(tool_calls)]
            out.append(self.chunk({"tool_calls": indexed}, model=model))
        return out


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def sse_error(exc: GatewayError) -> bytes:
    return sse(exc.payload())


DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
