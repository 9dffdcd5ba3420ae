"""Bounded load test on loopback (issue 5): every request must end in a well-formed answer or a clean error.

The gateway runs as its own process (uvicorn, config from a temp YAML via JISI_CONFIG) so its RSS is its own;
stub upstreams (bench/stub_upstream.py, another process) answer after a lognormal delay and fail a share of
calls (429 with Retry-After, 500, 503, dropped connections). The client sends a seeded mix of `jisi`,
`jisi-route`, pass-through and invalid requests, some streamed, at bounded concurrency, and classifies each:
ok (200 with choices / a complete stream), error (OpenAI error JSON, or an error event then [DONE]) or LOST
(timeout, connection error, malformed body or stream). Exit code 1 if any request was lost.
`--hang MODEL` (or `--hang strongest`, the bank's most accurate model) makes one upstream accept every call
and never answer, with the upstreams' timeout_s at 10 s (issue 11's setting). One gateway per embedder
(`--embedders`, default: the static model, then MiniLM), one after the other, reported side by side.

Usage: python -m bench.load_test [--requests 5000 --concurrency 64 --failure-rate 0.02 --hang strongest
                                  --embedders static,MiniLM --no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from app.bank.format import read_manifest
from bench.common import EMBEDDERS, QUESTIONS, ensure_bank, pct, start_gateway
from bench.report import write_section
from bench.stub_upstream import StubServer

MIX = {"jisi": 0.40, "jisi-route": 0.20, "passthrough": 0.38, "invalid": 0.02}  # shares of requests
STREAM_SHARE = 0.25
HANG_TIMEOUT_S = 10.0  # the upstreams' timeout_s in a run with a hanging upstream (issue 11)


def strongest_model(bank: Path) -> str:
    """The bank model with the best accuracy over its records: the one most often a candidate and aggregator."""
    from app.bank.reader import Bank

    b = Bank.load(bank)
    accuracy = [float(b.v[b.present[:, j], j].mean()) for j in range(len(b.models))]
    return b.models[max(range(len(accuracy)), key=accuracy.__getitem__)]


@dataclass
class Outcome:
    target: str
    stream: bool
    kind: str  # ok | error | lost
    ms: float
    degraded: bool = False
    detail: str = ""


def request_plan(n: int, seed: int, passthrough: list[str]) -> list[tuple[str, bool, dict[str, Any]]]:
    """(target, stream, body) for each request, seeded: the same mix on every run."""
    rng = random.Random(seed)
    plan = []
    for i in range(n):
        target = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        stream = target != "invalid" and rng.random() < STREAM_SHARE
        model = {"passthrough": rng.choice(passthrough), "invalid": "no-such-model"}.get(target, target)
        body: dict[str, Any] = {"model": model, "max_tokens": 64, "stream": stream,
                                "messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"}]}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if target == "invalid" and i % 2:  # half 404 unknown model, half 400 invalid field
            body |= {"model": "jisi", "n": 2}
        plan.append((target, stream, body))
    return plan


def classify_json(status: int, raw: bytes, headers: httpx.Headers) -> tuple[str, str, bool]:
    try:
        data = json.loads(raw)
    except ValueError:
        return "lost", f"HTTP {status} with a non-JSON body", False
    if status == 200:
        choices = data.get("choices") if isinstance(data, dict) else None
        if choices and isinstance(choices[0].get("message"), dict):
            return "ok", "", headers.get("x-jisi-degraded") == "true"
        return "lost", "200 without choices[0].message", False
    error = data.get("error") if isinstance(data, dict) else None
    if status >= 400 and isinstance(error, dict) and "message" in error:
        return "error", f"HTTP {status} {error.get('code') or error.get('type')}", False
    return "lost", f"HTTP {status} without an OpenAI error body", False


def classify_sse(raw: bytes) -> tuple[str, str, bool]:
    """A stream is ok with content chunks then [DONE], a clean error with an error event then [DONE]."""
    events: list[Any] = []
    for line in raw.decode("utf-8", "replace").split("\n"):
        if not line or line.startswith(":"):
            continue
        if not line.startswith("data: "):
            return "lost", f"stream line that is not an SSE field: {line[:40]!r}", False
        payload = line[6:]
        try:
            events.append(payload if payload == "[DONE]" else json.loads(payload))
        except ValueError:
            return "lost", "stream chunk that is not JSON", False
    if not events or events[-1] != "[DONE]" or "[DONE]" in events[:-1]:
        return "lost", "stream not ended by exactly one [DONE]", False
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    errors = [e["error"] for e in chunks if isinstance(e.get("error"), dict)]
    if errors:
        return "error", f"stream error event {errors[0].get('code') or errors[0].get('type')}", False
    content = any((c.get("delta") or {}).get("content") for e in chunks for c in e.get("choices") or [])
    if not content or any(e.get("object") != "chat.completion.chunk" for e in chunks):
        return "lost", "stream without content or with foreign chunks", False
    summary = next((e["jisi"] for e in reversed(chunks) if isinstance(e.get("jisi"), dict)), {})
    return "ok", "", bool(summary.get("degraded"))


async def send(client: httpx.AsyncClient, target: str, stream: bool, body: dict[str, Any]) -> Outcome:
    started = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            raw = await response.aread()
    except httpx.TimeoutException as exc:
        return Outcome(target, stream, "lost", 1000 * (time.perf_counter() - started), detail=type(exc).__name__)
    except httpx.HTTPError as exc:
        return Outcome(target, stream, "lost", 1000 * (time.perf_counter() - started),
                       detail=f"connection: {type(exc).__name__}")
    ms = 1000 * (time.perf_counter() - started)
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        kind, detail, degraded = classify_sse(raw) if response.status_code == 200 else ("lost", "non-200 SSE", False)
    else:
        kind, detail, degraded = classify_json(response.status_code, raw, response.headers)
    return Outcome(target, stream, kind, ms, degraded, detail)


class RssMonitor:
    """The gateway's resident memory: named readings, and the peak of a 0.2 s sampler while it runs."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.marks: dict[str, float] = {}
        self.peak = 0.0

    def now(self) -> float:
        rss = float(self.proc.memory_info().rss)
        self.peak = max(self.peak, rss)
        return rss

    def mark(self, label: str) -> float:
        self.marks[label] = self.now()
        return self.marks[label]

    async def sample(self) -> None:
        while True:
            self.now()
            await asyncio.sleep(0.2)


async def drive(url: str, plan: list[tuple[str, bool, dict[str, Any]]], concurrency: int, timeout_s: float,
                rss: RssMonitor, progress: bool = True) -> tuple[list[Outcome], float]:
    """Run the plan through `concurrency` request loops (bounded); RSS marked at every 10% when `progress`."""
    outcomes: list[Outcome] = []
    todo = iter(plan)

    async def worker(client: httpx.AsyncClient) -> None:
        for target, stream, body in todo:
            outcomes.append(await send(client, target, stream, body))
            done = 100 * len(outcomes) // len(plan)
            if progress and done and done % 10 == 0 and f"{done}%" not in rss.marks:
                print(f"  {len(outcomes)}/{len(plan)} done, gateway RSS {rss.mark(f'{done}%') / 2**20:.0f} MiB",
                      flush=True)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    sampler = asyncio.create_task(rss.sample())
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    sampler.cancel()
    return outcomes, time.perf_counter() - started


def metric_totals(text: str) -> dict[str, float]:
    """A few of the gateway's Prometheus counters, summed by their telling label."""
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "jisi_requests_total":
                out[f"requests {s.labels['status']}"] += s.value
            elif s.name == "jisi_upstream_errors_total":
                out[f"upstream errors {s.labels['kind']}"] += s.value
            elif s.name == "jisi_degraded_total":
                out["degraded"] += s.value
    return dict(sorted(out.items()))


@dataclass
class Run:
    """One gateway's run: its outcomes and what was read around them."""

    outcomes: list[Outcome]
    wall: float
    rss: RssMonitor
    metrics: dict[str, float]
    stub: dict[str, int]
    load: list[tuple[float, ...]]


def summary(runs: dict[str, Run]) -> list[str]:
    """The embedders side by side: what was lost, throughput, latency of every request and of `jisi-route`."""
    lines = ["| embedder | lost | ok | clean errors | req/s | p50 ms | p99 ms | jisi-route p50 ms | jisi-route p99 ms "
             "| jisi p50 ms | peak RSS MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, run in runs.items():
        kinds = Counter(o.kind for o in run.outcomes)
        ms = [o.ms for o in run.outcomes]
        by = {t: [o.ms for o in run.outcomes if o.target == t and o.kind == "ok"] for t in ("jisi-route", "jisi")}
        lines.append(f"| {label} | {kinds['lost']} | {kinds['ok']} | {kinds['error']} "
                     f"| {len(run.outcomes) / run.wall:.1f} | {pct(ms, .5):.0f} | {pct(ms, .99):.0f} "
                     f"| {pct(by['jisi-route'], .5):.0f} | {pct(by['jisi-route'], .99):.0f} "
                     f"| {pct(by['jisi'], .5):.0f} "
                     f"| {run.rss.peak / 2**20:.0f} |")
    return lines


def report(args: argparse.Namespace, label: str, run: Run) -> str:
    outcomes, wall, rss, metrics, stub, load = run.outcomes, run.wall, run.rss, run.metrics, run.stub, run.load
    kinds = Counter(o.kind for o in outcomes)
    lost = [o for o in outcomes if o.kind == "lost"]
    avg = ["/".join(f"{x:.2f}" for x in la) for la in load]
    lines = [
        f"### {label}", "",
        f"{len(outcomes)} requests at concurrency {args.concurrency} on loopback; the gateway in its own process "
        f"(uvicorn), stub upstreams in another: lognormal delay (median {args.latency_ms:g} ms, sigma "
        f"{args.sigma:g}), {100 * args.failure_rate:g}% injected failures (429 with Retry-After, 500, 503, "
        "dropped connection), the gateway's retries at their defaults"
        + (f"; upstream {args.hang} hangs on every call (timeout_s {HANG_TIMEOUT_S:g} s)" if args.hang else "")
        + ". Mix: "
        + ", ".join(f"{100 * v:.0f}% {k}" for k, v in MIX.items()) + f"; {100 * STREAM_SHARE:.0f}% of valid "
        f"requests streamed. Load average (1/5/15 min) before {avg[0]}, after {avg[1]} (2 cores, shared).", "",
        f"**lost: {len(lost)}** | ok: {kinds['ok']} | clean errors: {kinds['error']} | "
        f"degraded answers: {sum(o.degraded for o in outcomes)} | {len(outcomes) / wall:.1f} req/s over "
        f"{wall:.1f} s", "",
        "| target | stream | n | ok | clean error | lost | degraded | p50 ms | p95 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.target, "yes" if o.stream else "no"), []).append(o)
    groups[("all", "")] = outcomes
    for (target, stream), group in sorted(groups.items(), key=lambda kv: kv[0][0] == "all"):
        ms, c = [o.ms for o in group], Counter(o.kind for o in group)
        lines.append(f"| {target} | {stream} | {len(group)} | {c['ok']} | {c['error']} | {c['lost']} | "
                     f"{sum(o.degraded for o in group)} | " + " | ".join(f"{pct(ms, q):.0f}" for q in (.5, .95, .99))
                     + " |")
    growth = rss.marks["100%"] - rss.marks["50%"]  # after start-up growth settles: a leak keeps climbing
    errors = Counter(o.detail for o in outcomes if o.kind == "error")
    lines += ["", "Gateway RSS (MiB): " + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in rss.marks.items())
              + f"; peak {rss.peak / 2**20:.0f}; growth over the second half of the run {growth / 2**20:+.1f}", "",
              "Clean errors: " + (", ".join(f"{d} x{n}" for d, n in errors.most_common()) or "none"), "",
              "Gateway /metrics: " + ", ".join(f"{k} {v:g}" for k, v in metrics.items()), "",
              "Stub upstreams: " + ", ".join(f"{k} {v}" for k, v in sorted(stub.items()))]
    if lost:
        lines += ["", "Lost: " + ", ".join(f"{d} x{n}" for d, n in Counter(o.detail for o in lost).most_common())]
    return "\n".join(lines)


def run_gateway(args: argparse.Namespace, backend: str) -> Run:
    """One stub, one gateway configured with `embedder: {backend: ...}` on a bank built with it, the plan driven."""
    bank = ensure_bank(None, backend=backend)
    models = list(read_manifest(bank).models)
    hang = args.hang
    if hang and hang not in models:
        raise SystemExit(f"--hang {hang}: not a bank model ({', '.join(models)})")
    load = [os.getloadavg()]
    stub_args = ["--latency-ms", str(args.latency_ms), "--sigma", str(args.sigma),
                 "--failure-rate", str(args.failure_rate), "--seed", str(args.seed),
                 *(["--hang-models", hang] if hang else [])]
    with StubServer(stub_args) as stub, tempfile.TemporaryDirectory(prefix="jisi-load-") as tmp:
        gateway = start_gateway(Path(tmp), bank, {m: (stub.base_url, m) for m in models},
                                timeout_s=HANG_TIMEOUT_S if hang else 30, embedder={"backend": backend})
        try:
            assert gateway.proc is not None
            rss = RssMonitor(gateway.proc.pid)
            rss.mark("ready")
            asyncio.run(drive(gateway.url, request_plan(args.warmup, args.seed + 1, models), 8, args.timeout_s,
                              rss, progress=False))
            print(f"{backend}: gateway pid {gateway.proc.pid}: RSS {rss.mark('before (after warm-up)') / 2**20:.0f} "
                  f"MiB; {args.requests} requests at c={args.concurrency} ...", flush=True)
            outcomes, wall = asyncio.run(drive(gateway.url, request_plan(args.requests, args.seed, models),
                                               args.concurrency, args.timeout_s, rss))
            time.sleep(args.settle_s)
            rss.mark(f"after {args.settle_s:g} s idle")
            metrics = metric_totals(httpx.get(gateway.url + "/metrics", timeout=10).text)
            stub_stats = stub.stats()
        finally:
            gateway.stop()
    load.append(os.getloadavg())
    return Run(outcomes, wall, rss, metrics, stub_stats, load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=120.0, help="median stub delay")
    parser.add_argument("--sigma", type=float, default=0.5, help="lognormal shape of the stub delay")
    parser.add_argument("--failure-rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--warmup", type=int, default=64, help="requests before the 'before' RSS")
    parser.add_argument("--settle-s", type=float, default=5.0, help="idle time before the last RSS reading")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="client timeout: longer counts as lost")
    parser.add_argument("--embedders", default=",".join(EMBEDDERS),
                        help=f"which gateways, one after the other, each on a bank built with its embedder "
                             f"(default: {','.join(EMBEDDERS)})")
    parser.add_argument("--hang", help="an upstream that accepts calls and never answers: a bank model, or "
                                       "'strongest' (the bank's most accurate model)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    labels = [label.strip() for label in args.embedders.split(",") if label.strip()]
    unknown = [label for label in labels if label not in EMBEDDERS]
    if unknown or not labels:
        parser.error(f"--embedders: choose among {', '.join(EMBEDDERS)}")
    if args.hang == "strongest":  # the banks hold the same records, whichever embedder
        args.hang = strongest_model(ensure_bank(None, backend=EMBEDDERS[labels[0]]))
    runs = {label: run_gateway(args, EMBEDDERS[label]) for label in labels}
    lines = ["## Load test" + (", one upstream hanging" if args.hang else "") + " (bench/load_test.py)", "",
             f"`{' '.join(['python -m bench.load_test', *sys.argv[1:]])}`", "",
             "One gateway per embedder, one after the other, each on a mini-bench bank built with it at its "
             "defaults, the same seeded plan and stub settings:", "", *summary(runs)]
    for label, run in runs.items():
        lines += ["", report(args, label, run)]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        print(f"\nwritten to {write_section('load-test-hanging' if args.hang else 'load-test', text)}")
    sys.exit(1 if any(o.kind == "lost" for run in runs.values() for o in run.outcomes) else 0)


if __name__ == "__main__":
    main()
