"""Unit tests of the JiSi engine, one step at a time, against small hand-computed cases.

Every expected number is worked out by hand in the comments next to it; nothing here re-implements
the formulas. Notation follows DESIGN.md §2 and the paper §3.3 (Eq. 2-5).
"""

from __future__ import annotations

import dataclasses
import numpy as np
import pytest


from app.engine import JiSiParams, final_set, top_k, truncate_aggregatees
from app.engine.mixed import (
    cost_similarity,
    filter_support,
    fine_scores,
    mixed_routing,
    mixed_score,
    response_similarity,
)
from app.engine.support import (
    SupportSet,
    coarse_scores,
    masked_weighted_sum,
    support_set,
    support_threshold,
)

T = True
F = False
FAISS_PAD = -3.4028235e38  # what faiss.IndexFlatIP returns as distance for a -1 (padding) id


def _support(s, ids=None) -> SupportSet:
    s = np.asarray(s, dtype=np.float64)
    ids = np.arange(s.size) if ids is None else np.asarray(ids)
    return SupportSet(ids=ids, s=s, tau=float(s.min()), capped=False)


def _ids(a) -> list[int]:
    return [int(x) for x in a]


# --------------------------------------------------------------------------------------------
# JiSiParams
# --------------------------------------------------------------------------------------------


class TestParams:
    def test_defaults_are_the_paper_values(self):
        p = JiSiParams()
        # paper §4.1: K, N_base, beta, gamma, eps, sigma, delta, t = 3, 50, 0.5, 0.95, 0.5, 0.3, 0.2, 0.8
        assert (p.k, p.n_base, p.beta, p.gamma) == (3, 50, 0.5, 0.95)
        assert (p.eps, p.sigma, p.delta, p.t) == (0.5, 0.3, 0.2, 0.8)
        # "truncated to 2 if the token sum of 3 aggregatees exceeds 13,000"
        assert (p.max_aggregate_tokens, p.min_aggregatees) == (13_000, 2)

    @pytest.mark.parametrize(
        "field, value",
        [
            ("k", 0),
            ("n_base", 0),
            ("max_support", 0),
            ("gamma", 1.5),
            ("gamma", -0.01),
            ("beta", 1.01),
            ("eps", -0.1),
            ("sigma", 2.0),
            ("delta", -1.0),
            ("t", 1.2),
            ("t", float("nan")),
            ("min_aggregatees", 0),
            ("max_aggregate_tokens", -1),
        ],
    )
    def test_invalid_values_are_rejected(self, field, value):
        with pytest.raises(ValueError, match=field):
            JiSiParams(**{field: value})

    def test_all_problems_are_reported_together(self):
        with pytest.raises(ValueError) as info:
            JiSiParams(k=0, gamma=2.0, t=-1.0)
        message = str(info.value)
        assert "k must be" in message and "gamma" in message and "t must be" in message

    @pytest.mark.parametrize("value", [0.0, 1.0])
    def test_closed_unit_interval_bounds_are_accepted(self, value):
        p = JiSiParams(gamma=value, beta=value, eps=value, sigma=value, delta=value, t=value)
        assert p.gamma == value and p.t == value

    def test_frozen(self):
        with pytest.raises(dataclasses.FrozenInstanceError):
            JiSiParams().k = 5  # type: ignore[misc]

    def test_with_overrides_returns_a_modified_copy(self):
        base = JiSiParams()
        new = base.with_overrides({"k": 4, "t": 0.5})
        assert (new.k, new.t) == (4, 0.5)
        assert (base.k, base.t) == (3, 0.8)  # the original is untouched
        assert new.n_base == base.n_base and new.gamma == base.gamma

    def test_with_overrides_empty_is_equal(self):
        assert JiSiParams().with_overrides({}) == JiSiParams()

    def test_with_overrides_unknown_field_is_value_error(self):
        with pytest.raises(ValueError, match="temperature"):
            JiSiParams().with_overrides({"k": 2, "temperature": 0.2})

    def test_with_overrides_validates_the_new_values(self):
        with pytest.raises(ValueError, match="beta"):
            JiSiParams().with_overrides({"beta": 3.0})


# --------------------------------------------------------------------------------------------
# top_k: the total f2 of Eq. 2
# --------------------------------------------------------------------------------------------


class TestTopK:
    def test_descending_order(self):
        assert _ids(top_k(np.array([0.2, 0.9, 0.5, 0.7]), 3)) == [1, 3, 2]

    def test_ties_lower_index_first_and_exactly_k(self):
        # scores 3 at indices 1, 2, 4: the top 2 are the two lowest indices among them
        assert _ids(top_k(np.array([1.0, 3.0, 3.0, 2.0, 3.0]), 2)) == [1, 2]
        # all tied: exactly K, by index
        assert _ids(top_k(np.zeros(5), 3)) == [0, 1, 2]

    def test_k_larger_than_size_returns_all(self):
        assert _ids(top_k(np.array([1.0, 2.0]), 5)) == [1, 0]

    def test_eligible_mask_skips_entries(self):
        # best (index 0) is ineligible -> indices 1 then 2
        assert _ids(top_k(np.array([5.0, 4.0, 3.0, 2.0]), 2, np.array([F, T, T, T]))) == [1, 2]

    def test_no_eligible_is_empty(self):
        assert top_k(np.array([1.0, 2.0]), 2, np.array([F, F])).size == 0


# --------------------------------------------------------------------------------------------
# Step 2: support threshold and support set I
# --------------------------------------------------------------------------------------------


class TestSupportThreshold:
    def test_positive_is_gamma_times_s(self):
        # 0.95 * 0.8 = 0.76 ; 0.5 * 0.6 = 0.3
        assert support_threshold(0.8, 0.95) == pytest.approx(0.76)
        assert support_threshold(0.6, 0.5) == pytest.approx(0.3)

    def test_negative_is_lowered_by_the_same_margin(self):
        # -0.2 - (1 - 0.5) * 0.2 = -0.3   (gamma * s would give -0.1, i.e. *above* s_nb)
        assert support_threshold(-0.2, 0.5) == pytest.approx(-0.3)
        # -0.4 - 0.05 * 0.4 = -0.42
        assert support_threshold(-0.4, 0.95) == pytest.approx(-0.42)

    def test_gamma_one_is_s_itself(self):
        assert support_threshold(0.37, 1.0) == 0.37


class TestSupportSet:
    def test_basic(self):
        # n_base = 2 -> s_(2) = 0.8 ; tau = 0.5 * 0.8 = 0.4 ; 0.9, 0.8, 0.7, 0.5 >= 0.4 ; 0.3 < 0.4
        p = JiSiParams(n_base=2, gamma=0.5)
        sup = support_set(np.array([0.9, 0.8, 0.7, 0.5, 0.3]), np.array([4, 0, 3, 1, 2]), p)
        assert _ids(sup.ids) == [4, 0, 3, 1]
        assert sup.s.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.5])
        assert sup.tau == pytest.approx(0.4)
        assert sup.capped is False

    def test_threshold_is_inclusive_with_paper_gamma(self):
        # gamma = 0.95, s_(2) = 0.8 -> tau = 0.76; a query at exactly 0.76 is admitted, 0.75 is not
        p = JiSiParams(n_base=2, gamma=0.95)
        sup = support_set(np.array([1.0, 0.8, 0.77, 0.76, 0.75]), np.arange(5), p)
        assert _ids(sup.ids) == [0, 1, 2, 3]

    def test_ties_at_the_n_base_th_are_all_admitted(self):
        # gamma = 1 -> tau = s_(2) = 0.8 ; three queries sit at 0.8 -> |I| = 4 > N_base = 2
        p = JiSiParams(n_base=2, gamma=1.0)
        sup = support_set(np.array([0.9, 0.8, 0.8, 0.8, 0.7]), np.arange(5), p)
        assert len(sup.ids) == 4

    def test_n_base_larger_than_bank_uses_the_last(self):
        # only 3 neighbours, n_base = 50 -> s_(N_base) is taken as the last one, 0.2
        # tau = 0.95 * 0.2 = 0.19 -> the whole bank
        sup = support_set(np.array([0.9, 0.6, 0.2]), np.array([2, 0, 1]), JiSiParams())
        assert _ids(sup.ids) == [2, 0, 1]
        assert sup.tau == pytest.approx(0.19)
        assert sup.capped is False

    def test_negative_similarity(self):
        # s_(2) = -0.2 ; tau = -0.2 - 0.5 * 0.2 = -0.3 -> 0.5 and -0.2 in, -0.4 and -0.5 out.
        # (gamma * s_nb = -0.1 would admit only one query, fewer than N_base.)
        p = JiSiParams(n_base=2, gamma=0.5)
        sup = support_set(np.array([0.5, -0.2, -0.4, -0.5]), np.array([0, 1, 2, 3]), p)
        assert _ids(sup.ids) == [0, 1]
        assert sup.tau == pytest.approx(-0.3)

    def test_all_negative_similarities_still_give_n_base(self):
        # s_(3) = -0.6 ; tau = -0.6 - 0.05 * 0.6 = -0.63 -> -0.1, -0.3, -0.6 in ; -0.9 out
        p = JiSiParams(n_base=3, gamma=0.95)
        sup = support_set(np.array([-0.1, -0.3, -0.6, -0.9]), np.arange(4), p)
        assert len(sup.ids) == 3

    def test_faiss_padding_is_dropped(self):
        # a bank of 2 asked for 4 neighbours: faiss pads ids with -1 and distances with -FLT_MAX.
        # valid: 0.9, 0.7 ; n_base = 50 -> s_nb = 0.7 ; tau = 0.5 * 0.7 = 0.35 -> both
        p = JiSiParams(gamma=0.5)
        sup = support_set(
            np.array([0.9, 0.7, FAISS_PAD, FAISS_PAD]), np.array([3, 1, -1, -1]), p
        )
        assert _ids(sup.ids) == [3, 1]
        assert sup.tau == pytest.approx(0.35)

    def test_padding_does_not_become_s_nbase(self):
        # n_base = 3 would land on a pad without the -1 filter (tau = -FLT_MAX, admit everything);
        # with it s_nb is the last valid one, 0.7 -> tau = 0.35
        p = JiSiParams(n_base=3, gamma=0.5)
        sup = support_set(np.array([0.9, 0.7, FAISS_PAD]), np.array([3, 1, -1]), p)
        assert _ids(sup.ids) == [3, 1]
        assert sup.tau == pytest.approx(0.35)

    def test_only_padding_is_an_error(self):
        with pytest.raises(ValueError, match="no neighbours"):
            support_set(np.array([FAISS_PAD, FAISS_PAD]), np.array([-1, -1]), JiSiParams())

    def test_unsorted_input_is_rejected(self):
        with pytest.raises(ValueError, match="descending"):
            support_set(np.array([0.5, 0.9, 0.1]), np.array([0, 1, 2]), JiSiParams())

    def test_cap_binding(self):
        # gamma = 1, s_(2) = 0.9 -> four queries clear tau = 0.9 ; max_support = 3 keeps the first 3
        p = JiSiParams(n_base=2, gamma=1.0, max_support=3)
        sup = support_set(np.array([0.9, 0.9, 0.9, 0.9, 0.1]), np.array([7, 3, 5, 1, 0]), p)
        assert _ids(sup.ids) == [7, 3, 5]
        assert sup.capped is True

    @pytest.mark.parametrize("max_support", [4, 5])
    def test_cap_not_binding(self, max_support):
        # the same four admitted ; a cap of exactly 4 (or more) does not bind
        p = JiSiParams(n_base=2, gamma=1.0, max_support=max_support)
        sup = support_set(np.array([0.9, 0.9, 0.9, 0.9, 0.1]), np.array([7, 3, 5, 1, 0]), p)
        assert _ids(sup.ids) == [7, 3, 5, 1]
        assert sup.capped is False

    def test_cap_below_n_base(self):
        # n_base = 3 but max_support = 2: |I| = 2 < N_base, and `capped` says why
        p = JiSiParams(n_base=3, gamma=0.5, max_support=2)
        sup = support_set(np.array([0.9, 0.8, 0.7]), np.arange(3), p)
        assert len(sup.ids) == 2 and sup.capped is True


# --------------------------------------------------------------------------------------------
# Step 3: coarse score g, aggregator, candidates
# --------------------------------------------------------------------------------------------

# s = [0.9, 0.5, 0.2] ; 4 models
S3 = [0.9, 0.5, 0.2]
V3 = np.array(
    [
        [1, 0, 1, 0],
        [0, 1, 1, 0],
        [1, 1, 0, 0],
    ],
    dtype=float,
)
ALL3 = np.ones_like(V3, dtype=bool)


class TestCoarseScores:
    def test_g_aggregator_candidates(self):
        # g0 = 0.9 + 0.2 = 1.1 ; g1 = 0.5 + 0.2 = 0.7 ; g2 = 0.9 + 0.5 = 1.4 ; g3 = 0
        c = coarse_scores(V3, ALL3, _support(S3), JiSiParams(k=2))
        assert c.g.tolist() == pytest.approx([1.1, 0.7, 1.4, 0.0])
        assert c.aggregator == 2
        assert _ids(c.candidates) == [2, 0]

    def test_k_three(self):
        c = coarse_scores(V3, ALL3, _support(S3), JiSiParams(k=3))
        assert _ids(c.candidates) == [2, 0, 1]

    def test_fractional_scores(self):
        # v in [0, 1]: g0 = 0.5*0.9 + 0.25*0.5 = 0.45 + 0.125 = 0.575 ; g1 = 1*0.5 = 0.5
        v = np.array([[0.5, 0.0], [0.25, 1.0]])
        c = coarse_scores(v, np.ones((2, 2), bool), _support([0.9, 0.5]), JiSiParams(k=1))
        assert c.g.tolist() == pytest.approx([0.575, 0.5])
        assert _ids(c.candidates) == [0]

    def test_negative_similarity_is_clipped_as_weight(self):
        # s = [0.6, -0.4]: weights [0.6, 0]. g0 = 0.6 ; g1 = 0 (not -0.4: being right on an
        # anti-similar query never counts against a model)
        v = np.array([[1.0, 0.0], [0.0, 1.0]])
        c = coarse_scores(v, np.ones((2, 2), bool), _support([0.6, -0.4]), JiSiParams(k=2))
        assert c.g.tolist() == pytest.approx([0.6, 0.0])

    def test_all_non_positive_similarities_give_zero_g(self):
        v = np.array([[1.0, 0.0], [0.0, 1.0]])
        c = coarse_scores(v, np.ones((2, 2), bool), _support([-0.1, -0.2]), JiSiParams(k=1))
        assert c.g.tolist() == [0.0, 0.0]
        assert c.aggregator == 0  # tie -> lower index

    def test_ties_lower_index_wins_exactly_k(self):
        # s = [0.5, 0.5]: g = [0.5, 0.5, 0.5, 0.5] -> K = 2 gives models 0 and 1, aggregator 0
        v = np.array([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=float)
        c = coarse_scores(v, np.ones((2, 4), bool), _support([0.5, 0.5]), JiSiParams(k=2))
        assert c.g.tolist() == pytest.approx([0.5] * 4)
        assert _ids(c.candidates) == [0, 1]
        assert c.aggregator == 0

    def test_ineligible_best_model_is_skipped(self):
        # g = [1.1, 0.7, 1.4, 0] but model 2 is ineligible: aggregator 0, candidates [0, 1]
        eligible = np.array([T, T, F, T])
        c = coarse_scores(V3, ALL3, _support(S3), JiSiParams(k=2), eligible)
        assert c.aggregator == 0
        assert _ids(c.candidates) == [0, 1]
        assert c.g[2] == pytest.approx(1.4)  # g is still reported for every model

    def test_fewer_eligible_than_k(self):
        c = coarse_scores(V3, ALL3, _support(S3), JiSiParams(k=3), np.array([F, T, F, F]))
        assert _ids(c.candidates) == [1]
        assert c.aggregator == 1

    def test_no_eligible_model_is_value_error(self):
        with pytest.raises(ValueError, match="no eligible"):
            coarse_scores(V3, ALL3, _support(S3), JiSiParams(k=2), np.zeros(4, bool))


class TestMaskedSum:
    def test_gap_is_not_penalised_and_fully_missing_scores_zero(self):
        # w = [0.8, 0.2], total 1.0
        # model 0: present twice, v = [1, 1]            -> 0.8 + 0.2 = 1.0
        # model 1: row 1 missing, v_00 = 1               -> 0.8 * (1.0 / 0.8) = 1.0   (not 0.8)
        # model 2: row 1 missing, v_00 = 0.5             -> 0.4 * (1.0 / 0.8) = 0.5
        # model 3: row 0 missing, v_11 = 0               -> 0
        # model 4: no record at all                      -> 0
        nan = np.nan  # garbage in masked cells must not leak into the sum
        v = np.array([[1.0, 1.0, 0.5, nan, nan], [1.0, nan, nan, 0.0, nan]])
        present = np.array([[T, T, T, F, F], [T, F, F, T, F]])
        g = masked_weighted_sum(v, present, np.array([0.8, 0.2]))
        assert g.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])

    def test_no_gaps_is_plain_v_transpose_w(self):
        # [1, 0.5; 0, 1]^T [0.6, 0.3] = [0.6, 0.3 + 0.3] = [0.6, 0.6]
        v = np.array([[1.0, 0.5], [0.0, 1.0]])
        g = masked_weighted_sum(v, np.ones((2, 2), bool), np.array([0.6, 0.3]))
        assert g.tolist() == pytest.approx([0.6, 0.6])

    def test_masked_entries_in_coarse_score_change_the_ranking(self):
        # s = [0.9, 0.1]. model 0: v = [1, 0] -> 0.9. model 1: v_00 = 1, row 1 missing
        # -> 0.9 * (1.0 / 0.9) = 1.0 > 0.9: model 1 leads (unmasked it would tie at 0.9)
        v = np.array([[1.0, 1.0], [0.0, 0.0]])
        present = np.array([[T, T], [T, F]])
        c = coarse_scores(v, present, _support([0.9, 0.1]), JiSiParams(k=1))
        assert c.g.tolist() == pytest.approx([0.9, 1.0])
        assert c.aggregator == 1


# --------------------------------------------------------------------------------------------
# Step 5: s_res, s_cost, s_flt
# --------------------------------------------------------------------------------------------

# live responses of K = 2 candidates, d = 2
R_LIVE = np.array([[1.0, 0.0], [0.6, 0.8]])


class TestResponseSimilarity:
    def test_hand_computed(self):
        r_sup = np.array(
            [
                [[1.0, 0.0], [0.6, 0.8]],  # 1 + (0.36 + 0.64) = 2
                [[0.0, 1.0], [0.8, 0.6]],  # 0 + (0.48 + 0.48) = 0.96
                [[0.6, 0.8], [-0.6, 0.8]],  # 0.6 + (-0.36 + 0.64) = 0.88
                [[-1.0, 0.0], [0.0, -1.0]],  # -1 + (-0.8) = -1.8 (dot products are not clipped)
            ]
        )
        s_res = response_similarity(r_sup, R_LIVE, np.ones((4, 2), bool))
        assert s_res.tolist() == pytest.approx([2.0, 0.96, 0.88, -1.8], abs=1e-6)

    def test_masked_entries(self):
        # row 0: only candidate 0 has a record: dot 1, rescaled to K = 2 terms -> 1 * 2 / 1 = 2
        # row 1: only candidate 1: r = [0, 1] . [0.6, 0.8] = 0.8 -> 0.8 * 2 = 1.6
        # row 2: nothing recorded -> 0
        junk = [9.0, 9.0]
        r_sup = np.array([[[1.0, 0.0], junk], [junk, [0.0, 1.0]], [junk, junk]])
        present = np.array([[T, F], [F, T], [F, F]])
        s_res = response_similarity(r_sup, R_LIVE, present)
        assert s_res.tolist() == pytest.approx([2.0, 1.6, 0.0], abs=1e-6)


class TestCostSimilarity:
    def test_hand_computed_with_zero_c_m(self):
        # candidate 0: c_0 = 10 (c^2 = 100); support 10, 20, 0 -> gaps 0, 300, 100 ; c_m = 300
        #   terms 1, 0, 1 - 100/300 = 2/3
        # candidate 1: c_1 = 7, support all 7 -> every gap 0 -> c_m = 0 -> every term 1
        # s_cost = [2, 1, 5/3]
        c_sup = np.array([[10, 7], [20, 7], [0, 7]])
        s_cost = cost_similarity(c_sup, np.array([10, 7]), np.ones((3, 2), bool))
        assert s_cost.tolist() == pytest.approx([2.0, 1.0, 5.0 / 3.0])

    def test_large_token_counts_do_not_overflow(self):
        # int32 input, 50,000^2 = 2.5e9 would overflow int32.
        # c_0 = 30,000 (9e8); support 30,000, 50,000, 40,000 -> c^2 9e8, 2.5e9, 1.6e9
        # gaps 0, 1.6e9, 7e8 ; c_m = 1.6e9 ; terms 1, 0, 1 - 7/16 = 0.5625
        c_sup = np.array([[30_000], [50_000], [40_000]], dtype=np.int32)
        s_cost = cost_similarity(c_sup, np.array([30_000], dtype=np.int32), np.ones((3, 1), bool))
        assert s_cost.tolist() == pytest.approx([1.0, 0.0, 0.5625])

    def test_very_long_responses(self):
        # c_0 = 100,000 (1e10); support 100,000, 0, 200,000 -> gaps 0, 1e10, 3e10 ; c_m = 3e10
        # terms 1, 1 - 1/3 = 2/3, 0
        c_sup = np.array([[100_000], [0], [200_000]], dtype=np.int64)
        s_cost = cost_similarity(c_sup, np.array([100_000]), np.ones((3, 1), bool))
        assert s_cost.tolist() == pytest.approx([1.0, 2.0 / 3.0, 0.0])

    def test_missing_entries_do_not_set_c_m_and_are_rescaled(self):
        # candidate 0: c_0 = 10 ; rows 0-1 present (10, 20 -> gaps 0, 300) ; row 2 missing with
        #   a huge junk count that must not become c_m. c_m = 300 -> terms 1, 0, (masked)
        # candidate 1: c_1 = 0 ; rows 0 and 2 present (10, 20 -> gaps 100, 400) ; c_m = 400
        #   terms 1 - 100/400 = 0.75, (masked), 0
        # row 0: 1 + 0.75 = 1.75 ; row 1: 0 * 2 / 1 = 0 ; row 2: 0 * 2 / 1 = 0
        c_sup = np.array([[10, 10], [20, 10**6], [10**6, 20]])
        present = np.array([[T, T], [T, F], [F, T]])
        s_cost = cost_similarity(c_sup, np.array([10, 0]), present)
        assert s_cost.tolist() == pytest.approx([1.75, 0.0, 0.0])

    def test_gap_only_row_is_rescaled_to_k_terms(self):
        # candidate 0: c_0 = 0 ; support 0, 10 -> gaps 0, 100 ; c_m = 100 ; terms 1, 0
        # candidate 1: c_1 = 0 ; row 0 missing, row 1 = 5 -> gap 25 ; c_m = 25 ; term 0
        # row 0: only candidate 0 present: 1 * 2 / 1 = 2 ; row 1: 0 + 0 = 0
        c_sup = np.array([[0, 999], [10, 5]])
        present = np.array([[T, F], [T, T]])
        s_cost = cost_similarity(c_sup, np.array([0, 0]), present)
        assert s_cost.tolist() == pytest.approx([2.0, 0.0])


class TestMixedScore:
    def test_paper_weights(self):
        # K = 2, eps K = 1.0:
        # row 0: 1.0 * 0.9 + 0.3 * 2    + 0.2 * 2 = 0.9 + 0.6   + 0.4 = 1.9
        # row 1: 1.0 * 0.5 + 0.3 * 0.96 + 0.2 * 1 = 0.5 + 0.288 + 0.2 = 0.988
        s_flt = mixed_score(
            np.array([0.9, 0.5]), np.array([2.0, 0.96]), np.array([2.0, 1.0]), 2, JiSiParams()
        )
        assert s_flt.tolist() == pytest.approx([1.9, 0.988])

    def test_k_scales_only_the_query_term(self):
        # K = 3: 0.5 * 3 * 0.9 = 1.35 ; + 0.6 + 0.4 = 2.35
        s_flt = mixed_score(np.array([0.9]), np.array([2.0]), np.array([2.0]), 3, JiSiParams())
        assert s_flt.tolist() == pytest.approx([2.35])

    def test_other_weights(self):
        # eps = 0.2, sigma = 0.5, delta = 0.3, K = 1: 0.2 * 0.5 + 0.5 * 0.4 + 0.3 * 1 = 0.1 + 0.2 + 0.3
        p = JiSiParams(eps=0.2, sigma=0.5, delta=0.3)
        s_flt = mixed_score(np.array([0.5]), np.array([0.4]), np.array([1.0]), 1, p)
        assert s_flt.tolist() == pytest.approx([0.6])


# --------------------------------------------------------------------------------------------
# Step 6: filter I_flt
# --------------------------------------------------------------------------------------------


class TestFilter:
    def test_five_half_keeps_two_largest(self):
        # |I| = 5, beta = 0.5 -> floor(2.5) = 2 ; largest s_flt 0.9 (pos 1) and 0.9 (pos 3, tie)
        kept = filter_support(np.array([0.3, 0.9, 0.1, 0.9, 0.5]), 0.5)
        assert _ids(kept) == [1, 3]

    @pytest.mark.parametrize(
        "size, beta, expected",
        [
            (5, 0.5, 2),  # floor(2.5)
            (4, 0.5, 2),
            (3, 0.5, 1),  # floor(1.5)
            (1, 0.5, 1),  # floor(0.5) = 0 -> at least 1
            (1, 1.0, 1),
            (6, 0.0, 1),  # beta = 0 -> still 1
            (6, 1.0, 6),
            (10, 0.3, 3),
            (7, 0.25, 1),  # floor(1.75)
        ],
    )
    def test_size(self, size, beta, expected):
        s_flt = np.linspace(1.0, 0.0, size)
        assert len(filter_support(s_flt, beta)) == expected

    @pytest.mark.parametrize("size, beta, expected", [(90, 0.7, 63), (100, 0.29, 29), (50, 0.58, 29)])
    def test_size_is_exact_floor_despite_float_rounding(self, size, beta, expected):
        # floor(0.7 * 90) = floor(63) = 63, but in floats 0.7 * 90 = 62.99999999999999.
        # (likewise 0.29 * 100 = 28.999999999999996 and 0.58 * 50 = 28.999999999999996)
        s_flt = np.linspace(1.0, 0.0, size)
        assert len(filter_support(s_flt, beta)) == expected


# --------------------------------------------------------------------------------------------
# Step 7: fine score g^f over all M models
# --------------------------------------------------------------------------------------------


class TestFineScores:
    def test_only_kept_rows_count(self):
        # s_flt = [1.9, 0.4, 1.2], kept rows 0 and 2
        # gf0 = 1.9 ; gf1 = 0 (its only success, row 1, was filtered out) ; gf2 = 1.9 + 1.2 = 3.1
        v = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]], dtype=float)
        gf = fine_scores(v, np.ones((3, 3), bool), np.array([1.9, 0.4, 1.2]), np.array([0, 2]))
        assert gf.tolist() == pytest.approx([1.9, 0.0, 3.1])

    def test_negative_s_flt_is_clipped_as_weight(self):
        # s_flt = [-0.5, 1.0] both kept: weights [0, 1] -> gf = [0, 1]
        v = np.eye(2)
        gf = fine_scores(v, np.ones((2, 2), bool), np.array([-0.5, 1.0]), np.array([0, 1]))
        assert gf.tolist() == pytest.approx([0.0, 1.0])

    def test_masked_entries(self):
        # s_flt kept = [1.5, 0.5], total 2.0
        # model 0: both present, v = [1, 0]         -> 1.5
        # model 1: row 1 missing, v_0 = 1           -> 1.5 * 2.0 / 1.5 = 2.0 (gap not penalised)
        # model 2: no record in I_flt               -> 0
        v = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
        present = np.array([[T, T, F], [T, F, F]])
        gf = fine_scores(v, present, np.array([1.5, 0.5]), np.array([0, 1]))
        assert gf.tolist() == pytest.approx([1.5, 2.0, 0.0])

    def test_model_that_was_not_a_candidate_wins(self):
        # M = 3, only models 0 and 1 were fanned out to (K = 2). |I| = 2, s = [0.8, 0.6].
        # Live answers identical to the bank's: s_res = 1 + 1 = 2 per row ;
        # every length equal -> c_m = 0 -> s_cost = 1 + 1 = 2 per row.
        # s_flt = 0.5*2*s + 0.3*2 + 0.2*2 = s + 1 = [1.8, 1.6] ; beta = 0.5 -> keep row 0 only.
        # v row 0 = [0, 0, 1] -> gf = [0, 0, 1.8]: model 2 wins although it never answered.
        r_live = np.array([[1.0, 0.0], [0.0, 1.0]])
        r_sup = np.stack([r_live, r_live])
        c = np.full((2, 2), 100)
        v = np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
        mixed = mixed_routing(
            s=np.array([0.8, 0.6]),
            v_support=v,
            present_support=np.ones((2, 3), bool),
            r_sup=r_sup,
            c_sup=c,
            present_sup_answered=np.ones((2, 2), bool),
            r_live=r_live,
            c_live=np.array([100, 100]),
            params=JiSiParams(k=2),
        )
        assert mixed.s_res.tolist() == pytest.approx([2.0, 2.0])
        assert mixed.s_cost.tolist() == pytest.approx([2.0, 2.0])
        assert mixed.s_flt.tolist() == pytest.approx([1.8, 1.6])
        assert _ids(mixed.kept) == [0]
        assert mixed.gf.tolist() == pytest.approx([0.0, 0.0, 1.8])
        final, outcome = final_set(mixed.gf, JiSiParams(k=2))
        assert _ids(final) == [2] and outcome == "route"

    def test_mixed_routing_needs_a_live_response(self):
        with pytest.raises(ValueError, match="live response"):
            mixed_routing(
                s=np.array([0.5]),
                v_support=np.ones((1, 2)),
                present_support=np.ones((1, 2), bool),
                r_sup=np.zeros((1, 0, 2)),
                c_sup=np.zeros((1, 0)),
                present_sup_answered=np.zeros((1, 0), bool),
                r_live=np.zeros((0, 2)),
                c_live=np.zeros(0),
                params=JiSiParams(),
            )


# --------------------------------------------------------------------------------------------
# Step 8: adaptive switch and variants
# --------------------------------------------------------------------------------------------


class TestSwitch:
    def test_ratio_exactly_t_is_included_just_below_is_excluded(self):
        # K = 3, t = 0.8: top-3 = [0, 1, 2] ; ratios 1.0, 0.8 (= t, in), 0.79 (out)
        final, outcome = final_set(np.array([1.0, 0.8, 0.79, 0.5]), JiSiParams(k=3, t=0.8))
        assert _ids(final) == [0, 1]
        assert outcome == "aggregate"

    def test_ratio_exactly_t_on_non_unit_max(self):
        # 0.4 / 0.5 = 0.8 = t -> included
        final, _ = final_set(np.array([0.4, 0.5]), JiSiParams(k=2, t=0.8))
        assert _ids(final) == [1, 0]

    def test_single_winner_routes(self):
        # ratios 1, 0.5, 0.2 -> |F| = 1 -> route
        final, outcome = final_set(np.array([0.2, 1.0, 0.5]), JiSiParams(k=3))
        assert _ids(final) == [1]
        assert outcome == "route"

    def test_at_most_k_even_when_more_clear_t(self):
        # four models at ratio 1, K = 3 -> exactly the first three by index
        final, outcome = final_set(np.ones(4), JiSiParams(k=3))
        assert _ids(final) == [0, 1, 2]
        assert outcome == "aggregate"

    def test_fifth_model_beyond_k_is_excluded_even_above_t(self):
        # gf = [1.0, 0.95, 0.9, 0.85], K = 2 -> only the top 2 even though all clear t = 0.8
        final, _ = final_set(np.array([1.0, 0.95, 0.9, 0.85]), JiSiParams(k=2))
        assert _ids(final) == [0, 1]

    def test_route_mode_is_top_1(self):
        final, outcome = final_set(np.array([0.95, 1.0, 0.9]), JiSiParams(k=3), mode="route")
        assert _ids(final) == [1]
        assert outcome == "route"

    def test_aggregate_mode_ignores_threshold(self):
        # top-3 of gf regardless of ratio: 1.0 (0), 0.1 (1), 0.05 (3)
        final, outcome = final_set(
            np.array([1.0, 0.1, 0.0, 0.05]), JiSiParams(k=3), mode="aggregate"
        )
        assert _ids(final) == [0, 1, 3]
        assert outcome == "aggregate"

    def test_aggregate_mode_with_k_1_routes(self):
        final, outcome = final_set(np.array([0.3, 0.7]), JiSiParams(k=1), mode="aggregate")
        assert _ids(final) == [1]
        assert outcome == "route"

    def test_all_zero_gf_routes_to_top_1(self):
        final, outcome = final_set(np.zeros(3), JiSiParams(k=3))
        assert _ids(final) == [0]
        assert outcome == "route"

    def test_t_zero_keeps_top_k_and_t_one_keeps_the_ties_with_max(self):
        gf = np.array([2.0, 1.0, 2.0, 0.0])
        assert _ids(final_set(gf, JiSiParams(k=3, t=0.0))[0]) == [0, 2, 1]
        assert _ids(final_set(gf, JiSiParams(k=3, t=1.0))[0]) == [0, 2]

    def test_eligible_mask(self):
        # model 0 ineligible: ranked [1, 2], max among eligible 0.9 ; 0.5 / 0.9 = 0.56 < 0.8 -> [1]
        final, outcome = final_set(
            np.array([1.0, 0.9, 0.5]), JiSiParams(k=3), eligible=np.array([F, T, T])
        )
        assert _ids(final) == [1]
        assert outcome == "route"

    def test_no_eligible_is_value_error(self):
        with pytest.raises(ValueError, match="no eligible"):
            final_set(np.array([1.0, 0.5]), JiSiParams(), eligible=np.array([F, F]))

    def test_unknown_mode_is_value_error(self):
        with pytest.raises(ValueError, match="mode"):
            final_set(np.array([1.0, 0.5]), JiSiParams(), mode="vote")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The 13,000-token truncation
# --------------------------------------------------------------------------------------------


class TestTruncation:
    def test_5000_5000_4000_keeps_top_2(self):
        # 5000 + 5000 + 4000 = 14,000 > 13,000 -> drop the lowest-ranked (model 5), keep [7, 2]
        kept = truncate_aggregatees(np.array([7, 2, 5]), {7: 5000, 2: 5000, 5: 4000}, JiSiParams())
        assert _ids(kept) == [7, 2]
        assert kept.dtype == np.int64

    def test_3_x_4000_keeps_3(self):
        # 12,000 <= 13,000
        kept = truncate_aggregatees(np.array([0, 1, 2]), {0: 4000, 1: 4000, 2: 4000}, JiSiParams())
        assert _ids(kept) == [0, 1, 2]

    def test_exactly_13000_is_not_exceeding(self):
        kept = truncate_aggregatees(np.array([0, 1, 2]), {0: 5000, 1: 4000, 2: 4000}, JiSiParams())
        assert _ids(kept) == [0, 1, 2]

    def test_drops_by_rank_not_by_length(self):
        # the shortest response belongs to the lowest-ranked model; it still goes first
        kept = truncate_aggregatees(np.array([3, 1, 0]), {3: 9000, 1: 4000, 0: 1000}, JiSiParams())
        assert _ids(kept) == [3, 1]

    def test_k4_drops_one_when_enough(self):
        # 4 x 4000 = 16,000 > 13,000 -> 3 x 4000 = 12,000 -> stop at 3
        p = JiSiParams(k=4)
        kept = truncate_aggregatees(np.array([0, 1, 2, 3]), dict.fromkeys(range(4), 4000), p)
        assert _ids(kept) == [0, 1, 2]

    def test_k4_stops_at_min_aggregatees(self):
        # 4 x 7000 = 28,000 -> 21,000 -> 14,000 (still > 13,000, but only 2 left) -> 2
        p = JiSiParams(k=4)
        kept = truncate_aggregatees(np.array([0, 1, 2, 3]), dict.fromkeys(range(4), 7000), p)
        assert _ids(kept) == [0, 1]

    def test_two_or_one_aggregatee_is_untouched(self):
        assert _ids(truncate_aggregatees(np.array([4, 1]), {4: 9000, 1: 9000}, JiSiParams())) == [4, 1]
        assert _ids(truncate_aggregatees(np.array([4]), {4: 20_000}, JiSiParams())) == [4]

    def test_min_aggregatees_one(self):
        # 8000 + 6000 = 14,000 > 13,000 and min_aggregatees = 1 -> keep the top one
        p = JiSiParams(min_aggregatees=1)
        assert _ids(truncate_aggregatees(np.array([2, 0]), {2: 8000, 0: 6000}, p)) == [2]
