"""Replays queries through the same engine the gateway runs, with recorded responses standing in for live
upstream calls (Table 1's protocol: bank = train split, queries = test split; the calibration's folds use the
same code with a fold's bank in memory).

Per query it follows app/pipeline/prepare.py step by step: plan (support set, prior, cost-aware candidates,
the shortcut's confidence), the fan-out to the candidates (their recorded answers), the fine score, and the
same guard (an empty answer is not chosen while another candidate said something). It records both ways a
request can go, the full fan-out and the confident shortcut (the candidates one at a time until one answers
with text, as the gateway calls them), so one replay scores every shortcut threshold. The cost forecast is the
gateway's (app/engine/cost.py CostModel, prompt tokens counted as the gateway counts the request's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import faiss
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from app.engine import (
    JiSiParams, LiveResponses, Plan, SupportView, bank_accuracy, decide, final_set, plan, shortcut_choice, top_k,
    truncate_aggregatees,
)
from app.engine.cascade import cascade_lead, cascade_order
from app.engine.confidence import leader_probability
from app.engine.cost import CostModel
from app.config import ResilienceSettings
from app.engine.support import weights
from app.upstream.call import estimate_tokens
from app.upstream.resilience import quorum_cut
from bank_builder.records import RecordMatrix


class BankLike(Protocol):
    """What the replay reads of a bank: app.bank.reader.Bank, or a fold's MemoryBank."""

    models: list[str]
    v: np.ndarray
    present: np.ndarray
    c: np.ndarray
    mu: np.ndarray
    cost: np.ndarray | None  # recorded cost per call (NaN unknown)

    def search(self, e: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def view(self, ids: np.ndarray, live_models: np.ndarray) -> SupportView: ...


class MemoryBank:
    """Bank rows held in memory (a calibration fold's bank: the other folds), searched exactly."""

    def __init__(self, models: list[str], e: np.ndarray, v: np.ndarray, present: np.ndarray, c: np.ndarray,
                 r: list[np.ndarray], cost: np.ndarray | None = None) -> None:
        self.models, self.v, self.present, self.c, self.r, self.cost = models, v, present, c, r, cost
        self.mu = bank_accuracy(v, present)
        self.index = faiss.IndexFlatIP(e.shape[1])
        self.index.add(np.ascontiguousarray(e, dtype=np.float32))

    def search(self, e: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, ids = self.index.search(np.asarray(e, dtype=np.float32).reshape(1, -1), min(k, self.index.ntotal))
        return sims[0], ids[0]

    def view(self, ids: np.ndarray, live_models: np.ndarray) -> SupportView:
        r = np.stack([self.r[j][ids] for j in live_models], axis=1) if len(live_models) else \
            np.zeros((len(ids), 0, 1), np.float32)
        return SupportView(v=self.v[ids], present=self.present[ids], c=self.c[ids], r=r)


@dataclass(frozen=True)
class Queries:
    """The replayed queries and their recorded answers (standing in for the live ones)."""

    e: np.ndarray  # Nq x d query embeddings
    r: list[np.ndarray]  # per model, Nq x d_r embeddings of its recorded answer
    c: np.ndarray  # Nq x M completion tokens (0 where unknown)
    present: np.ndarray  # Nq x M: the model has a recorded answer (only those can stand in for a call)
    empty: np.ndarray  # Nq x M: that answer is empty (no text)
    prompt_tokens: np.ndarray  # Nq: the query's prompt tokens as the gateway counts them, for the cost forecast


@dataclass(frozen=True)
class QuorumModel:
    """The gateway's fan-out quorum, replayed (`jisi-bank evaluate --quorum`): each call's latency (the replay
    upstream's, bank_builder/records/latency.py) and the gateway's resilience settings decide which candidates the
    fan-out cancels; a cancelled candidate counts as failed, as online."""

    latency_s: np.ndarray  # Nq x M seconds
    settings: ResilienceSettings

    def cut(self, q: int, answering: np.ndarray, fanned_out: int) -> np.ndarray:
        """Per answering candidate (in order), whether the fan-out to `fanned_out` candidates cancels it on query q
        (the quorum is of the fan-out; a failed call does not count towards it)."""
        s = self.settings
        return np.array(quorum_cut(self.latency_s[q, answering].tolist(), s.quorum_of(fanned_out),
                                   s.quorum_grace_s, s.quorum_grace_ratio), dtype=bool)


@dataclass
class ReplayResult:
    retrieval_choice: np.ndarray  # the coarse leader (top-1 of g, or of the cost-aware score)
    route_choice: np.ndarray  # router-only after the full fan-out: top-1 of the fine score
    candidates: np.ndarray  # Nq x K: the models fanned out to (-1 pads)
    shortcut_choice: np.ndarray  # the candidates one at a time until one answers with text (engine.shortcut_choice)
    shortcut_calls: list[np.ndarray]  # the models the shortcut calls
    confidence: np.ndarray  # P(the coarse leader stays on top); NaN when not computed
    aggregate_sets: list[np.ndarray]  # top-K of g^f ("w/o adaptive aggregation"), after truncation
    final_sets: list[np.ndarray]  # the adaptive switch's A^fm, after truncation
    outcomes: list[str]  # "route" | "aggregate" for the adaptive switch
    aggregators: np.ndarray  # A_agg per query
    support_sizes: np.ndarray
    capped: np.ndarray  # the max_support cap bound for this query
    e_test: np.ndarray
    support_similarity: np.ndarray  # mean s_i over the support set
    leader_estimate: np.ndarray  # the coarse leader's support-set accuracy, g_j / Σ w_i (the winner's curse)
    timing: dict[str, float] = field(default_factory=dict)
    cut: list[np.ndarray] = field(default_factory=list)  # candidates the quorum cancelled (with a QuorumModel)
    # the cascade walked to the end (with_cascade or params.cascade): per query, per answer in call order, the
    # models called so far, the choice among the answered and the lead rho (app/engine/cascade.py)
    cascade: list[list[CascadeStep]] = field(default_factory=list)


@dataclass(frozen=True)
class CascadeStep:
    calls: tuple[int, ...]  # the models called so far, in call order (the calls that failed are not among them)
    choice: int  # the top of g^f among the answered models
    lead: float  # rho: best answered g^f / best waiting g^f


def cascade_stop(steps: list[CascadeStep], threshold: float) -> CascadeStep | None:
    """Where the cascade with this threshold stops: the first step whose lead clears it, else the last one (None:
    nothing answered, every call failed)."""
    return next((st for st in steps if st.lead >= threshold), steps[-1] if steps else None)


FAILED = "(every call failed)"  # how a -1 choice is named in reports


def chosen(score: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """Per query, the score of the chosen model; 0 where the choice is -1 (every call failed: a failed request)."""
    choice = np.asarray(choice, dtype=np.int64)
    return np.where(choice >= 0, score[np.arange(choice.size), np.maximum(choice, 0)], 0.0)


def empty_answers(matrix: RecordMatrix) -> np.ndarray:
    """N x M: the recorded answer exists and has no text."""
    return np.array([[not (text or "").strip() for text in row] for row in matrix.responses], dtype=bool) \
        & matrix.present


def query_prompt_tokens(matrix: RecordMatrix) -> np.ndarray:
    """Per query, its prompt's tokens as the gateway counts a request whose user message is the question (its
    cost forecast runs before any call, on its own estimate: app/upstream/call.py estimate_tokens)."""
    return np.array([estimate_tokens(q) for q in matrix.queries], dtype=np.float64)


def cost_model(bank: BankLike, prices: tuple[np.ndarray, np.ndarray] | None) -> CostModel:
    """The gateway's cost forecast over this bank: per-model prices (NaN: none) or the bank's recorded costs."""
    m = len(bank.models)
    p_in, p_out = prices if prices is not None else (np.full(m, np.nan), np.full(m, np.nan))
    return CostModel.of(p_in, p_out, bank.c, bank.present, bank.cost)


def cost_forecaster(costs: CostModel, prompt_tokens: float) -> Callable[[np.ndarray], np.ndarray]:
    """Each model's forecast cost on one query, from its support set (app/pipeline/prepare.py expected_cost)."""
    return lambda support_ids: costs.expected(support_ids, prompt_tokens)


def _fallback(answered: np.ndarray, empty: np.ndarray, gf: np.ndarray) -> int:
    """When the final set lost every member (cancelled by the quorum, or its call failed): the best answered
    candidate by g^f that said something (ties: lower index), as app/pipeline/prepare.py's _final_set does."""
    said = [int(j) for j in answered if not empty[j]] or [int(j) for j in answered]
    return min(said, key=lambda j: (-gf[j], j))


def replay_queries(bank: BankLike, queries: Queries, params: JiSiParams, *, prices: tuple[np.ndarray, np.ndarray]
                   | None = None, with_confidence: bool = False, progress: bool = False,
                   quorum: QuorumModel | None = None, with_cascade: bool = False) -> ReplayResult:
    """Every query through plan -> (recorded answers) -> decide, and through the shortcut's path.

    As online, every model of the bank may be chosen (the engine leaves out those without evidence in the support
    set); a call to a model without a recorded answer to this question fails, as the replay upstream's 404 fails
    it online: the model drops out of the fan-out and is never called again for the query. A query whose every
    call failed is a failed request (choice -1, scored wrong).

    `prices` (per model, USD per million input / output tokens, NaN where unknown) feed the cost-aware ranking
    when cost_weight > 0 (unpriced models: the bank's recorded costs); `with_confidence` computes the shortcut's
    leader probability for every query (else only when params.shortcut is set); `quorum` cancels the candidates
    the gateway's fan-out would (else every candidate answers); `with_cascade` walks every query's cascade to the
    end (else only when params.cascade is set), so that any threshold can be read off `cascade`."""
    n, k = len(queries.e), params.k
    out = ReplayResult(
        retrieval_choice=np.zeros(n, np.int64), route_choice=np.zeros(n, np.int64),
        candidates=np.full((n, k), -1, np.int64), shortcut_choice=np.zeros(n, np.int64), shortcut_calls=[],
        confidence=np.full(n, np.nan), aggregate_sets=[], final_sets=[], outcomes=[],
        aggregators=np.zeros(n, np.int64), support_sizes=np.zeros(n, np.int64), capped=np.zeros(n, bool),
        e_test=queries.e, support_similarity=np.zeros(n), leader_estimate=np.zeros(n),
    )
    costs = cost_model(bank, prices)
    with threadpool_limits(1):  # small matrix products: a BLAS thread pool only adds wake-ups (3x slower on 2 cores)
        _replay_each(bank, queries, params, costs, out, with_confidence, progress, quorum, with_cascade)
    return out


def _replay_each(bank: BankLike, queries: Queries, params: JiSiParams, costs: CostModel, out: ReplayResult,
                 with_confidence: bool, progress: bool, quorum: QuorumModel | None, with_cascade: bool) -> None:
    n, k, m = len(queries.e), params.k, len(bank.models)
    search_s = engine_s = 0.0
    for q in tqdm(range(n), desc="replay", disable=not progress, unit="query"):
        recorded, empty = queries.present[q], queries.empty[q]
        t1 = time.perf_counter()
        sims, ids = bank.search(queries.e[q], params.max_support + 1)
        t2 = time.perf_counter()
        planned = plan(sims, ids, bank.v, bank.present, params, None, prior=bank.mu,
                       cost=cost_forecaster(costs, queries.prompt_tokens[q]))
        eligible = planned.eligible
        cands = planned.candidates
        out.candidates[q, : cands.size] = cands
        # the retrieval baseline (top-1 of the coarse ranking) is offline only: its best model with a record
        with_record = eligible & recorded
        out.retrieval_choice[q] = top_k(planned.coarse.rank, 1, with_record)[0] if with_record.any() else cands[0]
        # the shortcut's path: the candidates one at a time until one answers with text (a failed call: the next)
        answering = [int(j) for j in cands if recorded[j]]
        calls, choice = shortcut_choice(answering, lambda j: bool(empty[j])) if answering else ([], -1)
        out.shortcut_calls.append(np.asarray(calls, np.int64))
        out.shortcut_choice[q] = choice
        if planned.confidence is not None:
            out.confidence[q] = planned.confidence
        elif with_confidence:
            out.confidence[q] = leader_probability(
                bank.v[planned.support.ids], bank.present[planned.support.ids], weights(planned.support.s),
                int(cands[0]), params.lam, bank.mu, planned.cost, params.cost_weight, eligible)
        # the full fan-out: the candidates' recorded answers, less the calls that fail (no record) and those the
        # quorum cancels (it counts the answers that arrive: failed calls do not make the quorum)
        lost = ~recorded[cands]
        if quorum is not None and (~lost).any():
            lost[~lost] = quorum.cut(q, cands[~lost], cands.size)
        answered = cands[~lost]
        out.cut.append(cands[lost])
        w = weights(planned.support.s)
        out.aggregators[q] = planned.aggregator
        out.support_sizes[q] = planned.support.ids.size
        out.capped[q] = planned.support.capped
        out.support_similarity[q] = float(planned.support.s.mean())
        out.leader_estimate[q] = float(planned.coarse.g[cands[0]] / w.sum()) if w.sum() > 0 else 0.0
        if with_cascade or params.cascade is not None:
            out.cascade.append(_cascade(bank, queries, q, planned, costs, params))
        if answered.size == 0:  # every candidate failed: online, a 502 (upstreams_failed)
            out.route_choice[q] = -1
            out.aggregate_sets.append(np.zeros(0, np.int64))
            out.final_sets.append(np.zeros(0, np.int64))
            out.outcomes.append("route")
            engine_s += time.perf_counter() - t2
            search_s += t2 - t1
            continue
        live = LiveResponses(models=answered, r=np.stack([queries.r[j][q] for j in answered]),
                             c=queries.c[q, answered])
        final_eligible = eligible.copy()
        said_nothing = answered[empty[answered]]
        if 0 < said_nothing.size < answered.size:  # an empty answer is not chosen while another said something
            final_eligible[said_nothing] = False
        view = bank.view(planned.support.ids, answered)
        decision = decide(planned, view, live, params, "adaptive", final_eligible, prior=bank.mu)
        routed, _ = final_set(decision.mixed.gf, params, "route", decision.eligible, planned.cost)
        tokens = {j: float(queries.c[q, j]) for j in range(m)}
        engine_s += time.perf_counter() - t2
        search_s += t2 - t1
        # a final-set model is called when it was not a candidate; it fails without a record; a model that failed
        # or was cancelled is never called again: the final set goes on without it, or falls back
        failed = set(cands[lost].tolist()) | {int(j) for j in range(m) if not recorded[j]}
        fallback = _fallback(answered, empty, decision.mixed.gf)
        out.route_choice[q] = fallback if int(routed[0]) in failed else routed[0]
        out.aggregate_sets.append(truncate_aggregatees(top_k(decision.mixed.gf, k, final_eligible), tokens, params))
        final = [j for j in decision.final if int(j) not in failed] or [fallback]
        out.final_sets.append(truncate_aggregatees(np.asarray(final, np.int64), tokens, params))
        out.outcomes.append(decision.outcome)
    out.timing = {"search_ms_per_query": 1000 * search_s / max(n, 1),
                  "engine_ms_per_query": 1000 * engine_s / max(n, 1)}


def _cascade(bank: BankLike, queries: Queries, q: int, planned: Plan, costs: CostModel,
             params: JiSiParams) -> list[CascadeStep]:
    """The cascade's steps on query q, walked to the end: the candidates cheapest forecast first (a call without a
    record fails and is skipped), after each answer the fine score over the answered ones (in candidate order, as
    online) and the lead over those still waiting (app/pipeline/prepare.py _cascade)."""
    recorded, empty = queries.present[q], queries.empty[q]
    cands = [int(j) for j in planned.candidates]
    order = cascade_order(cands, cost_forecaster(costs, queries.prompt_tokens[q])(planned.support.ids))
    called: list[int] = []
    steps = []
    for pos, j in enumerate(order):
        if not recorded[j]:
            continue
        called.append(j)
        live_models = np.array([c for c in cands if c in called], dtype=np.int64)
        said = [int(c) for c in live_models if not empty[c]]
        eligible = np.zeros(len(bank.models), bool)
        eligible[said or live_models] = True
        live = LiveResponses(models=live_models, r=np.stack([queries.r[c][q] for c in live_models]),
                             c=queries.c[q, live_models])
        decision = decide(planned, bank.view(planned.support.ids, live_models), live, params, "route", eligible,
                          prior=bank.mu)
        steps.append(CascadeStep(tuple(called), int(decision.final[0]),
                                 cascade_lead(decision.mixed.gf, said, order[pos + 1:])))
    return steps
