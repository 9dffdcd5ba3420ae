"""Fan-out wall time against the slowest candidate (issue 6). Target: wall <= 1.05x the slowest candidate.

Default (local): one stub process (bench/stub_upstream.py) with fixed per-model delays (200/400/800 ms) backs
three bank models, the only served ones (allow_unserved_models), so with K=3 all three are the candidates of
every request; the gateway runs in its own process. Each round sends one `jisi-route` request (route mode: no
aggregator call) through the gateway, then times each of its candidates alone, directly on the stub, in the
same run; ratio = gateway wall time / slowest direct call of that round. Sequential requests.

--url: against a running gateway (e.g. the demo's); candidates alone are then timed through its pass-through.

Usage: python -m bench.fanout [--rounds 30] [--delays 200,400,800] [--bank DIR] [--no-write]
       python -m bench.fanout --url http://127.0.0.1:8000 [--rounds 6] [--max-tokens 48] --no-write
"""

from __future__ import annotations

import argparse
import os
import sys
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.bank.format import read_manifest
from bench.common import QUESTIONS, ensure_bank, pct, start_gateway
from bench.report import idle_penalty, write_section
from bench.stub_upstream import StubServer

Direct = dict[str, tuple[str, str]]  # model name at the gateway -> (base URL to call it alone, model id there)


@dataclass
class Round:
    wall_ms: float  # the jisi-route request, as the client saw it
    singles_ms: dict[str, float]  # each candidate alone
    inner_ms: float  # the slowest candidate call as the gateway timed it (jisi.calls)
    timings_ms: dict[str, float]  # the gateway's phases (jisi.timings_ms)

    @property
    def slowest_ms(self) -> float:
        return max(self.singles_ms.values())

    @property
    def ratio(self) -> float:
        return self.wall_ms / self.slowest_ms


def timed(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = client.post(url, json=body)
    ms = 1000 * (time.perf_counter() - started)
    response.raise_for_status()
    return ms, response.json()


def run_rounds(gateway: str, direct: Direct, rounds: int, max_tokens: int, warmup: int = 2) -> list[Round]:
    out: list[Round] = []
    with httpx.Client(timeout=600) as client:
        for i in range(warmup + rounds):
            messages = [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"}]
            wall, body = timed(client, gateway + "/v1/chat/completions",
                               {"model": "jisi-route", "messages": messages, "max_tokens": max_tokens})
            jisi = body["jisi"]
            singles = {m: timed(client, direct[m][0] + "/chat/completions",
                                {"model": direct[m][1], "messages": messages, "max_tokens": max_tokens})[0]
                       for m in jisi["candidates"]}
            inner = max((c["latency_ms"] for c in jisi["calls"] if c["role"] == "candidate"), default=float("nan"))
            if i >= warmup:  # the first requests pay one-off costs (model warm-up, connections)
                out.append(Round(wall, singles, inner, jisi["timings_ms"]))
                print(f"  round {len(out):3d}: wall {wall:7.1f} ms | slowest alone {out[-1].slowest_ms:7.1f} ms | "
                      f"ratio {out[-1].ratio:.3f} | overhead {jisi['timings_ms'].get('overhead', 0):6.1f} ms",
                      flush=True)
    return out


def report(rounds: list[Round], setup: str, command: str) -> str:
    def row(name: str, values: list[float], fmt: str = ".1f") -> str:
        return f"| {name} | {pct(values, .5):{fmt}} | {pct(values, .95):{fmt}} | {max(values):{fmt}} |"

    ratios = [r.ratio for r in rounds]
    phase = [r.timings_ms.get("fanout", float("nan")) / r.slowest_ms for r in rounds]
    verdict = "meets" if pct(ratios, .5) <= 1.05 else "misses"
    lines = ["## Fan-out wall time vs the slowest candidate (bench/fanout.py)", "", f"`{command}`", "",
             f"{setup} Load average (1/5/15 min) at the end: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}; "
             f"{idle_penalty()}.", "",
             f"**wall / slowest candidate: p50 {pct(ratios, .5):.3f}x, p95 {pct(ratios, .95):.3f}x** over "
             f"{len(rounds)} requests (target <= 1.05x: the median {verdict} it); the fan-out phase alone "
             f"(`timings_ms.fanout`) / slowest: p50 {pct(phase, .5):.3f}x, p95 {pct(phase, .95):.3f}x.", "",
             "| per request | p50 | p95 | max |", "|---|---:|---:|---:|",
             row("wall / slowest candidate alone (x)", ratios, ".3f"),
             row("fan-out phase / slowest candidate alone (x)", phase, ".3f"),
             row("gateway wall ms (client side)", [r.wall_ms for r in rounds]),
             row("slowest candidate alone ms", [r.slowest_ms for r in rounds]),
             row("sum of candidates alone ms", [sum(r.singles_ms.values()) for r in rounds]),
             row("wall - slowest alone ms", [r.wall_ms - r.slowest_ms for r in rounds]),
             row("slowest candidate inside the gateway ms", [r.inner_ms for r in rounds]),
             "", "Gateway phases (median ms, `jisi.timings_ms`): " + ", ".join(
                 f"{k} {statistics.median(r.timings_ms.get(k, 0.0) for r in rounds):.1f}"
                 for k in rounds[0].timings_ms)]
    return "\n".join(lines)


def local(args: argparse.Namespace) -> tuple[list[Round], str]:
    delays = [float(d) for d in args.delays.split(",")]
    names = [f"model-{chr(ord('a') + i)}" for i in range(len(delays))]
    bank = ensure_bank(args.bank)
    served = list(read_manifest(bank).models)[: len(delays)]
    spec = ",".join(f"{n}={d:g}" for n, d in zip(names, delays))
    with StubServer(["--delays", spec]) as stub, tempfile.TemporaryDirectory(prefix="jisi-fanout-") as tmp:
        direct = {m: (stub.base_url, n) for m, n in zip(served, names)}
        gateway = start_gateway(Path(tmp), bank, direct, allow_unserved_models=True, jisi={"k": len(delays)})
        try:
            rounds = run_rounds(gateway.url, direct, args.rounds, args.max_tokens)
        finally:
            gateway.stop()
    setup = (f"Stub upstreams (one process) with fixed delays {spec} ms back bank models {', '.join(served)}; "
             f"K={len(delays)}, so every request fans out to all of them. The gateway (own process, uvicorn) "
             "answers `jisi-route`; each candidate is then called alone on the stub, sequentially, in the same "
             "run. 2 CPU cores shared by client, gateway, embedding model and stub.")
    return rounds, setup


def remote(args: argparse.Namespace) -> tuple[list[Round], str]:
    models = httpx.get(args.url + "/v1/models", timeout=30).json()["data"]
    direct = {m["id"]: (args.url + "/v1", m["id"]) for m in models if m.get("owned_by") == "upstream"}
    rounds = run_rounds(args.url, direct, args.rounds, args.max_tokens, warmup=1)
    return rounds, (f"Running gateway at {args.url}; each candidate timed alone through its pass-through "
                    f"(max_tokens {args.max_tokens}).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--delays", default="200,400,800", help="ms, one stub model per value (K = their number)")
    parser.add_argument("--bank", type=Path, help="a bank built with the default embedder (else built and cached)")
    parser.add_argument("--url", help="measure a running gateway instead of starting stubs and a gateway")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    rounds, setup = remote(args) if args.url else local(args)
    text = report(rounds, setup, " ".join(["python -m bench.fanout", *sys.argv[1:]]))
    print("\n" + text)
    if not args.no_write:
        print(f"\nwritten to {write_section('fanout', text)}")


if __name__ == "__main__":
    main()
