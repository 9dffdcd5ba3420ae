"""The gateway's own time per request (everything but upstream time), by phase, against zero-latency
mocked upstreams, for `jisi` and pass-through. Sequential requests: this is per-request cost, not load.

Usage: python bench/gateway_overhead.py --bank BANK [--requests 100]
(build a bank first, e.g. jisi-bank build --records ../shared/data/mini-bench.tar.gz --out banks/mini)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx
import respx

from app.bank import read_manifest
from app.main import create_app
from app.settings import EmbedderSettings, Settings, UpstreamSettings

QUESTIONS = [
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total?",
    "What is the output of f('hello') where f reverses a string?",
    "Find the remainder when 2^100 is divided by 7.",
    "Janet has 16 eggs a day, eats 3 and bakes with 4. She sells the rest at $2 each. How much does she make?",
]


def instant_reply(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    return httpx.Response(200, json={
        "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"{request.url.host}: the answer is 42"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62}})


async def run(bank: str, n: int) -> None:
    models = read_manifest(bank).models
    upstreams = [UpstreamSettings(name=m, base_url=f"http://up{i}.bench/v1") for i, m in enumerate(models)]
    app = create_app(Settings(bank_path=bank, upstreams=upstreams, embedder=EmbedderSettings(cache_dir=None)))
    with respx.mock(assert_all_called=False) as mock:
        mock.post(url__regex=r"http://up\d+\.bench/v1/chat/completions").mock(side_effect=instant_reply)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
                for model in ["jisi", "jisi-route", models[0]]:
                    phases: dict[str, list[float]] = {}
                    walls = []
                    for i in range(n + 3):
                        body = {"model": model, "messages": [{"role": "user", "content": QUESTIONS[i % 4] + f" #{i}"}]}
                        t = time.perf_counter()
                        response = await client.post("/v1/chat/completions", json=body)
                        wall = 1000 * (time.perf_counter() - t)
                        response.raise_for_status()
                        if i < 3:
                            continue  # warm-up
                        walls.append(wall)
                        for phase, ms in response.json()["jisi"]["timings_ms"].items():
                            phases.setdefault(phase, []).append(ms)
                    print(f"\n{model}: {n} sequential requests, zero-latency upstreams")
                    print(f"  {'phase':<16} {'median ms':>10} {'p95 ms':>8}")
                    for phase, values in phases.items():
                        values.sort()
                        print(f"  {phase:<16} {statistics.median(values):>10.2f} {values[int(0.95 * len(values)) - 1]:>8.2f}")
                    walls.sort()
                    print(f"  {'client wall':<16} {statistics.median(walls):>10.2f} {walls[int(0.95 * len(walls)) - 1]:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bank", required=True)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(run(args.bank, args.requests))


if __name__ == "__main__":
    main()
