"""Table 1 baselines over recorded benchmark scores: pure numpy in, choices or correctness out.

Shapes: rows are queries, columns the M models (bank order). `score` is 1 correct / 0 wrong,
`present` marks which (query, model) records exist. A missing record scores 0 and is never
chosen while another model of that query has a record: every router below falls back to its
next-ranked present model, so a gap in the data is not mistaken for a wrong answer.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Sequence

import numpy as np
from sklearn.cluster import KMeans


def train_accuracy(score: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Per-model accuracy over that model's present records; NaN for a model with no record."""
    present = np.asarray(present, dtype=bool)
    n = present.sum(axis=0)
    hits = np.where(present, np.asarray(score, dtype=np.float64), 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hits / np.maximum(n, 1), np.nan)


def rank_models(accuracy: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Model indices best first; ties by `tiebreak` (higher first), then lower index; NaN last."""
    acc = np.nan_to_num(np.asarray(accuracy, dtype=np.float64), nan=-np.inf)
    second = np.zeros_like(acc) if tiebreak is None else np.nan_to_num(tiebreak, nan=-np.inf)
    return np.lexsort((np.arange(acc.size), -second, -acc))


def first_present(ranking: np.ndarray, present_test: np.ndarray) -> np.ndarray:
    """Per query, the best-ranked model that has a record (ranking[0] if none has one).

    `ranking` is one order (M,) for every query or one order per query (Nt, M).
    """
    present_test = np.asarray(present_test, dtype=bool)
    order = np.broadcast_to(np.asarray(ranking), present_test.shape)
    ok = np.take_along_axis(present_test, order, axis=1)
    pos = np.where(ok.any(axis=1), ok.argmax(axis=1), 0)
    return order[np.arange(order.shape[0]), pos].astype(np.int64)


def fingerprint(*arrays: np.ndarray, decimals: int = 6) -> str:
    """sha256 of the arrays rounded to `decimals` (shapes included): a fitted state, compared across runs."""
    digest = hashlib.sha256()
    for a in arrays:
        rounded = np.round(np.asarray(a, dtype=np.float64), decimals) + 0.0  # + 0.0: -0.0 hashes as 0.0
        digest.update(repr(rounded.shape).encode())
        digest.update(np.ascontiguousarray(rounded).tobytes())
    return digest.hexdigest()


def best_single(score_train: np.ndarray, present_train: np.ndarray) -> int:
    """The model with the best train accuracy (over its present records); ties -> lower index."""
    return int(rank_models(train_accuracy(score_train, present_train))[0])


def best_single_choice(
    score_train: np.ndarray, present_train: np.ndarray, present_test: np.ndarray
) -> np.ndarray:
    """best_single for every test query; where its record is missing, the next best on train."""
    return first_present(rank_models(train_accuracy(score_train, present_train)), present_test)


def oracle(score_test: np.ndarray, present_test: np.ndarray) -> np.ndarray:
    """Per query, the best score among present models (1 if any present model is correct)."""
    masked = np.where(np.asarray(present_test, dtype=bool), score_test, 0.0)
    return masked.max(axis=1).astype(np.float64)


def random_choice(present_test: np.ndarray, seed: int = 42) -> np.ndarray:
    """One uniformly drawn present model per query (any model when none is present).

    Reported accuracy uses random_expected_accuracy, not the score of this one draw.
    """
    present_test = np.asarray(present_test, dtype=bool)
    rng = np.random.default_rng(seed)
    allowed = np.where(present_test.any(axis=1, keepdims=True), present_test, True)
    # draw the r-th allowed model of each row: vectorised, seeded, and exact (no float CDF)
    r = rng.integers(0, allowed.sum(axis=1))
    return (np.cumsum(allowed, axis=1) > r[:, None]).argmax(axis=1).astype(np.int64)


def random_expected_accuracy(score_test: np.ndarray, present_test: np.ndarray) -> np.ndarray:
    """The random baseline's accuracy: per query, the mean score over its present models.

    This is the expectation of random_choice's correctness, so the reported 'random' row has no
    sampling noise; a query with no present model scores 0.
    """
    present_test = np.asarray(present_test, dtype=bool)
    n = present_test.sum(axis=1)
    hits = np.where(present_test, score_test, 0.0).sum(axis=1)
    return np.where(n > 0, hits / np.maximum(n, 1), 0.0)


def default_n_clusters(n_train: int) -> int:
    """Avengers used 64 clusters; smaller banks get about 20 train queries per cluster."""
    return max(1, min(64, max(2, n_train // 20), n_train))


def cluster_router(
    e_train: np.ndarray,
    score_train: np.ndarray,
    present_train: np.ndarray,
    e_test: np.ndarray,
    n_clusters: int | None = None,
    seed: int = 42,
    present_test: np.ndarray | None = None,
    fitted: dict[str, Any] | None = None,
) -> np.ndarray:
    """Avengers-style router: k-means over train query embeddings, best train model per cluster.

    A test query goes to its nearest centroid's model. Within a cluster, models are ranked by
    their accuracy on the cluster's present records; ties (frequent with ~20 queries) go to the
    better model on the whole train split, then the lower index; a model with no record in the
    cluster ranks last. With present_test, a missing record falls back to the cluster's next model.
    With `fitted`, it receives what was chosen on train: n_clusters, the centroids' fingerprint, the
    cluster sizes and each cluster's best model (an index).
    """
    k = default_n_clusters(len(e_train)) if n_clusters is None else min(n_clusters, len(e_train))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(np.asarray(e_train, np.float64))
    overall = train_accuracy(score_train, present_train)
    rankings = np.stack(
        [
            rank_models(train_accuracy(score_train[km.labels_ == c], present_train[km.labels_ == c]), overall)
            for c in range(k)
        ]
    )
    if fitted is not None:
        fitted.update(n_clusters=k, centroids_sha256=fingerprint(km.cluster_centers_),
                      sizes=np.bincount(km.labels_, minlength=k).tolist(), best_model=rankings[:, 0].tolist())
    test_cluster = km.predict(np.asarray(e_test, np.float64))
    if present_test is None:
        return rankings[test_cluster, 0].astype(np.int64)
    return first_present(rankings[test_cluster], present_test)


def top_models_overall(score_train: np.ndarray, present_train: np.ndarray, k: int = 3) -> np.ndarray:
    """The k best models on the whole train split (the voters of 'Majority Voting (3 Best)')."""
    return rank_models(train_accuracy(score_train, present_train))[:k]


def top_models_per_dataset(
    score_train: np.ndarray,
    present_train: np.ndarray,
    datasets_train: Sequence[str],
    datasets_test: Sequence[str],
    k: int = 3,
) -> np.ndarray:
    """(Nt, k): per test query, the k best models on the train records of its own benchmark.

    This is the paper's MOA voter choice; it assumes the benchmark of a query is known, which a
    deployed router cannot. A benchmark absent from train falls back to the overall top k.
    """
    labels = np.asarray(datasets_train)
    fallback = top_models_overall(score_train, present_train, k)
    per_ds = {
        ds: top_models_overall(score_train[labels == ds], present_train[labels == ds], k)
        for ds in set(datasets_train)
    }
    return np.stack([per_ds.get(ds, fallback) for ds in datasets_test]).astype(np.int64)


def _normalise(prediction: str | None) -> str | None:
    if prediction is None:
        return None
    text = str(prediction).strip().lower()
    return text or None


def majority_vote(
    predictions_test: Sequence[Sequence[str | None]],
    score_test: np.ndarray,
    present_test: np.ndarray,
    top_models: np.ndarray,
) -> np.ndarray:
    """Per query correctness of voting over the extracted answers of `top_models`.

    top_models: one ranked voter list (k,) for all queries, or one per query (Nt, k), best first.
    Answers are compared after strip + lower-case; None, empty or a missing record abstains.
    The most frequent answer wins; a tie between answers goes to the best-ranked voter's answer.
    The winner is correct if any voter that gave it scored 1: answers equal after normalising can
    still score differently (the benchmark scorers are not plain string equality), and one
    correct voter shows the answer is right. All voters abstaining counts as wrong.
    """
    present_test = np.asarray(present_test, dtype=bool)
    n = present_test.shape[0]
    ranked = np.asarray(top_models, dtype=np.int64)
    voters = np.broadcast_to(ranked, (n, ranked.shape[-1]))
    out = np.zeros(n, dtype=np.float64)
    for q in range(n):
        votes: list[tuple[str, int]] = []  # (answer, model) in voter rank order
        for j in voters[q]:
            answer = _normalise(predictions_test[q][j]) if present_test[q, j] else None
            if answer is not None:
                votes.append((answer, int(j)))
        if not votes:
            continue
        counts = Counter(a for a, _ in votes)
        top = max(counts.values())
        winner = next(a for a, _ in votes if counts[a] == top)  # first = best-ranked voter
        out[q] = max(float(score_test[q, j]) for a, j in votes if a == winner)
    return out
