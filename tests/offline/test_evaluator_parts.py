"""Baselines, cost accounting, report and plots of the offline evaluator, on hand-made arrays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bank_builder.evaluate import baselines as B
from bank_builder.evaluate import scores as Mt
from bank_builder.evaluate import plots, report
from bank_builder.evaluate.methods import Outcome
from bank_builder.evaluate.run import summarise
from bank_builder.evaluate.stats import Bootstrap

T, F = True, False


# ---------------------------------------------------------------- baselines


def test_best_single_uses_accuracy_over_present_records_only():
    score = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], float)
    present = np.array([[T, T, T], [T, T, T], [F, T, T], [F, T, T]])
    # model 0: 2/2 present correct; model 1: 3/4; counting missing as 0 would pick model 1
    assert B.best_single(score, present) == 0
    np.testing.assert_allclose(B.train_accuracy(score, present), [1.0, 0.75, 0.25])


def test_best_single_ties_go_to_lower_index_and_no_record_model_ranks_last():
    score = np.array([[0, 1, 1], [0, 0, 0]], float)
    assert B.best_single(score, np.ones((2, 3), bool)) == 1
    present = np.array([[F, T, T], [F, T, T]])
    score2 = np.zeros((2, 3))
    assert B.best_single(score2, present) == 1  # model 0 has no record: NaN ranks last


def test_best_single_choice_falls_back_when_record_missing():
    score = np.array([[1, 1, 0], [1, 0, 0]], float)  # ranking 0, 1, 2
    present_test = np.array([[T, T, T], [F, T, T], [F, F, T], [F, F, F]])
    np.testing.assert_array_equal(B.best_single_choice(score, np.ones((2, 3), bool), present_test), [0, 1, 2, 0])


def test_oracle_ignores_missing_records():
    score = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0]], float)
    present = np.array([[T, F, T], [T, T, T], [T, T, T]])
    np.testing.assert_array_equal(B.oracle(score, present), [0, 0, 1])


def test_random_choice_only_present_models_and_roughly_uniform():
    present = np.tile([T, F, T], (4000, 1))
    present[0] = [F, T, F]
    present[1] = [F, F, F]  # no record at all: any model, but a valid index
    choice = B.random_choice(present, seed=1)
    assert choice[0] == 1 and 0 <= choice[1] < 3
    assert set(choice[2:].tolist()) == {0, 2}
    assert 0.45 < np.mean(choice[2:] == 0) < 0.55
    np.testing.assert_array_equal(choice, B.random_choice(present, seed=1))
    assert not np.array_equal(choice, B.random_choice(present, seed=2))


def test_random_expected_accuracy_is_mean_over_present():
    score = np.array([[1, 0, 1], [1, 1, 1], [1, 0, 0]], float)
    present = np.array([[T, T, F], [F, F, F], [T, T, T]])
    np.testing.assert_allclose(B.random_expected_accuracy(score, present), [0.5, 0.0, 1 / 3])


def _two_blobs():
    a = np.array([[1.0, 0.01 * i] for i in range(4)])
    b = np.array([[0.01 * i, 1.0] for i in range(4)])
    e = np.vstack([a, b])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    score = np.array(
        [[0, 1, 1], [0, 0, 1], [1, 0, 1], [0, 1, 0],  # blob A: model 2 (3/4) > 1 (2/4) > 0 (1/4)
         [1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]],  # blob B: 0 and 1 tie at 2/4
        float,
    )
    return e.astype(np.float32), score


def test_cluster_router_best_model_per_cluster_with_tiebreak_and_mask():
    e, score = _two_blobs()
    e_test = np.array([[1.0, 0.02], [0.02, 1.0], [0.99, 0.0]], np.float32)
    present_test = np.array([[T, T, T], [T, T, T], [T, T, F]])
    # blob B tie 0 vs 1 -> model 1, better on all train (4/8 vs 3/8); row 3 falls back to model 1
    choice = B.cluster_router(e, score, np.ones_like(score, bool), e_test, n_clusters=2,
                              present_test=present_test)
    np.testing.assert_array_equal(choice, [2, 1, 1])
    no_mask = B.cluster_router(e, score, np.ones_like(score, bool), e_test, n_clusters=2)
    np.testing.assert_array_equal(no_mask, [2, 1, 2])


def test_default_n_clusters():
    assert [B.default_n_clusters(n) for n in (1, 10, 100, 5000)] == [1, 2, 5, 64]


MV_PRED = [["A", "b ", "B"], ["A", "B", "B"], ["A", "B", None], [None, None, ""], ["A", "B", "B"], ["5", "5", "7"]]
MV_SCORE = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]], float)


def test_majority_vote_normalises_ties_abstains_and_masks():
    present = np.ones((6, 3), bool)
    present[4, 2] = False  # its "B" vote is dropped: A/B tie -> best-ranked voter (model 0) "A"
    got = B.majority_vote(MV_PRED, MV_SCORE, present, np.array([0, 1, 2]))
    # q0: "b " and "B" are one answer (2 votes) and beat the correct "A"
    np.testing.assert_array_equal(got, [0, 0, 0, 0, 1, 1])
    # ranking order decides ties: model 1 first makes q2 pick "B" (correct)
    assert B.majority_vote(MV_PRED, MV_SCORE, present, np.array([1, 0, 2]))[2] == 1


def test_majority_vote_per_query_voters_and_per_dataset_top():
    score = np.array([[0, 1, 1], [1, 0, 1], [1, 0, 0], [1, 1, 0]], float)
    top = B.top_models_per_dataset(score, np.ones((4, 3), bool), ["x", "x", "y", "y"], ["y", "x", "z"], k=2)
    np.testing.assert_array_equal(top, [[0, 1], [2, 0], [0, 1]])  # z: overall top-2
    preds = [["1", "2", "2"], ["1", "2", "2"]]
    sc = np.array([[0, 1, 1], [0, 1, 1]], float)
    got = B.majority_vote(preds, sc, np.ones((2, 3), bool), np.array([[0, 1, 2], [0, 0, 0]]))
    np.testing.assert_array_equal(got, [1, 0])


# ---------------------------------------------------------------- metrics and costs


def test_method_summary_macro_average():
    s = Mt.method_summary(np.array([1, 1, 1, 0.0]), ["a", "a", "a", "b"], np.array([0.1, 0.2, 0.3, 0.4]),
                          np.array([1, 1, 3, 3.0]), unpriced_calls_per_query=np.array([0, 0, 1, 1.0]))
    assert s["average"] == pytest.approx(0.5) and s["micro"] == pytest.approx(0.75)
    assert s["datasets"] == {"a": 1.0, "b": 0.0}
    assert s["cost_per_query_usd"] == pytest.approx(0.25) and s["calls_per_query"] == pytest.approx(2.0)
    assert s["unpriced_calls_per_query"] == pytest.approx(0.5)


def test_cost_matrix_fills_from_prices_and_flags_unpriced(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"m0": {"input_per_million_usd": 1, "output_per_million_usd": 2},
                                "m1": {"input_per_million_usd": None, "output_per_million_usd": None}}))
    prices = Mt.load_prices(path)
    records = np.array([[0.5, np.nan, np.nan], [np.nan, 0.1, np.nan]])
    cost, unpriced = Mt.cost_matrix(records, np.array([1000, 2000]), np.array([[100, 200, 300], [400, 500, 600]]),
                                    ["m0", "m1", "m2"], prices)
    np.testing.assert_allclose(cost[:, 0], [0.5, (2000 * 1 + 400 * 2) / 1e6])
    assert cost[1, 1] == 0.1 and math.isnan(cost[0, 1]) and np.isnan(cost[:, 2]).all()
    np.testing.assert_array_equal(unpriced, [[F, T, T], [F, F, T]])
    assert math.isnan(records[1, 0])  # the caller's array is not modified


def test_aggregation_cost_estimate():
    price = {"input_per_million_usd": 1.0, "output_per_million_usd": 4.0}
    # prompt = 100 + 200 + 300 = 600 tokens, completion = 50
    assert Mt.aggregation_cost_estimate(100, [200, 300], 50, price) == pytest.approx(800e-6)
    assert math.isnan(Mt.aggregation_cost_estimate(100, [200], 50, {"input_per_million_usd": None,
                                                                     "output_per_million_usd": None}))
    assert math.isnan(Mt.aggregation_cost_estimate(100, [np.nan], 50, price))


JISI_CAND = np.array([[0, 1, 2], [0, 1, 2], [1, 2, 3]])
JISI_F = [np.array([1]), np.array([3, 0]), np.array([1, 2])]
JISI_OUT = ["route", "aggregate", "aggregate"]
JISI_AGG = np.array([0, 2, 3])
MODELS4 = ["m0", "m1", "m2", "m3"]


def test_jisi_calls_and_cost_accounting():
    cost = np.tile([0.01, 0.02, 0.03, 0.04], (3, 1))
    cost[2, 1] = np.nan
    prices = {"m2": {"input_per_million_usd": 1, "output_per_million_usd": 2},
              "m3": {"input_per_million_usd": None, "output_per_million_usd": None}}
    ct = np.tile([10.0, 20, 30, 40], (3, 1))
    usd, calls, unpriced = Mt.jisi_cost(JISI_CAND, JISI_F, JISI_AGG, JISI_OUT, cost, np.array([100.0] * 3),
                                        ct, MODELS4, prices)
    np.testing.assert_array_equal(calls, [3, 5, 4])  # q1: model 3 outside C + aggregator
    # q1 aggregator m2: prompt 100 + 40 + 10, completion 30 -> (150 + 60) / 1e6
    np.testing.assert_allclose(usd, [0.06, 0.10 + 210e-6, 0.07])
    np.testing.assert_array_equal(unpriced, [0, 0, 2])
    # router-only: the route model outside the candidates is one more call, no aggregator
    _, calls_r, _ = Mt.jisi_cost(JISI_CAND[:1], [np.array([3])], JISI_AGG[:1], ["route"], cost, np.array([1.0]),
                                 ct, MODELS4, prices)
    assert calls_r.tolist() == [4]


def test_baseline_costs():
    cost = np.array([[0.1, np.nan, 0.3], [0.2, 0.2, 0.2]])
    present = np.array([[T, T, F], [T, T, T]])
    usd, calls, unp = Mt.expected_call_cost(cost, present)
    np.testing.assert_allclose(usd, [0.05, 0.2])
    np.testing.assert_allclose(unp, [0.5, 0])
    usd, calls, unp = Mt.oracle_cost(cost)
    np.testing.assert_allclose(usd, [0.4, 0.6])
    np.testing.assert_array_equal(calls, [3, 3])
    assert unp.tolist() == [1, 0]
    usd, calls, unp = Mt.single_call_cost(np.array([1, 2]), cost)
    assert usd.tolist() == [0.0, 0.2] and calls.tolist() == [1, 1] and unp.tolist() == [1, 0]


def _switch(present=None):
    score = np.array([[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], float)
    present = np.ones((3, 4), bool) if present is None else present
    return Mt.switch_summary(MODELS4, ["a", "a", "b"], score, present, JISI_F, JISI_AGG, JISI_OUT,
                             np.array([3, 5, 4.0]), np.array([0.06, 0.1, 0.07]))


def test_switch_summary():
    sw = _switch()
    assert sw["aggregate_share"] == pytest.approx(2 / 3)
    assert sw["aggregators"] == {"m2": 1, "m3": 1} and sw["final_set_sizes"] == {1: 1, 2: 2}
    assert sw["route_accuracy_on_routed"] == 1.0 and sw["oracle_of_final_set_on_aggregated"] == 0.5
    assert sw["calls_per_query"] == pytest.approx(4.0)
    assert sw["per_dataset"]["a"]["aggregate_share"] == 0.5 and sw["per_dataset"]["b"]["route_accuracy_on_routed"] is None
    masked = np.ones((3, 4), bool)
    masked[0, 1] = False
    assert _switch(masked)["route_accuracy_on_routed"] == 0.0
    sup = Mt.support_summary(np.array([50, 60, 70]), np.array([F, F, T]), 70)
    assert sup["mean_size"] == 60 and sup["cap_binding_share"] == pytest.approx(1 / 3) and sup["cap"] == 70


# ---------------------------------------------------------------- report and plots


def _results():
    ds = ["a", "a", "b"]
    outcome = lambda c, cost: Outcome(np.array(c, float), np.array(cost), np.ones(3), np.zeros(3))  # noqa: E731
    outcomes = {name: outcome(c, cost) for name, c, cost in [
        ("best_single", [1, 0, 1], [0.001] * 3), ("oracle", [1, 1, 1], [0.1] * 3),
        ("random", [0.5, 0.5, 0.5], [0.01] * 3), ("retrieval", [1, 1, 0], [0.002] * 3),
        ("cluster", [0, 1, 0], [0.003] * 3), ("majority_vote", [1, 0, 0], [0.02] * 3),
        ("jisi_route", [1, 1, 1], [0.05] * 3), ("majority_vote_per_dataset", [0, 0, 0], [0.0] * 3),
    ]}
    methods, frontier = summarise(outcomes, ds, Bootstrap(ds, 200, seed=1), {})
    return {"methods": methods, "pareto_frontier": [p.__dict__ for p in frontier], "jisi_switch": _switch(),
            "support": Mt.support_summary(np.array([50, 60, 70]), np.array([F, F, T]), 70),
            "config": {"k": 3, "nan_value": float("nan")}, "timing": {"replay_s": np.float64(1.5)}}


def test_write_results_schema_and_markdown(tmp_path):
    results = _results()
    json_path, md_path = report.write_results(tmp_path / "out", results)
    data = json.loads(json_path.read_text())
    for method in ("best_single", "oracle", "random", "retrieval", "cluster", "majority_vote", "jisi_route"):
        assert set(report.REQUIRED_METHOD_KEYS) <= set(data["methods"][method])
    assert data["methods"]["retrieval"]["datasets"] == {"a": 1.0, "b": 0.0}
    assert data["jisi_switch"]["final_set_sizes"] == {"1": 1, "2": 2}
    assert data["config"]["nan_value"] is None and data["timing"]["replay_s"] == 1.5
    md = md_path.read_text()
    table = report.format_table(results)
    for method in results["methods"]:
        assert f"| {method} |" in md and method in table
    # Avg = mean of a, b; resampled within each dataset (a: both right, b: wrong) it cannot move
    assert "| retrieval | 100.00 | 0.00 | 50.00 | [50.00, 50.00] | 2.00e-03 | 1.00 |" in md
    assert "| retrieval | -25.00 " in md  # paired to best_single (75 %): 50 - 75 points
    assert "Adaptive switch" in md and "66.67" in md
    del results["methods"]["cluster"]["calls_per_query"]
    with pytest.raises(ValueError, match="cluster"):
        report.write_results(tmp_path / "bad", results)


def test_plots_write_png(tmp_path):
    acc_png = plots.plot_accuracy_vs_cost(_results(), tmp_path / "acc.png")
    models = [f"model-{i:02d}" for i in range(15)]  # more than TOP_N -> an 'other' group
    rng = np.random.default_rng(0)
    ds = ["a"] * 30 + ["b"] * 30
    sel = plots.plot_model_selection(models, ds, rng.integers(0, 15, 60),
                                     [rng.choice(15, size=rng.integers(1, 4), replace=False) for _ in range(60)],
                                     tmp_path / "sub" / "sel.png")
    for p in (acc_png, sel):
        assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
