"""Steps 1-3: similarity, support set I, coarse score g, aggregator and candidates (paper §3.3), with the
optional prior (prior.py) and cost-aware ranking (cost.py) of issue 14."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.engine.cost import cost_aware
from app.engine.params import JiSiParams
from app.engine.prior import shrink
from app.engine.ranking import top_k


@dataclass(frozen=True)
class SupportSet:
    ids: np.ndarray  # bank rows of I, most similar first
    s: np.ndarray  # s_i for i in I (cosine similarity to the query)
    tau: float  # the admission threshold γ · s_(N^base)
    capped: bool  # True when more bank queries cleared tau than max_support admits


def support_threshold(s_nbase: float, gamma: float) -> float:
    """tau = γ · s_(N^base).

    The paper assumes s in [0, 1]. For a negative N^base-th similarity, γ·s would rise above it and
    admit fewer than N^base queries, so we lower it by the same relative margin instead.
    """
    return gamma * s_nbase if s_nbase >= 0 else s_nbase - (1.0 - gamma) * abs(s_nbase)


def support_set(sims: np.ndarray, ids: np.ndarray, params: JiSiParams) -> SupportSet:
    """I = {i : s_i >= γ · s_(N^base)}, capped at params.max_support.

    `sims`/`ids` are the nearest bank queries in descending similarity, as a search returns them.
    Pass at least max_support + 1 of them (or the whole bank) so that a binding cap is detected.
    """
    sims = np.asarray(sims, dtype=np.float64)
    ids = np.asarray(ids, dtype=np.int64)
    valid = ids >= 0  # FAISS pads with -1 when the bank is smaller than the request
    sims, ids = sims[valid], ids[valid]
    if sims.size == 0:
        raise ValueError("the bank returned no neighbours")
    if np.any(np.diff(sims) > 1e-6):
        raise ValueError("similarities must be sorted in descending order")
    s_nbase = sims[min(params.n_base, sims.size) - 1]
    tau = support_threshold(float(s_nbase), params.gamma)
    admitted = int(np.count_nonzero(sims >= tau))
    size = min(admitted, params.max_support)
    return SupportSet(ids=ids[:size], s=sims[:size], tau=tau, capped=admitted > params.max_support)


def weights(s: np.ndarray) -> np.ndarray:
    """Similarities used as weights; clipped at 0 so an anti-similar query never counts against a model."""
    return np.clip(np.asarray(s, dtype=np.float64), 0.0, None)


def masked_weighted_sum(v: np.ndarray, present: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Σ_i v_ij · w_i over the rows where model j has a record, for every model j.

    Missing records are masked out of the sum. To keep a model with gaps comparable with the others,
    its sum is rescaled by Σ_i w_i / Σ_{i present} w_i (judged on what it answered, not penalised
    for what was never asked). With no gaps this is exactly v^T w, the paper's formula.
    A model with no record in the set scores 0.
    """
    v = np.asarray(v, dtype=np.float64)
    m = np.asarray(present, dtype=bool)
    w = np.asarray(w, dtype=np.float64)
    raw = np.where(m, v, 0.0).T @ w
    covered = m.T.astype(np.float64) @ w
    total = w.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(covered > 0, raw * (total / covered), 0.0)


@dataclass(frozen=True)
class CoarseScores:
    g: np.ndarray  # g_j = Σ_{i∈I} v_ij · s_i (+ the prior λ·w̄·μ_j), for all M models
    aggregator: int  # A_agg = argmax_j g_j among the eligible models
    candidates: np.ndarray  # C: the top-K models by `rank`
    rank: np.ndarray  # what C is ranked by: g, or (1−α)·g + α·(1−cost), each normalised (cost_weight α)


def coarse_scores(
    v_support: np.ndarray,
    present_support: np.ndarray,
    support: SupportSet,
    params: JiSiParams,
    eligible: np.ndarray | None = None,
    prior: np.ndarray | None = None,
    cost: np.ndarray | None = None,
) -> CoarseScores:
    """g = v^sup · s^sup (+ λ·w̄·μ with a prior μ); the aggregator is argmax g, the candidates the top-K of g,
    or of the cost-aware score when cost_weight > 0 and each model's expected `cost` on this query is given.

    `eligible` (bool per model) leaves out models that cannot be called now (no upstream, circuit
    open), so the next-best model takes their place.
    """
    w = weights(support.s)
    g = shrink(masked_weighted_sum(v_support, present_support, w), w, params.lam, prior)
    rank = cost_aware(g, cost, params.cost_weight, eligible)
    candidates = top_k(rank, params.k, eligible)
    if candidates.size == 0:
        raise ValueError("no eligible model to route to")
    return CoarseScores(g=g, aggregator=int(top_k(g, 1, eligible)[0]), candidates=candidates, rank=rank)
