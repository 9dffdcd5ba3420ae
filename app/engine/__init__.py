"""The JiSi method, pure: numpy in, decisions out. No HTTP, no disk.

The gateway and the offline evaluator both call `plan` (steps 1-3, before any upstream call) and
`decide` (steps 5-8, after the candidates answered), so what is measured offline is what runs online.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.engine.mixed import MixedScores, mixed_routing
from app.engine.params import JiSiParams, Mode
from app.engine.ranking import top_k
from app.engine.support import CoarseScores, SupportSet, coarse_scores, support_set
from app.engine.switch import Outcome, final_set, truncate_aggregatees

__all__ = [
    "JiSiParams", "Mode", "Outcome", "Plan", "Decision", "SupportView", "LiveResponses",
    "plan", "decide", "top_k", "truncate_aggregatees", "support_set", "coarse_scores",
    "final_set", "mixed_routing", "SupportSet", "CoarseScores", "MixedScores",
]


@dataclass(frozen=True)
class Plan:
    """Decisions made before fan-out: support set I, coarse score g, aggregator, candidates C."""

    support: SupportSet
    coarse: CoarseScores

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


def plan(
    sims: np.ndarray,
    ids: np.ndarray,
    v: np.ndarray,
    present: np.ndarray,
    params: JiSiParams,
    eligible: np.ndarray | None = None,
) -> Plan:
    """Steps 2-3 from a similarity search (`sims`, `ids` descending) over a bank with scores v."""
    support = support_set(sims, ids, params)
    coarse = coarse_scores(v[support.ids], present[support.ids], support, params, eligible)
    return Plan(support=support, coarse=coarse)


def decide(
    plan_: Plan,
    view: SupportView,
    live: LiveResponses,
    params: JiSiParams,
    mode: Mode = "adaptive",
    eligible: np.ndarray | None = None,
) -> Decision:
    """Steps 5-8: mixed score over I, filter, fine score over all M models, adaptive switch."""
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
    )
    final, outcome = final_set(mixed.gf, params, mode, eligible)
    return Decision(plan=plan_, live_models=live_models, mixed=mixed, final=final, outcome=outcome)
