"""OpenAI's Responses API wire schemas (POST /v1/responses): the request, the response object and its usage.

What the gateway cannot honour (stored state, built-in tools) is accepted by the schema and refused by the
translation (app/serving/responses.py) with a 400 naming the parameter, so the error says why instead of
"invalid type". Stream events are built by the translation's writer in the shapes OpenAI documents."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.protocol.common import STRICT, JiSiOverrides, valid_json_values

EXAMPLE_INPUT = "What is the capital of France? Answer in one word."
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512  # OpenAI's limits on `metadata`


class InputContentPart(BaseModel):
    """A content part of an input message: input_text / output_text (text), input_image (image_url)."""

    model_config = ConfigDict(extra="allow", strict=STRICT)
    type: str
    text: str | None = None
    image_url: str | None = None
    detail: str | None = None


class InputItem(BaseModel):
    """One item of `input`: a message (`type` may be left out), a function_call the model made earlier, or
    a function_call_output the client sends back."""

    model_config = ConfigDict(extra="allow", strict=STRICT)
    type: str = "message"
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[InputContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputContentPart] | None = None
    id: str | None = None
    status: str | None = None


class Tool(BaseModel):
    """A tool the model may call; only `function` tools can be served (built-in ones are refused)."""

    model_config = ConfigDict(extra="allow", strict=STRICT)
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=STRICT, populate_by_name=True)
    type: Literal["text", "json_schema", "json_object"]
    name: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")  # `schema` would shadow BaseModel's
    description: str | None = None
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow", strict=STRICT)
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(BaseModel):
    # unknown fields are tolerated and forwarded to the upstreams' chat completions, as on chat completions
    model_config = ConfigDict(extra="allow", strict=STRICT)
    model: str = Field(examples=["jisi", "jisi-route", "jisi-aggregate"])
    input: str | list[InputItem] = Field(examples=[EXAMPLE_INPUT])
    instructions: str | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    text: TextConfig | None = None
    reasoning: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    include: list[str] | None = None
    truncation: str | None = None
    # stateful features, refused (the gateway keeps nothing between requests)
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None
    jisi: JiSiOverrides | None = None  # type: ignore[valid-type]

    @model_validator(mode="before")
    @classmethod
    def _valid_json_values(cls, data: Any) -> Any:
        return valid_json_values(data)

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        if metadata is None:
            return None
        if len(metadata) > METADATA_PAIRS:
            raise ValueError(f"at most {METADATA_PAIRS} key-value pairs")
        for key, value in metadata.items():
            if len(key) > METADATA_KEY_CHARS or len(value) > METADATA_VALUE_CHARS:
                raise ValueError(f"keys are at most {METADATA_KEY_CHARS} characters, values at most "
                                 f"{METADATA_VALUE_CHARS}")
        return metadata


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    """Tokens summed over every upstream call the request made (candidates and aggregator)."""

    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    call_id: str
    name: str
    arguments: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputMessage | FunctionCall] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    # the request's settings, echoed as OpenAI does
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: str = "disabled"
    store: bool = False  # stateless: nothing is kept, GET /v1/responses/{id} does not exist
    background: bool = False
    previous_response_id: None = None
    user: str | None = None
    jisi: dict[str, Any] | None = None
