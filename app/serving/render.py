"""Turns calls and traces into chat completions, stream events (the StreamWriter interface and its chat
completions framing) and JiSi headers."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from typing import Any

from app.errors import GatewayError
from app.pipeline.trace import Trace
from app.protocol.chat import (
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


class StreamWriter(ABC):
    """One response's events in a wire format: the pipeline's deltas in, SSE bytes out.

    The gateway's stream (app/serving/gateway.py) is written once against this interface; chat completions
    (ChunkWriter) and the Responses API (app/serving/responses.py) each frame it their own way."""

    @abstractmethod
    def delta(self, delta: dict[str, Any], model: str) -> list[bytes]:
        """A chat-completions delta of the answer ({role, content, tool_calls}) from `model`."""

    def message(self, call: CallResult, piece_chars: int = 64) -> list[bytes]:
        """A finished answer as deltas: role, content in pieces, tool calls."""
        model = call.model
        out = self.delta({"role": "assistant", "content": ""}, model)
        text = call.text
        for start in range(0, len(text), piece_chars):
            out += self.delta({"content": text[start:start + piece_chars]}, model)
        tool_calls = call.message.get("tool_calls")
        if tool_calls:
            out += self.delta({"tool_calls": [{"index": i, **tc} for i, tc in enumerate(tool_calls)]}, model)
        return out

    @abstractmethod
    def finish(self, trace: Trace, include_usage: bool) -> list[bytes]:
        """The answer is complete: its finish reason, usage over every upstream call and the jisi summary."""

    @abstractmethod
    def error(self, exc: GatewayError) -> list[bytes]:
        """A failure after the first byte went out (before it, the client gets a plain HTTP error)."""

    @abstractmethod
    def end(self) -> list[bytes]:
        """What closes the stream, whatever happened."""


class ChunkWriter(StreamWriter):
    """SSE framing of chat.completion.chunk objects for one response, ending with [DONE]."""

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

    def delta(self, delta: dict[str, Any], model: str) -> list[bytes]:
        return [self.chunk(delta, model=model)]

    def finish(self, trace: Trace, include_usage: bool) -> list[bytes]:
        finish_reason = trace.finish_reason or "stop"
        if include_usage:  # OpenAI's shape: usage in a last chunk with no choices
            return [self.chunk(finish_reason=finish_reason, model=trace.answered_by),
                    self.chunk(usage=total_usage(trace.calls), jisi=trace.summary(), model=trace.answered_by,
                               empty=True)]
        return [self.chunk(finish_reason=finish_reason, jisi=trace.summary(), model=trace.answered_by)]

    def error(self, exc: GatewayError) -> list[bytes]:
        return [sse(exc.payload())]

    def end(self) -> list[bytes]:
        return [DONE]


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
