"""Replays test queries through the same engine the gateway runs, with recorded responses standing
in for live upstream calls (Table 1's protocol: bank = train split, queries = test split)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from app.bank.reader import Bank
from app.embedding.backends import Embedder
from app.engine import JiSiParams, LiveResponses, decide, plan, top_k, truncate_aggregatees
from bank_builder.build import embed_responses, embed_unique
from bank_builder.records import RecordMatrix


@dataclass
class ReplayResult:
    retrieval_choice: np.ndarray  # top-1 of the coarse score g (the query-only retrieval router)
    route_choice: np.ndarray  # top-1 of the fine score g^f (JiSi router-only)
    candidates: np.ndarray  # Nt x K: the models that would be called
    aggregate_sets: list[np.ndarray]  # top-K of g^f ("w/o adaptive aggregation"), after truncation
    final_sets: list[np.ndarray]  # the adaptive switch's A^fm, after truncation
    outcomes: list[str]  # "route" | "aggregate" for the adaptive switch
    aggregators: np.ndarray  # A_agg per query
    support_sizes: np.ndarray
    capped: np.ndarray  # the max_support cap bound for this query
    e_test: np.ndarray
    timing: dict[str, float] = field(default_factory=dict)


def replay(
    bank: Bank, test: RecordMatrix, embedder: Embedder, params: JiSiParams, *,
    response_embedder: Embedder | None = None, progress: bool = True,
) -> ReplayResult:
    """Run every test query through plan -> (recorded responses) -> decide; the queries embedded with
    `embedder`, the recorded answers (standing in for the live ones) with `response_embedder` (default: the
    same), as the gateway would."""
    if list(test.models) != bank.models:
        raise ValueError("test records must have the bank's models, in the bank's order")
    t0 = time.perf_counter()
    e_test = embed_unique(embedder, test.queries, progress=progress)
    r_test = embed_responses(test, response_embedder or embedder, progress=progress)
    c_test = np.nan_to_num(test.completion_tokens, nan=0.0)
    t_embed = time.perf_counter() - t0

    n = len(test.queries)
    k = params.k
    out = ReplayResult(
        retrieval_choice=np.zeros(n, np.int64), route_choice=np.zeros(n, np.int64),
        candidates=np.full((n, k), -1, np.int64), aggregate_sets=[], final_sets=[], outcomes=[],
        aggregators=np.zeros(n, np.int64), support_sizes=np.zeros(n, np.int64),
        capped=np.zeros(n, bool), e_test=e_test,
    )
    search_s = engine_s = 0.0
    for q in tqdm(range(n), desc="replay", disable=not progress, unit="query"):
        # a model without a recorded answer to this query cannot stand in for a live call
        eligible = test.present[q]
        t1 = time.perf_counter()
        sims, ids = bank.search(e_test[q], params.max_support + 1)
        t2 = time.perf_counter()
        planned = plan(sims, ids, bank.v, bank.present, params, eligible)
        live_models = planned.candidates
        live = LiveResponses(
            models=live_models,
            r=np.stack([r_test[j][q] for j in live_models]),
            c=c_test[q, live_models],
        )
        decision = decide(planned, bank.view(planned.support.ids, live_models), live, params, "adaptive", eligible)
        tokens = {j: float(c_test[q, j]) for j in range(len(bank.models))}
        engine_s += time.perf_counter() - t2
        search_s += t2 - t1

        out.retrieval_choice[q] = planned.candidates[0]
        out.route_choice[q] = top_k(decision.mixed.gf, 1, eligible)[0]
        out.candidates[q, : live_models.size] = live_models
        out.aggregate_sets.append(truncate_aggregatees(top_k(decision.mixed.gf, k, eligible), tokens, params))
        final = truncate_aggregatees(decision.final, tokens, params)
        out.final_sets.append(final)
        out.outcomes.append(decision.outcome)
        out.aggregators[q] = planned.aggregator
        out.support_sizes[q] = planned.support.ids.size
        out.capped[q] = planned.support.capped
    out.timing = {
        "embed_test_s": t_embed,
        "search_ms_per_query": 1000 * search_s / max(n, 1),
        "engine_ms_per_query": 1000 * engine_s / max(n, 1),
    }
    return out
