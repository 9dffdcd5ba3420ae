"""Issue 18: on records that carry each call's own cost and no price table, the cost weight moves decisions (the
forecast read prices only, so α from 0 to 0.8 gave identical decisions); the gateway and the evaluator forecast
with the same rule (app/engine/cost.py CostModel)."""

from __future__ import annotations

import numpy as np

from app.engine import JiSiParams
from app.engine.cost import CostModel
from bank_builder.evaluate.replay import MemoryBank, Queries, replay_queries

M, N, NQ, D = 3, 60, 12, 8
# model 0: the most accurate and 100x the others' cost; model 1: nearly as good and cheap; model 2: weak and cheap
ACCURACY = np.array([0.95, 0.85, 0.4])
RECORDED = np.array([1e-2, 1e-4, 5e-5])  # USD per call


def hand_made(recorded: bool) -> tuple[MemoryBank, Queries]:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(N + NQ, D)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    v = (rng.random((N, M)) < ACCURACY).astype(np.float32)
    present = np.ones((N, M), bool)
    c = np.full((N, M), 100.0, np.float32)
    r = [rng.normal(size=(N + NQ, D)).astype(np.float32) for _ in range(M)]
    cost = np.tile(RECORDED, (N, 1)).astype(np.float32) if recorded else None
    bank = MemoryBank([f"m{j}" for j in range(M)], e[:N], v, present, c, [x[:N] for x in r], cost)
    queries = Queries(e=e[N:], r=[x[N:] for x in r], c=np.full((NQ, M), 100.0), present=np.ones((NQ, M), bool),
                      empty=np.zeros((NQ, M), bool), prompt_tokens=np.full(NQ, 50.0))
    return bank, queries


def leaders(bank: MemoryBank, queries: Queries, alpha: float) -> list[int]:
    params = JiSiParams(n_base=20, cost_weight=alpha)
    return replay_queries(bank, queries, params, prices=None).retrieval_choice.tolist()


def test_the_cost_weight_moves_decisions_on_recorded_costs_without_prices() -> None:
    bank, queries = hand_made(recorded=True)
    by_quality = leaders(bank, queries, 0.0)
    by_cost = leaders(bank, queries, 0.8)
    assert by_quality.count(0) > NQ // 2  # the accurate, expensive model leads on quality alone
    assert by_cost != by_quality and by_cost.count(0) < by_quality.count(0)


def test_without_recorded_costs_or_prices_the_cost_weight_has_nothing_to_act_on() -> None:
    """The defect's mechanism, kept as the documented fallback: no price and no recorded cost is no forecast."""
    bank, queries = hand_made(recorded=False)
    assert leaders(bank, queries, 0.0) == leaders(bank, queries, 0.8)


def test_a_price_wins_over_recorded_costs_and_an_unpriced_model_uses_its_support_rows() -> None:
    c = np.full((4, 2), 10.0)
    present = np.ones((4, 2), bool)
    recorded = np.array([[9.0, 1.0], [9.0, 3.0], [9.0, np.nan], [9.0, 100.0]])
    costs = CostModel.of(np.array([2.0, np.nan]), np.array([4.0, np.nan]), c, present, recorded)
    forecast = costs.expected(np.array([0, 1, 2]), prompt_tokens=1000)
    assert forecast[0] == (1000 * 2.0 + 10 * 4.0) / 1e6  # priced: the price, not the recorded 9 USD
    assert forecast[1] == 2.0  # unpriced: the mean of its known recorded costs over the support rows (1, 3)
    # no recorded cost in the support rows: its mean over the whole bank
    assert costs.expected(np.array([2]), 1000)[1] == np.mean([1.0, 3.0, 100.0])


def test_an_unpriced_model_without_records_is_forecast_at_the_median_price() -> None:
    c, present = np.full((2, 3), 10.0), np.ones((2, 3), bool)
    costs = CostModel.of(np.array([1.0, 3.0, np.nan]), np.array([1.0, 5.0, np.nan]), c, present, None)
    forecast = costs.expected(np.array([0, 1]), prompt_tokens=0)
    assert forecast[2] == 10 * np.median([1.0, 5.0]) / 1e6 and costs.unpriced.tolist() == [False, False, True]
