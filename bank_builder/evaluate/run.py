"""`jisi-bank evaluate`: a bank from the train split, every test query replayed through the engine, compared
with the Table 1 and LLMRouterBench baselines on the same questions, with bootstrap intervals, paired
differences against best single, LLMRouterBench's metrics and the accuracy-cost frontier; written as
results.json, results.md and plots."""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.bank.format import EmbedderInfo
from app.bank.reader import Bank
from app.config import EmbedderSettings, Settings
from app.embedding import make_embedder
from app.engine import JiSiParams
from bank_builder.build import build_bank, embed_responses, embed_unique
from bank_builder.evaluate import methods as M
from bank_builder.evaluate import baselines, plots, report
from bank_builder.evaluate.explain import explain
from bank_builder.evaluate.explain import to_markdown as explain_markdown
from bank_builder.evaluate import scores as metrics
from bank_builder.evaluate.calibrate import calibrate, describe
from bank_builder.evaluate.folds import TrainSet, path_outcomes
from bank_builder.evaluate.replay import (
    QuorumModel, Queries, ReplayResult, empty_answers, query_prompt_tokens, replay_queries,
)
from bank_builder.records.latency import latency_matrix, recorded_medians_ms
from bank_builder.evaluate.decisions import decision_rows, write_decisions
from bank_builder.evaluate.split import SplitKind, choose_split, duplicate_rows
from bank_builder.evaluate.stats import (
    N_RESAMPLES, Bootstrap, Point, cost_save, gap_to_oracle, pareto_distance, pareto_frontier, relative_gain,
)
from bank_builder.records import RecordMatrix, RecordSelection

COST_WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)  # the alpha sweep of the frontier


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
    calibrate: bool = False  # choose the hyperparameters by k-fold CV on the train split (calibrate.py)
    objective: str = "accuracy"
    folds: int = 5
    settings: int = 40  # settings the calibration tries (the paper's defaults among them)
    explain: bool = False  # the per-question analysis and ablations of jisi_route (explain.md)
    decisions: bool = False  # decisions.jsonl: every JiSi decision scored, for the gateway to be compared with
    # the gateway's fan-out quorum against the replay upstream's latencies (median ms, sigma): None, every
    # candidate answers; else a candidate the quorum would cancel counts as failed on the test split
    quorum: tuple[float, float] | None = None


def replayed_queries(test: RecordMatrix, embedder, responses_by, progress: bool = True) -> Queries:
    """The test questions embedded as the gateway would embed requests, and their recorded answers as the
    live ones."""
    return Queries(e=embed_unique(embedder, test.queries, progress=progress),
                   r=embed_responses(test, responses_by, progress=progress),
                   c=np.nan_to_num(test.completion_tokens, nan=0.0), present=test.present,
                   empty=empty_answers(test), prompt_tokens=query_prompt_tokens(test))


def train_set(bank: Bank, train: RecordMatrix, cost: np.ndarray, prices: tuple[np.ndarray, np.ndarray]) -> TrainSet:
    """The train split as the calibration sees it: the bank's own arrays, nothing of the test split."""
    return TrainSet(models=bank.models, datasets=list(train.datasets), e=np.asarray(bank.e),
                    r=[np.asarray(r) for r in bank.r], v=bank.v, present=bank.present, c=bank.c,
                    empty=empty_answers(train), prompt_tokens=query_prompt_tokens(train), cost=cost, prices=prices,
                    recorded=bank.cost)


def jisi_outcome(test: RecordMatrix, run: ReplayResult, cost: np.ndarray, threshold: float | None,
                 note: str, cascade: float | None = None) -> M.Outcome:
    return M.Outcome(*path_outcomes(run, np.where(test.present, test.score, 0.0), cost, threshold, cascade), note)


def _average(outcome: M.Outcome, test: RecordMatrix) -> float:
    labels = np.asarray(test.datasets)
    return float(np.mean([outcome.correct[labels == d].mean() for d in np.unique(labels)]))


def shortcut_summary(run: ReplayResult, threshold: float | None, outcomes: dict[str, M.Outcome],
                     boot: Bootstrap) -> dict[str, Any]:
    """What the confident shortcut did on the test questions: the share it fired on, the calls with and without
    it, and its paired accuracy change against the same setting always fanning out."""
    fired = np.zeros(len(run.route_choice), bool) if threshold is None else \
        np.nan_to_num(run.confidence, nan=0.0) >= threshold
    on, off = outcomes["jisi_shortcut"], outcomes["jisi_route_calibrated"]
    return {"threshold": threshold, "share": float(fired.mean()), "calls_per_query": float(on.calls.mean()),
            "calls_per_query_without": float(off.calls.mean()),
            "accuracy_change": boot.paired(on.correct, off.correct)}


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
                                                     seed=selection.seed, train_ratio=options.train_ratio,
                                                     queries=matrix.queries)
    train, test = matrix.subset(train_rows), matrix.subset(test_rows)
    if not len(test.queries) or not len(train.queries):
        raise ValueError("the train or the test split is empty: change --train-ratio or add records")
    embedder = make_embedder(options.embedder)
    responses_by = make_embedder(options.response_embedder) if options.response_embedder else embedder

    t = time.perf_counter()
    split = {"part": "train", "kind": split_kind, "seed": selection.seed, "train_ratio": options.train_ratio,
             "max_queries_per_dataset": selection.max_queries_per_dataset,
             "duplicates_grouped": duplicate_rows(matrix.datasets, matrix.queries) if split_kind == "random" else 0}
    build_bank(train, embedder, out / "bank", params=params, split=split, response_embedder=responses_by)
    t_build = time.perf_counter() - t
    bank = Bank.load(out / "bank", query_embedder=EmbedderInfo.of(embedder),
                     response_embedder=EmbedderInfo.of(responses_by))

    t = time.perf_counter()
    queries = replayed_queries(test, embedder, responses_by)
    t_embed = time.perf_counter() - t
    prices = metrics.load_prices(options.prices) if options.prices else {}
    cost, _ = metrics.cost_matrix(test.cost, test.prompt_tokens, test.completion_tokens, test.models, prices)
    p_in, p_out = metrics.price_arrays(test.models, prices)
    quorum = None if options.quorum is None else QuorumModel(
        latency_matrix(test.models, test.queries, *options.quorum, seed=selection.seed,
                       medians_ms=recorded_medians_ms(selection.paths, datasets=selection.datasets,
                                                      models=selection.models) if options.quorum[0] else None),
        Settings().resilience)
    run = replay_queries(bank, queries, params, prices=(p_in, p_out), progress=True, quorum=quorum)
    t_replay = time.perf_counter() - t - t_embed

    t = time.perf_counter()
    outcomes = M.baseline_outcomes(train, test, np.asarray(bank.e), queries.e, run.retrieval_choice, cost,
                                   selection.seed)
    outcomes["jisi_route"] = jisi_outcome(test, run, cost, None, "router-only: top-1 of the fine score g^f")
    points: dict[str, list[Point]] = {}
    calibration, frontier_rows = None, []
    if options.decisions:
        rows = [*decision_rows("jisi_route", test, run, cost, None)]
    if options.calibrate:
        train_cost, _ = metrics.cost_matrix(train.cost, train.prompt_tokens, train.completion_tokens, train.models,
                                            prices)
        t_cal = time.perf_counter()
        calibration = calibrate(train_set(bank, train, train_cost, (p_in, p_out)), params,
                                objective=options.objective, folds=options.folds, settings=options.settings,
                                seed=selection.seed)
        calibration["wall_s"] = round(time.perf_counter() - t_cal, 1)
        chosen = params.with_overrides(calibration["params"])
        tuned = replay_queries(bank, queries, chosen.with_overrides({"shortcut": None}), prices=(p_in, p_out),
                               with_confidence=True, progress=True, quorum=quorum, with_cascade=True)
        theta = calibration["cascade"]["threshold"]
        outcomes["jisi_route_calibrated"] = jisi_outcome(test, tuned, cost, None,
                                                         "router-only with the train-CV choice")
        outcomes["jisi_shortcut"] = jisi_outcome(test, tuned, cost, chosen.shortcut,
                                                 f"the same, the leader alone when P >= {chosen.shortcut}")
        outcomes["jisi_cascade"] = jisi_outcome(test, tuned, cost, None, f"the same, the candidates one at a time, "
                                                f"cheapest first, stopping at lead >= {theta}", theta)
        economy = params.with_overrides(calibration["profiles"]["economy"]["params"])
        cheap = replay_queries(bank, queries, economy.with_overrides({"shortcut": None}), prices=(p_in, p_out),
                               with_confidence=True, progress=True, quorum=quorum)
        outcomes["jisi_economy"] = jisi_outcome(test, cheap, cost, economy.shortcut, "the economy profile: the "
                                                "cheapest train-CV point at best single's fold accuracy or above",
                                                economy.cascade)
        points["jisi_shortcut"] = [Point("jisi_shortcut", float(np.nanmean(o.cost)), _average(o, test), f"p={p}")
                                   for p in (0.5, 0.7, 0.9, 0.95, 0.99, 0.0)
                                   for o in [jisi_outcome(test, tuned, cost, p, "")]]
        for alpha in COST_WEIGHTS:
            swept = tuned if alpha == chosen.cost_weight else replay_queries(
                bank, queries, chosen.with_overrides({"shortcut": None, "cost_weight": alpha}), prices=(p_in, p_out),
                with_confidence=True)
            for shortcut in dict.fromkeys([chosen.shortcut, 0.0]):
                o = jisi_outcome(test, swept, cost, shortcut, "")
                frontier_rows.append({"cost_weight": alpha, "shortcut": shortcut, "average": _average(o, test),
                                      "cost_per_query_usd": float(np.nanmean(o.cost)),
                                      "calls_per_query": float(o.calls.mean())})
        points["jisi_cost"] = [Point("jisi_cost", r["cost_per_query_usd"], r["average"],
                                     f"alpha={r['cost_weight']}, shortcut={r['shortcut']}") for r in frontier_rows]
    if options.decisions:
        if options.calibrate:
            rows += [*decision_rows("jisi_route_calibrated", test, tuned, cost, None),
                     *decision_rows("jisi_shortcut", test, tuned, cost, chosen.shortcut),
                     *decision_rows("jisi_cascade", test, tuned, cost, None, theta),
                     *decision_rows("jisi_economy", test, cheap, cost, economy.shortcut, economy.cascade)]
        out.mkdir(parents=True, exist_ok=True)
        write_decisions(out / "decisions.jsonl", rows)
    boot = Bootstrap(test.datasets, options.resamples, seed=selection.seed)
    methods, frontier = summarise(outcomes, test.datasets, boot, points)
    shortcut = shortcut_summary(tuned, chosen.shortcut, outcomes, boot) if calibration else None
    explained = None
    if options.explain:
        best_choice = baselines.best_single_choice(train.score, train.present, test.present)
        t_ex = time.perf_counter()
        explained = explain(bank, test, queries, params, run, best_choice, boot, (p_in, p_out))
        explained["wall_s"] = round(time.perf_counter() - t_ex, 1)
    if frontier_rows:
        methods["jisi_route_calibrated"]["cost_save"] = cost_save(
            [Point("jisi_cost", r["cost_per_query_usd"], r["average"]) for r in frontier_rows],
            Point("best_single", methods["best_single"]["cost_per_query_usd"], methods["best_single"]["average"]))
    t_methods = time.perf_counter() - t
    # the switch's real cost: candidates, extra final-set calls and the (estimated) aggregator call
    usd, calls, _ = metrics.jisi_cost(run.candidates, run.final_sets, run.aggregators, run.outcomes, cost,
                                      test.prompt_tokens, test.completion_tokens, test.models, prices)
    results = {
        "methods": methods,
        # every choice made on the train split alone (tests/offline/test_choice_leak.py)
        "choices": {**M.choices(outcomes),
                    **({"jisi_calibrated": {"params": calibration["params"], "shortcut": chosen.shortcut,
                                            "cost_weight": chosen.cost_weight},
                        "jisi_cascade": {"threshold": calibration["cascade"]["threshold"]},
                        "jisi_economy": {"params": calibration["profiles"]["economy"]["params"]}}
                       if calibration else {})},
        "not_replayable": M.NOT_REPLAYABLE,
        # calibration.json keeps every setting tried and every economy point; results.json the choices
        **({"calibration": {**{k: v for k, v in calibration.items() if k != "tried"},
                            "profiles": {name: {k: v for k, v in profile.items() if k != "points"}
                                         for name, profile in calibration["profiles"].items()}},
            "cost_frontier": frontier_rows,
            "operating_points": {name: [p.__dict__ for p in ps] for name, ps in points.items()}}
           if calibration else {}),
        **({"shortcut": shortcut} if shortcut else {}),
        "pareto_frontier": [p.__dict__ for p in frontier],
        "jisi_switch": metrics.switch_summary(test.models, test.datasets, test.score, test.present,
                                              run.final_sets, run.aggregators, run.outcomes, calls, usd),
        "support": metrics.support_summary(run.support_sizes, run.capped, params.max_support),
        "config": {
            **selection.describe(), "split": split_kind, "models": test.models,
            "train_queries": len(train.queries), "test_queries": len(test.queries),
            "duplicates_grouped": split["duplicates_grouped"],
            "train_ratio": options.train_ratio if split_kind == "random" else None,
            "params": params.__dict__, "embedder": EmbedderInfo.of(embedder).model_dump(),
            "response_embedder": EmbedderInfo.of(responses_by).model_dump(),
            "prices": str(options.prices) if options.prices else None,
            "quorum": None if options.quorum is None else {"latency_median_ms": options.quorum[0],
                                                           "latency_sigma": options.quorum[1],
                                                           **Settings().resilience.model_dump(include={
                                                               "quorum", "quorum_slack", "quorum_grace_s",
                                                               "quorum_grace_ratio"})},
            "bootstrap": {"resamples": options.resamples, "seed": selection.seed, "stratified_by": "dataset",
                          "level": 0.95},
        },
        "timing": {
            "load_records_s": round(t_load, 2), "build_bank_s": round(t_build, 2),
            "embed_test_s": round(t_embed, 2), "replay_s": round(t_replay, 2), "methods_s": round(t_methods, 2),
            "total_s": round(time.perf_counter() - started, 2),
            **{k: round(v, 4) for k, v in run.timing.items()},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    report.write_results(out, results)
    if explained:
        (out / "explain.json").write_text(json.dumps(report.plain(explained), indent=1) + "\n")
        (out / "explain.md").write_text(explain_markdown(explained))
    if calibration:
        (out / "calibration.json").write_text(json.dumps(report.plain(calibration), indent=1) + "\n")
        (out / "calibration.md").write_text(describe(calibration) + "\n")
    if options.plots:
        plots.plot_accuracy_vs_cost(results, out / "accuracy_vs_cost.png")
        plots.plot_model_selection(test.models, test.datasets, run.route_choice, run.final_sets,
                                   out / "model_selection.png")
    print(report.format_table(results))
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}" + (" and plots" if options.plots else ""),
          file=sys.stderr)
    return results
