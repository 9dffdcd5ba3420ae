"""Does the gateway make the decisions the evaluator scored? Decision by decision, through the real HTTP path.

    python -m bench.parity --records ../shared/data/mini-bench.tar.gz [--max-queries N] [--out DIR]
                           [--prices ../shared/data/prices.json] [--latency-ms 0 | MEDIAN[,SIGMA]] [--quorum-slack 0]
                           [--model-quorum] [--embedder static|local]

1. `jisi-bank evaluate --calibrate --decisions` on the records: a bank from the train split at the paper's
   defaults, the calibration on the train folds, and decisions.jsonl (every test question x jisi_route,
   jisi_route_calibrated, jisi_shortcut, jisi_cascade, jisi_economy).
2. `jisi-bank calibrate --bank` on a copy of that bank: the calibrated bank a user would serve (its choice must be
   the evaluator's).
3. The replay upstream (`jisi-pool replay`) over the test split, and two gateways (`jisi-gateway`, as deployed)
   with every model of the records as an upstream, priced from the price file: one on the paper-default bank
   (`jisi-route`), one on the calibrated bank (`jisi-route` with the shortcut off, and with its calibrated
   threshold, and `jisi-economy`: the bank's economy profile, its cascade included).
4. Every test question through each, compared with its decisions.jsonl line: the candidates (in order), the model
   that answered, the models called and the cost. It prints the agreement per method and every mismatch, writes
   parity.json, and exits 1 below --min-agreement.

With --latency-ms above 0 the replay upstream answers after each model's seeded latency, and the gateway's
quorum (answer once K − quorum_slack candidates answered, then a grace) can cut the slowest candidate. Without
--model-quorum the evaluator scores every recorded answer, and the agreement measures what the quorum changes; with
it the evaluator replays the quorum against the same seeded latencies (`evaluate --quorum`) and parity holds again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import httpx
import numpy as np

from app.config import EmbedderSettings
from app.engine import JiSiParams
from bank_builder.evaluate import scores as metrics
from bank_builder.evaluate.calibrate_cli import CalibrateOptions, run_calibration
from bank_builder.evaluate.decisions import read_decisions
from bank_builder.evaluate.run import EvaluateOptions, evaluate
from bank_builder.records import RecordSelection
from bank_builder.records.latency import parse_latency
from bench.common import REPO, ServerProcess, free_port, pct, start_gateway

METHODS = ("jisi_route", "jisi_route_calibrated", "jisi_shortcut", "jisi_cascade", "jisi_economy")
COST_RTOL = 1e-6  # the gateway books usage x price per call, the records price x usage: equal up to rounding


@dataclass(frozen=True)
class Served:
    """What the gateway did for one question, read from its response's `jisi` object."""

    candidates: list[str]
    answered_by: str | None
    calls: list[str]
    cost_usd: float
    degraded: bool
    latency_s: float
    error: str | None = None


def request_body(query: str, method: str, cascade: float | None = None) -> dict[str, Any]:
    model = "jisi-economy" if method == "jisi_economy" else "jisi-route"  # the bank's economy profile
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": query}]}
    if method == "jisi_route_calibrated":
        body["jisi"] = {"shortcut": None}  # the calibrated bank's setting, always fanning out
    if method == "jisi_cascade":  # the calibrated setting with the cascade at the folds' threshold
        body["jisi"] = {"shortcut": None, "cascade": cascade}
    return body


async def serve_all(url: str, method: str, queries: list[str], concurrency: int,
                    cascade: float | None = None) -> list[Served]:
    """Every question through one gateway, `concurrency` at a time."""
    limit = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, query: str) -> Served:
        async with limit:
            started = time.perf_counter()
            response = await client.post(f"{url}/v1/chat/completions", json=request_body(query, method, cascade))
            elapsed = time.perf_counter() - started
        if response.status_code != 200:
            return Served([], None, [], 0.0, True, elapsed, f"HTTP {response.status_code}: {response.text[:200]}")
        jisi = response.json()["jisi"]
        return Served(jisi["candidates"], jisi["answered_by"], [c["model"] for c in jisi["calls"]],
                      float(jisi["total_cost_usd"]), bool(jisi["degraded"]), elapsed)

    async with httpx.AsyncClient(timeout=600) as client:
        return list(await asyncio.gather(*(one(client, q) for q in queries)))


def differences(expected: dict[str, Any], served: Served) -> list[str]:
    """How the gateway's decision differs from the evaluator's, in words ([] when they agree)."""
    if served.error or expected["answered_by"] is None:  # every call failed: a 502 online, a -1 choice offline
        both = bool(served.error) and expected["answered_by"] is None and served.error.startswith("HTTP 502")
        return [] if both else [served.error or f"answered by {served.answered_by} (evaluator: every call failed)"]
    out = []
    if served.candidates != expected["candidates"]:
        out.append(f"candidates {served.candidates} (evaluator: {expected['candidates']})")
    if served.answered_by != expected["answered_by"]:
        out.append(f"answered_by {served.answered_by} (evaluator: {expected['answered_by']})")
    if sorted(served.calls) != sorted(expected["calls"]):
        out.append(f"calls {served.calls} (evaluator: {expected['calls']})")
    if not np.isclose(served.cost_usd, expected["cost_usd"], rtol=COST_RTOL, atol=1e-12):
        out.append(f"cost {served.cost_usd:.10f} (evaluator: {expected['cost_usd']:.10f})")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.parity", description=__doc__.splitlines()[0])
    parser.add_argument("--records", required=True, type=Path, action="append")
    parser.add_argument("--max-queries", type=int, help="a seeded subset of at most N questions per dataset")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--prices", type=Path, default=REPO.parent / "shared" / "data" / "prices.json")
    parser.add_argument("--out", type=Path, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--cache-dir", type=Path, help="embedding cache of the evaluation (default: the user's)")
    parser.add_argument("--latency-ms", default="0", help="the replay upstream's MEDIAN[,SIGMA] latency (0: none)")
    parser.add_argument("--quorum-slack", type=int, default=None, help="the gateway's quorum_slack (default: its own)")
    parser.add_argument("--model-quorum", action="store_true",
                        help="the evaluator models the gateway's quorum against the same latencies (evaluate --quorum)")
    parser.add_argument("--embedder", choices=["static", "local"], default="static",
                        help="the embedder of queries and answers, in the evaluator and the gateway alike (default: "
                             "the default, the static model; local: MiniLM)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--settings", type=int, default=40, help="settings the calibration tries")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per gateway")
    parser.add_argument("--min-agreement", type=float, default=1.0, help="exit 1 below this share, per method")
    parser.add_argument("--show", type=int, default=20, help="mismatches printed per method")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="jisi-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, work)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    selection = RecordSelection(paths=tuple(args.records), max_queries_per_dataset=args.max_queries, seed=args.seed)
    embedder = EmbedderSettings(backend=args.embedder, **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    started = time.perf_counter()
    results = evaluate(EvaluateOptions(records=selection, out=work / "eval", embedder=embedder, params=JiSiParams(),
                                       prices=args.prices, plots=False, resamples=200, calibrate=True,
                                       folds=args.folds, settings=args.settings, decisions=True,
                                       quorum=parse_latency(args.latency_ms) if args.model_quorum else None))
    bank = work / "eval" / "bank"
    calibrated_bank = work / "bank-calibrated"
    shutil.copytree(bank, calibrated_bank, dirs_exist_ok=True)
    calibration = run_calibration(CalibrateOptions(records=selection, out=work / "calibrate", embedder=embedder,
                                                               params=JiSiParams(), prices=args.prices, folds=args.folds,
                                                   settings=args.settings, bank=calibrated_bank))
    same_choice = calibration["params"] == results["calibration"]["params"] and \
        calibration["profiles"]["economy"]["params"] == results["calibration"]["profiles"]["economy"]["params"]
    t_offline = time.perf_counter() - started
    decisions = read_decisions(work / "eval" / "decisions.jsonl")
    models = results["config"]["models"]

    replay_port = free_port()
    replay_argv = [sys.executable, "-m", "localpool.cli", "replay", *[a for p in args.records for a in
                   ("--records", str(p))], "--split", "test", "--seed", str(args.seed), "--port", str(replay_port),
                   "--latency-ms", args.latency_ms, *(["--max-queries", str(args.max_queries)] if args.max_queries
                                                     else [])]
    settings: dict[str, Any] = {} if args.quorum_slack is None else {"resilience": {"quorum_slack": args.quorum_slack}}
    settings["embedder"] = embedder.model_dump(mode="json", exclude={"cache_dir"})
    upstreams = {m: (f"http://127.0.0.1:{replay_port}/v1", m) for m in models}
    priced = metrics.upstream_prices(models, args.prices)
    report: dict[str, Any] = {"records": [str(p) for p in args.records], "max_queries": args.max_queries,
                              "latency_ms": args.latency_ms, "quorum_slack": args.quorum_slack,
                              "evaluator_models_quorum": args.model_quorum,
                              "calibration_matches_evaluator": same_choice,
                              "calibrated_params": results["calibration"]["params"], "methods": {}}
    with ServerProcess(replay_argv, replay_port, timeout_s=600, log_path=work / "replay.log"):
        for method in METHODS:
            rows = [d for d in decisions if d["method"] == method]
            gateway_dir = work / f"gateway-{method}"
            gateway_dir.mkdir(exist_ok=True)
            gateway = start_gateway(gateway_dir, bank if method == "jisi_route" else calibrated_bank, upstreams,
                                    timeout_s=120, upstream_settings=priced, **settings)
            try:
                served = asyncio.run(serve_all(gateway.url, method, [d["query"] for d in rows], args.concurrency,
                                               results["calibration"]["cascade"]["threshold"]))
            finally:
                gateway.stop()
            report["methods"][method] = compare(method, rows, served, args.show)
    report["offline_s"] = round(t_offline, 1)
    report["total_s"] = round(time.perf_counter() - started, 1)
    (work / "parity.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"\ncalibrate --bank chose the evaluator's parameters: {same_choice}")
    print(f"offline {report['offline_s']} s, total {report['total_s']} s; report in {work / 'parity.json'}")
    worst = min(m["agreement"] for m in report["methods"].values())
    return 0 if worst >= args.min_agreement and same_choice else 1


def compare(method: str, rows: list[dict[str, Any]], served: list[Served], show: int) -> dict[str, Any]:
    mismatches = []
    for row, got in zip(rows, served):
        diff = differences(row, got)
        if diff:
            mismatches.append({"dataset": row["dataset"], "index": row["index"], "differences": diff,
                               "degraded": got.degraded})
    n = len(rows)
    agreement = (n - len(mismatches)) / n if n else 1.0
    latencies = [s.latency_s for s in served]
    answered = [row["answered_by"] == got.answered_by for row, got in zip(rows, served)]
    print(f"{method:<24} {n - len(mismatches)}/{n} decisions agree ({100 * agreement:.2f} %); answered_by "
          f"{sum(answered)}/{n}; request p50 {1000 * pct(latencies, 0.5):.0f} ms, p99 {1000 * pct(latencies, 0.99):.0f} ms")
    for m in mismatches[:show]:
        print(f"  {m['dataset']}#{m['index']}: " + "; ".join(m["differences"]))
    return {"questions": n, "agree": n - len(mismatches), "agreement": agreement,
            "answered_by_agreement": sum(answered) / n if n else 1.0,
            "degraded": sum(s.degraded for s in served), "mismatches": mismatches,
            "request_p50_ms": round(1000 * pct(latencies, 0.5), 1), "request_p99_ms": round(1000 * pct(latencies, 0.99), 1)}


if __name__ == "__main__":
    raise SystemExit(main())
