"""`jisi-bank evaluate`: a bank from the train split, every test query replayed through the engine, compared
with the Table 1 and LLMRouterBench baselines on the same questions, with bootstrap intervals, paired
differences against best single, LLMRouterBench's metrics and the accuracy-cost frontier; written as
results.json, results.md and plots."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.bank.format import EmbedderInfo
from app.bank.reader import Bank
from app.config import EmbedderSettings
from app.embedding import make_embedder
from app.engine import JiSiParams
from bank_builder.build import build_bank
from bank_builder.evaluate import methods as M
from bank_builder.evaluate import plots, report
from bank_builder.evaluate import scores as metrics
from bank_builder.evaluate.replay import replay
from bank_builder.evaluate.split import SplitKind, choose_split
from bank_builder.evaluate.stats import (
    N_RESAMPLES, Bootstrap, Point, cost_save, gap_to_oracle, pareto_distance, pareto_frontier, relative_gain,
)
from bank_builder.records import RecordSelection


@dataclass(frozen=True)
class EvaluateOptions:
    records: RecordSelection
    out: Path
    embedder: EmbedderSettings  # queries, and responses unless response_embedder is set
    params: JiSiParams
    response_embedder: EmbedderSettings | None = None
    split: SplitKind | None = None  # None: the records' own split when every dataset has one, else random
    train_ratio: float = 0.7  # the paper's per-dataset split
    prices: Path | None = None  # prices.json for records without a cost
    plots: bool = True
    resamples: int = N_RESAMPLES


def summarise(outcomes: dict[str, M.Outcome], datasets: list[str], boot: Bootstrap,
              points: dict[str, list[Point]]) -> tuple[dict[str, dict[str, Any]], list[Point]]:
    """Each method's accuracy (with its interval), cost and calls, its paired difference to best_single and
    LLMRouterBench's metrics; `points` adds operating points (a knob's settings) to the frontier."""
    out: dict[str, dict[str, Any]] = {}
    for name, o in outcomes.items():
        summary = metrics.method_summary(o.correct, datasets, o.cost, o.calls, o.unpriced)
        summary["ci95"] = list(boot.interval(o.correct))
        if o.note:
            summary["note"] = o.note
        out[name] = summary
    main = [Point(n, out[n]["cost_per_query_usd"], out[n]["average"]) for n in out if n != "oracle"]
    frontier = pareto_frontier(main + [p for ps in points.values() for p in ps])
    best, rand, oracle = out["best_single"], out["random"]["average"], out["oracle"]["average"]
    best_point = Point("best_single", best["cost_per_query_usd"], best["average"])
    for name, summary in out.items():
        acc = summary["average"]
        summary["delta_vs_best_single"] = boot.paired(outcomes[name].correct, outcomes["best_single"].correct)
        summary["gain_over_random"] = relative_gain(acc, rand)
        summary["gain_over_best_single"] = relative_gain(acc, best["average"])
        summary["gap_to_oracle"] = gap_to_oracle(acc, oracle)
        own = Point(name, summary["cost_per_query_usd"], acc)
        summary["pareto_distance"] = None if name == "oracle" else pareto_distance(own, frontier)
        summary["cost_save"] = cost_save([own, *points.get(name, [])], best_point)
    return out, frontier


def evaluate(options: EvaluateOptions) -> dict[str, Any]:
    params, selection, out = options.params, options.records, options.out
    started = time.perf_counter()
    matrix = selection.load(progress=True)
    t_load = time.perf_counter() - started
    train_rows, test_rows, split_kind = choose_split(matrix.datasets, matrix.splits, matrix.indices, options.split,
                                                     seed=selection.seed, train_ratio=options.train_ratio)
    train, test = matrix.subset(train_rows), matrix.subset(test_rows)
    if not len(test.queries) or not len(train.queries):
        raise ValueError("the train or the test split is empty: change --train-ratio or add records")
    embedder = make_embedder(options.embedder)
    responses_by = make_embedder(options.response_embedder) if options.response_embedder else embedder

    t = time.perf_counter()
    split = {"part": "train", "kind": split_kind, "seed": selection.seed, "train_ratio": options.train_ratio,
             "max_queries_per_dataset": selection.max_queries_per_dataset}
    build_bank(train, embedder, out / "bank", params=params, split=split, response_embedder=responses_by)
    t_build = time.perf_counter() - t
    bank = Bank.load(out / "bank", query_embedder=EmbedderInfo.of(embedder),
                     response_embedder=EmbedderInfo.of(responses_by))

    t = time.perf_counter()
    run = replay(bank, test, embedder, params, response_embedder=responses_by)
    t_replay = time.perf_counter() - t

    t = time.perf_counter()
    prices = metrics.load_prices(options.prices) if options.prices else {}
    cost, _ = metrics.cost_matrix(test.cost, test.prompt_tokens, test.completion_tokens, test.models, prices)
    outcomes = M.baseline_outcomes(train, test, np.asarray(bank.e), run.e_test, run.retrieval_choice, cost,
                                   selection.seed)
    outcomes["jisi_route"] = M.route_outcome(test, run, run.route_choice, cost,
                                             note="router-only: top-1 of the fine score g^f")
    boot = Bootstrap(test.datasets, options.resamples, seed=selection.seed)
    methods, frontier = summarise(outcomes, test.datasets, boot, {})
    t_methods = time.perf_counter() - t
    # the switch's real cost: candidates, extra final-set calls and the (estimated) aggregator call
    usd, calls, _ = metrics.jisi_cost(run.candidates, run.final_sets, run.aggregators, run.outcomes, cost,
                                      test.prompt_tokens, test.completion_tokens, test.models, prices)
    results = {
        "methods": methods,
        "not_replayable": M.NOT_REPLAYABLE,
        "pareto_frontier": [p.__dict__ for p in frontier],
        "jisi_switch": metrics.switch_summary(test.models, test.datasets, test.score, test.present,
                                              run.final_sets, run.aggregators, run.outcomes, calls, usd),
        "support": metrics.support_summary(run.support_sizes, run.capped, params.max_support),
        "config": {
            **selection.describe(), "split": split_kind, "models": test.models,
            "train_queries": len(train.queries), "test_queries": len(test.queries),
            "train_ratio": options.train_ratio if split_kind == "random" else None,
            "params": params.__dict__, "embedder": EmbedderInfo.of(embedder).model_dump(),
            "response_embedder": EmbedderInfo.of(responses_by).model_dump(),
            "prices": str(options.prices) if options.prices else None,
            "bootstrap": {"resamples": options.resamples, "seed": selection.seed, "stratified_by": "dataset",
                          "level": 0.95},
        },
        "timing": {
            "load_records_s": round(t_load, 2), "build_bank_s": round(t_build, 2),
            "replay_s": round(t_replay, 2), "methods_s": round(t_methods, 2),
            "total_s": round(time.perf_counter() - started, 2),
            **{k: round(v, 4) for k, v in run.timing.items()},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    report.write_results(out, results)
    if options.plots:
        plots.plot_accuracy_vs_cost(results, out / "accuracy_vs_cost.png")
        plots.plot_model_selection(test.models, test.datasets, run.route_choice, run.final_sets,
                                   out / "model_selection.png")
    print(report.format_table(results))
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}" + (" and plots" if options.plots else ""),
          file=sys.stderr)
    return results
