"""Shared helpers for the gateway tests: fake OpenAI-compatible upstreams (for respx) and a running app.

`FakeUpstreams` answers every upstream call the gateway makes, differently per model, and records each
call (model, host, body, whether it was the aggregator's call), so tests can check who was called with
what. Its behaviour per model is adjustable: usage reported or not, token counts, an HTTP error, a
timeout, a delay, a stream that breaks after some chunks.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator

import httpx
import respx
import uvicorn

from app.pipeline.aggregate import AGGREGATION_INSTRUCTIONS
from app.http.app import create_app
from app.config import ResilienceSettings
from app.config import EmbedderSettings, JiSiSettings, Settings, UpstreamSettings

UPSTREAM_URL = r"^http://up(\d+)\.test/v1/chat/completions$"


def host_of(i: int) -> str:
    return f"up{i}.test"


def prices(i: int) -> tuple[float, float]:
    """Distinct per-million-token prices for the i-th bank model: input, output."""
    return 0.5 + i, 2.0 + 3 * i


def make_settings(bank_path, models: list[str], cache_dir, *, price=prices, jisi: JiSiSettings | None = None,
                  **overrides: Any) -> Settings:
    upstreams = []
    for i, m in enumerate(models):
        p_in, p_out = price(i)
        upstreams.append(UpstreamSettings(name=m, base_url=f"http://{host_of(i)}/v1", input_usd_per_mtok=p_in,
                                          output_usd_per_mtok=p_out, timeout_s=5.0))
    # these tests pin exact call counts: no retries unless a test asks for them (tests/test_resilience*.py)
    overrides.setdefault("resilience", ResilienceSettings(retries=0))
    return Settings(bank_path=bank_path, upstreams=upstreams, embedder=EmbedderSettings(backend="local", cache_dir=cache_dir),
                    jisi=jisi or JiSiSettings(), **overrides)


def is_aggregation(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or []
    return bool(messages) and messages[0].get("role") == "system" and str(
        messages[0].get("content", "")).startswith(AGGREGATION_INSTRUCTIONS)


@dataclass
class Behaviour:
    """How one upstream answers. None for a field means the default."""

    text: str | None = None  # the answer; default "Answer from <model>: ..."
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage: bool = True  # report usage (in JSON, and as a last stream chunk when asked for)
    status: int | None = None  # answer with this HTTP error status
    timeout: bool = False  # raise httpx.ReadTimeout
    delay: float = 0.0  # seconds to wait before answering
    stream_fail_after: int | None = None  # a stream breaks (httpx.ReadError) after this many content chunks
    tool_calls: list[dict[str, Any]] | None = None
    raw: Any = None  # answer with exactly this JSON (e.g. a malformed completion)


@dataclass
class Call:
    model: str
    host: str
    body: dict[str, Any]
    aggregation: bool
    stream: bool
    authorization: str | None = None
    traceparent: str | None = None  # W3C trace context the gateway passed on (tracing on)

    @property
    def user_messages(self) -> list[str]:
        return [m["content"] for m in self.body["messages"] if m.get("role") == "user"]

    @property
    def system_prompt(self) -> str:
        return self.body["messages"][0]["content"]


@dataclass
class FakeUpstreams:
    models: list[str]
    behaviour: dict[str, Behaviour] = field(default_factory=dict)  # as candidate / final / pass-through
    aggregator_behaviour: dict[str, Behaviour] = field(default_factory=dict)  # when asked to aggregate
    calls: list[Call] = field(default_factory=list)

    def index(self, model: str) -> int:
        return self.models.index(model)

    # what each upstream says, so tests can tell who answered
    def answer(self, model: str) -> str:
        b = self.behaviour.get(model)
        if b and b.text is not None:
            return b.text
        i = self.index(model)
        return f"Answer from {model}: the result is {17 * (i + 1)}, because step {i} says so."

    def aggregate_answer(self, model: str) -> str:
        b = self.aggregator_behaviour.get(model)
        if b and b.text is not None:
            return b.text
        return f"Aggregated by {model}: the combined result is 42 and nothing else."

    def tokens(self, model: str, aggregation: bool) -> tuple[int, int]:
        b = (self.aggregator_behaviour if aggregation else self.behaviour).get(model) or Behaviour()
        i = self.index(model)
        prompt = b.prompt_tokens if b.prompt_tokens is not None else (300 + i if aggregation else 11 + i)
        completion = b.completion_tokens if b.completion_tokens is not None else (
            60 + i if aggregation else 21 + 2 * i)
        return prompt, completion

    def usage_of(self, model: str, aggregation: bool) -> dict[str, int]:
        p, c = self.tokens(model, aggregation)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    # queries over the recorded calls
    def calls_to(self, model: str) -> list[Call]:
        return [c for c in self.calls if c.model == model]

    @property
    def aggregations(self) -> list[Call]:
        return [c for c in self.calls if c.aggregation]

    @property
    def called_models(self) -> list[str]:
        return [c.model for c in self.calls if not c.aggregation]

    # the respx side effect
    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        model = body["model"]
        assert model in self.models, f"the gateway called an unknown upstream model {model!r}"
        # the gateway must send a model's calls to that model's base_url
        assert request.url.host == host_of(self.index(model)), (model, request.url.host)
        aggregation = is_aggregation(body)
        stream = bool(body.get("stream"))
        self.calls.append(Call(model, request.url.host, body, aggregation, stream,
                               request.headers.get("authorization"), request.headers.get("traceparent")))
        b = (self.aggregator_behaviour if aggregation else self.behaviour).get(model) or Behaviour()
        if b.delay:
            await asyncio.sleep(b.delay)
        if b.timeout:
            raise httpx.ReadTimeout("fake upstream timed out", request=request)
        if b.status:
            return httpx.Response(b.status, json={"error": {"message": f"{model} is overloaded", "type": "server_error"}})
        if b.raw is not None:
            return httpx.Response(200, json=b.raw)
        text = self.aggregate_answer(model) if aggregation else self.answer(model)
        if stream:
            return self._stream(model, text, b, aggregation, body)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if b.tool_calls:
            message = {"role": "assistant", "content": None, "tool_calls": b.tool_calls}
        payload: dict[str, Any] = {
            "id": f"up-{model}", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if b.tool_calls else "stop"}],
        }
        if b.usage:
            payload["usage"] = self.usage_of(model, aggregation)
        return httpx.Response(200, json=payload)

    def _stream(self, model: str, text: str, b: Behaviour, aggregation: bool, body: dict[str, Any]) -> httpx.Response:
        pieces = stream_pieces(text)

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict | None = None) -> bytes:
            data: dict[str, Any] = {"id": f"up-{model}", "object": "chat.completion.chunk", "created": 1,
                                    "model": model,
                                    "choices": [] if delta is None else [
                                        {"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage is not None:
                data["usage"] = usage
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": ""})
            for n, piece in enumerate(pieces):
                if b.stream_fail_after is not None and n >= b.stream_fail_after:
                    raise httpx.ReadError("fake upstream connection reset")
                yield chunk({"content": piece})
                await asyncio.sleep(0)
            yield chunk({}, finish="stop")
            if b.usage and wants_usage:
                yield chunk(None, usage=self.usage_of(model, aggregation))
            yield b"data: [DONE]\n\n"

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events())


def stream_pieces(text: str) -> list[str]:
    """How the fake upstream splits an answer into stream chunks: word by word, spaces kept."""
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


@asynccontextmanager
async def running_gateway(settings: Settings, embedder, fake: FakeUpstreams | None = None, *,
                          keepalive_s: float | None = None, raise_app_exceptions: bool = True,
                          **app_options: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The app with its lifespan running, upstreams mocked by respx, and a client over ASGI.

    raise_app_exceptions=False shows an unhandled exception as the 500 response a real client would get;
    `app_options` go to create_app (e.g. read_settings).
    """
    app = create_app(settings, embedder=embedder, **app_options)
    # respx patches every httpx client (using="httpx", so it sees past the gateway's aiohttp transport):
    # the test's own client to the app over ASGI passes through
    with respx.mock(using="httpx", assert_all_mocked=True, assert_all_called=False) as router:
        router.route(host="gw").pass_through()
        if fake is not None:
            router.post(url__regex=UPSTREAM_URL).mock(side_effect=fake.handle)
        async with app.router.lifespan_context(app):
            if keepalive_s is not None:
                app.state.jisi.gateway.keepalive_s = keepalive_s
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as client:
                yield app, client


def chat_body(model: str, question: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": question}], **extra}


@dataclass
class SSE:
    """A parsed event stream: data events (JSON, or the literal [DONE]) and comment lines, in order."""

    lines: list[str]

    @property
    def events(self) -> list[Any]:
        out = []
        for line in self.lines:
            if line.startswith("data: "):
                data = line[len("data: "):]
                out.append(data if data == "[DONE]" else json.loads(data))
        return out

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [e for e in self.events if isinstance(e, dict) and "error" not in e]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.events if isinstance(e, dict) and "error" in e]

    @property
    def comments(self) -> list[str]:
        return [line for line in self.lines if line.startswith(":")]

    @property
    def text(self) -> str:
        return "".join(ch["delta"].get("content") or "" for c in self.chunks for ch in c["choices"])


async def stream_chat(client: httpx.AsyncClient, body: dict[str, Any], **kwargs: Any) -> tuple[httpx.Response, SSE]:
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, **kwargs) as response:
        lines = [line async for line in response.aiter_lines()]
    return response, SSE([line for line in lines if line])


def expected_cost(calls: list[dict[str, Any]], models: list[str], price=prices) -> float:
    """Σ over calls of prompt·in/1e6 + completion·out/1e6 with the configured prices."""
    total = 0.0
    for call in calls:
        p_in, p_out = price(models.index(call["model"]))
        total += (call["usage"]["prompt_tokens"] * p_in + call["usage"]["completion_tokens"] * p_out) / 1e6
    return total


def summed_usage(calls: list[dict[str, Any]]) -> dict[str, int]:
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: sum(c["usage"][k] for c in calls) for k in keys}


@contextmanager
def serve(app, log_level: str = "warning") -> Iterator[tuple[str, uvicorn.Server]]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 (a free port) in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
