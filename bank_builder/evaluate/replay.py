"""Replays queries through the same engine the gateway runs, with recorded responses standing in for live
upstream calls (Table 1's protocol: bank = train split, queries = test split; the calibration's folds use the
same code with a fold's bank in memory).

Per query it follows app/pipeline/prepare.py step by step: plan (support set, prior, cost-aware candidates,
the shortcut's confidence), the fan-out to the candidates (their recorded answers), the fine score, and the
same guard (an empty answer is not chosen while another candidate said something). It records both ways a
request can go, the full fan-out and the confident shortcut (the leader alone, the next candidate when the
leader's answer is empty), so one replay scores every shortcut threshold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import faiss
import numpy as np
from tqdm import tqdm

from app.engine import (
    JiSiParams, LiveResponses, SupportView, bank_accuracy, decide, expected_completion_tokens, final_set, plan,
    top_k, truncate_aggregatees,
)
from app.engine.confidence import leader_probability
from app.engine.support import weights
from app.upstream.pricing import cost_usd
from bank_builder.records import RecordMatrix


class BankLike(Protocol):
    """What the replay reads of a bank: app.bank.reader.Bank, or a fold's MemoryBank."""

    models: list[str]
    v: np.ndarray
    present: np.ndarray
    c: np.ndarray
    mu: np.ndarray

    def search(self, e: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def view(self, ids: np.ndarray, live_models: np.ndarray) -> SupportView: ...


class MemoryBank:
    """Bank rows held in memory (a calibration fold's bank: the other folds), searched exactly."""

    def __init__(self, models: list[str], e: np.ndarray, v: np.ndarray, present: np.ndarray, c: np.ndarray,
                 r: list[np.ndarray]) -> None:
        self.models, self.v, self.present, self.c, self.r = models, v, present, c, r
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
    prompt_tokens: np.ndarray  # Nq: the query's prompt, for the cost forecast


@dataclass
class ReplayResult:
    retrieval_choice: np.ndarray  # the coarse leader (top-1 of g, or of the cost-aware score)
    route_choice: np.ndarray  # router-only after the full fan-out: top-1 of the fine score
    candidates: np.ndarray  # Nq x K: the models fanned out to (-1 pads)
    shortcut_choice: np.ndarray  # the leader alone (the next candidate when its answer is empty)
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


def empty_answers(matrix: RecordMatrix) -> np.ndarray:
    """N x M: the recorded answer exists and has no text."""
    return np.array([[not (text or "").strip() for text in row] for row in matrix.responses], dtype=bool) \
        & matrix.present


def query_prompt_tokens(matrix: RecordMatrix) -> np.ndarray:
    """Per query, its prompt's tokens (the models' counts agree; unknown: 0)."""
    with np.errstate(all="ignore"):
        return np.nan_to_num(np.nanmean(np.where(matrix.present, matrix.prompt_tokens, np.nan), axis=1), nan=0.0)


def cost_forecaster(bank: BankLike, prices_in: np.ndarray, prices_out: np.ndarray,
                    prompt_tokens: float) -> Callable[[np.ndarray], np.ndarray]:
    """The gateway's forecast of each model's cost on a query (app/pipeline/prepare.py expected_cost)."""
    def cost(support_ids: np.ndarray) -> np.ndarray:
        expected = expected_completion_tokens(bank.c[support_ids], bank.present[support_ids])
        return cost_usd(float(prompt_tokens), expected, prices_in, prices_out)
    return cost


def replay_queries(bank: BankLike, queries: Queries, params: JiSiParams, *, prices: tuple[np.ndarray, np.ndarray]
                   | None = None, with_confidence: bool = False, progress: bool = False) -> ReplayResult:
    """Every query through plan -> (recorded answers) -> decide, and through the shortcut's path.

    `prices` (per model, USD per million input / output tokens) feed the cost-aware ranking when
    cost_weight > 0; `with_confidence` computes the shortcut's leader probability for every query (else only
    when params.shortcut is set)."""
    n, k, m = len(queries.e), params.k, len(bank.models)
    out = ReplayResult(
        retrieval_choice=np.zeros(n, np.int64), route_choice=np.zeros(n, np.int64),
        candidates=np.full((n, k), -1, np.int64), shortcut_choice=np.zeros(n, np.int64), shortcut_calls=[],
        confidence=np.full(n, np.nan), aggregate_sets=[], final_sets=[], outcomes=[],
        aggregators=np.zeros(n, np.int64), support_sizes=np.zeros(n, np.int64), capped=np.zeros(n, bool),
        e_test=queries.e, support_similarity=np.zeros(n), leader_estimate=np.zeros(n),
    )
    zero = np.zeros(m)
    prices_in, prices_out = prices if prices is not None else (zero, zero)
    search_s = engine_s = 0.0
    for q in tqdm(range(n), desc="replay", disable=not progress, unit="query"):
        eligible = queries.present[q]  # a model without a recorded answer cannot stand in for a live call
        t1 = time.perf_counter()
        sims, ids = bank.search(queries.e[q], params.max_support + 1)
        t2 = time.perf_counter()
        planned = plan(sims, ids, bank.v, bank.present, params, eligible, prior=bank.mu,
                       cost=cost_forecaster(bank, prices_in, prices_out, queries.prompt_tokens[q]))
        cands = planned.candidates
        out.retrieval_choice[q] = cands[0]
        out.candidates[q, : cands.size] = cands
        # the shortcut's path: the leader, or the next candidate when the leader answered empty
        calls = [int(cands[0])]
        if queries.empty[q, cands[0]] and cands.size > 1:
            calls.append(int(cands[1]))
        out.shortcut_calls.append(np.asarray(calls, np.int64))
        out.shortcut_choice[q] = calls[-1]
        if planned.confidence is not None:
            out.confidence[q] = planned.confidence
        elif with_confidence:
            out.confidence[q] = leader_probability(
                bank.v[planned.support.ids], bank.present[planned.support.ids], weights(planned.support.s),
                int(cands[0]), params.lam, bank.mu, planned.cost, params.cost_weight, eligible)
        # the full fan-out: every candidate's recorded answer, an empty one not chosen while another said something
        live = LiveResponses(models=cands, r=np.stack([queries.r[j][q] for j in cands]), c=queries.c[q, cands])
        final_eligible = eligible.copy()
        empty = cands[queries.empty[q, cands]]
        if 0 < empty.size < cands.size:
            final_eligible[empty] = False
        view = bank.view(planned.support.ids, cands)
        decision = decide(planned, view, live, params, "adaptive", final_eligible, prior=bank.mu)
        routed, _ = final_set(decision.mixed.gf, params, "route", decision.eligible, planned.cost)
        tokens = {j: float(queries.c[q, j]) for j in range(m)}
        engine_s += time.perf_counter() - t2
        search_s += t2 - t1
        out.route_choice[q] = routed[0]
        out.aggregate_sets.append(truncate_aggregatees(top_k(decision.mixed.gf, k, final_eligible), tokens, params))
        out.final_sets.append(truncate_aggregatees(decision.final, tokens, params))
        out.outcomes.append(decision.outcome)
        out.aggregators[q] = planned.aggregator
        out.support_sizes[q] = planned.support.ids.size
        out.capped[q] = planned.support.capped
        w = weights(planned.support.s)
        out.support_similarity[q] = float(planned.support.s.mean())
        out.leader_estimate[q] = float(planned.coarse.g[cands[0]] / w.sum()) if w.sum() > 0 else 0.0
    out.timing = {"search_ms_per_query": 1000 * search_s / max(n, 1),
                  "engine_ms_per_query": 1000 * engine_s / max(n, 1)}
    return out
