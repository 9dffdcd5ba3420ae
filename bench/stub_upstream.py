"""A fake OpenAI-compatible upstream for benchmarks: POST /v1/chat/completions (JSON or SSE) with a plausible
answer and usage, after a configurable delay, with an optional share of injected failures.

Latency: per-model fixed delays (`--delays model-a=200,model-b=400`), else `--latency-ms` as the median of a
lognormal of shape `--sigma` (0 = fixed), plus uniform `--jitter-ms`. Failures (`--failure-rate`) are an even
mix of 429 (with Retry-After), 500, 503 and a connection dropped mid-response. `--hang-models a,b`: those
models accept every request and never answer (until the client goes away). GET /stats counts what it did.

Usage: python -m bench.stub_upstream --port 9101 [--latency-ms 120 --sigma 0.5] [--failure-rate 0.02]
       python -m bench.stub_upstream --port 9101 --delays model-a=200,model-b=400,model-c=800
In Python: `with StubServer(["--delays", "a=200"]) as stub: stub.base_url` (a subprocess, waited for).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from bench.common import REPO, ServerProcess, free_port

FAILURES = ("http_429", "http_500", "http_503", "drop")


@dataclass
class Behaviour:
    latency_ms: float = 0.0
    sigma: float = 0.0
    jitter_ms: float = 0.0
    delays_ms: dict[str, float] = field(default_factory=dict)  # per model: a fixed delay wins
    failure_rate: float = 0.0
    retry_after_s: int = 1
    seed: int | None = None
    jitter_by_question: bool = False  # the jitter is a function of the question: same question, same delay
    hang_models: frozenset[str] = frozenset()  # accept the call, never answer

    def delay_s(self, model: str, rng: random.Random, question: str = "") -> float:
        if model in self.delays_ms:
            return self.delays_ms[model] / 1000
        ms = self.latency_ms * (math.exp(rng.gauss(0, self.sigma)) if self.sigma else 1.0)
        if self.jitter_by_question:
            u = int(hashlib.sha256(question.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            return max(0.0, ms + self.jitter_ms * (2 * u - 1)) / 1000
        return max(0.0, ms + rng.uniform(-self.jitter_ms, self.jitter_ms)) / 1000


class _Drop(Exception):
    """Raised after the response started: uvicorn then closes the connection mid-body."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Drop))


def answer_text(model: str, question: str) -> str:
    """Deterministic per (model, question), so responses differ between models like real ones do."""
    n = int(hashlib.sha256(f"{model}|{question}".encode()).hexdigest()[:6], 16) % 1000
    return (f"Let me work through this step by step. Reading the question carefully, the key quantity is {n}. "
            f"Checking the arithmetic once more gives the same value. The answer is {n}.")


def usage_of(body: dict[str, Any], text: str) -> dict[str, int]:
    words = sum(len(str(m.get("content") or "").split()) for m in body.get("messages") or [])
    prompt, completion = 8 + round(1.3 * words), round(1.3 * len(text.split()))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def stub_app(behaviour: Behaviour) -> FastAPI:
    app = FastAPI()
    rng = random.Random(behaviour.seed)
    stats: Counter[str] = Counter()

    def sse(data: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    async def dropped(first: bytes) -> AsyncIterator[bytes]:
        yield first
        raise _Drop

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stats")
    async def get_stats() -> dict[str, int]:
        return dict(stats)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        model, stream = str(body.get("model", "stub")), bool(body.get("stream"))
        stats["requests"] += 1
        if model in behaviour.hang_models:
            stats["hung"] += 1
            while not await request.is_disconnected():
                await asyncio.sleep(0.05)
            return Response(status_code=499)
        failure = rng.choice(FAILURES) if rng.random() < behaviour.failure_rate else None
        if failure == "http_429":  # rate limits come back at once, not after the work
            stats[failure] += 1
            return JSONResponse({"error": {"message": "rate limited", "type": "rate_limit_error"}}, 429,
                                headers={"retry-after": str(behaviour.retry_after_s)})
        messages = body.get("messages") or [{}]
        question = str(messages[-1].get("content") or "")
        await asyncio.sleep(behaviour.delay_s(model, rng, question))
        if failure in ("http_500", "http_503"):
            stats[failure] += 1
            return JSONResponse({"error": {"message": "upstream overloaded", "type": "server_error"}},
                                int(failure[-3:]))
        text = answer_text(model, question)
        usage = usage_of(body, text)
        rid = f"chatcmpl-stub-{stats['requests']}"
        if stream:
            base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
            words = text.split(" ")
            pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
            chunks = [sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                "finish_reason": None}]})]
            chunks += [sse({**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]})
                       for p in pieces]
            chunks.append(sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
            if (body.get("stream_options") or {}).get("include_usage"):
                chunks.append(sse({**base, "choices": [], "usage": usage}))
            chunks.append(b"data: [DONE]\n\n")
            if failure == "drop":
                stats[failure] += 1
                return StreamingResponse(dropped(b"".join(chunks[: len(chunks) // 2])),
                                         media_type="text/event-stream")
            stats["ok"] += 1
            return StreamingResponse(iter(chunks), media_type="text/event-stream")
        payload = json.dumps({
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage}).encode()
        if failure == "drop":
            stats[failure] += 1
            return StreamingResponse(dropped(payload[: len(payload) // 2]), media_type="application/json")
        stats["ok"] += 1
        return Response(payload, media_type="application/json")

    return app


def parse_delays(spec: str) -> dict[str, float]:
    """'model-a=200,model-b=400' -> {'model-a': 200.0, 'model-b': 400.0}."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, ms = item.partition("=")
        out[name.strip()] = float(ms)
    return out


class StubServer(ServerProcess):
    """This stub in a subprocess; `args` are its command-line options (without --port)."""

    def __init__(self, args: Sequence[str] = (), port: int | None = None) -> None:
        port = port or free_port()
        super().__init__([sys.executable, "-m", "bench.stub_upstream", "--port", str(port), *args], port, cwd=REPO)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(self.url + "/stats", timeout=5).json())


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="median delay before answering")
    parser.add_argument("--sigma", type=float, default=0.0, help="lognormal shape of the delay (0 = fixed)")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="plus uniform noise in [-j, +j]")
    parser.add_argument("--jitter-by-question", action="store_true",
                        help="derive the jitter from the question, so a question always waits as long (lets a "
                             "benchmark pair each request through the gateway with the same one sent directly)")
    parser.add_argument("--delays", default="", help="fixed per-model delays: model-a=200,model-b=400")
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--retry-after-s", type=int, default=1, help="Retry-After of the injected 429s")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--hang-models", default="", help="models that accept calls and never answer: a,b")
    args = parser.parse_args()
    behaviour = Behaviour(args.latency_ms, args.sigma, args.jitter_ms, parse_delays(args.delays),
                          args.failure_rate, args.retry_after_s, args.seed, args.jitter_by_question,
                          frozenset(filter(None, (m.strip() for m in args.hang_models.split(",")))))
    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
    uvicorn.run(stub_app(behaviour), host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                backlog=2048)


if __name__ == "__main__":
    main()
