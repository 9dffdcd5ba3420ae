"""Cost-aware ranking (issue 14, Avengers-Pro's trade-off in JiSi's terms):

    score_j = (1 − α)·perf_j + α·(1 − cost_j)

perf is the query's score (g^λ for the candidates, g^f for the final set) min-max normalised over the
query's eligible models, cost the model's expected cost on this query divided by the largest among them
(both in [0, 1], so α is a share of the decision, not a unit conversion). α = 0 ranks by performance alone,
exactly as before.

The forecast of a model's cost on a query (`CostModel`), the same online and offline: its prompt at the model's
input price plus its mean completion tokens over the support set at the output price; for a model without a
price, the mean of its recorded per-call costs over the support rows (LLMRouterBench records carry `cost`), else
over the whole bank, else the median price of the priced models (counting an unpriced model free would draw
traffic to it for a saving that is not real: on zeroeval-bench 28-42 % of the questions at cost_weight >= 0.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

Number = TypeVar("Number", float, np.ndarray)


def cost_usd(prompt_tokens: Number, completion_tokens: Number, input_usd_per_mtok: Number,
             output_usd_per_mtok: Number) -> Number:
    """USD of calls with these token counts at these prices (per million tokens); scalars or numpy arrays (NaN
    propagates). The one formula: each call's cost online, records without a cost offline, every forecast."""
    return (prompt_tokens * input_usd_per_mtok + completion_tokens * output_usd_per_mtok) / 1_000_000


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


def _mean_recorded(recorded: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Per model, the mean of its known recorded costs among `present` rows; NaN where it has none."""
    known = np.asarray(present, dtype=bool) & np.isfinite(recorded)
    counts = known.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.where(known, recorded, 0.0).sum(axis=0) / counts, np.nan)


@dataclass(frozen=True)
class CostModel:
    """Each bank model's forecast cost on a query, from its price or, unpriced, from its recorded costs."""

    p_in: np.ndarray  # per model USD per million input tokens; unpriced models at the priced models' median
    p_out: np.ndarray
    unpriced: np.ndarray  # per model: no price was given
    c: np.ndarray  # the bank's completion tokens c_ij (N x M)
    present: np.ndarray  # the bank's presence mask (N x M)
    recorded: np.ndarray | None = None  # the bank's recorded cost per call (N x M, NaN unknown)
    bank_mean: np.ndarray | None = None  # per model, its mean recorded cost over the bank (NaN: none)

    @classmethod
    def of(cls, p_in: np.ndarray, p_out: np.ndarray, c: np.ndarray, present: np.ndarray,
           recorded: np.ndarray | None = None) -> "CostModel":
        """From per-model prices with NaN where a model has none."""
        p_in, p_out = np.array(p_in, dtype=np.float64), np.array(p_out, dtype=np.float64)
        unpriced = np.isnan(p_in) | np.isnan(p_out)
        if unpriced.all():
            p_in[:], p_out[:] = 0.0, 0.0
        else:
            p_in[unpriced], p_out[unpriced] = np.median(p_in[~unpriced]), np.median(p_out[~unpriced])
        bank_mean = None
        if recorded is not None:
            recorded = np.asarray(recorded, dtype=np.float64)
            bank_mean = _mean_recorded(recorded, present) if unpriced.any() else None
        return cls(p_in, p_out, unpriced, c, present, recorded if unpriced.any() else None, bank_mean)

    def expected(self, support_ids: np.ndarray, prompt_tokens: float) -> np.ndarray:
        """Per model, its forecast cost in USD on a query of `prompt_tokens` whose support set is `support_ids`."""
        expected_c = expected_completion_tokens(self.c[support_ids], self.present[support_ids])
        by_price = cost_usd(float(prompt_tokens), expected_c, self.p_in, self.p_out)
        if self.recorded is None or self.bank_mean is None:
            return by_price
        local = _mean_recorded(self.recorded[support_ids], self.present[support_ids])
        recorded = np.where(np.isfinite(local), local, self.bank_mean)
        return np.where(self.unpriced & np.isfinite(recorded), recorded, by_price)
