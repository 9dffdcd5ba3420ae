"""Trained routers as LLMRouterBench runs them, on the train split and the query embeddings JiSi uses, so
every router sees the same information: a per-model correctness predictor (logistic regression), a
matrix-factorisation router (RouteLLM's `mf` / EmbedLLM: learned model vectors against a projection of the
query embedding), a plain k-nearest-neighbour router, and the best model of each dataset chosen on train.

Each returns one model per test query, among the models that have a record for it (the evaluator replays
recorded answers). Seeded, CPU-only; the largest (the MF router on mmlupro-bench, ~235k pairs) trains in
well under a minute on two cores.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
from sklearn.linear_model import LogisticRegression

from bank_builder.evaluate.baselines import fingerprint, first_present, rank_models, train_accuracy

KNN_KS = (10, 25, 50, 100)  # the kNN router's k, chosen by leave-one-out on the train split


def _choose(scores: np.ndarray, present_test: np.ndarray) -> np.ndarray:
    """The best-scored model per query among those with a record (any model when none has one)."""
    masked = np.where(np.asarray(present_test, dtype=bool), scores, -np.inf)
    masked = np.where(np.isfinite(masked).any(axis=1, keepdims=True), masked, scores)
    return masked.argmax(axis=1).astype(np.int64)


def correctness_predictor(e_train: np.ndarray, score_train: np.ndarray, present_train: np.ndarray,
                          e_test: np.ndarray, present_test: np.ndarray, *, c: float = 1.0,
                          seed: int = 42, fitted: dict[str, Any] | None = None) -> np.ndarray:
    """One logistic regression per model, P(correct | query embedding), trained on that model's train
    records; each test query goes to the model with the highest predicted probability. With `fitted`, it
    receives a fingerprint of the fitted weights (a one-class model: its constant rate)."""
    m = score_train.shape[1]
    prob = np.zeros((len(e_test), m))
    weights: list[np.ndarray] = []
    for j in range(m):
        rows = np.flatnonzero(present_train[:, j])
        y = (score_train[rows, j] > 0.5).astype(int)
        if rows.size == 0 or y.min() == y.max():  # one class only: its rate is the prediction
            rate = float(y.mean()) if rows.size else 0.0
            prob[:, j] = rate
            weights.append(np.array([rate]))
            continue
        model = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(e_train[rows], y)
        prob[:, j] = model.predict_proba(e_test)[:, 1]
        weights.append(np.r_[model.coef_.ravel(), model.intercept_])
    if fitted is not None:
        fitted["weights_sha256"] = fingerprint(*weights)
    return _choose(prob, present_test)


def mf_router(e_train: np.ndarray, score_train: np.ndarray, present_train: np.ndarray, e_test: np.ndarray,
              present_test: np.ndarray, *, dim: int = 64, epochs: int = 40, lr: float = 3e-3,
              weight_decay: float = 1e-5, batch: int = 2048, seed: int = 42,
              fitted: dict[str, Any] | None = None) -> np.ndarray:
    """EmbedLLM / RouteLLM-mf style: logit(q, m) = (W e_q) . v_m + b_m, trained with binary cross-entropy on
    every (train query, model) record; a test query goes to the model with the largest logit. With `fitted`,
    it receives a fingerprint of the trained W, v and b."""
    import torch

    torch.manual_seed(seed)
    rows, cols = np.nonzero(present_train)
    x = torch.from_numpy(np.array(e_train, dtype=np.float32))  # a writable copy
    q_idx, m_idx = torch.from_numpy(rows), torch.from_numpy(cols)
    y = torch.from_numpy((score_train[rows, cols] > 0.5).astype(np.float32))
    m = score_train.shape[1]
    proj = torch.nn.Linear(x.shape[1], dim, bias=False)
    models = torch.nn.Embedding(m, dim)
    bias = torch.nn.Embedding(m, 1)
    torch.nn.init.normal_(models.weight, std=0.1)
    torch.nn.init.zeros_(bias.weight)
    params = [*proj.parameters(), *models.parameters(), *bias.parameters()]
    optimiser = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch_ids in torch.randperm(len(y), generator=generator).split(batch):
            qi, mi = q_idx[batch_ids], m_idx[batch_ids]
            logit = (proj(x[qi]) * models(mi)).sum(dim=1) + bias(mi).squeeze(1)
            loss = loss_fn(logit, y[batch_ids])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        q = proj(torch.from_numpy(np.ascontiguousarray(e_test, dtype=np.float32)))
        logits = (q @ models.weight.T + bias.weight.T).numpy()
        if fitted is not None:
            fitted["weights_sha256"] = fingerprint(proj.weight.numpy(), models.weight.numpy(), bias.weight.numpy(),
                                                   decimals=4)
    return _choose(logits, present_test)


def _knn_scores(index: faiss.Index, score: np.ndarray, present: np.ndarray, queries: np.ndarray, k: int,
                skip_self: bool = False) -> np.ndarray:
    """Per query, each model's mean score over its records among the k nearest train queries."""
    _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + int(skip_self))
    ids = ids[:, 1:] if skip_self else ids
    ids = np.where(ids < 0, 0, ids)
    hits = np.where(present[ids], score[ids], 0.0).sum(axis=1)
    counts = present[ids].sum(axis=1)
    return np.where(counts > 0, hits / np.maximum(counts, 1), 0.0)


def knn_router(e_train: np.ndarray, score_train: np.ndarray, present_train: np.ndarray, e_test: np.ndarray,
               present_test: np.ndarray, datasets_train: np.ndarray) -> tuple[np.ndarray, int]:
    """The plain kNN router: the model with the best mean score over the k nearest train queries (uniform
    weights, fixed k), k chosen among KNN_KS by leave-one-out dataset-average accuracy on the train split.
    Returns the choices and the chosen k."""
    e = np.ascontiguousarray(e_train, dtype=np.float32)
    index = faiss.IndexFlatIP(e.shape[1])
    index.add(e)
    score = np.where(present_train, score_train, 0.0)
    labels = np.asarray(datasets_train)

    def loo_accuracy(k: int) -> float:
        choice = _choose(_knn_scores(index, score, present_train, e, k, skip_self=True), present_train)
        correct = score[np.arange(len(choice)), choice]
        return float(np.mean([correct[labels == d].mean() for d in np.unique(labels)]))

    ks = [k for k in KNN_KS if k < len(e)] or [max(1, len(e) - 1)]
    best_k = max(ks, key=loo_accuracy)
    return _choose(_knn_scores(index, score, present_train, e_test, best_k), present_test), best_k


def best_per_dataset(score_train: np.ndarray, present_train: np.ndarray, datasets_train: np.ndarray,
                     datasets_test: np.ndarray, present_test: np.ndarray, *,
                     fitted: dict[str, Any] | None = None) -> np.ndarray:
    """LLMRouterBench's "Max Expert" / the papers' "best LLM per benchmark", chosen on the TRAIN split: each
    test query goes to the model most accurate on its dataset's train records (next best where it has none).
    It knows each query's dataset, which a deployed router does not. With `fitted`, it receives each test
    dataset's best train model (an index)."""
    labels_train, labels_test = np.asarray(datasets_train), np.asarray(datasets_test)
    overall = train_accuracy(score_train, present_train)
    out = np.zeros(len(labels_test), dtype=np.int64)
    for d in np.unique(labels_test):
        rows = labels_train == d
        ranking = rank_models(train_accuracy(score_train[rows], present_train[rows]), overall) if rows.any() \
            else rank_models(overall)
        if fitted is not None:
            fitted[str(d)] = int(ranking[0])
        test_rows = np.flatnonzero(labels_test == d)
        out[test_rows] = first_present(ranking, present_test[test_rows])
    return out
