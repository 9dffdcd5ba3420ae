"""Step 8-9: the adaptive routing-aggregation switch (Eq. 4-5) and the Table 1 variants."""

from __future__ import annotations

from typing import Literal, Mapping

import numpy as np

from app.engine.cost import cost_aware
from app.engine.params import JiSiParams, Mode
from app.engine.ranking import top_k

Outcome = Literal["route", "aggregate"]


def final_set(
    gf: np.ndarray, params: JiSiParams, mode: Mode = "adaptive", eligible: np.ndarray | None = None,
    cost: np.ndarray | None = None,
) -> tuple[np.ndarray, Outcome]:
    """A^fm and what to do with it.

    adaptive  (JiSi):                      top-K of g^f with g^f_j / max g^f >= t
    route     (Query-Response Mixed Router): always the top-1 of g^f
    aggregate (w/o Adaptive Aggregation):   always the top-K of g^f
    One model means route to it; more than one means the aggregator writes the answer.
    When every fine score is 0 (no evidence at all), the ratio is undefined and adaptive routes.
    With cost_weight α > 0 and the models' expected `cost`, the top-K is ranked by the cost-aware score
    (cost.py); the threshold t still compares fine scores.
    """
    ranked = top_k(cost_aware(gf, cost, params.cost_weight, eligible), params.k, eligible)
    if ranked.size == 0:
        raise ValueError("no eligible model in the final set")
    if mode == "route":
        chosen = ranked[:1]
    elif mode == "aggregate":
        chosen = ranked
    elif mode == "adaptive":
        best = float(np.max(np.asarray(gf)[ranked]))
        keep = np.asarray(gf)[ranked] / best >= params.t if best > 0 else np.zeros(ranked.size, bool)
        keep[0] = True  # the top-ranked model is always in
        chosen = ranked[keep] if best > 0 else ranked[:1]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return chosen, ("aggregate" if chosen.size > 1 else "route")


def truncate_aggregatees(
    final: np.ndarray, completion_tokens: Mapping[int, float], params: JiSiParams
) -> np.ndarray:
    """Drop the lowest-ranked aggregatees while their responses exceed max_aggregate_tokens.

    The paper keeps the top 2 when 3 aggregatees exceed 13,000 tokens; we stop at min_aggregatees,
    which gives exactly that for K = 3 and generalises to other K.
    """
    kept = list(final)
    while len(kept) > params.min_aggregatees and sum(
        completion_tokens[j] for j in kept
    ) > params.max_aggregate_tokens:
        kept.pop()
    return np.asarray(kept, dtype=np.int64)
