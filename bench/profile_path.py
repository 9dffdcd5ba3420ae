"""Where the gateway's own time goes on a `jisi-route` request: the gateway as deployed (jisi-gateway, its YAML,
the small mini-bench bank of `bench.common.ensure_bank`) run under cProfile, against the stub upstream answering
in `--latency-ms`, `--requests` requests at concurrency `--concurrency`; prints the functions with the most
own time and the request path's stages by cumulative time, per request.

cProfile sees the event loop's thread only, timed in the process's CPU time (so a busy machine's waits do not
count): with the static embedder (inline) that is the whole request path; with MiniLM the model runs on the
batcher's thread. A coroutine's time includes what ran while it was suspended (the lifespan's is the whole
time
they were suspended), so read the functions that are not coroutines. Profiling starts after start-up and 16
warm-up requests.

Usage: python -m bench.profile_path [--backend static|local] [--requests 400] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import signal
import time
import tempfile
from pathlib import Path

import httpx

from app.bank.format import read_manifest
from bench.common import ensure_bank, start_gateway
from bench.stub_upstream import StubServer

def where(file: str, name: str) -> str:
    """A function's home: the project's package (app/engine, app/upstream, ...), a library, the standard
    library's module, or the C function's name (builtins)."""
    if file == "~":
        return f"C: {name.split(' of ')[0].strip('<>').replace('built-in method ', '').replace('method ', '')}"
    parts = Path(file).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0]
    if "app" in parts:
        i = len(parts) - 1 - parts[::-1].index("app")
        return "/".join(parts[i:i + 2]).removesuffix(".py")
    return "stdlib " + Path(file).stem if "python3" in file else Path(file).name


async def drive(url: str, model: str, n: int, c: int) -> None:
    counter = iter(range(n))
    async with httpx.AsyncClient(timeout=60) as client:
        async def worker() -> None:
            for i in counter:
                body = {"model": model, "messages": [{"role": "user", "content": f"How many divisors has {i}?"}]}
                (await client.post(url, json=body)).raise_for_status()

        await asyncio.gather(*(worker() for _ in range(c)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["static", "local"], default="static")
    parser.add_argument("--model", default="jisi-route")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=120.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    bank = ensure_bank(None, backend=args.backend)
    models = read_manifest(bank).models
    with tempfile.TemporaryDirectory() as tmp, StubServer(["--latency-ms", str(args.latency_ms)]) as stub:
        profile = Path(tmp) / "gateway.prof"
        gateway = start_gateway(Path(tmp), bank, {m: (stub.base_url, m) for m in models},
                                profile=profile, embedder={"backend": args.backend})
        try:
            asyncio.run(drive(f"{gateway.url}/v1/chat/completions", args.model, 16, 1))  # warm-up, not profiled
            os.kill(gateway.proc.pid, signal.SIGUSR1)  # the profiler on
            time.sleep(0.2)
            asyncio.run(drive(f"{gateway.url}/v1/chat/completions", args.model, args.requests, args.concurrency))
        finally:
            gateway.stop()
        stats = pstats.Stats(str(profile))
    n = args.requests
    print(f"{args.model}, {args.backend} embedder, {n} requests at c={args.concurrency}, stub {args.latency_ms} ms; "
          "ms per request\n")
    rows = stats.stats  # type: ignore[attr-defined]
    own = sorted(rows.items(), key=lambda item: item[1][2], reverse=True)[:args.top]
    print(f"{'own ms':>8} {'cum ms':>8}  function")
    for (file, line, name), (_, _, tottime, cumtime, _) in own:
        print(f"{1000 * tottime / n:8.3f} {1000 * cumtime / n:8.3f}  {Path(file).name}:{line} {name}")
    print(f"\n{'own ms':>8}  where (own time summed by package; C functions by name)")
    by_home: dict[str, float] = {}
    for (file, _, name), (_, _, tottime, _, _) in rows.items():
        by_home[where(file, name)] = by_home.get(where(file, name), 0.0) + tottime
    for home, seconds in sorted(by_home.items(), key=lambda item: item[1], reverse=True)[:args.top]:
        print(f"{1000 * seconds / n:8.3f}  {home}")
    print(f"{1000 * sum(by_home.values()) / n:8.3f}  in all (CPU, profiled: cProfile's own cost included)")

if __name__ == "__main__":
    main()
