"""OpenAI wire schemas (chat completions, models, errors) and JiSi's additions. Nothing else."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def valid_unicode(data: Any) -> Any:
    """Refuse strings holding lone surrogates: JSON allows escapes like "\\ud800", but such text can be
    neither embedded nor sent upstream as UTF-8 (it was a 500 instead of a 400)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("the request holds a string that is not valid Unicode (a lone surrogate "
                                 "escape such as \\ud800)") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return data


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text: a string, or the text parts of a content-part list joined by newlines."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content if part.type == "text" and part.text)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class JiSiOverrides(BaseModel):
    """Per-request overrides, sent as the body field `jisi` (OpenAI SDK: extra_body={"jisi": {...}})."""

    model_config = ConfigDict(extra="forbid")
    k: int | None = Field(None, ge=1, le=16)
    n_base: int | None = Field(None, ge=1)
    gamma: float | None = Field(None, ge=0, le=1)
    beta: float | None = Field(None, ge=0, le=1)
    eps: float | None = Field(None, ge=0, le=1)
    sigma: float | None = Field(None, ge=0, le=1)
    delta: float | None = Field(None, ge=0, le=1)
    t: float | None = Field(None, ge=0, le=1)
    mode: Literal["adaptive", "route", "aggregate"] | None = None
    max_cost_usd: float | None = Field(None, gt=0)

    def param_overrides(self) -> dict[str, Any]:
        fields = ("k", "n_base", "gamma", "beta", "eps", "sigma", "delta", "t")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


class ChatCompletionRequest(BaseModel):
    # unknown fields are tolerated and forwarded upstream untouched
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    jisi: JiSiOverrides | None = None

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        return valid_unicode(data)

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise ValueError("only n=1 is supported: JiSi returns one best answer per request")
        return n

    def upstream_body(self, model: str) -> dict[str, Any]:
        """The request as sent to an upstream: JiSi's own field removed, the upstream's model id in.

        Streaming is the pool's choice per call, so `stream` and `stream_options` are left out here.
        """
        body = self.model_dump(exclude_none=True, exclude={"jisi", "stream", "stream_options"})
        body["model"] = model
        return body

    @property
    def wants_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


class ResponseMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = "stop"
    logprobs: Any = None


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    jisi: dict[str, Any] | None = None


class ChunkDelta(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    jisi: dict[str, Any] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "jisi"
    pricing: dict[str, float] | None = None
    description: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class RouteRequest(BaseModel):
    """Body of POST /v1/jisi/route: a chat request, answered with decisions and no upstream call."""

    model_config = ConfigDict(extra="allow")
    model: str = "jisi"
    messages: list[ChatMessage] = Field(min_length=1)
    jisi: JiSiOverrides | None = None
    neighbours: int = Field(10, ge=0, le=100)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        return valid_unicode(data)
