"""What one upstream call yields: its result (message, usage, cost, latency) or its error, and the usage
of a stream as it goes. The usage a server did not report is estimated here, and only here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.errors import ErrorKind, GatewayError
from app.protocol.chat import Usage


class UpstreamError(Exception):
    """An upstream failed; `status` is its HTTP status, or None for a connection problem or timeout."""

    def __init__(self, model: str, message: str, status: int | None = None, timeout: bool = False,
                 retry_after: float | None = None, breaker: bool = True, overloaded: bool = False,
                 circuit_open: bool = False) -> None:
        super().__init__(f"{model}: {message}")
        self.model = model
        self.message = message
        self.status = status
        self.timeout = timeout
        self.retry_after = retry_after  # seconds, from the upstream's Retry-After header
        self.breaker = breaker  # counts as a failure of the upstream (not e.g. a 400 for our request)
        self.overloaded = overloaded  # refused by our own concurrency limit: the upstream was never called
        self.circuit_open = circuit_open  # refused by its open circuit breaker: the upstream was never called

    def summary(self) -> dict[str, Any]:
        return {"model": self.model, "status": self.status, "timeout": self.timeout,
                "overloaded": self.overloaded, "circuit_open": self.circuit_open, "message": self.message}

    def client_error(self) -> GatewayError:
        """What the client gets when this was the only call that could answer (HTTP 503, 504 or 502)."""
        kind, code = (ErrorKind.UNAVAILABLE, "upstream_overloaded") if self.overloaded else \
            (ErrorKind.UNAVAILABLE, "upstream_unavailable") if self.circuit_open else \
            (ErrorKind.TIMEOUT, "upstream_timeout") if self.timeout else (ErrorKind.UPSTREAM_FAILED, "upstream_error")
        return GatewayError(kind, f"upstream {self.model} failed: {self.message}", code=code,
                            details=[self.summary()])


@dataclass
class CallResult:
    model: str  # bank name of the upstream
    role: str  # candidate | final | aggregator | passthrough | collect
    message: dict[str, Any]  # the assistant message as the upstream sent it
    finish_reason: str | None
    usage: Usage
    usage_estimated: bool  # the upstream reported no usage; tokens were counted from what it sent
    cost_usd: float
    latency_s: float

    @property
    def text(self) -> str:
        return self.message.get("content") or ""

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model, "role": self.role, "usage": self.usage.model_dump(),
            "usage_estimated": self.usage_estimated, "cost_usd": self.cost_usd,
            "latency_ms": round(1000 * self.latency_s, 1), "finish_reason": self.finish_reason,
        }


@dataclass
class StreamState:
    """What a relayed stream has carried so far, to account for it when it ends."""

    content: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    chunks: int = 0
    usage: Usage | None = None
    finish_reason: str | None = None

    def record(self, chunk: dict[str, Any]) -> None:
        """Account for one parsed stream chunk."""
        usage = reported_usage(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.content.append(delta["content"])
                self.chunks += 1
            if delta.get("tool_calls"):
                self.tool_calls.extend(delta["tool_calls"])
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message


def chunk_deltas(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-empty deltas of a stream chunk's choices, None fields dropped (what a relay passes on)."""
    deltas = []
    for choice in chunk.get("choices") or []:
        delta = {k: v for k, v in (choice.get("delta") or {}).items() if v is not None}
        if delta:
            deltas.append(delta)
    return deltas


def reported_usage(payload: dict[str, Any] | None) -> Usage | None:
    if not payload:
        return None
    prompt = int(payload.get("prompt_tokens") or 0)
    completion = int(payload.get("completion_tokens") or 0)
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=int(payload.get("total_tokens") or prompt + completion))


def prompt_text(body: dict[str, Any]) -> str:
    parts = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text") or "" for p in content if isinstance(p, dict))
    return "\n".join(parts)


def estimate_tokens(text: str) -> int:
    """Rough token count (~4 characters a token) for text whose real count nobody reported."""
    return max(1, (len(text) + 3) // 4) if text else 0


def estimated_usage(body: dict[str, Any], completion_text: str, stream_chunks: int | None = None) -> Usage:
    """The usage of a call whose server reported none: its prompt and answer counted at ~4 characters a token;
    a stream's answer as its content chunks (servers without usage send about one token per chunk)."""
    prompt = estimate_tokens(prompt_text(body))
    completion = stream_chunks if stream_chunks is not None else estimate_tokens(completion_text)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
