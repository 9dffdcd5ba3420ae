"""OpenAI's chat completions wire schemas, the model list, and the dry run's request. Nothing else."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.protocol.common import STRICT, JiSiOverrides, valid_json_values


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=STRICT)
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=STRICT)
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
    model_config = ConfigDict(extra="allow", strict=STRICT)
    include_usage: bool = False


EXAMPLE_MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


class ChatCompletionRequest(BaseModel):
    # unknown fields are tolerated and forwarded upstream untouched
    model_config = ConfigDict(extra="allow", strict=STRICT)
    model: str = Field(examples=["jisi", "jisi-route", "jisi-aggregate"])  # or an upstream's name: GET /v1/models
    messages: list[ChatMessage] = Field(min_length=1, examples=[EXAMPLE_MESSAGES])
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
    jisi: JiSiOverrides | None = None  # type: ignore[valid-type]

    @model_validator(mode="before")
    @classmethod
    def _valid_json_values(cls, data: Any) -> Any:
        return valid_json_values(data)

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


class ChatCompletion(BaseModel):
    id: str
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
    jisi: dict[str, Any] | None = None  # virtual models: the hyperparameters in force and their sources


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class RouteRequest(BaseModel):
    """Body of POST /v1/jisi/route: a chat request, answered with decisions and no upstream call."""

    model_config = ConfigDict(extra="allow", strict=STRICT)
    model: str = "jisi"
    messages: list[ChatMessage] = Field(min_length=1, examples=[EXAMPLE_MESSAGES])
    jisi: JiSiOverrides | None = None  # type: ignore[valid-type]
    neighbours: int = Field(10, ge=0, le=100)

    @model_validator(mode="before")
    @classmethod
    def _valid_json_values(cls, data: Any) -> Any:
        return valid_json_values(data)
