"""How much slower the response-aware cascade answers than the fan-out, online: the demo's setup (a calibrated bank
of the train split, the replay upstream over the test split with every model at its recorded latency, the gateway
as deployed), the same test questions through `jisi-route` fanning out to K, and through the cascade at each given
threshold. Prints per method the request latency (p50, p90, mean), calls and cost per question and accuracy (the
replay grades), and a what-if for hedging: the cascade's second call started after D ms instead of after the first
answer, from the calls' own latencies (a model, not a measurement: what it would cost and save).

    python -m bench.cascade_latency --records ../shared/data/zeroeval-bench.tar.xz --n 120 --cascade 1.0 1.25
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import httpx

from bench.common import pct
from localpool.demo import DemoBank, best_single_on_train, prepare, running

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


async def ask_all(url: str, grader: str, questions: list[str], jisi: dict[str, Any],
                  concurrency: int) -> list[dict[str, Any]]:
    limit = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, question: str) -> dict[str, Any]:
        async with limit:
            started = time.perf_counter()
            r = await client.post(f"{url}/v1/chat/completions", json={
                "model": "jisi-route", "messages": [{"role": "user", "content": question}], "jisi": jisi})
            elapsed = time.perf_counter() - started
        body = r.json()
        if r.status_code != 200:
            return {"error": body.get("error", {}).get("message"), "latency_s": elapsed}
        info = body["jisi"]
        graded = (await client.post(f"{grader}/grade", json={"question": question, "content": body["choices"][0][
            "message"]["content"], "model": info["answered_by"]})).json()
        return {"latency_s": elapsed, "calls": [(c["model"], c["latency_ms"], c["cost_usd"]) for c in info["calls"]],
                "cost": info["total_cost_usd"], "correct": bool(graded.get("correct"))}

    async with httpx.AsyncClient(timeout=600) as client:
        return list(await asyncio.gather(*(one(client, q) for q in questions)))


def hedged(rows: list[dict[str, Any]], delay_ms: float) -> tuple[float, float, int]:
    """(mean latency ms, p90 latency ms, hedges wasted) if the second call had started `delay_ms` after the first
    one whenever the first had not answered by then (the calls' recorded latencies; later calls as they were). A
    hedge is wasted where the first answer stopped the cascade but came after the delay: a call paid for nothing."""
    latencies, wasted = [], 0
    for row in rows:
        calls = row["calls"]
        if len(calls) >= 2:
            first, second = calls[0][1], calls[1][1]
            latencies.append(max(first, min(first, delay_ms) + second) + sum(c[1] for c in calls[2:]))
        else:
            latencies.append(calls[0][1] if calls else 0.0)
            wasted += bool(calls) and calls[0][1] > delay_ms
    return statistics.mean(latencies), pct(latencies, 0.9), wasted


def report(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    lat = [1000 * r["latency_s"] for r in ok]
    out = {"method": name, "questions": len(rows), "errors": len(rows) - len(ok),
           "p50_ms": round(pct(lat, 0.5)), "p90_ms": round(pct(lat, 0.9)), "mean_ms": round(statistics.mean(lat)),
           "calls_per_q": round(statistics.mean(len(r["calls"]) for r in ok), 2),
           "cost_per_q_usd": statistics.mean(r["cost"] for r in ok),
           "accuracy": round(100 * statistics.mean(r["correct"] for r in ok), 1)}
    print(f"{name:<22} p50 {out['p50_ms']:>6} ms  p90 {out['p90_ms']:>6} ms  mean {out['mean_ms']:>6} ms  "
          f"calls {out['calls_per_q']:.2f}  cost {out['cost_per_q_usd']:.5f}  accuracy {out['accuracy']:.1f} %  "
          f"errors {out['errors']}", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cascade_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, default=SHARED / "zeroeval-bench.tar.xz")
    parser.add_argument("--prices", type=Path, default=SHARED / "prices.json")
    parser.add_argument("--cache", type=Path, default=Path("var/demo"), help="the demo's bank cache")
    parser.add_argument("--bank", type=Path, help="serve this bank (of the records' train split) instead")
    parser.add_argument("--n", type=int, default=120, help="test questions (the replay's seeded order)")
    parser.add_argument("--cascade", type=float, nargs="+", default=[1.0], help="cascade thresholds to measure")
    parser.add_argument("--hedge-ms", type=float, nargs="*", default=[500.0, 1000.0, 2000.0])
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    if args.bank:
        best, models = best_single_on_train([args.records], 42)
        work = Path(tempfile.mkdtemp(prefix="jisi-cascade-"))
        demo = DemoBank(work, args.bank, best, models, None)
    else:
        demo = prepare([args.records], args.prices, args.cache)
    with running(demo, [args.records], args.prices) as (replay, gateway):
        questions = [q["question"] for q in httpx.get(f"{replay.url}/questions", params={"n": args.n},
                                                       timeout=30).json()["data"]]
        fan = asyncio.run(ask_all(gateway.url, replay.url, questions, {"shortcut": None}, args.concurrency))
        report("fan-out (K)", fan)
        for theta in args.cascade:
            rows = asyncio.run(ask_all(gateway.url, replay.url, questions, {"shortcut": None, "cascade": theta},
                                       args.concurrency))
            report(f"cascade {theta:g}", rows)
            two = sum(len(r.get("calls", [])) >= 2 for r in rows)
            print(f"  {two}/{len(rows)} questions called a second model", flush=True)
            for delay in args.hedge_ms:
                mean, p90, wasted = hedged([r for r in rows if "error" not in r], delay)
                print(f"  hedged after {delay:g} ms (what-if): mean {mean:.0f} ms, p90 {p90:.0f} ms (upstream time "
                      f"only); {wasted} hedges paid for nothing", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
