"""Issue 14's additions to the method, on hand-made banks: the prior (λ, λ_f), cost-aware ranking (α), the
confident shortcut and choosing the final set among the candidates. Every default leaves the paper's formulas
exactly as they were: the identities are tested first."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine import JiSiParams, LiveResponses, SupportView, bank_accuracy, decide, plan
from app.engine.confidence import leader_probability
from app.engine.cost import cost_aware
from app.engine.prior import shrink

RNG = np.random.default_rng(7)
N, M, D = 200, 6, 8


def bank(seed: int = 0):
    rng = np.random.default_rng(seed)
    v = (rng.random((N, M)) < np.linspace(0.3, 0.8, M)).astype(np.float32)
    present = rng.random((N, M)) > 0.1
    c = rng.integers(10, 500, (N, M)).astype(np.float32)
    r = rng.standard_normal((N, M, D)).astype(np.float32)
    r /= np.linalg.norm(r, axis=2, keepdims=True)
    sims = np.sort(rng.random(N))[::-1] * 0.8 + 0.1
    ids = rng.permutation(N)
    return v, present, c, r, sims, ids


def view_and_live(v, present, c, r, planned, rng):
    ids = planned.support.ids
    live_models = planned.candidates
    view = SupportView(v=v[ids], present=present[ids], c=c[ids], r=r[ids][:, live_models])
    live_r = rng.standard_normal((live_models.size, D)).astype(np.float32)
    live_r /= np.linalg.norm(live_r, axis=1, keepdims=True)
    live = LiveResponses(models=live_models, r=live_r, c=rng.integers(10, 500, live_models.size).astype(float))
    return view, live


@pytest.mark.parametrize("seed", range(5))
def test_lambda_zero_and_alpha_zero_are_the_papers_scores_exactly(seed):
    v, present, c, r, sims, ids = bank(seed)
    mu = bank_accuracy(v, present)
    cost = np.linspace(1.0, 6.0, M)
    paper = JiSiParams()
    extended = JiSiParams(lam=0.0, lam_fine=0.0, cost_weight=0.0)  # the defaults, spelled out
    a = plan(sims, ids, v, present, paper)
    b = plan(sims, ids, v, present, extended, prior=mu, cost=cost)  # a prior and costs given, weighing 0
    assert np.array_equal(a.coarse.g, b.coarse.g) and np.array_equal(a.candidates, b.candidates)
    assert a.aggregator == b.aggregator and b.confidence is None and not b.shortcut
    rng = np.random.default_rng(seed)
    view, live = view_and_live(v, present, c, r, a, rng)
    da = decide(a, view, live, paper)
    db = decide(b, view, live, extended, prior=mu)
    assert np.array_equal(da.mixed.gf, db.mixed.gf) and np.array_equal(da.final, db.final)
    assert da.outcome == db.outcome


def test_the_prior_adds_lambda_average_weights_times_the_bank_accuracy():
    g = np.array([3.0, 2.0, 1.0])
    w = np.array([0.5, 0.7, 0.9])
    mu = np.array([0.1, 0.5, 0.9])
    assert np.allclose(shrink(g, w, 10.0, mu), g + 10 * 0.7 * mu)
    assert shrink(g, w, 0.0, mu) is g and shrink(g, w, 5.0, None) is g


def test_a_strong_prior_routes_like_the_best_model_of_the_bank():
    v, present, c, r, sims, ids = bank(1)
    mu = bank_accuracy(v, present)
    best = int(np.argmax(mu))
    strong = plan(sims, ids, v, present, JiSiParams(lam=1e4), prior=mu)
    assert strong.candidates[0] == best == strong.aggregator
    v2 = v.copy()  # a weak model right on the whole support set ...
    v2[:, 0] = 1.0
    mu2 = bank_accuracy(np.where(np.arange(N)[:, None] < 100, v2, v), present)  # ... but on half the bank only
    assert plan(sims, ids, v2, present, JiSiParams(lam=0), prior=mu2).candidates[0] == 0
    assert plan(sims, ids, v2, present, JiSiParams(lam=1e4), prior=mu2).candidates[0] == int(np.argmax(mu2))


def test_cost_aware_ranking_trades_normalised_performance_for_normalised_cost():
    perf = np.array([10.0, 9.0, 5.0, 0.0])
    cost = np.array([8.0, 2.0, 1.0, 0.5])
    assert cost_aware(perf, cost, 0.0) is perf
    score = cost_aware(perf, cost, 0.5)
    assert np.allclose(score, 0.5 * perf / 10 + 0.5 * (1 - cost / 8))
    assert int(np.argmax(score)) == 1  # almost as good, a quarter of the price
    assert int(np.argmax(cost_aware(perf, cost, 1.0))) == 3  # cost alone: the cheapest
    eligible = np.array([True, True, False, False])
    assert np.allclose(cost_aware(perf, cost, 0.5, eligible)[:2], [0.5 * 1 + 0.5 * 0, 0.5 * 0 + 0.5 * 0.75])


def test_cost_weight_moves_the_candidates_toward_cheaper_models():
    v, present, c, r, sims, ids = bank(2)
    cost = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 50.0])  # the last model is by far the most expensive
    v = v.copy()
    v[:, 5] = 1.0  # ... and always right
    quality = plan(sims, ids, v, present, JiSiParams(k=2), cost=cost)
    thrifty = plan(sims, ids, v, present, JiSiParams(k=2, cost_weight=0.8), cost=cost)
    assert quality.candidates[0] == 5 and 5 not in thrifty.candidates
    assert thrifty.aggregator == quality.aggregator == 5  # the aggregator is chosen on performance alone


def test_the_shortcut_fires_when_the_leader_is_clear_and_not_when_models_tie():
    v, present, c, r, sims, ids = bank(3)
    clear = v.copy()
    clear[:, 2] = 1.0
    clear[:, [0, 1, 3, 4, 5]] = (RNG.random((N, 5)) < 0.3)
    p = JiSiParams(shortcut=0.9)
    sure = plan(sims, ids, clear, np.ones_like(present), p)
    assert sure.candidates[0] == 2 and sure.confidence == 1.0 and sure.shortcut
    tied = np.tile((RNG.random((N, 1)) < 0.6), (1, M)).astype(np.float32)  # every model right on the same ones
    tied[:, 1] = np.clip(tied[:, 1] + (RNG.random(N) < 0.02), 0, 1)  # model 1 a hair ahead
    unsure = plan(sims, ids, tied, np.ones_like(present), p)
    assert unsure.confidence < 0.9 and not unsure.shortcut
    assert plan(sims, ids, clear, np.ones_like(present), JiSiParams()).confidence is None  # off: not computed


def test_the_leader_probability_is_deterministic_and_honours_eligibility():
    v, present, c, r, sims, ids = bank(4)
    w = sims[:80]
    args = (v[ids[:80]], present[ids[:80]], w)
    first = leader_probability(*args, 0, 0.0, None, None, 0.0, None)
    assert first == leader_probability(*args, 0, 0.0, None, None, 0.0, None)
    only = np.zeros(M, bool)
    only[3] = True
    assert leader_probability(*args, 3, 0.0, None, None, 0.0, only) == 1.0


def test_from_candidates_keeps_the_final_set_among_the_models_that_answered():
    # models 0 and 1 are right on 7 of 10 support questions (the candidates, K = 2); model 2 on 5, but on the
    # 5 whose recorded answers look like the live ones, which the filter (beta 0.5) keeps: its fine score leads
    v = np.zeros((10, 3), np.float32)
    v[[0, 1, 5, 6, 7, 8, 9], 0] = v[[0, 1, 5, 6, 7, 8, 9], 1] = 1.0
    v[:5, 2] = 1.0
    present, c = np.ones_like(v, bool), np.full((10, 3), 100.0, np.float32)
    sims, ids = np.full(10, 0.5), np.arange(10)
    live_r = np.eye(2, 4, dtype=np.float32)  # the two candidates' live answers
    r = np.zeros((10, 2, 4), np.float32)
    r[:5] = live_r  # rows 0-4: the candidates answered them the way they answer now
    r[5:, :, 3] = 1.0  # rows 5-9: differently
    free = JiSiParams(k=2, n_base=10, gamma=1.0, beta=0.5)
    planned = plan(sims, ids, v, present, free)
    assert planned.candidates.tolist() == [0, 1]
    view = SupportView(v=v, present=present, c=c, r=r)
    live = LiveResponses(models=planned.candidates, r=live_r, c=np.array([100.0, 100.0]))
    assert decide(planned, view, live, free, "route").final.tolist() == [2]  # a third call would be needed
    kept = decide(planned, view, live, JiSiParams(k=2, n_base=10, gamma=1.0, beta=0.5, from_candidates=True),
                  "route")
    assert kept.final[0] in (0, 1)
