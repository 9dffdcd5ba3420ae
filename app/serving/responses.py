"""The Responses API as a second wire format over the one pipeline: a `ResponsesRequest` becomes the chat
completions request the gateway already serves (`to_chat`), and its answer becomes a `response` object
(`response_object`) or, streamed, the Responses API's semantic events (`ResponseWriter`).

Upstreams keep being called through chat completions (what open-model servers speak); nothing here knows
the method. The gateway is stateless, and says so: stored responses, conversations, background runs, stored
prompts and OpenAI's built-in tools are refused with a 400 naming the parameter."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any, Iterator

from pydantic import ValidationError

from app.errors import GatewayError, bad_request
from app.pipeline.trace import Trace
from app.protocol.chat import ChatCompletion, ChatCompletionRequest, Usage
from app.protocol.responses import (
    FunctionCall, IncompleteDetails, InputContentPart, InputItem, OutputMessage, OutputText, ResponseError,
    ResponseObject, ResponsesRequest, ResponseUsage,
)
from app.serving.render import StreamWriter, total_usage

UNSUPPORTED = "unsupported_parameter"
# what a chat-completions error names, in the Responses API's terms
PARAM_NAMES = {"messages": "input", "max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
               "response_format": "text.format"}
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}  # finish_reason -> reason
# asking for encrypted reasoning is harmless: no reasoning item is ever returned, so there is nothing to include
HARMLESS_INCLUDES = {"reasoning.encrypted_content"}


def response_id(request_id: str) -> str:
    """The response's id, derived from the request id like a chat completion's (logs, headers and ids match)."""
    return "resp_" + request_id.replace("-", "")


# -- request: Responses -> chat completions --------------------------------------------------------------------

def to_chat(request: ResponsesRequest) -> ChatCompletionRequest:
    """The chat completions request that asks the same; a 400 naming the parameter for what cannot be served."""
    refuse_stateful(request)
    body: dict[str, Any] = {**(request.model_extra or {}), "model": request.model, "messages": messages(request),
                            "stream": request.stream}
    optional = {"temperature": request.temperature, "top_p": request.top_p, "user": request.user,
                "max_tokens": request.max_output_tokens, "parallel_tool_calls": request.parallel_tool_calls,
                "tools": chat_tools(request), "tool_choice": chat_tool_choice(request.tool_choice),
                "response_format": response_format(request), "reasoning_effort": reasoning_effort(request),
                "jisi": request.jisi}
    body.update({k: v for k, v in optional.items() if v is not None})
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:  # an item that translated into something chat completions refuses
        first = exc.errors()[0]
        raise bad_request(f"input: {first.get('msg', 'invalid value')}", "input") from None


def refuse_stateful(request: ResponsesRequest) -> None:
    stateless = ("the gateway is stateless: it keeps no responses or conversations; send the whole "
                 "conversation as `input` items instead")
    if request.store:
        raise bad_request(f"store: true is not supported: {stateless}", "store", UNSUPPORTED)
    for name in ("previous_response_id", "conversation", "prompt"):
        if getattr(request, name) is not None:
            raise bad_request(f"{name} is not supported: {stateless}", name, UNSUPPORTED)
    if request.background:
        raise bad_request("background: true is not supported: the gateway answers within the request and keeps "
                          "nothing to poll", "background", UNSUPPORTED)
    if request.truncation not in (None, "disabled"):
        raise bad_request(f"truncation {request.truncation!r} is not supported: the gateway sends the input whole "
                          "(\"disabled\")", "truncation", UNSUPPORTED)
    for entry in request.include or []:
        if entry not in HARMLESS_INCLUDES:
            raise bad_request(f"include {entry!r} is not supported: the upstreams answer through chat completions, "
                              "which return no such data", "include", UNSUPPORTED)


def messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    """`instructions` as a system message, then `input`: a string is one user message; items become
    messages, assistant tool calls (consecutive function_call items merged) and tool results."""
    out: list[dict[str, Any]] = []
    if request.instructions:
        out.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        return [*out, {"role": "user", "content": request.input}]
    if not request.input:
        raise bad_request("input must hold at least one item", "input")
    for i, item in enumerate(request.input):
        where = f"input[{i}]"
        if item.type == "message":
            out.append(_message(item, where))
        elif item.type == "function_call":
            call = {"id": _required(item.call_id, f"{where}.call_id"), "type": "function",
                    "function": {"name": _required(item.name, f"{where}.name"),
                                 "arguments": _required(item.arguments, f"{where}.arguments")}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls"):
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item.type == "function_call_output":
            output = _required(item.output, f"{where}.output")
            out.append({"role": "tool", "tool_call_id": _required(item.call_id, f"{where}.call_id"),
                        "content": output if isinstance(output, str) else _text_of(output, f"{where}.output")})
        else:
            raise bad_request(f"input items of type {item.type!r} are not supported: the gateway is stateless and "
                              "serves messages, function_call and function_call_output items",
                              f"{where}.type", UNSUPPORTED)
    return out


def _required(value: Any, param: str) -> Any:
    if value is None:
        raise bad_request(f"{param} is required", param)
    return value


def _message(item: InputItem, where: str) -> dict[str, Any]:
    role = _required(item.role, f"{where}.role")
    content = _required(item.content, f"{where}.content")
    if isinstance(content, list):
        content = [_chat_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]
    return {"role": role, "content": content}


def _chat_part(part: InputContentPart, where: str) -> dict[str, Any]:
    if part.type in ("input_text", "output_text", "refusal", "text"):
        return {"type": "text", "text": _required(part.text, f"{where}.text")}
    if part.type == "input_image" and part.image_url is not None:
        image: dict[str, Any] = {"url": part.image_url}
        if part.detail:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    raise bad_request(f"content parts of type {part.type!r} are not supported here (input_text, output_text, "
                      "and input_image with an image_url are; uploaded files live on OpenAI's servers)",
                      f"{where}.type", UNSUPPORTED)


def _text_of(parts: list[InputContentPart], where: str) -> str:
    return "\n".join(_required(p.text, f"{where}[{j}].text") for j, p in enumerate(parts))


def chat_tools(request: ResponsesRequest) -> list[dict[str, Any]] | None:
    if request.tools is None:
        return None
    tools = []
    for i, tool in enumerate(request.tools):
        if tool.type != "function":
            raise bad_request(f"tools of type {tool.type!r} are not supported: built-in tools (web search, file "
                              "search, code interpreter, ...) run on OpenAI's servers; the gateway serves function "
                              "tools", f"tools[{i}].type", UNSUPPORTED)
        function: dict[str, Any] = {"name": _required(tool.name, f"tools[{i}].name")}
        for field in ("description", "parameters", "strict"):
            if getattr(tool, field) is not None:
                function[field] = getattr(tool, field)
        tools.append({"type": "function", "function": function})
    return tools


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad_request("tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": "
                      "...}: built-in and allowed-tools choices are not supported", "tool_choice", UNSUPPORTED)


def response_format(request: ResponsesRequest) -> dict[str, Any] | None:
    fmt = request.text.format if request.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema: dict[str, Any] = {"name": _required(fmt.name, "text.format.name"),
                              "schema": _required(fmt.json_schema, "text.format.schema")}
    for field in ("description", "strict"):
        if getattr(fmt, field) is not None:
            schema[field] = getattr(fmt, field)
    return {"type": "json_schema", "json_schema": schema}


def reasoning_effort(request: ResponsesRequest) -> Any:
    reasoning = request.reasoning or {}
    for key, value in reasoning.items():
        if key != "effort" and value:
            raise bad_request(f"reasoning.{key} is not supported: the upstreams answer through chat completions, "
                              "which return no reasoning items", f"reasoning.{key}", UNSUPPORTED)
    return reasoning.get("effort")


@contextmanager
def in_responses_terms() -> Iterator[None]:
    """Errors raised by the chat path name the Responses API's parameters (messages -> input, ...)."""
    try:
        yield
    except GatewayError as exc:
        exc.body.param = responses_param(exc.body.param)
        raise


def responses_param(param: str | None) -> str | None:
    if param is None:
        return None
    head, dot, rest = param.partition(".")
    if head == "messages":
        return "input"
    return PARAM_NAMES.get(head, head) + (dot + rest if head not in PARAM_NAMES else "")


# -- answer: chat completions -> Responses --------------------------------------------------------------------

def echo(request: ResponsesRequest) -> dict[str, Any]:
    """The request's settings, as a response object repeats them."""
    text = {"format": request.text.format.model_dump(by_alias=True, exclude_none=True)} \
        if request.text and request.text.format else {"format": {"type": "text"}}
    return {"instructions": request.instructions, "max_output_tokens": request.max_output_tokens,
            "metadata": request.metadata or {}, "temperature": request.temperature, "top_p": request.top_p,
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "tool_choice": request.tool_choice or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in request.tools or []], "text": text,
            "user": request.user}


def response_usage(usage: Usage) -> ResponseUsage:
    return ResponseUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                         total_tokens=usage.total_tokens)


def _status(finish_reason: str | None) -> tuple[str, IncompleteDetails | None]:
    reason = INCOMPLETE.get(finish_reason or "")
    return ("incomplete", IncompleteDetails(reason=reason)) if reason else ("completed", None)  # type: ignore[arg-type]


def response_object(request: ResponsesRequest, completion: ChatCompletion, id_: str) -> ResponseObject:
    choice = completion.choices[0]
    status, incomplete = _status(choice.finish_reason)
    item_status = "incomplete" if incomplete else "completed"
    output: list[OutputMessage | FunctionCall] = []
    rid = id_.removeprefix("resp_")
    tool_calls = choice.message.tool_calls or []
    if choice.message.content or not tool_calls:
        output.append(OutputMessage(id=f"msg_{rid}", status=item_status,
                                    content=[OutputText(text=choice.message.content or "")]))
    for i, call in enumerate(tool_calls):
        function = call.get("function") or {}
        output.append(FunctionCall(id=f"fc_{rid}_{i}", status=item_status, call_id=call.get("id") or f"call_{rid}_{i}",
                                   name=function.get("name") or "", arguments=function.get("arguments") or ""))
    return ResponseObject(id=id_, created_at=completion.created, status=status, incomplete_details=incomplete,
                          model=completion.model, output=output, usage=response_usage(completion.usage),
                          jisi=completion.jisi, **echo(request))


class ResponseWriter(StreamWriter):
    """The Responses API's streaming events for one response, from the pipeline's chat deltas.

    `response.created` and `response.in_progress` go out with the first piece of the answer (keep-alive
    comments before it), so a request that fails before then is still a plain HTTP error. Then, per output
    item: `output_item.added`, for a message `content_part.added`, `output_text.delta`..., `output_text.done`,
    `content_part.done`; for a function call `function_call_arguments.delta`..., `.done`; `output_item.done`;
    and last `response.completed` (or `response.incomplete` at the token limit) with the usage of every
    upstream call and the jisi summary. A failure afterwards is `response.failed` (an `error` event if the
    response had not started). Every event carries its `sequence_number`; there is no [DONE]."""

    def __init__(self, request: ResponsesRequest, id_: str) -> None:
        self.request = request
        self.id = id_
        self.rid = id_.removeprefix("resp_")
        self.created_at = int(time.time())
        self.model = request.model
        self.sequence = 0
        self.started = False
        self.items: list[dict[str, Any]] = []  # the output so far, as the final response will hold it
        self.open: int | None = None  # index in `items` of the item still being written
        self.tool_items: dict[int, int] = {}  # a tool call's index in the deltas -> its output index

    # -- framing

    def _event(self, type_: str, **fields: Any) -> bytes:
        data = {"type": type_, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {type_}\ndata: ".encode() + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        return ResponseObject(id=self.id, created_at=self.created_at, status=status, model=self.model,
                              output=self.items, **fields, **echo(self.request)).model_dump(mode="json")

    def _start(self, model: str) -> list[bytes]:
        if self.started:
            return []
        self.started, self.model = True, model
        return [self._event("response.created", response=self._response("in_progress")),
                self._event("response.in_progress", response=self._response("in_progress"))]

    # -- output items

    def _add(self, item: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.items.append(item)
        self.open = len(self.items) - 1
        return [*out, self._event("response.output_item.added", output_index=self.open, item=dict(item))]

    def _text(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open is None or self.items[self.open]["type"] != "message":
            out += self._add({"id": f"msg_{self.rid}_{len(self.items)}", "type": "message", "status": "in_progress",
                              "role": "assistant", "content": []})
            out.append(self._event("response.content_part.added", item_id=self.items[-1]["id"],
                                   output_index=self.open, content_index=0,
                                   part={"type": "output_text", "text": "", "annotations": []}))
            self.items[-1]["content"] = [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]
        item = self.items[self.open]  # type: ignore[index]
        if text:
            item["content"][0]["text"] += text
            out.append(self._event("response.output_text.delta", item_id=item["id"], output_index=self.open,
                                   content_index=0, delta=text, logprobs=[]))
        return out

    def _tool(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        if index not in self.tool_items:
            n = len(self.items)
            out += self._add({"id": f"fc_{self.rid}_{n}", "type": "function_call", "status": "in_progress",
                              "call_id": call.get("id") or f"call_{self.rid}_{n}", "name": function.get("name") or "",
                              "arguments": ""})
            self.tool_items[index] = n
        position = self.tool_items[index]
        item = self.items[position]
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            out.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                   output_index=position, delta=function["arguments"]))
        return out

    def _close(self, status: str = "completed") -> list[bytes]:
        if self.open is None:
            return []
        index, item = self.open, self.items[self.open]
        self.open = None
        item["status"] = status
        out = []
        if item["type"] == "message":
            part = item["content"][0]
            out += [self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                content_index=0, text=part["text"], logprobs=[]),
                    self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                content_index=0, part={"type": "output_text", "text": part["text"],
                                                       "annotations": []})]
        else:
            out.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                   name=item["name"], arguments=item["arguments"]))
        return [*out, self._event("response.output_item.done", output_index=index, item=dict(item))]

    # -- StreamWriter

    def delta(self, delta: dict[str, Any], model: str) -> list[bytes]:
        out = self._start(model)
        if delta.get("content"):
            out += self._text(delta["content"])
        for call in delta.get("tool_calls") or []:
            out += self._tool(call)
        return out

    def finish(self, trace: Trace, include_usage: bool) -> list[bytes]:
        out = self._start(trace.answered_by or self.model)
        self.model = trace.answered_by or self.model
        if not self.items:  # an empty answer is still a message
            out += self._text("")
        status, incomplete = _status(trace.finish_reason)
        out += self._close("incomplete" if incomplete else "completed")
        response = self._response(status, incomplete_details=incomplete, jisi=trace.summary(),
                                  usage=response_usage(total_usage(trace.calls)))
        return [*out, self._event(f"response.{status}", response=response)]

    def error(self, exc: GatewayError) -> list[bytes]:
        body = exc.body
        if not self.started:
            return [self._event("error", code=body.code or body.type, message=body.message,
                                param=responses_param(body.param))]
        error = ResponseError(code=body.code or body.type, message=body.message)
        return [self._event("response.failed", response=self._response("failed", error=error))]

    def end(self) -> list[bytes]:
        return []
