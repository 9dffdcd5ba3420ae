"""Fuzzing the gateway: bad input gets a clear OpenAI-format error, never a crash or a 500.

1. schemathesis against the gateway's own OpenAPI schema (every operation: chat completions, models, the
   dry run, healthz / readyz / metrics), in-process over ASGI, positive and negative cases plus its
   coverage phase (boundary values, missing fields, wrong types, unexpected methods).
2. hypothesis-generated chat and Responses API bodies, valid and hostile, posted to the `jisi` virtual models
   and to a pass-through model, non-streamed and streamed.
3. raw bytes and wrong content types on the POST routes.

Every upstream is a respx-mocked FakeUpstreams (tests/gateway_helpers.py): nothing leaves the process. The
embedder and bank are the real session fixtures (`minilm`, `mini_bank`), so valid bodies run the whole
JiSi pipeline. Runs are reproducible: schemathesis has a fixed seed, hypothesis is derandomized.

The contract every response is held to (`check_response`):
  - 2xx: a well-formed answer (chat.completion JSON, or an SSE stream that ends with `data: [DONE]`);
  - 4xx: JSON `{"error": {"message", "type", "param", "code"}}`;
  - 5xx: only the documented upstream failures 502 / 503 / 504, with the same error body; never a 500.
The number of cases each fuzz test ran is printed in pytest's terminal summary ("fuzz: N cases run").
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import pytest
import respx
import schemathesis
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, note, settings as hsettings, strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi

from app.http.app import create_app
from app.config import Settings
from gateway_helpers import UPSTREAM_URL, FakeUpstreams, make_settings, running_gateway

# ------------------------------------------------------------------------------------------------
# counting cases, reported in pytest's terminal summary
# ------------------------------------------------------------------------------------------------

CASES: Counter[str] = Counter()  # fuzz family -> cases run
STATUSES: Counter[str] = Counter()  # "family status" -> responses seen (shows the fuzz reached the pipeline)
PHASES: Counter[str] = Counter()  # schemathesis "phase mode" -> cases


class _FuzzSummary:
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not CASES:
            return
        terminalreporter.write_sep("-", f"fuzz: {sum(CASES.values())} cases run")
        for name, count in sorted(CASES.items()):
            terminalreporter.write_line(f"{name}: {count} cases")
        terminalreporter.write_line("statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(STATUSES.items())))
        if PHASES:
            terminalreporter.write_line("schemathesis phases: " + ", ".join(
                f"{k}={v}" for k, v in sorted(PHASES.items())))


@pytest.fixture(scope="module", autouse=True)
def fuzz_summary(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("jisi-fuzz-summary"):
        manager.register(_FuzzSummary(), "jisi-fuzz-summary")
    yield
    print(f"\nfuzz: {sum(CASES.values())} cases run " + ", ".join(f"{k}={v}" for k, v in sorted(CASES.items())))


def count(family: str, status: int) -> None:
    CASES[family] += 1
    STATUSES[f"{family.split(' ')[0]} {status}"] += 1


# ------------------------------------------------------------------------------------------------
# the contract
# ------------------------------------------------------------------------------------------------

UPSTREAM_FAILURES = {502, 503, 504}  # documented; the fake upstreams never fail, but they would be legitimate


def header(headers: Any, name: str) -> str:
    for key, value in dict(headers).items():
        if key.lower() == name:
            return value[0] if isinstance(value, list) else value
    return ""


def assert_error_body(body: Any, where: str) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, f"{where}: not an OpenAI error body: {body!r}"
    error = body["error"]
    assert isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error), f"{where}: {error!r}"
    assert isinstance(error["message"], str) and error["message"], f"{where}: empty message: {error!r}"
    assert isinstance(error["type"], str) and error["type"], f"{where}: {error!r}"
    assert error["param"] is None or isinstance(error["param"], str), f"{where}: {error!r}"
    assert error["code"] is None or isinstance(error["code"], str), f"{where}: {error!r}"
    assert error["type"] != "api_error", f"{where}: an internal error: {error!r}"


def parse_sse(text: str) -> list[Any]:
    events = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "" or line.startswith(":"), f"not an SSE line: {line!r}"
    return events


def check_stream(text: str, cut_short: bool = False) -> None:
    events = parse_sse(text)
    if not cut_short:
        assert events and events[-1] == "[DONE]", f"the stream does not end with [DONE]: {text[-300:]!r}"
        assert events.count("[DONE]") == 1
    for event in events:
        if event == "[DONE]":
            continue
        if "error" in event:  # a failure after the 200 went out: an error event, never an internal one
            assert_error_body(event, "stream error event")
            continue
        assert event["object"] == "chat.completion.chunk", event
        assert isinstance(event["choices"], list)


def check_completion(body: Any) -> None:
    assert isinstance(body, dict) and body.get("object") == "chat.completion", body
    assert isinstance(body["choices"], list) and len(body["choices"]) == 1, body
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert isinstance(message.get("content"), (str, type(None)))
    usage = body["usage"]
    assert all(isinstance(usage[k], int) and usage[k] >= 0 for k in ("prompt_tokens", "completion_tokens",
                                                                    "total_tokens")), usage
    assert isinstance(body["model"], str) and body["model"]


def parse_response_events(text: str) -> list[dict[str, Any]]:
    """A Responses API stream: `event:` + `data:` pairs and comments, no [DONE]."""
    events, name = [], None
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: "):])
            assert data["type"] == name, (name, data)
            events.append(data)
        else:
            assert line == "" or line.startswith(":"), f"not an SSE line: {line!r}"
    return events


def check_response_stream(text: str, cut_short: bool = False) -> None:
    events = parse_response_events(text)
    assert [e["sequence_number"] for e in events] == list(range(len(events))), "sequence numbers"
    assert "data: [DONE]" not in text.splitlines()  # parse_response_events would have failed on it anyway
    if cut_short:
        return
    assert events, "an empty stream"
    last = events[-1]
    if last["type"] == "error":  # failed before the response started: an error event, never an internal one
        assert last["message"] and last["code"] != "api_error", last
        return
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"], events[:2]
    assert last["type"] in ("response.completed", "response.incomplete", "response.failed"), last
    if last["type"] == "response.failed":
        assert last["response"]["error"]["message"], last
    else:
        check_response_object(last["response"])


def check_response_object(body: Any) -> None:
    assert isinstance(body, dict) and body.get("object") == "response" and body["id"].startswith("resp_"), body
    assert body["status"] in ("completed", "incomplete"), body
    assert body["output"] and all(item["type"] in ("message", "function_call") for item in body["output"]), body
    usage = body["usage"]
    assert all(isinstance(usage[k], int) and usage[k] >= 0 for k in ("input_tokens", "output_tokens",
                                                                    "total_tokens")), usage
    assert isinstance(body["model"], str) and body["model"]


def check_response(status: int, headers: Any, content: bytes, path: str, cut_short: bool = False) -> None:
    """The house rule, for any response of any route."""
    where = f"{status} from {path}"
    content_type = header(headers, "content-type")
    assert status < 500 or status in UPSTREAM_FAILURES, f"{where}: a server error: {content[:500]!r}"
    if status >= 400:
        assert content_type.startswith("application/json"), f"{where}: content-type {content_type!r}"
        assert_error_body(json.loads(content), where)
        return
    assert 200 <= status < 300, where
    if path == "/v1/chat/completions":
        if content_type.startswith("text/event-stream"):
            check_stream(content.decode("utf-8"), cut_short)
        else:
            check_completion(json.loads(content))
    elif path == "/v1/responses":
        if content_type.startswith("text/event-stream"):
            check_response_stream(content.decode("utf-8"), cut_short)
        else:
            check_response_object(json.loads(content))
    elif content_type.startswith("application/json"):
        json.loads(content)


# ------------------------------------------------------------------------------------------------
# fixtures: one respx router and FakeUpstreams for the module, apps built on the real mini bank
# ------------------------------------------------------------------------------------------------

QUESTIONS = [
    "What is the capital of France? Answer in one word.",
    "Janet has 3 apples and buys 5 more. How many apples does she have now?",
    "def f(x): return x * 2\nWhat is f(21)?",
    "Ünïcödé: 日本の首都はどこですか？ 🗼",
    "\x00\x01\x1b[31m control \u202e characters \ufeff",
]


@pytest.fixture(scope="module")
def upstreams(bank_models):
    """The fake upstreams every fuzzed app talks to; respx refuses anything else (no network)."""
    fake = FakeUpstreams(list(bank_models))
    with respx.mock(using="httpx", assert_all_mocked=True, assert_all_called=False) as router:
        router.post(url__regex=UPSTREAM_URL).mock(side_effect=fake.handle)
        yield fake


@pytest.fixture(scope="module")
def fuzz_settings(mini_bank, bank_models, tmp_path_factory) -> Settings:
    return make_settings(mini_bank, bank_models, tmp_path_factory.mktemp("fuzz-cache"))


@pytest.fixture(scope="module")
def passthrough_model(bank_models) -> str:
    return bank_models[1]


# ------------------------------------------------------------------------------------------------
# 1. schemathesis against the OpenAPI schema
# ------------------------------------------------------------------------------------------------

# Checks: schemathesis' defaults (not_a_server_error, status_code_conformance, content_type_conformance,
# response_schema_conformance, response_headers_conformance, negative_data_rejection, unsupported_method,
# allow_header_conformance, ...) plus `openai_contract` below. Disabled, because they are false alarms here:
#   - positive_data_acceptance: a schema-valid body is still refused for reasons a JSON schema cannot state
#     (a `model` that names no configured model is a 404; a last user message with no text is a 400; n != 1;
#     max_tokens above the gateway's limit; a cost cap below the cheapest model). Those are correct answers.
SCHEMATHESIS_CONFIG = """
seed = 20240611
max-stream-events = 1000
suppress-health-check = ["too_slow", "filter_too_much", "data_too_large", "large_base_example"]

[generation]
mode = "all"
max-examples = 100
deterministic = true

[checks]
positive_data_acceptance.enabled = false
not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502", "503", "504"]
"""

# The schema is the app's own, generated by FastAPI; building it needs no bank, so it is loaded at import
# (schemathesis' lazy `from_fixture` loader does not work with pytest 9). The cases are sent to the real app
# of the `gateway_app` fixture.
OPENAPI = create_app(Settings(bank_path="/nonexistent", upstreams=[])).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI, config=schemathesis.Config.from_str(SCHEMATHESIS_CONFIG))
STEER_MODELS = ["jisi", "jisi-route", "jisi-aggregate", "gpt-4o-2024-08-06", "Qwen2-7B-Instruct"]  # mini bank's


def test_openapi_documents_what_the_gateway_returns():
    """Found by the schema fuzz: responses the schema did not document (regressions of app/api.py)."""
    def content(path: str, method: str, status: str) -> set[str]:
        return set(OPENAPI["paths"][path][method]["responses"][status].get("content", {}))

    assert content("/v1/chat/completions", "post", "200") == {"application/json", "text/event-stream"}
    assert content("/metrics", "get", "200") == {"text/plain"}
    assert "503" in OPENAPI["paths"]["/readyz"]["get"]["responses"]
    assert "401" in OPENAPI["paths"]["/v1/models"]["get"]["responses"]
    assert content("/v1/responses", "post", "200") == {"application/json", "text/event-stream"}
    for path in ("/v1/chat/completions", "/v1/responses", "/v1/jisi/route"):
        for status in ("400", "401", "413", "502", "503", "504"):
            assert content(path, "post", status) == {"application/json"}, (path, status)
        assert "422" not in OPENAPI["paths"][path]["post"]["responses"]  # invalid input is OpenAI's 400
    assert "HTTPValidationError" not in OPENAPI["components"]["schemas"]


@schema.hook
def flatmap_case(context, case):
    """Steer two thirds of the positive cases at real models and routable text, so that they reach the
    pipeline rather than stopping at 404 model_not_found or 400 "no text to route on". Negative cases and
    the rest are sent as generated."""
    mode = getattr(getattr(case.meta, "generation", None), "mode", None)
    if mode != GenerationMode.POSITIVE or not isinstance(case.body, dict):
        return st.just(case)

    def steer(choice: tuple[int, str, str]) -> Any:
        variant, model, question = choice
        if variant == 0:
            return case
        body = dict(case.body)
        if "model" in body and context.operation.path in ("/v1/chat/completions", "/v1/responses"):
            body["model"] = model
        if context.operation.path == "/v1/responses":
            body["input"] = question if variant == 2 or not isinstance(body.get("input"), list) else [
                *body["input"], {"role": "user", "content": question}]
        elif variant == 2 or context.operation.path == "/v1/jisi/route":
            body["messages"] = [*(body.get("messages") or []), {"role": "user", "content": question}]
        case.body = body  # schemathesis re-validates what was changed before sending
        return case

    return st.tuples(st.sampled_from([2, 1, 0]), st.sampled_from(STEER_MODELS), st.sampled_from(QUESTIONS)).map(steer)


def openai_contract(ctx, response, case) -> bool | None:
    """Custom schemathesis check: the house rule of `check_response`."""
    check_response(response.status_code, response.headers, response.content, case.operation.path,
                   cut_short=getattr(response, "stream_cut_short", False))
    return True


@pytest.fixture(scope="module")
def gateway_app(fuzz_settings, minilm, upstreams):
    """The real app; schemathesis runs its lifespan (bank, embedder, client) on its own event-loop thread."""
    app = create_app(fuzz_settings, embedder=minilm)
    yield app
    schemathesis_asgi.shutdown_lifespans()


@schema.parametrize()
def test_openapi_schema_fuzz(case, gateway_app):
    response = case.call(app=gateway_app)
    count(f"schemathesis {case.operation.label}", response.status_code)
    PHASES[f"{case.meta.phase.name.value} {case.meta.generation.mode.value}"] += 1
    case.validate_response(response, additional_checks=[openai_contract])


# ------------------------------------------------------------------------------------------------
# 2. hypothesis-generated chat bodies, valid and hostile
# ------------------------------------------------------------------------------------------------

HYPOTHESIS = hsettings(max_examples=300, deadline=None, derandomize=True, database=None, print_blob=True,
                       suppress_health_check=list(HealthCheck))

# -- building blocks: text and numbers with the awkward values in them
SURROGATES = st.characters(categories=["Cs"])  # lone surrogates: valid JSON escapes, invalid Unicode
CONTROL = st.characters(categories=["Cc", "Cf", "Zl", "Zp"])  # NUL, escape sequences, bidi overrides, BOM
text = st.one_of(
    st.sampled_from(QUESTIONS),
    st.text(max_size=30),
    st.text(alphabet=st.one_of(st.characters(codec="utf-8"), CONTROL), max_size=30),
    st.text(alphabet=st.one_of(st.characters(codec="utf-8"), SURROGATES), min_size=1, max_size=10),
    st.sampled_from(["", "   \n\t ", "x" * 5000, "[DONE]", "data: [DONE]\n\n", '{"error": 1}']),
)
numbers = st.one_of(
    st.integers(-3, 3), st.integers(), st.integers(min_value=10**15, max_value=10**40), st.just(-(10**30)),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1.5, 2.0000001, -0.0, 1e308, 1e-320]),
    st.sampled_from([math.nan, math.inf, -math.inf]),  # sent as NaN / Infinity; `1e999` parses as inf too
)
DEEP = "__deeply_nested_{}__"  # replaced by that many nested arrays when the body is encoded
deep = st.sampled_from([64, 500, 900, 990, 1100, 5000]).map(DEEP.format)
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
garbage = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                       max_leaves=10)
hostile = st.one_of(scalars, garbage, deep)
DELETE = object()

# -- a valid skeleton: any of these bodies deserves a 200 (or a 400 for a gateway limit / nothing to route on)
VALID_ROLES = ["system", "developer", "user", "assistant", "tool", "function"]
content_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": text}),
    st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_audio", "file", "refusal"])},
                          optional={"image_url": st.fixed_dictionaries({"url": text}), "text": text}),
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(VALID_ROLES), "content": st.one_of(text, st.none(), st.lists(content_part, max_size=3))},
    optional={"name": text, "tool_call_id": text,
              "tool_calls": st.lists(st.fixed_dictionaries({"id": text, "type": st.just("function"),
                                                            "function": st.fixed_dictionaries({"name": text})}),
                                     max_size=2)})
routable = st.builds(lambda q: {"role": "user", "content": q}, st.sampled_from(QUESTIONS))
tool = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": text}, optional={"parameters": st.dictionaries(text, garbage, max_size=3)})})
unit = st.floats(0, 1)
OPTIONAL = {
    "temperature": st.floats(0, 2), "top_p": unit, "max_tokens": st.integers(1, 10**6),
    "max_completion_tokens": st.integers(1, 10**6), "stop": st.one_of(text, st.lists(text, max_size=4)),
    "seed": st.integers(), "user": text, "n": st.just(1),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "tools": st.lists(tool, max_size=2), "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]),
                                                                  st.dictionaries(text, garbage, max_size=2)),
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["json_object", "text"])}),
    "jisi": st.fixed_dictionaries({}, optional={
        "k": st.integers(1, 16), "n_base": st.integers(1, 10**6), "gamma": unit, "beta": unit, "eps": unit,
        "sigma": unit, "delta": unit, "t": unit, "mode": st.sampled_from(["adaptive", "route", "aggregate"]),
        "max_cost_usd": st.one_of(st.floats(min_value=1e-300, max_value=1e300), st.sampled_from([1e-12, 1e-5, 1.0]))}),
    # unknown fields are forwarded upstream untouched
    "logprobs": st.booleans(), "frequency_penalty": st.floats(-2, 2), "logit_bias": st.dictionaries(text, numbers),
    "metadata": garbage, "x-unknown": garbage,
}

# -- hostility: up to three edits, each replacing (or deleting) the value at some path with anything at all
PATHS = [(), ("model",), ("messages",), ("messages", 0), ("messages", -1), ("messages", 0, "role"),
         ("messages", -1, "role"), ("messages", -1, "content"), ("messages", 0, "content"),
         ("messages", -1, "content", 0), ("messages", -1, "content", 0, "text"), ("messages", 0, "tool_calls"),
         ("messages", -1, "name"), ("messages", -1, "x-extra"), ("temperature",), ("top_p",), ("max_tokens",),
         ("max_completion_tokens",), ("stop",), ("seed",), ("user",), ("n",), ("stream",), ("stream_options",),
         ("stream_options", "include_usage"), ("tools",), ("tools", 0), ("tools", 0, "function"), ("tool_choice",),
         ("response_format",), ("jisi",), ("jisi", "k"), ("jisi", "n_base"), ("jisi", "t"), ("jisi", "gamma"),
         ("jisi", "mode"), ("jisi", "max_cost_usd"), ("jisi", "x-extra"), ("x-unknown",), ("",), ("\u0000",)]
edits = st.lists(st.tuples(st.sampled_from(PATHS), st.one_of(hostile, st.just(DELETE))), max_size=3)


def edit(body: Any, path: tuple, value: Any) -> Any:
    """`body` with the value at `path` replaced (dicts are created on the way; a path that cannot be
    followed leaves the body as it is)."""
    if not path:
        return body if value is DELETE else value
    node = body
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
            node = node[key]
        else:
            return body
    last = path[-1]
    if isinstance(node, dict):
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and -len(node) <= last < len(node):
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return body


def chat_bodies(models: list[str]) -> st.SearchStrategy[Any]:
    valid = st.fixed_dictionaries(
        {"model": st.sampled_from(models),
         "messages": st.lists(message, max_size=3).flatmap(lambda ms: routable.map(lambda m: [*ms, m])),
         "stream": st.booleans()},
        optional=OPTIONAL)
    return st.builds(edited, valid, edits)


def edited(body: dict, changes: list) -> Any:
    """`body` with each (path, value) change applied in turn."""
    for path, value in changes:
        body = edit(body, path, value)
    return body


def encode(body: Any) -> bytes:
    """JSON as a client could send it: NaN / Infinity tokens, \\ud800 escapes, deep nesting included."""
    raw = json.dumps(body, allow_nan=True)
    for depth in (64, 500, 900, 990, 1100, 5000):
        raw = raw.replace(json.dumps(DEEP.format(depth)), "[" * depth + "]" * depth)
    return raw.encode()


def wants_stream(body: Any) -> bool:
    return isinstance(body, dict) and body.get("stream") is True


@pytest.fixture(scope="module")
def gateway_client(fuzz_settings, minilm, upstreams):
    """A running gateway (lifespan up, unhandled exceptions shown as the 500 a client would get), driven from
    synchronous hypothesis tests through a blocking portal: (portal, client)."""
    with start_blocking_portal() as portal:
        gateway = running_gateway(fuzz_settings, minilm, None, raise_app_exceptions=False)
        with portal.wrap_async_context_manager(gateway) as (app, client):
            yield portal, client


async def _send(client, path: str, content: bytes, headers: dict[str, Any]) -> tuple[int, Any, bytes]:
    async with client.stream("POST", path, content=content, headers=headers) as response:
        body = await response.aread()
    return response.status_code, response.headers, body


def send(gateway_client, path: str, content: bytes, content_type: str | None = "application/json",
         **headers: Any) -> tuple[int, Any, bytes]:
    portal, client = gateway_client
    if content_type is not None:
        headers["content-type"] = content_type
    return portal.call(_send, client, path, content, headers)


# -- the Responses API: the same pipeline behind another wire format, fuzzed the same way
input_part = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text"]), "text": text}),
    st.fixed_dictionaries({"type": st.sampled_from(["input_image", "input_file", "input_audio", "refusal"])},
                          optional={"image_url": text, "text": text, "file_id": text}),
)
input_item = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer"]),
                           "content": st.one_of(text, st.lists(input_part, max_size=3))},
                          optional={"type": st.just("message")}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": text, "name": text, "arguments": text}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": text,
                           "output": st.one_of(text, st.lists(input_part, max_size=2))}),
    st.fixed_dictionaries({"type": st.sampled_from(["reasoning", "item_reference", "web_search_call"])},
                          optional={"id": text}),
)
responses_tool = st.one_of(
    st.fixed_dictionaries({"type": st.just("function"), "name": text},
                          optional={"parameters": st.dictionaries(text, garbage, max_size=3), "strict": st.booleans(),
                                    "description": text}),
    st.fixed_dictionaries({"type": st.sampled_from(["web_search", "file_search", "code_interpreter", "mcp"])}),
)
RESPONSES_OPTIONAL = {
    "instructions": text, "temperature": st.floats(0, 2), "top_p": unit, "max_output_tokens": st.integers(1, 10**6),
    "tools": st.lists(responses_tool, max_size=2),
    "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]), st.fixed_dictionaries(
        {"type": st.sampled_from(["function", "web_search", "allowed_tools"]), "name": text})),
    "text": st.fixed_dictionaries({"format": st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
        st.fixed_dictionaries({"type": st.just("json_schema"), "name": text},
                              optional={"schema": st.dictionaries(text, garbage, max_size=3), "strict": st.booleans()}),
    )}),
    "metadata": st.dictionaries(st.text(max_size=70), st.text(max_size=20), max_size=17),
    "parallel_tool_calls": st.booleans(), "store": st.booleans(), "include": st.lists(st.sampled_from(
        ["reasoning.encrypted_content", "file_search_call.results", "message.output_text.logprobs"]), max_size=2),
    "truncation": st.sampled_from(["auto", "disabled"]), "reasoning": st.fixed_dictionaries(
        {}, optional={"effort": st.sampled_from(["low", "high"]), "summary": st.sampled_from(["auto", None])}),
    "previous_response_id": text, "background": st.booleans(), "user": text,
    "jisi": OPTIONAL["jisi"], "x-unknown": garbage,
}
RESPONSES_PATHS = [(), ("model",), ("input",), ("input", 0), ("input", -1), ("input", 0, "type"),
                   ("input", -1, "role"), ("input", -1, "content"), ("input", 0, "content", 0),
                   ("input", 0, "content", 0, "type"), ("input", 0, "call_id"), ("instructions",), ("tools",),
                   ("tools", 0), ("tools", 0, "type"), ("tools", 0, "name"), ("tool_choice",), ("text",),
                   ("text", "format"), ("text", "format", "type"), ("metadata",), ("max_output_tokens",),
                   ("stream",), ("store",), ("include",), ("jisi",), ("jisi", "k"), ("x-unknown",)]
responses_edits = st.lists(st.tuples(st.sampled_from(RESPONSES_PATHS), st.one_of(hostile, st.just(DELETE))),
                           max_size=3)


def responses_bodies(models: list[str]) -> st.SearchStrategy[Any]:
    question = st.sampled_from(QUESTIONS)
    items = st.lists(input_item, max_size=3).flatmap(
        lambda xs: question.map(lambda q: [*xs, {"role": "user", "content": q}]))
    valid = st.fixed_dictionaries({"model": st.sampled_from(models), "input": st.one_of(question, items),
                                   "stream": st.booleans()}, optional=RESPONSES_OPTIONAL)
    return st.builds(edited, valid, responses_edits)


API_BODIES = {"chat": ("/v1/chat/completions", chat_bodies), "responses": ("/v1/responses", responses_bodies)}


@pytest.mark.parametrize("api", list(API_BODIES))
@pytest.mark.parametrize("target", ["jisi", "passthrough"])
def test_hypothesis_bodies(gateway_client, passthrough_model, api, target):
    models = ["jisi", "jisi-route", "jisi-aggregate"] if target == "jisi" else [passthrough_model]
    path, bodies = API_BODIES[api]

    @HYPOTHESIS
    @given(body=bodies(models))
    def run(body: Any) -> None:
        raw = encode(body)
        note(f"sent: {raw[:3000]!r}")
        status, headers, content = send(gateway_client, path, raw)
        count(f"hypothesis-{api}-{target}", status)
        check_response(status, headers, content, path)
        if status == 200 and wants_stream(body):
            assert header(headers, "content-type").startswith("text/event-stream")
        if api == "chat" and target == "jisi":  # the same body as a dry run: the same messages and overrides
            status, headers, content = send(gateway_client, "/v1/jisi/route", raw)
            count("hypothesis-route", status)
            check_response(status, headers, content, "/v1/jisi/route")

    run()


# ------------------------------------------------------------------------------------------------
# 3. raw bytes and wrong content types
# ------------------------------------------------------------------------------------------------

CONTENT_TYPES = [None, "application/json", "application/json; charset=latin-1", "text/plain",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml",
                 "application/json-patch+json", "*/*", "garbage"]
VALID = json.dumps({"model": "jisi-route", "messages": [{"role": "user", "content": QUESTIONS[0]}]})
raw_bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.sampled_from([b"", b"{", b"}", b"null", b"[]", b"1e999", b"NaN", b'"\\ud800"', b"\xef\xbb\xbf" + VALID.encode(),
                     VALID.encode("utf-16"), VALID.encode()[:-1], VALID.encode() + b"garbage",
                     b'{"model": "jisi", "model": 7, "messages": []}',
                     b"[" + b"1," * 2_200_000 + b"1]"]),  # over max_body_bytes (4 MiB): 413
    st.integers(1, 20).map(lambda n: VALID[: len(VALID) * n // 21].encode()),  # truncated
)


@HYPOTHESIS
@given(content=raw_bodies, content_type=st.sampled_from(CONTENT_TYPES),
       path=st.sampled_from(["/v1/chat/completions", "/v1/responses", "/v1/jisi/route"]),
       request_id=st.one_of(st.none(), st.binary(max_size=200), st.just(b"x" * 1000)))
def test_raw_bodies_and_content_types(gateway_client, content, content_type, path, request_id):
    note(f"sent: {content[:3000]!r} as {content_type!r}, x-request-id {request_id!r}")
    extra = {} if request_id is None else {"x-request-id": request_id}
    status, headers, body = send(gateway_client, path, content, content_type, **extra)
    count("raw-bodies", status)
    check_response(status, headers, body, path)
    echoed = header(headers, "x-request-id")  # every response names its request, a usable id or a fresh one
    assert echoed and len(echoed) <= 128 and echoed.isprintable(), echoed
