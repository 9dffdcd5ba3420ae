"""Cost-aware ranking (issue 14, Avengers-Pro's trade-off in JiSi's terms):

    score_j = (1 − α)·perf_j + α·(1 − cost_j)

perf is the query's score (g^λ for the candidates, g^f for the final set) min-max normalised over the
query's eligible models, cost the model's expected cost on this query divided by the largest among them
(both in [0, 1], so α is a share of the decision, not a unit conversion). α = 0 ranks by performance alone,
exactly as before.
"""

from __future__ import annotations

import numpy as np


def _among(x: np.ndarray, eligible: np.ndarray | None) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)[np.asarray(eligible, dtype=bool)] if eligible is not None else x


def cost_aware(perf: np.ndarray, cost: np.ndarray | None, alpha: float,
               eligible: np.ndarray | None = None) -> np.ndarray:
    """The ranking score; `perf` itself when α is 0 or no cost is known."""
    if not alpha or cost is None:
        return perf
    perf = np.asarray(perf, dtype=np.float64)
    cost = np.nan_to_num(np.asarray(cost, dtype=np.float64), nan=0.0)
    p_in, c_in = _among(perf, eligible), _among(cost, eligible)
    if p_in.size == 0:
        return perf
    span = p_in.max() - p_in.min()
    perf_n = (perf - p_in.min()) / span if span > 0 else np.ones_like(perf)
    top = c_in.max()
    cost_n = cost / top if top > 0 else np.zeros_like(cost)
    return (1 - alpha) * perf_n + alpha * (1 - cost_n)


def expected_completion_tokens(c_support: np.ndarray, present_support: np.ndarray) -> np.ndarray:
    """Per model, its mean completion tokens over its support-set records: how long it will likely answer
    this query (the forecast of the cost cap and of the cost-aware ranking). A model without a record in the
    support set is forecast at the others' mean (256 tokens when no model has one)."""
    present = np.asarray(present_support, dtype=bool)
    c = np.asarray(c_support, dtype=np.float64)
    counts = present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, np.where(present, c, 0.0).sum(axis=0) / counts, 0.0)
    fallback = float(mean[counts > 0].mean()) if np.any(counts > 0) else 256.0
    return np.where(counts > 0, mean, fallback)
