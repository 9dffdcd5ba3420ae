"""The JiSi method, pure: numpy in, decisions out. No HTTP, no disk.

The gateway and the offline evaluator both call `plan` (steps 1-3, before any upstream call) and
`decide` (steps 5-8, after the candidates answered), so what is measured offline is what runs online.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from app.engine.confidence import leader_probability
from app.engine.cost import expected_completion_tokens
from app.engine.mixed import MixedScores, mixed_routing
from app.engine.params import JiSiParams, Mode
from app.engine.prior import bank_accuracy
from app.engine.ranking import top_k
from app.engine.shortcut import shortcut_choice, shortcut_done
from app.engine.support import CoarseScores, SupportSet, coarse_scores, support_set, weights
from app.engine.switch import Outcome, final_set, truncate_aggregatees

__all__ = [
    "JiSiParams", "Mode", "Outcome", "Plan", "Decision", "SupportView", "LiveResponses",
    "plan", "decide", "top_k", "truncate_aggregatees", "support_set", "coarse_scores",
    "final_set", "mixed_routing", "SupportSet", "CoarseScores", "MixedScores", "bank_accuracy",
    "expected_completion_tokens", "shortcut_choice", "shortcut_done",
]


@dataclass(frozen=True)
class Plan:
    """Decisions made before fan-out: support set I, coarse score g, aggregator, candidates C, and whether the
    coarse leader is sure enough to be called alone (the shortcut)."""

    support: SupportSet
    coarse: CoarseScores
    confidence: float | None = None  # P(the coarse leader stays on top), computed when a shortcut is set
    shortcut: bool = False  # call only candidates[0]: its confidence cleared params.shortcut
    cost: np.ndarray | None = None  # each model's expected cost on this query, when cost_weight > 0

    @property
    def candidates(self) -> np.ndarray:
        return self.coarse.candidates

    @property
    def aggregator(self) -> int:
        return self.coarse.aggregator


@dataclass(frozen=True)
class SupportView:
    """Bank rows of the support set I, gathered by the caller (bank or test)."""

    v: np.ndarray  # v_ij, |I| x M scores in [0, 1]
    present: np.ndarray  # |I| x M, False where the bank has no record
    c: np.ndarray  # c_ij, |I| x M completion tokens
    r: np.ndarray  # r_ij for the live models only, |I| x K x d (aligned with LiveResponses.models)


@dataclass(frozen=True)
class LiveResponses:
    """The candidates that answered: model indices, r_k = f1(y_k) and completion tokens c_k."""

    models: np.ndarray
    r: np.ndarray
    c: np.ndarray


@dataclass(frozen=True)
class Decision:
    plan: Plan
    live_models: np.ndarray
    mixed: MixedScores
    final: np.ndarray  # A^fm, best first
    outcome: Outcome
    eligible: np.ndarray | None = None  # the models the final set could come from (from_candidates applied)


def plan(
    sims: np.ndarray,
    ids: np.ndarray,
    v: np.ndarray,
    present: np.ndarray,
    params: JiSiParams,
    eligible: np.ndarray | None = None,
    prior: np.ndarray | None = None,
    cost: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
) -> Plan:
    """Steps 2-3 from a similarity search (`sims`, `ids` descending) over a bank with scores v.

    `prior`: each model's bank-wide accuracy μ (used when λ > 0); `cost`: each model's expected cost on this
    query, or a function of the support set's bank rows giving it (used when cost_weight > 0). Neither changes
    anything at the paper's defaults.
    """
    support = support_set(sims, ids, params)
    v_sup, present_sup = v[support.ids], present[support.ids]
    if callable(cost):
        cost = cost(support.ids) if params.cost_weight else None
    coarse = coarse_scores(v_sup, present_sup, support, params, eligible, prior, cost)
    if params.shortcut is None:
        return Plan(support=support, coarse=coarse, cost=cost)
    confidence = leader_probability(v_sup, present_sup, weights(support.s), int(coarse.candidates[0]),
                                    params.lam, prior, cost, params.cost_weight, eligible)
    return Plan(support=support, coarse=coarse, confidence=confidence, shortcut=confidence >= params.shortcut,
                cost=cost)


def decide(
    plan_: Plan,
    view: SupportView,
    live: LiveResponses,
    params: JiSiParams,
    mode: Mode = "adaptive",
    eligible: np.ndarray | None = None,
    prior: np.ndarray | None = None,
) -> Decision:
    """Steps 5-8: mixed score over I, filter, fine score over all M models, adaptive switch (ranked
    cost-aware with the plan's expected costs when cost_weight > 0).

    With from_candidates the final set is chosen among the models that answered (no further call)."""
    live_models = np.asarray(live.models, dtype=np.int64)
    mixed = mixed_routing(
        s=plan_.support.s,
        v_support=view.v,
        present_support=view.present,
        r_sup=view.r,
        c_sup=np.asarray(view.c)[:, live_models],
        present_sup_answered=np.asarray(view.present)[:, live_models],
        r_live=live.r,
        c_live=live.c,
        params=params,
        prior=prior,
    )
    if params.from_candidates:
        answered = np.zeros(len(mixed.gf), dtype=bool)
        answered[live_models] = True
        eligible = answered if eligible is None else np.asarray(eligible, dtype=bool) & answered
    final, outcome = final_set(mixed.gf, params, mode, eligible, plan_.cost)
    return Decision(plan=plan_, live_models=live_models, mixed=mixed, final=final, outcome=outcome,
                    eligible=eligible)
