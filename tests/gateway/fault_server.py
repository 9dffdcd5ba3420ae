"""A fake OpenAI-compatible upstream on a real loopback socket, whose faults are set by the test, and the
gateway in front of it (fault_settings, gateway, route, assert_openai_error).

One server answers for every model (the request body's `model` says which); `fail()` sets how a model
answers its next calls: hang, slow first byte, an HTTP error (optionally with Retry-After), invalid JSON,
empty content, a stream cut in the middle, an oversized answer. uvicorn runs it in a thread.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Literal

import httpx

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.config import EmbedderSettings, ResilienceSettings, Settings, UpstreamSettings
from app.http.app import create_app
from app.pipeline.aggregate import AGGREGATION_INSTRUCTIONS

QUESTION = "Janet has 3 apples and buys 5 more at the market. How many apples does she have now?"
# quick failures for tests: one retry, short backoff and timeouts
FAST = dict(retries=1, backoff_base_s=0.01, backoff_max_s=0.05, connect_timeout_s=1.0, first_byte_timeout_s=0.5)
Kind = Literal["ok", "hang", "slow", "status", "invalid_json", "empty", "cut", "oversized"]


@dataclass
class Fault:
    kind: Kind = "ok"
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.0  # "slow": seconds before the first byte
    cut_after: int = 2  # "cut": stream chunks sent before the connection drops
    size: int = 1_000_000  # "oversized": characters of content


@dataclass
class Hit:
    model: str
    aggregation: bool
    stream: bool
    at: float  # time.monotonic()
    disconnected: bool = False  # a hanging call whose client went away


@dataclass
class _Rule:
    fault: Fault
    aggregation: bool
    times: int | None  # None: every call


class FaultServer:
    def __init__(self) -> None:
        self.rules: dict[str, list[_Rule]] = {}
        self.hits: list[Hit] = []
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.app = self._build()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- what tests set and read ------------------------------------------------------------------

    def fail(self, model: str, fault: Fault, *, times: int | None = None, aggregation: bool = False) -> None:
        self.rules.setdefault(model, []).append(_Rule(fault, aggregation, times))

    def reset(self) -> None:
        self.rules.clear()

    def hits_for(self, model: str, aggregation: bool | None = None) -> list[Hit]:
        return [h for h in self.hits if h.model == model and (aggregation is None or h.aggregation == aggregation)]

    def _fault(self, model: str, aggregation: bool) -> Fault:
        for rule in self.rules.get(model, []):
            if rule.aggregation == aggregation and (rule.times is None or rule.times > 0):
                if rule.times is not None:
                    rule.times -= 1
                return rule.fault
        return Fault()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FaultServer:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=1, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fault server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)

    # -- the app ----------------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            model = body["model"]
            messages = body.get("messages") or []
            aggregation = bool(messages) and str(messages[0].get("content", "")).startswith(AGGREGATION_INSTRUCTIONS)
            stream = bool(body.get("stream"))
            hit = Hit(model, aggregation, stream, time.monotonic())
            self.hits.append(hit)
            fault = self._fault(model, aggregation)
            text = f"{'Aggregated' if aggregation else 'Answer'} from {model}: the result is 42."
            if fault.kind == "hang":
                while not await request.is_disconnected():
                    await asyncio.sleep(0.05)
                hit.disconnected = True
                return Response(status_code=499)
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
            if fault.kind == "status":
                headers = {"retry-after": fault.retry_after} if fault.retry_after else None
                return JSONResponse({"error": {"message": f"injected HTTP {fault.status}", "type": "server_error"}},
                                    status_code=fault.status, headers=headers)
            if fault.kind == "invalid_json":
                return Response(b"{not json at all", media_type="application/json")
            if fault.kind == "empty":
                text = ""
            if fault.kind == "oversized":
                text = "x" * fault.size
            if stream:
                return StreamingResponse(_events(model, text, fault), media_type="text/event-stream")
            return JSONResponse({
                "id": "up", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(text) // 4),
                          "total_tokens": 10 + max(1, len(text) // 4)},
            })

        return app


async def _events(model: str, text: str, fault: Fault) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {"id": "up", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    pieces = [chunk({"role": "assistant", "content": ""})]
    pieces += [chunk({"content": word + " "}) for word in text.split(" ")]
    pieces.append(chunk({}, finish="stop"))
    for n, piece in enumerate(pieces):
        if fault.kind == "cut" and n >= fault.cut_after:
            raise ConnectionAbortedError("injected: stream cut")  # uvicorn drops the connection mid-body
        yield piece
        await asyncio.sleep(0.005)
    yield b"data: [DONE]\n\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the gateway in front of it, for the fault tests --------------------------------------------------


def fault_settings(mini_bank, models: list[str], tmp_path, server: FaultServer, *, timeout_s: float = 1.0,
                   **resilience: Any) -> Settings:
    upstreams = [UpstreamSettings(name=m, base_url=server.base_url, input_usd_per_mtok=1.0,
                                  output_usd_per_mtok=2.0, timeout_s=timeout_s) for m in models]
    return Settings(bank_path=mini_bank, upstreams=upstreams, embedder=EmbedderSettings(backend="local", cache_dir=tmp_path / "c"),
                    resilience=ResilienceSettings(**{**FAST, **resilience}))


@asynccontextmanager
async def gateway(settings: Settings, embedder) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, embedder=embedder)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as client:
            yield client


async def route(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.post("/v1/jisi/route", json={"messages": [{"role": "user", "content": QUESTION}]})
    return r.json()


def assert_openai_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["code"] == code
    return error
