"""Accuracy summaries and the cost accounting of every evaluated method.

Cost rule, the same for every method: a method costs the sum of the upstream calls it makes.
A call whose cost is unknown (no recorded cost and no price, or no record) adds 0 USD and is
counted in `unpriced_calls_per_query`, so a cheap-looking row can be told from an unpriced one.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from app.engine.cost import cost_usd

Price = Mapping[str, Any]


def load_prices(path: str | Path) -> dict[str, dict[str, Any]]:
    """prices.json: model -> {input_per_million_usd, output_per_million_usd, ...} (null = unknown)."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of model -> prices")
    return data


def call_cost(prompt_tokens: Any, completion_tokens: Any, price: Price | None) -> np.ndarray:
    """USD of calls at `price` (per million tokens; app/upstream/pricing.py's formula); NaN when a price or a
    token count is unknown."""
    p_in = None if price is None else price.get("input_per_million_usd")
    p_out = None if price is None else price.get("output_per_million_usd")
    if p_in is None or p_out is None:
        return np.full(np.shape(prompt_tokens), np.nan)
    return cost_usd(np.asarray(prompt_tokens, dtype=np.float64), np.asarray(completion_tokens, dtype=np.float64),
                    float(p_in), float(p_out))


def price_arrays(models: Sequence[str], prices: Mapping[str, Price]) -> tuple[np.ndarray, np.ndarray]:
    """(input, output USD per million tokens) per model, NaN where prices.json has none: the routing's cost
    forecast (app/engine/cost.py CostModel) fills those from recorded costs or the median price, as online."""
    return (np.array([_price(prices.get(m), "input_per_million_usd") for m in models]),
            np.array([_price(prices.get(m), "output_per_million_usd") for m in models]))


def upstream_prices(models: Sequence[str], prices_path: str | Path | None) -> dict[str, dict[str, float]]:
    """Each model's gateway price settings (input_usd_per_mtok, output_usd_per_mtok), read from the price file as
    the evaluator reads it, so the gateway books what the evaluator scores (unpriced models: left out)."""
    p_in, p_out = price_arrays(models, load_prices(prices_path) if prices_path else {})
    return {m: {"input_usd_per_mtok": float(a), "output_usd_per_mtok": float(b)}
            for m, a, b in zip(models, p_in, p_out) if np.isfinite(a) and np.isfinite(b)}


def _price(price: Price | None, key: str) -> float:
    value = None if price is None else price.get(key)
    return float("nan") if value is None else float(value)


def cost_matrix(
    cost_records: np.ndarray,
    prompt_tokens: np.ndarray,
    completion_tokens: np.ndarray,
    models: Sequence[str],
    prices: Mapping[str, Price],
) -> tuple[np.ndarray, np.ndarray]:
    """(cost Nt x M, unpriced Nt x M): recorded costs, NaN gaps filled from `prices`.

    prompt_tokens may be per query (Nt,) or per record (Nt, M). A model absent from `prices` or
    with a null price keeps NaN there, and the unpriced mask says so.
    """
    cost = np.array(cost_records, dtype=np.float64)  # copy: the caller's array stays as it was
    pt = np.asarray(prompt_tokens, dtype=np.float64)
    pt = np.broadcast_to(pt[:, None] if pt.ndim == 1 else pt, cost.shape)
    ct = np.asarray(completion_tokens, dtype=np.float64)
    for j, model in enumerate(models):
        gap = np.isnan(cost[:, j])
        if gap.any():
            cost[gap, j] = call_cost(pt[gap, j], ct[gap, j], prices.get(model))
    return cost, np.isnan(cost)


def calls_cost(called: Sequence[np.ndarray], cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cost, calls, unpriced calls) per query for the given models called on each query."""
    n = len(called)
    usd, calls, unpriced = np.zeros(n), np.zeros(n), np.zeros(n)
    for q, models in enumerate(called):
        c = cost[q, np.asarray(models, dtype=np.int64)]
        usd[q], calls[q], unpriced[q] = np.nansum(c), c.size, np.isnan(c).sum()
    return usd, calls, unpriced


def single_call_cost(choice: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cost of a router that calls exactly its chosen model (best single, retrieval, cluster)."""
    return calls_cost(np.asarray(choice, dtype=np.int64)[:, None], cost)


def expected_call_cost(cost: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random baseline: the expected cost of one call to a uniformly drawn present model."""
    present = np.asarray(present, dtype=bool)
    n = np.maximum(present.sum(axis=1), 1)
    usd = np.where(present, np.nan_to_num(cost, nan=0.0), 0.0).sum(axis=1) / n
    unpriced = (present & np.isnan(cost)).sum(axis=1) / n
    return usd, np.ones(len(usd)), unpriced


def oracle_cost(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The oracle must see every model's answer to pick a correct one, so it calls all M models."""
    m = cost.shape[1]
    return calls_cost([np.arange(m)] * cost.shape[0], cost)


def aggregation_cost_estimate(
    query_prompt_tokens: float,
    aggregatee_completion_tokens: Sequence[float],
    aggregator_completion_tokens: float,
    aggregator_price: Price | None,
) -> float:
    """ESTIMATED USD of the aggregator call; no such call was recorded offline.

    prompt = the query's prompt tokens + the completion tokens of the aggregatees' responses (the
    aggregation instructions are a few dozen tokens and ignored); completion = the aggregator's
    own recorded completion tokens on this query, i.e. we assume it writes about as much when
    aggregating as when answering alone. NaN when any count or the price is unknown.
    """
    prompt = float(query_prompt_tokens) + float(np.sum(np.asarray(aggregatee_completion_tokens, float)))
    return float(call_cost(prompt, float(aggregator_completion_tokens), aggregator_price))


def jisi_calls(
    candidates: np.ndarray, final_sets: Sequence[np.ndarray], outcomes: Sequence[str]
) -> tuple[list[np.ndarray], np.ndarray]:
    """(answer calls per query, aggregator calls per query) of the adaptive switch.

    Answer calls: the K candidates plus any final-set model outside them (called after the
    re-score). F is the set after the 13k-token truncation, so an aggregatee called and then
    dropped is not counted (a small underestimate). Aggregation adds one aggregator call.
    """
    answer_calls = []
    for cand, fset in zip(candidates, final_sets):
        cand = np.asarray(cand, dtype=np.int64)
        cand = cand[cand >= 0]  # -1 pads a query with fewer than K eligible models
        extra = [int(j) for j in np.asarray(fset, dtype=np.int64) if j not in cand]
        answer_calls.append(np.concatenate([cand, np.asarray(extra, dtype=np.int64)]))
    agg = np.array([1.0 if o == "aggregate" else 0.0 for o in outcomes])
    return answer_calls, agg


def jisi_cost(
    candidates: np.ndarray,
    final_sets: Sequence[np.ndarray],
    aggregators: np.ndarray,
    outcomes: Sequence[str],
    cost: np.ndarray,
    prompt_tokens: np.ndarray,
    completion_tokens: np.ndarray,
    models: Sequence[str],
    prices: Mapping[str, Price],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cost, calls, unpriced calls) per query of a JiSi run, aggregator call estimated.

    For the router-only variant pass final_sets = [[route_choice]] and outcomes all "route".
    """
    answer_calls, agg = jisi_calls(candidates, final_sets, outcomes)
    usd, calls, unpriced = calls_cost(answer_calls, cost)
    pt = np.asarray(prompt_tokens, dtype=np.float64)
    for q in np.flatnonzero(agg):
        a, fset = int(aggregators[q]), np.asarray(final_sets[q], dtype=np.int64)
        # the query's prompt as the aggregator counts it; any model's count if its own is missing
        q_pt = pt[q] if pt.ndim == 1 else (pt[q, a] if not np.isnan(pt[q, a]) else np.nanmean(pt[q]))
        est = aggregation_cost_estimate(q_pt, completion_tokens[q, fset], completion_tokens[q, a], prices.get(models[a]))
        usd[q] += 0.0 if np.isnan(est) else est
        unpriced[q] += float(np.isnan(est))
    return usd, calls + agg, unpriced


def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if len(x) else None


def method_summary(
    correct: np.ndarray,
    datasets_test: Sequence[str],
    cost_per_query: np.ndarray,
    calls_per_query: np.ndarray,
    unpriced_calls_per_query: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy in [0, 1]: 'average' = mean of per-dataset accuracies (Table 1 Avg), 'micro' = over queries."""
    correct = np.asarray(correct, dtype=np.float64)
    labels = np.asarray(datasets_test)
    per_ds = {ds: float(correct[labels == ds].mean()) for ds in sorted(set(datasets_test))}
    out: dict[str, Any] = {
        "average": float(np.mean(list(per_ds.values()))) if per_ds else None,
        "micro": _mean(correct),
        "datasets": per_ds,
        "cost_per_query_usd": float(np.nanmean(cost_per_query)) if len(correct) else None,
        "calls_per_query": _mean(np.asarray(calls_per_query, dtype=np.float64)),
    }
    if unpriced_calls_per_query is not None:
        out["unpriced_calls_per_query"] = _mean(np.asarray(unpriced_calls_per_query, dtype=np.float64))
    return out


def _switch_stats(rows, score, models, final_sets, aggregators, outcomes, calls, cost) -> dict[str, Any]:
    routed = [q for q in rows if outcomes[q] != "aggregate"]
    aggregated = [q for q in rows if outcomes[q] == "aggregate"]
    return {
        "n_queries": len(rows),
        "aggregate_share": len(aggregated) / len(rows) if rows else None,
        "aggregators": dict(Counter(models[int(aggregators[q])] for q in aggregated).most_common()),
        "final_set_sizes": dict(sorted(Counter(len(final_sets[q]) for q in rows).items())),
        "calls_per_query": _mean(calls[rows]),
        "cost_per_query_usd": _mean(cost[rows]),
        "route_accuracy_on_routed": _mean(np.array([score[q, int(final_sets[q][0])] if len(final_sets[q]) else 0.0
                                                    for q in routed])),
        # the best an aggregator could do if it always found a correct aggregatee
        "oracle_of_final_set_on_aggregated": _mean(
            np.array([score[q, np.asarray(final_sets[q], dtype=np.int64)].max() for q in aggregated])
        ),
    }


def switch_summary(
    models: Sequence[str],
    datasets_test: Sequence[str],
    score_test: np.ndarray,
    present_test: np.ndarray,
    final_sets: Sequence[np.ndarray],
    aggregators: np.ndarray,
    outcomes: Sequence[str],
    calls_per_query: np.ndarray,
    cost_per_query: np.ndarray,
) -> dict[str, Any]:
    """The results.json 'jisi_switch' block, overall and per dataset (missing records score 0)."""
    score = np.where(np.asarray(present_test, dtype=bool), score_test, 0.0)
    args = (score, list(models), final_sets, aggregators, list(outcomes),
            np.asarray(calls_per_query, float), np.asarray(cost_per_query, float))
    out = _switch_stats(list(range(len(outcomes))), *args)
    labels = list(datasets_test)
    out["per_dataset"] = {
        ds: _switch_stats([q for q, d in enumerate(labels) if d == ds], *args) for ds in sorted(set(labels))
    }
    return out


def support_summary(support_sizes: np.ndarray, capped: np.ndarray, cap: int | None) -> dict[str, Any]:
    """Support-set size statistics; cap_binding_share = share of queries whose |I| hit the cap."""
    sizes = np.asarray(support_sizes, dtype=np.float64)
    return {
        "mean_size": _mean(sizes),
        "min_size": int(sizes.min()) if sizes.size else None,
        "max_size": int(sizes.max()) if sizes.size else None,
        "cap": cap,
        "cap_binding_share": _mean(np.asarray(capped, dtype=np.float64)),
    }
