"""The JiSi method, pure: numpy in, decisions out. No HTTP, no disk.

The gateway and the offline evaluator both call `plan` (steps 1-3, before any upstream call) and
`decide` (steps 5-8, after the candidates answered), so what is measured offline is what runs online.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from app.engine.cascade import cascade_done, cascade_lead, cascade_order
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
    "expected_completion_tokens", "shortcut_choice", "shortcut_done", "cascade_order", "cascade_lead", "cascade_done",
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
    eligible: np.ndarray | None = None  # the models this query may go to: callable, with evidence in I (covered)

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


# A model is eligible when its records cover at least this share of the support set's weight, relative to the best
# covered model. Chosen on zeroeval-bench's train folds (5-fold, `python -m bench.min_evidence`; its models are
# absent from whole datasets; docs/evaluation.md): fold accuracy at the paper's defaults 53.6 (any record), 86.4
# (0.25), 91.3 (0.5), 92.8 (0.75), 93.2 (0.9), 92.5 (1.0). 0.75 rather than 0.9, level within the folds' spread
# (1.4): a bank with records missing at random (a collect run's timeouts) keeps every model, where 0.9 would drop
# them by chance (10 % missing leaves a model 0.90 +- 0.04 of a 50-question support set). With complete records
# nothing changes.
MIN_EVIDENCE = 0.75


def evidenced(present_support: np.ndarray, w: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """The eligible models whose records cover at least MIN_EVIDENCE of the support weight that the best covered
    eligible model covers; failing any, the eligible ones."""
    present_support = np.asarray(present_support, dtype=bool)
    callable_ = np.ones(present_support.shape[1], bool) if eligible is None else np.asarray(eligible, dtype=bool)
    w = np.asarray(w, dtype=np.float64)
    covered = present_support.T.astype(np.float64) @ w if w.sum() > 0 else present_support.sum(axis=0, dtype=float)
    best = covered[callable_].max() if callable_.any() else 0.0
    if best <= 0:
        return callable_
    return callable_ & (covered >= MIN_EVIDENCE * best - 1e-12)


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

    Only models with evidence for this query are eligible: records covering at least MIN_EVIDENCE of the support
    weight the best covered model covers (with complete records, every model). The coverage-rescaled sum judges a model on the questions it
    answered, so a model that answered one of them would otherwise count as if it had answered all, and with a
    prior a model that answered none ranks on its bank-wide accuracy alone (o1-preview, which answered no GSM8K
    question in zeroeval-bench, led GSM8K queries at λ = 10; models absent from a dataset led its queries on the
    strength of a few support questions from another).
    """
    support = support_set(sims, ids, params)
    v_sup, present_sup = v[support.ids], present[support.ids]
    eligible = evidenced(present_sup, weights(support.s), eligible)
    if callable(cost):
        cost = cost(support.ids) if params.cost_weight else None
    coarse = coarse_scores(v_sup, present_sup, support, params, eligible, prior, cost)
    if params.shortcut is None:
        return Plan(support=support, coarse=coarse, cost=cost, eligible=eligible)
    confidence = leader_probability(v_sup, present_sup, weights(support.s), int(coarse.candidates[0]),
                                    params.lam, prior, cost, params.cost_weight, eligible)
    return Plan(support=support, coarse=coarse, confidence=confidence, shortcut=confidence >= params.shortcut,
                cost=cost, eligible=eligible)


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

    With from_candidates the final set is chosen among the models that answered (no further call); `eligible`
    narrows the plan's eligible models (e.g. without the candidates that answered empty)."""
    live_models = np.asarray(live.models, dtype=np.int64)
    if plan_.eligible is not None:
        eligible = plan_.eligible if eligible is None else np.asarray(eligible, dtype=bool) & plan_.eligible
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
