"""The evaluator's statistics (bootstrap intervals, paired differences, LLMRouterBench's metrics), its trained
baselines and the records' own train/test split, on small hand-made inputs whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from bank_builder.evaluate import trained
from bank_builder.evaluate.split import choose_split, duplicate_rows, given_split, has_given_split, train_test_split
from bank_builder.evaluate.stats import (
    Bootstrap, Point, cost_save, gap_to_oracle, pareto_distance, pareto_frontier, relative_gain,
)


# ---------------------------------------------------------------- bootstrap


def test_the_interval_is_around_the_dataset_average_and_narrows_with_more_questions():
    rng = np.random.default_rng(0)
    small = (rng.random(100) < 0.7).astype(float)
    large = (rng.random(4000) < 0.7).astype(float)
    for values in (small, large):
        boot = Bootstrap(["d"] * len(values), n_resamples=1000, seed=1)
        low, high = boot.interval(values)
        assert low < boot.point(values) < high
    width = lambda v: np.subtract(*Bootstrap(["d"] * len(v), 1000, 1).interval(v)[::-1])  # noqa: E731
    assert width(large) < width(small) / 3  # ~ 1 / sqrt(n)


def test_resamples_are_stratified_so_the_average_weights_datasets_equally():
    # dataset a: 10 questions all right; b: 1,000 all wrong. The Table 1 average is 50 %, in every resample
    values = np.r_[np.ones(10), np.zeros(1000)]
    boot = Bootstrap(["a"] * 10 + ["b"] * 1000, n_resamples=500, seed=3)
    assert boot.point(values) == 0.5
    assert np.allclose(boot.averages(values), 0.5)


def test_paired_differences_cancel_what_both_methods_share():
    rng = np.random.default_rng(5)
    base = (rng.random(600) < 0.6).astype(float)
    better = base.copy()
    better[np.flatnonzero(base == 0)[:12]] = 1.0  # right on 12 more questions, wrong on none
    boot = Bootstrap(["d"] * 600, n_resamples=1000, seed=2)
    same = boot.paired(base, base)
    assert same["mean"] == 0 and same["ci95"] == [0.0, 0.0] and same["win_share"] == 0.5
    diff = boot.paired(better, base)
    assert diff["mean"] == pytest.approx(12 / 600)
    assert 0 < diff["ci95"][0] < diff["ci95"][1] and diff["win_share"] == 1.0
    # unpaired intervals of the two overlap, the paired one does not include 0: that is what pairing buys
    assert boot.interval(better)[0] < boot.interval(base)[1]


def test_the_same_seed_gives_the_same_intervals():
    values = (np.random.default_rng(9).random(300) < 0.5).astype(float)
    assert Bootstrap(["d"] * 300, 500, seed=4).interval(values) == Bootstrap(["d"] * 300, 500, seed=4).interval(values)


# ---------------------------------------------------------------- LLMRouterBench's metrics


def test_gains_and_gap_are_relative_to_their_reference():
    assert relative_gain(0.80, 0.50) == pytest.approx(0.6)
    assert relative_gain(0.78, 0.80) == pytest.approx(-0.025)
    assert gap_to_oracle(0.80, 0.95) == pytest.approx(0.15 / 0.95)
    assert relative_gain(0.5, 0.0) is None and gap_to_oracle(0.5, 0.0) is None


def test_the_frontier_keeps_the_points_no_other_dominates():
    points = [Point("cheap", 1.0, 0.60), Point("mid", 2.0, 0.70), Point("dominated", 3.0, 0.65),
              Point("best", 4.0, 0.80), Point("costly_equal", 5.0, 0.80), Point("unpriced", float("nan"), 0.99)]
    frontier = pareto_frontier(points)
    assert [p.method for p in frontier] == ["cheap", "mid", "best"]
    assert pareto_distance(points[2], frontier) == pytest.approx(0.05)  # mid is cheaper and 5 points better
    assert pareto_distance(points[0], frontier) == 0.0 and pareto_distance(points[4], frontier) == 0.0


def test_cost_save_is_the_best_saving_at_no_loss_of_accuracy():
    best = Point("best_single", 10.0, 0.70)
    sweep = [Point("r", 2.0, 0.60), Point("r", 4.0, 0.70), Point("r", 6.0, 0.72), Point("r", 12.0, 0.75)]
    assert cost_save(sweep, best) == pytest.approx(0.6)  # 4 USD at 70 %: 60 % cheaper
    assert cost_save([Point("r", 2.0, 0.69)], best) is None  # never as accurate
    assert cost_save([Point("r", 15.0, 0.75)], best) == pytest.approx(-0.5)  # as accurate, but 50 % dearer


# ---------------------------------------------------------------- trained baselines


def synthetic_routing(n: int = 600, seed: int = 0):
    """Two kinds of queries (embedding direction), model 0 right on kind A only, model 1 on kind B only,
    model 2 right half the time: a router that reads the embedding can be perfect."""
    rng = np.random.default_rng(seed)
    kind = rng.random(n) < 0.5
    e = np.where(kind[:, None], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]) + 0.05 * rng.standard_normal((n, 3))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    score = np.stack([kind, ~kind, rng.random(n) < 0.5], axis=1).astype(np.float32)
    return e.astype(np.float32), score, np.ones_like(score, dtype=bool), kind


def test_the_trained_routers_learn_who_is_right_where():
    e, score, present, _ = synthetic_routing()
    train, test = slice(0, 400), slice(400, None)
    correct = lambda choice: score[test][np.arange(200), choice].mean()  # noqa: E731
    logistic = trained.correctness_predictor(e[train], score[train], present[train], e[test], present[test])
    mf = trained.mf_router(e[train], score[train], present[train], e[test], present[test], epochs=60)
    knn, k = trained.knn_router(e[train], score[train], present[train], e[test], present[test], np.array(["d"] * 400))
    assert correct(logistic) > 0.97 and correct(mf) > 0.95 and correct(knn) > 0.97
    assert k in trained.KNN_KS


def test_a_router_never_picks_a_model_without_a_record():
    e, score, present, kind = synthetic_routing(200)
    present[:, 0] = False  # model 0 answered nothing in test
    choice = trained.correctness_predictor(e[:100], score[:100], np.ones_like(present[:100]), e[100:],
                                           present[100:])
    assert (choice != 0).all()


def test_best_per_dataset_is_chosen_on_train_for_each_dataset():
    score = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [0, 0]], dtype=np.float32)
    datasets = np.array(["a", "a", "b", "b", "a", "b"])
    present = np.ones_like(score, dtype=bool)
    choice = trained.best_per_dataset(score[:4], present[:4], datasets[:4], datasets[4:], present[4:])
    assert choice.tolist() == [0, 1]


# ---------------------------------------------------------------- the records' own split


def test_given_split_uses_train_for_the_bank_and_test_for_the_replay():
    datasets = ["a", "a", "a", "b", "b"]
    splits = ["train", "test", "train", "test", "train"]
    train, test = given_split(datasets, splits)
    assert train.tolist() == [0, 2, 4] and test.tolist() == [1, 3]
    rows = choose_split(datasets, splits, np.arange(5), None)
    assert rows[2] == "given" and rows[0].tolist() == [0, 2, 4]


def test_a_dataset_without_both_splits_is_a_clear_error_or_falls_back_to_random():
    datasets, splits = ["a", "a", "b", "b"], ["train", "test", "test", "test"]
    assert not has_given_split(datasets, splits)
    with pytest.raises(ValueError, match=r"b has only 'test'"):
        given_split(datasets, splits)
    with pytest.raises(ValueError, match=r"b has only"):
        choose_split(datasets, splits, np.arange(4), "given")
    _, _, kind = choose_split(datasets, splits, np.arange(4), None)
    assert kind == "random"


# ---------------------------------------------------------------- the random split keeps duplicates together


def test_identical_questions_of_a_dataset_land_on_one_side_of_the_random_split():
    n = 200
    datasets = ["a"] * n + ["b"] * n
    queries = [f"question {i % 150}" for i in range(n)] + [f"question {i}" for i in range(n)]
    queries[10], queries[11] = "Same  Question\n", "same question"  # whitespace and case do not tell them apart
    indices = np.r_[np.arange(n), np.arange(n)]
    train, test = train_test_split(datasets, indices, queries=queries)
    side = {int(r): "train" for r in train} | {int(r): "test" for r in test}
    for key in {q.lower().split()[-1] if q.startswith("question") else "same" for q in queries[:n]}:
        rows = [i for i in range(n) if (queries[i].lower().split()[-1] if queries[i].startswith("question")
                                        else "same") == key]
        assert len({side[r] for r in rows}) == 1, rows
    # the other dataset, and a dataset without duplicates, is split exactly as the paper's recipe splits it
    plain_train, plain_test = train_test_split(datasets, indices)
    assert [r for r in train if r >= n] == [r for r in plain_train if r >= n]
    assert len(train) + len(test) == 2 * n and abs(np.sum(train < n) - 140) <= 25
    assert duplicate_rows(datasets, queries) == 2 * 48 + 2  # 50 pairs, two of them broken up, one new pair


def test_a_dataset_without_duplicates_keeps_the_papers_split_row_for_row():
    datasets = ["a"] * 50 + ["b"] * 30
    indices = np.r_[np.arange(50), np.arange(30)]
    queries = [f"{d} {i}" for d, i in zip(datasets, indices)]
    grouped = train_test_split(datasets, indices, queries=queries)
    plain = train_test_split(datasets, indices)
    assert all(np.array_equal(x, y) for x, y in zip(grouped, plain)) and duplicate_rows(datasets, queries) == 0
