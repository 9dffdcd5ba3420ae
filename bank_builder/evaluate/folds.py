"""The train split's folds and what a setting scores on them: each fold's bank is the other folds (in memory,
searched exactly), its questions replayed through the engine (replay.py) and the router-only path read off the
replay for any shortcut and cascade threshold (path_calls: the shortcut where the leader is sure enough, else the
cascade, else the fan-out). The calibration (calibrate.py) and the economy profile (economy.py) score on these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold

from app.engine import JiSiParams
from bank_builder.evaluate.replay import MemoryBank, Queries, ReplayResult, cascade_stop, chosen, replay_queries
from bank_builder.evaluate.scores import calls_cost


def stratified_folds(datasets: Sequence[str], k: int, seed: int) -> list[np.ndarray]:
    """k folds of row positions, each dataset spread evenly (seeded)."""
    labels = np.asarray(datasets)
    k = max(2, min(k, int(min(np.unique(labels, return_counts=True)[1]))))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(labels)), labels)]


@dataclass(frozen=True)
class TrainSet:
    """The train split, embedded: all calibration ever sees."""

    models: list[str]
    datasets: list[str]
    e: np.ndarray  # N x d query embeddings
    r: list[np.ndarray]  # per model, N x d_r response embeddings
    v: np.ndarray  # N x M scores
    present: np.ndarray
    c: np.ndarray  # completion tokens (0 where unknown)
    empty: np.ndarray  # the recorded answer is empty
    prompt_tokens: np.ndarray  # N
    cost: np.ndarray  # N x M recorded (or priced) cost, NaN unknown
    prices: tuple[np.ndarray, np.ndarray]  # per model USD per million input / output tokens (NaN: none), forecast
    recorded: np.ndarray | None = None  # N x M each record's own cost (NaN unknown): unpriced models' forecast


@dataclass
class Fold:
    bank: MemoryBank  # the other folds
    queries: Queries  # this fold's questions, with their recorded answers
    score: np.ndarray
    cost: np.ndarray
    datasets: np.ndarray
    prices: tuple[np.ndarray, np.ndarray]


def make_folds(train: TrainSet, k: int, seed: int) -> list[Fold]:
    folds = []
    for rows in stratified_folds(train.datasets, k, seed):
        rest = np.setdiff1d(np.arange(len(train.datasets)), rows)
        bank = MemoryBank(train.models, train.e[rest], train.v[rest], train.present[rest], train.c[rest],
                          [r[rest] for r in train.r], None if train.recorded is None else train.recorded[rest])
        queries = Queries(e=train.e[rows], r=[r[rows] for r in train.r], c=train.c[rows],
                          present=train.present[rows], empty=train.empty[rows], prompt_tokens=train.prompt_tokens[rows])
        folds.append(Fold(bank, queries, np.where(train.present[rows], train.v[rows], 0.0), train.cost[rows],
                          np.asarray(train.datasets)[rows], train.prices))
    return folds


def fold_average(correct: np.ndarray, datasets: np.ndarray) -> float:
    return float(np.mean([correct[datasets == d].mean() for d in np.unique(datasets)]))


def path_calls(run: ReplayResult, threshold: float | None,
               cascade: float | None = None) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(the model answering, the models called in call order, whether the shortcut was taken) per query of the
    router-only path, with the shortcut taken where the leader's probability is at least `threshold` (None:
    never), else the cascade with this threshold (None: none; the run must hold the walked cascade). A full
    fan-out calls the candidates, then the fine score's top-1 when it was not one of them; a candidate the
    quorum cancelled answered nothing and is not counted (online it books no usage)."""
    n = len(run.route_choice)
    take = np.zeros(n, bool) if threshold is None else np.nan_to_num(run.confidence, nan=0.0) >= threshold
    choice = np.where(take, run.shortcut_choice, run.route_choice)  # -1: every call failed
    if cascade is not None and len(run.cascade) != n:
        raise ValueError("the replay walked no cascade: replay_queries(..., with_cascade=True)")
    called = []
    for q in range(n):
        if cascade is not None and not take[q]:
            stop = cascade_stop(run.cascade[q], cascade)
            choice[q] = -1 if stop is None else stop.choice
            called.append(np.asarray(stop.calls if stop else (), np.int64))
            continue
        cands = run.candidates[q][run.candidates[q] >= 0]
        extra = [] if run.route_choice[q] in cands or run.route_choice[q] < 0 else [run.route_choice[q]]
        if run.cut and run.cut[q].size:  # failed or cancelled: no answer, no usage booked
            cands = cands[~np.isin(cands, run.cut[q])]
        called.append(run.shortcut_calls[q] if take[q] else np.r_[cands, extra].astype(np.int64))
    return choice, called, take


def path_outcomes(run: ReplayResult, score: np.ndarray, cost: np.ndarray, threshold: float | None,
                  cascade: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(correct, cost, calls, unpriced calls) per query of the router-only path (path_calls)."""
    choice, called, _ = path_calls(run, threshold, cascade)
    usd, calls, unpriced = calls_cost(called, cost)
    correct = chosen(score, choice)  # a failed request: wrong
    return correct, usd, calls, unpriced


def evaluate_setting(folds: list[Fold], params: JiSiParams,
                     thresholds: Sequence[float | None] = (None,)) -> dict[Any, dict[str, Any]]:
    """Per shortcut threshold: the fold-mean accuracy, its spread, cost and calls per query."""
    return {t: result for (t, _), result in evaluate_points(folds, params, thresholds).items()}


def evaluate_points(folds: list[Fold], params: JiSiParams, thresholds: Sequence[float | None] = (None,),
                    cascades: Sequence[float | None] = (None,)) -> dict[tuple[Any, Any], dict[str, Any]]:
    """Per (shortcut threshold, cascade threshold), from one replay per fold: the fold-mean accuracy, its spread,
    cost and calls per query."""
    per: dict[Any, list[tuple[float, float, float]]] = {(t, c): [] for t in thresholds for c in cascades}
    needs_confidence = any(t is not None for t in thresholds)
    needs_cascade = any(c is not None for c in cascades)
    for fold in folds:
        run = replay_queries(fold.bank, fold.queries, params, prices=fold.prices, with_confidence=needs_confidence,
                             with_cascade=needs_cascade)
        for t, c in per:
            correct, usd, calls, _ = path_outcomes(run, fold.score, fold.cost, t, c)
            per[t, c].append((fold_average(correct, fold.datasets), float(np.nanmean(usd)), float(calls.mean())))
    return {t: {"accuracy": float(np.mean([a for a, _, _ in rows])), "accuracy_std": float(np.std([a for a, _, _ in rows])),
                "folds": [a for a, _, _ in rows], "cost_per_query_usd": float(np.mean([c for _, c, _ in rows])),
                "calls_per_query": float(np.mean([n for _, _, n in rows]))} for t, rows in per.items()}
