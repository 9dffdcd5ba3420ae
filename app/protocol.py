"""OpenAI wire schemas (chat completions, models, errors) and JiSi's additions. Nothing else.

The `jisi` overrides are derived from the hyperparameters' one declaration (app/engine/params.py)."""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from app.engine.params import Mode, param_specs


MAX_JSON_DEPTH = 100  # arrays/objects inside one another; far beyond any real request (tool schemas included)


def _path(parts: tuple[Any, ...]) -> str:
    # keys may themselves be invalid Unicode: escape them, the path goes back to the client in the error
    return ".".join(str(p).encode("utf-8", "backslashreplace").decode("utf-8") for p in parts)


def valid_json_values(data: Any) -> Any:
    """Refuse what parses but cannot be passed on, anywhere in the body (unknown fields are forwarded upstream):

    - strings holding lone surrogates: JSON allows escapes like "\\ud800", but such text can be neither embedded
      nor sent upstream as UTF-8 (it was a 500 instead of a 400);
    - numbers that are not finite: `NaN` / `Infinity` literals, or a literal beyond the double range such as
      `1e999`; the upstream request cannot be encoded as JSON with them (found by fuzzing: a 500);
    - nesting deeper than MAX_JSON_DEPTH: a body that parses just below Python's recursion limit overflowed it
      when encoded again for the upstream (found by fuzzing: a 500 at about 910 levels).

    The error names the offending value's path (as `param`), never its text.
    """
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise PydanticCustomError("invalid_unicode", "the request holds a string that is not valid Unicode "
                                          "(a lone surrogate escape such as \\ud800)", {"param": _path(path)}) from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise PydanticCustomError("non_finite_number", "the request holds a number that is not finite (NaN, "
                                      "Infinity, or beyond the double range like 1e999)", {"param": _path(path)})
        elif isinstance(item, (dict, list)) and len(path) >= MAX_JSON_DEPTH:
            raise PydanticCustomError("too_deep", f"the request is nested more than {MAX_JSON_DEPTH} levels deep",
                                      {"param": _path(path[:8]) + "..."})
        elif isinstance(item, dict):
            for key, value in item.items():
                stack.append((key, path))
                stack.append((value, (*path, key)))
        elif isinstance(item, list):
            stack.extend((value, (*path, i)) for i, value in enumerate(item))
    return data


# Requests are validated strictly, as their JSON schema says: no silent coercion of "0.5" to a number, 0 or
# "yes" to a boolean, or 5.0 to an integer (the published schema and what is accepted agree; found by fuzzing).
STRICT = True


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


class _JiSiOverridesBase(BaseModel):
    """Per-request overrides, sent as the body field `jisi` (OpenAI SDK: extra_body={"jisi": {...}})."""

    model_config = ConfigDict(extra="forbid", strict=STRICT)

    def param_overrides(self) -> dict[str, Any]:
        """The hyperparameters this request sets (JiSiParams field -> value; an explicit null turns an optional
        one, such as the shortcut, off)."""
        return {s.name: getattr(self, s.name) for s in param_specs()
                if s.request and (s.name in self.model_fields_set if s.optional else getattr(self, s.name) is not None)}


# the hyperparameters a request may set are derived from JiSiParams (app/engine/params.py): same names,
# same bounds as the settings; plus the request's own mode and cost cap
JiSiOverrides = create_model(
    "JiSiOverrides", __base__=_JiSiOverridesBase,
    **{s.name: (s.type | None, Field(None, ge=s.ge, le=s.le, description=s.doc)) for s in param_specs()
       if s.request},
    mode=(Mode | None, None),
    max_cost_usd=(float | None, Field(None, gt=0, description="a cost cap: aggregate -> route -> one model "
                                                              "before it would overspend")),
)


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


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


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
