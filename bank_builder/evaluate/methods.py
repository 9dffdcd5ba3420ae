"""Every evaluated method as per-question outcomes on the same test questions: correct or not, what it cost,
how many calls it made. The summary statistics (stats.py) are computed from these, never from averages, so
every method gets an interval and a paired comparison.

Cost rule, the same for every method (scores.py): a method costs the sum of the upstream calls it makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bank_builder.evaluate import baselines, trained
from bank_builder.evaluate import scores as metrics
from bank_builder.records import RecordMatrix

# Table 1 / LLMRouterBench methods that need new generations, so a replay of recorded answers cannot score them
NOT_REPLAYABLE = {
    "jisi": "the adaptive switch aggregates most questions: the aggregator's new answer is not in the records "
            "(its share, aggregators, cost and the oracle of its final sets are in jisi_switch)",
    "jisi_aggregate": "always aggregates: needs the aggregator's new answer",
    "self_consistency": "needs several samples of one model per question; the records hold one",
    "moa": "Mixture-of-Agents needs new generations from its proposer and aggregator layers",
}


@dataclass(frozen=True)
class Outcome:
    """One method on the test questions."""

    correct: np.ndarray  # (Nt,) in [0, 1] (the random router's is its expectation)
    cost: np.ndarray  # (Nt,) USD, unknown prices counted as 0
    calls: np.ndarray  # (Nt,) upstream calls
    unpriced: np.ndarray  # (Nt,) calls whose cost is unknown
    note: str = ""  # how it was trained or chosen
    # what it chose on the train split, JSON-able (model names, k, fingerprints of fitted state); None: no choice
    chosen: dict[str, Any] | None = None


def _single(score: np.ndarray, choice: np.ndarray, cost: np.ndarray, note: str = "",
            chosen: dict[str, Any] | None = None) -> Outcome:
    usd, calls, unpriced = metrics.single_call_cost(choice, cost)
    return Outcome(score[np.arange(len(choice)), choice], usd, calls, unpriced, note, chosen)


def choices(outcomes: dict[str, Outcome]) -> dict[str, dict[str, Any]]:
    """Every method's choice made on the train split (results.json's `choices`): none of it may move when
    only the test split's labels, costs or answers change (tests/offline/test_choice_leak.py)."""
    return {name: o.chosen for name, o in outcomes.items() if o.chosen is not None}


def baseline_outcomes(train: RecordMatrix, test: RecordMatrix, e_train: np.ndarray, e_test: np.ndarray,
                      retrieval_choice: np.ndarray, cost: np.ndarray, seed: int) -> dict[str, Outcome]:
    """The references (oracle, random, best single, best per dataset), the training-free routers (retrieval,
    cluster), the trained ones (logistic, mf, knn) and majority voting, on the same test questions."""
    score = np.where(test.present, test.score, 0.0)
    ds = np.asarray(test.datasets)
    models = list(test.models)

    def names(idx: Any) -> list[str]:
        return [models[int(j)] for j in idx]

    out: dict[str, Outcome] = {}
    out["oracle"] = Outcome(baselines.oracle(score, test.present), *metrics.oracle_cost(cost))
    out["random"] = Outcome(baselines.random_expected_accuracy(score, test.present),
                            *metrics.expected_call_cost(cost, test.present))
    out["best_single"] = _single(score, baselines.best_single_choice(train.score, train.present, test.present),
                                 cost, "the best model on the train split",
                                 {"model": models[baselines.best_single(train.score, train.present)]})
    per_dataset: dict[str, Any] = {}
    out["best_per_dataset"] = _single(score, trained.best_per_dataset(
        train.score, train.present, train.datasets, ds, test.present, fitted=per_dataset), cost,
        "the best model of each dataset on the train split (knows each query's dataset)",
        {"models": {d: models[j] for d, j in per_dataset.items()}})
    out["retrieval"] = _single(score, retrieval_choice, cost,
                               "top-1 of g: a similarity-weighted kNN whose k is the support set")
    choice, k = trained.knn_router(e_train, train.score, train.present, e_test, test.present,
                                   np.asarray(train.datasets))
    out["knn"] = _single(score, choice, cost, f"plain kNN, k={k} chosen by leave-one-out on train", {"k": int(k)})
    clusters: dict[str, Any] = {}
    out["cluster"] = _single(score, baselines.cluster_router(e_train, train.score, train.present, e_test, seed=seed,
                                                             present_test=test.present, fitted=clusters), cost,
                             "Avengers-style k-means over query embeddings",
                             {**clusters, "best_model": names(clusters["best_model"])})
    logistic: dict[str, Any] = {}
    out["logistic"] = _single(score, trained.correctness_predictor(
        e_train, train.score, train.present, e_test, test.present, seed=seed, fitted=logistic), cost,
        "per-model logistic regression on the query embedding", logistic)
    mf: dict[str, Any] = {}
    out["mf"] = _single(score, trained.mf_router(e_train, train.score, train.present, e_test, test.present,
                                                 seed=seed, fitted=mf), cost,
                        "matrix factorisation (RouteLLM mf / EmbedLLM)", mf)
    top3 = baselines.top_models_overall(train.score, train.present, k=3)
    out["majority_vote"] = Outcome(baselines.majority_vote(test.predictions, score, test.present, top3),
                                   *metrics.calls_cost([top3] * len(ds), cost), "the 3 best models on train vote",
                                   {"voters": names(top3)})
    per_ds = baselines.top_models_per_dataset(train.score, train.present, train.datasets, ds, k=3)
    out["majority_vote_per_dataset"] = Outcome(
        baselines.majority_vote(test.predictions, score, test.present, per_ds),
        *metrics.calls_cost(list(per_ds), cost), "the 3 best of each dataset on train vote",
        {"voters": {str(d): names(per_ds[np.flatnonzero(ds == d)[0]]) for d in np.unique(ds)}})
    return out
