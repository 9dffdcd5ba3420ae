"""`jisi-bank evaluate`: bank from the train split, every test query replayed through the engine,
compared with the Table 1 baselines on the same split, written as JSON, Markdown and plots."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.bank.reader import Bank
from app.config import EmbedderSettings
from app.embedding import make_embedder
from app.engine import JiSiParams
from bank_builder.build import build_bank
from bank_builder.evaluate import baselines, plots, report
from bank_builder.evaluate import scores as metrics
from bank_builder.evaluate.replay import ReplayResult, replay
from bank_builder.evaluate.split import train_test_split
from bank_builder.records import RecordMatrix, RecordSelection


@dataclass(frozen=True)
class EvaluateOptions:
    records: RecordSelection
    out: Path
    embedder: EmbedderSettings
    params: JiSiParams
    train_ratio: float = 0.7  # the paper's per-dataset split
    prices: Path | None = None  # prices.json for records without a cost
    plots: bool = True


def _picked(score: np.ndarray, choice: np.ndarray) -> np.ndarray:
    return score[np.arange(len(choice)), choice]


def compare_methods(train: RecordMatrix, test: RecordMatrix, e_train: np.ndarray, run: ReplayResult,
                    cost: np.ndarray, seed: int) -> dict[str, dict[str, Any]]:
    """Accuracy, cost and calls per query of every method on the same test queries."""
    score = np.where(test.present, test.score, 0.0)
    ds = test.datasets
    summary = metrics.method_summary
    out: dict[str, dict[str, Any]] = {}

    choice = baselines.best_single_choice(train.score, train.present, test.present)
    out["best_single"] = summary(_picked(score, choice), ds, *metrics.single_call_cost(choice, cost))
    out["oracle"] = summary(baselines.oracle(score, test.present), ds, *metrics.oracle_cost(cost))
    out["random"] = summary(baselines.random_expected_accuracy(score, test.present), ds,
                            *metrics.expected_call_cost(cost, test.present))
    out["retrieval"] = summary(_picked(score, run.retrieval_choice), ds,
                               *metrics.single_call_cost(run.retrieval_choice, cost))
    cluster = baselines.cluster_router(e_train, train.score, train.present, run.e_test, seed=seed,
                                       present_test=test.present)
    out["cluster"] = summary(_picked(score, cluster), ds, *metrics.single_call_cost(cluster, cost))
    top3 = baselines.top_models_overall(train.score, train.present, k=3)
    out["majority_vote"] = summary(baselines.majority_vote(test.predictions, score, test.present, top3), ds,
                                   *metrics.calls_cost([top3] * len(ds), cost))
    per_ds = baselines.top_models_per_dataset(train.score, train.present, train.datasets, ds, k=3)
    out["majority_vote_per_dataset"] = summary(
        baselines.majority_vote(test.predictions, score, test.present, per_ds), ds,
        *metrics.calls_cost(list(per_ds), cost))
    route_sets = [np.array([r]) for r in run.route_choice]
    out["jisi_route"] = summary(_picked(score, run.route_choice), ds, *metrics.jisi_cost(
        run.candidates, route_sets, run.aggregators, ["route"] * len(ds), cost, test.prompt_tokens,
        test.completion_tokens, test.models, {}))
    return out


def evaluate(options: EvaluateOptions) -> dict[str, Any]:
    params, selection, out = options.params, options.records, options.out
    started = time.perf_counter()
    matrix = selection.load(progress=True)
    t_load = time.perf_counter() - started
    train_rows, test_rows = train_test_split(matrix.datasets, matrix.indices, seed=selection.seed,
                                             train_ratio=options.train_ratio)
    train, test = matrix.subset(train_rows), matrix.subset(test_rows)
    if not len(test.queries):
        raise ValueError("the test split is empty: lower --train-ratio or add records")
    embedder = make_embedder(options.embedder)

    t = time.perf_counter()
    split = {"part": "train", "seed": selection.seed, "train_ratio": options.train_ratio,
             "max_queries_per_dataset": selection.max_queries_per_dataset}
    build_bank(train, embedder, out / "bank", params=params, split=split)
    t_build = time.perf_counter() - t
    bank = Bank.load(out / "bank", embedder_name=embedder.name, dim=embedder.dim)

    t = time.perf_counter()
    run = replay(bank, test, embedder, params)
    t_replay = time.perf_counter() - t

    prices = metrics.load_prices(options.prices) if options.prices else {}
    cost, _ = metrics.cost_matrix(test.cost, test.prompt_tokens, test.completion_tokens, test.models, prices)
    methods = compare_methods(train, test, np.asarray(bank.e), run, cost, selection.seed)
    # the switch's real cost: candidates, extra final-set calls and the (estimated) aggregator call
    usd, calls, _ = metrics.jisi_cost(run.candidates, run.final_sets, run.aggregators, run.outcomes, cost,
                                      test.prompt_tokens, test.completion_tokens, test.models, prices)
    results = {
        "methods": methods,
        "jisi_switch": metrics.switch_summary(test.models, test.datasets, test.score, test.present,
                                              run.final_sets, run.aggregators, run.outcomes, calls, usd),
        "support": metrics.support_summary(run.support_sizes, run.capped, params.max_support),
        "config": {
            "records": [str(p) for p in selection.paths], "datasets": list(selection.datasets or []) or None,
            "models": test.models, "train_queries": len(train.queries), "test_queries": len(test.queries),
            "seed": selection.seed, "train_ratio": options.train_ratio,
            "max_queries_per_dataset": selection.max_queries_per_dataset,
            "params": params.__dict__, "embedder": {"name": embedder.name, "dim": embedder.dim},
            "prices": str(options.prices) if options.prices else None,
        },
        "timing": {
            "load_records_s": round(t_load, 2), "build_bank_s": round(t_build, 2),
            "replay_s": round(t_replay, 2), "total_s": round(time.perf_counter() - started, 2),
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
