"""Gateway overhead, over real loopback sockets, with each embedder side by side in one run (issues 6 and 19).

Three processes, so none borrows another's CPU time or GIL: the stub upstream (bench/stub_upstream.py), the
gateway (uvicorn, configured by a YAML file, as deployed) and this client (aiohttp on uvloop, bounded request
loops: the cheapest well-kept Python client, so the client is not the bottleneck it was with httpx at c=64).
One gateway per embedder (`static`, the default, and MiniLM: `embedder: {backend: local}`), each on a bank
built with that embedder at its defaults.

1. The request path (issue 19): a stub answering in 120 ms; at c = 1, 16 and 64, direct calls to the stub,
   pass-through and `jisi-route` through each gateway: the gateway's own time per request
   (`jisi.timings_ms.overhead`: its time minus the upstream phases), p50 against the upstream's, the fan-out
   phase against the slowest candidate call, and throughput against pass-through's in the same run.
2. Overhead at zero upstream latency (issue 6): c = 1, 4, 16, 64, pass-through and `jisi`: added latency
   (gateway percentile minus the same percentile of direct stub calls), requests/s, the phase split, the
   gateway's CPU per request, event-loop lag and embedding requests per model call, from its /metrics.
3. The limit, per embedder: the model alone on a thread, one query then K responses, and batched throughput.

Usage: python -m bench.overhead [--requests 256] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from app.bank.format import read_manifest
from app.config import EmbedderSettings
from app.embedding import Embedder, make_embedder
from bench.common import EMBEDDERS, ensure_bank, pct, start_gateway
from bench.report import idle_penalty, write_section
from bench.stub_upstream import StubServer, answer_text

QUESTIONS = [
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total?",
    "What is the output of f('hello') where f reverses a string?",
    "Find the remainder when 2^100 is divided by 7.",
    "Janet has 16 eggs a day, eats 3 and bakes with 4. She sells the rest at $2 each. How much does she make?",
]
CONCURRENCY = [1, 4, 16, 64]  # zero-latency cells (issue 6)
PATH_CONCURRENCY = [1, 16, 64]  # request-path cells (issue 19)
UPSTREAM_MS = 120  # the request-path cells' stub latency (issue 19)
SLOW_MS, SLOW_JITTER_MS = 200, 100  # upstream latency of the below-saturation pass-through cell
K = 3


def question(i: int) -> str:
    return f"{QUESTIONS[i % len(QUESTIONS)]} #{i}"


async def load(client: aiohttp.ClientSession, url: str, model: str, n: int, c: int) -> dict[str, Any]:
    """n requests through c bounded request loops (after c warm-up ones): latencies, requests/s, phases, and
    per request the fan-out phase over its slowest candidate call."""
    lat: list[float] = []
    by_index: dict[int, float] = {}
    phases: dict[str, list[float]] = {}
    fanout_ratio: list[float] = []
    counter = iter(range(n + c))

    async def worker() -> None:
        for i in counter:
            body = {"model": model, "messages": [{"role": "user", "content": question(i)}]}
            t = time.perf_counter()
            async with client.post(url, json=body) as response:
                payload = await response.read()
            ms = 1000 * (time.perf_counter() - t)
            response.raise_for_status()
            if i < c:
                continue
            lat.append(ms)
            by_index[i] = ms
            jisi = json.loads(payload).get("jisi") or {}
            for phase, v in jisi.get("timings_ms", {}).items():
                phases.setdefault(phase, []).append(v)
            slowest = max((call["latency_ms"] for call in jisi.get("calls", []) if call["role"] == "candidate"),
                          default=0.0)
            if slowest > 0 and "fanout" in jisi.get("timings_ms", {}):
                fanout_ratio.append(jisi["timings_ms"]["fanout"] / slowest)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    wall = time.perf_counter() - start
    return {"lat": lat, "by_index": by_index, "rps": n / wall, "fanout_ratio": fanout_ratio,
            "own_ms": phases.get("overhead", []), "phases": {k: statistics.median(v) for k, v in phases.items()}}


def gateway_counters(text: str) -> dict[str, Any]:
    """Embedding counters and the loop-lag histogram buckets from the gateway's /metrics."""
    out: dict[str, Any] = {"lag_buckets": {}}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("jisi_embedding_") and s.name.endswith("_total"):
                out[s.name] = s.value
            elif s.name == "jisi_event_loop_lag_seconds_bucket":
                out["lag_buckets"][float(s.labels["le"])] = s.value
    return out


def lag_p99_bound_ms(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The smallest histogram bound that covers 99% of the loop-lag samples taken during a cell."""
    delta = {le: after["lag_buckets"][le] - before["lag_buckets"].get(le, 0.0) for le in after["lag_buckets"]}
    total = delta.get(float("inf"), 0.0)
    if total == 0:
        return "-"
    bound = next(le for le in sorted(delta) if delta[le] >= 0.99 * total)
    return "> 120000" if bound == float("inf") else f"<= {1000 * bound:g}"


async def metrics(client: aiohttp.ClientSession, gateway: str) -> dict[str, Any]:
    async with client.get(f"{gateway}/metrics") as response:
        return gateway_counters(await response.text())


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def drive(gateway: str, pid: int, stub: str, passthrough: str, n: int, concurrency: list[int],
                targets: tuple[str, ...]) -> dict[tuple[str, int], dict[str, Any]]:
    """Each cell: direct stub calls, then each target through the gateway, with the gateway's CPU and counters."""
    results: dict[tuple[str, int], dict[str, Any]] = {}
    connector = aiohttp.TCPConnector(limit=128)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:
        for c in concurrency:
            cell_n = max(n // 4, 64) if c == 1 else n
            results[("direct", c)] = await load(client, f"{stub}/v1/chat/completions", passthrough, cell_n, c)
            for target in targets:
                model = passthrough if target == "pass-through" else target
                before, cpu = await metrics(client, gateway), cpu_s(pid)
                r = await load(client, f"{gateway}/v1/chat/completions", model, cell_n, c)
                r["cpu_ms"] = 1000 * (cpu_s(pid) - cpu) / (cell_n + c)  # the gateway's CPU per request
                after = await metrics(client, gateway)
                r["lag_p99"] = lag_p99_bound_ms(before, after)
                calls = after["jisi_embedding_model_calls_total"] - before["jisi_embedding_model_calls_total"]
                served = after["jisi_embedding_requests_total"] - before["jisi_embedding_requests_total"]
                r["per_call"] = f"{served / calls:.1f}" if calls else "-"
                model_s = after["jisi_embedding_model_seconds_total"] - before["jisi_embedding_model_seconds_total"]
                r["model_ms"] = 1000 * model_s / (cell_n + c)  # inside the model, per request, in this very cell
                results[(target, c)] = r
                print(f"  c={c:<3} {target:<13} {r['rps']:8.1f} req/s  p50 {pct(r['lat'], .5):7.2f} ms", flush=True)
    return results


def embedding_limit(model: Embedder, passthrough_models: list[str], reps: int = 40) -> dict[str, float]:
    """The model alone: one query, then the K responses the stub gives for it (the gateway embeds these),
    sequentially; and throughput at batch 64 over the same mix of texts (1 query : K responses)."""
    def responses(i: int) -> list[str]:
        return [answer_text(m, question(i)) for m in passthrough_models[:K]]

    for i in range(8):  # warm-up
        model.embed([question(i)]), model.embed(responses(i))
    times = []
    for i in range(reps):
        texts = responses(i)
        t = time.perf_counter()
        model.embed([question(i)])
        model.embed(texts)
        times.append(1000 * (time.perf_counter() - t))
    batch = [t for i in range(16) for t in (question(i), *responses(i))]  # 64 texts
    model.embed(batch)
    n, t = 0, time.perf_counter()
    while n < 10 or time.perf_counter() - t < 3.0:
        model.embed(batch)
        n += 1
    texts_per_s = len(batch) * n / (time.perf_counter() - t)
    return {"seq_ms": statistics.median(times), "texts_per_s": texts_per_s, "req_per_s": texts_per_s / (K + 1)}


def limit_in_thread(backend: str, models: list[str]) -> dict[str, float]:
    """On a fresh thread, as the gateway's batcher runs a transformer (torch threading differs by thread); the
    embedder as the gateway builds it (no cache, the stored precision)."""
    model = make_embedder(EmbedderSettings(backend=backend), use_cache=False)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(embedding_limit, model, models).result()


def path_report(runs: dict[str, dict[tuple[str, int], dict[str, Any]]]) -> list[str]:
    """Issue 19's cells: own time, p50 against the upstream's, fan-out against the slowest candidate, throughput
    against pass-through's; one row per embedder and concurrency."""
    lines = [f"### The request path: `jisi-route` against a stub answering in {UPSTREAM_MS} ms", "",
             "Own time = `jisi.timings_ms.overhead` (the request's time in the gateway minus its upstream phases); "
             "fan-out / slowest = the fan-out phase over the request's slowest candidate call (median); throughput "
             "ratio = `jisi-route` requests/s over pass-through's through the same gateway in the same run "
             "(a `jisi-route` request makes three upstream calls).", "",
             "| embedder | c | own time p50 ms | own time p95 ms | jisi-route p50 ms | upstream (direct) p50 ms "
             "| p50 ratio | fan-out / slowest | jisi-route req/s | pass-through req/s | throughput ratio "
             "| gateway CPU ms per request |", "|---" * 12 + "|"]
    for label, results in runs.items():
        for c in PATH_CONCURRENCY:
            r, d, p = results[("jisi-route", c)], results[("direct", c)], results[("pass-through", c)]
            own = [pct(r["own_ms"], q) for q in (0.5, 0.95)]
            lines.append(f"| {label} | {c} | {own[0]:.2f} | {own[1]:.2f} | {pct(r['lat'], .5):.1f} "
                         f"| {pct(d['lat'], .5):.1f} | {pct(r['lat'], .5) / pct(d['lat'], .5):.2f}x "
                         f"| {statistics.median(r['fanout_ratio']):.3f}x | {r['rps']:.1f} | {p['rps']:.1f} "
                         f"| {r['rps'] / p['rps']:.2f}x | {r['cpu_ms']:.2f} |")
    return lines


def overhead_report(label: str, results: dict[tuple[str, int], dict[str, Any]], limit: dict[str, float]) -> list[str]:
    """Issue 6's cells at zero upstream latency for one embedder, its phase split and its limit."""
    lines = [f"### {label}: overhead at zero upstream latency", "",
             "| target | c | added p50 ms | added p95 ms | added p99 ms | req/s | direct req/s | gateway CPU ms "
             "per request | loop lag p99 ms | embed requests per model call |", "|---|---|---|---|---|---|---|---|---|---|"]
    for target in ("pass-through", "jisi"):
        for c in CONCURRENCY:
            r, d = results[(target, c)], results[("direct", c)]
            added = [pct(r["lat"], q) - pct(d["lat"], q) for q in (0.5, 0.95, 0.99)]
            lines.append(f"| {target} | {c} | {added[0]:.2f} | {added[1]:.2f} | {added[2]:.2f} | {r['rps']:.1f} "
                         f"| {d['rps']:.1f} | {r['cpu_ms']:.2f} | {r['lag_p99']} | {r['per_call']} |")
    names = list(results[("jisi", 1)]["phases"])
    lines += ["", f"{label}: `jisi` phase split (median ms, from `jisi.timings_ms`; `model` is the time inside the "
              "embedding model per request over the cell):", "",
              "| c | " + " | ".join(names) + " | model |", "|---" * (len(names) + 2) + "|"]
    for c in CONCURRENCY:
        ph = results[("jisi", c)]["phases"]
        lines.append(f"| {c} | " + " | ".join(f"{ph.get(k, 0):.2f}" for k in names)
                     + f" | {results[('jisi', c)]['model_ms']:.2f} |")
    j1, j64 = results[("jisi", 1)], results[("jisi", 64)]
    added1 = pct(j1["lat"], 0.5) - pct(results[("direct", 1)]["lat"], 0.5)
    lines += ["", f"{label}, the limit (the embedding model alone, as the gateway builds it, better of before and "
              "after the load cells):", "",
              f"- one query, then its {K} responses (two calls, as the gateway makes them; median): "
              f"**{limit['seq_ms']:.2f} ms**; batched at 64: **{limit['texts_per_s']:.0f} texts/s** = "
              f"{limit['req_per_s']:.1f} requests/s (1+{K} texts per request)",
              f"- `jisi` added p50 at c=1: {added1:.2f} ms, of which the gateway's own part "
              f"(`timings_ms.overhead`) {j1['phases']['overhead']:.2f} ms; inside the model "
              f"{j1['model_ms']:.2f} ms per request",
              f"- `jisi` at c=64: {j64['rps']:.1f} requests/s = **{j64['rps'] / limit['req_per_s']:.2f}x** the "
              f"model's batched rate, p99 {pct(j64['lat'], 0.99):.0f} ms"]
    return lines


def slow_passthrough_report(slow: dict[tuple[str, int], dict[str, Any]]) -> list[str]:
    sp, sd = slow[("pass-through", 64)], slow[("direct", 64)]
    paired = [sp["by_index"][i] - sd["by_index"][i] for i in sp["by_index"] if i in sd["by_index"]]
    s_added = [pct(paired, q) for q in (0.5, 0.95, 0.99)]
    return ["### Pass-through at c=64 below saturation", "",
            f"Against a stub that answers after {SLOW_MS} ± {SLOW_JITTER_MS} ms, the delay a function of the "
            "question, so request i through the gateway waits upstream exactly as long as request i sent directly "
            f"and the added latency is measured per request (default embedder), {len(paired)} pairs: added "
            f"p50 **{s_added[0]:.2f} ms**, p95 {s_added[1]:.2f} ms, p99 **{s_added[2]:.2f} ms**; "
            f"{sp['rps']:.1f} req/s (direct {sd['rps']:.1f}); gateway CPU {sp['cpu_ms']:.2f} ms per request; "
            f"loop lag p99 {sp['lag_p99']} ms."]


def run_cells(bank: Path, backend: str, stub_args: list[str], n: int, concurrency: list[int],
              targets: tuple[str, ...]) -> dict[tuple[str, int], dict[str, Any]]:
    """One stub and one gateway (configured with `embedder: {backend: ...}` and nothing else), the cells driven."""
    models = read_manifest(bank).models
    with tempfile.TemporaryDirectory() as tmp, StubServer(stub_args) as stub:
        gateway = start_gateway(Path(tmp), bank, {m: (stub.base_url, m) for m in models},
                                embedder={"backend": backend})
        try:
            results = uvloop.run(drive(gateway.url, gateway.proc.pid, stub.url, models[0], n, concurrency, targets))
        finally:
            gateway.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256, help="requests per cell (a quarter at c=1)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    banks = {label: ensure_bank(None, backend=backend) for label, backend in EMBEDDERS.items()}
    load_before = os.getloadavg()
    limits, path, zero = {}, {}, {}
    for label, backend in EMBEDDERS.items():
        models = read_manifest(banks[label]).models
        print(f"{label}: measuring the embedding limit ...", flush=True)
        before = limit_in_thread(backend, models)
        print(f"{label}: the request path against a {UPSTREAM_MS} ms stub ...", flush=True)
        path[label] = run_cells(banks[label], backend, ["--latency-ms", str(UPSTREAM_MS)], args.requests,
                                PATH_CONCURRENCY, ("pass-through", "jisi-route"))
        print(f"{label}: overhead at zero upstream latency ...", flush=True)
        zero[label] = run_cells(banks[label], backend, [], args.requests, CONCURRENCY, ("pass-through", "jisi"))
        after = limit_in_thread(backend, models)
        limits[label] = {"seq_ms": min(before["seq_ms"], after["seq_ms"]),
                         "texts_per_s": max(before["texts_per_s"], after["texts_per_s"])}
        limits[label]["req_per_s"] = limits[label]["texts_per_s"] / (K + 1)
    default = next(iter(EMBEDDERS))
    print(f"pass-through at c=64 against a {SLOW_MS} ms upstream ...", flush=True)
    slow = run_cells(banks[default], EMBEDDERS[default], ["--latency-ms", str(SLOW_MS), "--jitter-ms",
                     str(SLOW_JITTER_MS), "--jitter-by-question"], 4 * args.requests, [64], ("pass-through",))
    load_after = os.getloadavg()
    lines = ["## Gateway overhead (bench/overhead.py)", "", "`python -m bench.overhead`", "",
             "Stub upstream, gateway and client in three processes on loopback (2 CPU cores shared by all three "
             "and the embedding model); one gateway per embedder, each on a mini-bench bank built with it at its "
             f"defaults. Load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, after "
             f"{'/'.join(f'{x:.2f}' for x in load_after)}; {idle_penalty()}.", ""]
    lines += path_report(path)
    for label in EMBEDDERS:
        lines += [""] + overhead_report(label, zero[label], limits[label])
    lines += [""] + slow_passthrough_report(slow)
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        print(f"written to {write_section('overhead', text)}")


if __name__ == "__main__":
    main()
