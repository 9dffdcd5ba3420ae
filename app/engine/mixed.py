"""Steps 5-7: query-response mixed score s^flt, the filtered set I^flt and the fine score g^f (Eq. 3).

Inputs are the support set's bank rows gathered for the candidates that answered live (k = 1..K):
  r_sup[i, k] = r_ik   response embedding of candidate k on support query i  (|I| x K x d)
  c_sup[i, k] = c_ik   its completion tokens                                  (|I| x K)
  present_sup[i, k]    whether the bank has that record                        (|I| x K)
and the live responses r_k (K x d) and their completion tokens c_k (K).
K here is the number of candidates that answered, so a failed candidate drops out of every sum
and ε·K·s stays balanced against the K-term sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.engine.params import JiSiParams
from app.engine.prior import shrink
from app.engine.ranking import top_k
from app.engine.support import masked_weighted_sum


def _coverage_scaled_sum(terms: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Σ_k terms_ik over present entries, rescaled to K terms (K · mean); 0 when a row has none."""
    present = np.asarray(present, dtype=bool)
    k = terms.shape[1]
    n_present = present.sum(axis=1)
    total = np.where(present, terms, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_present > 0, total * k / n_present, 0.0)


def response_similarity(r_sup: np.ndarray, r_live: np.ndarray, present_sup: np.ndarray) -> np.ndarray:
    """s^res_i = Σ_k r_ik · r_k."""
    r_sup = np.asarray(r_sup, dtype=np.float32)
    r_live = np.asarray(r_live, dtype=np.float32)
    dots = np.einsum("ikd,kd->ik", r_sup, r_live).astype(np.float64)
    return _coverage_scaled_sum(dots, present_sup)


def cost_similarity(c_sup: np.ndarray, c_live: np.ndarray, present_sup: np.ndarray) -> np.ndarray:
    """s^cost_i = Σ_k (1 − |c_ik² − c_k²| / c_m,k), c_m,k = max_{i∈I} |c_ik² − c_k²|.

    When c_m,k is 0 (every support response of model k is exactly as long as the live one)
    the term is 1: all lengths match perfectly.
    """
    present = np.asarray(present_sup, dtype=bool)
    c_sup = np.asarray(c_sup, dtype=np.float64)
    c_live = np.asarray(c_live, dtype=np.float64)
    gap = np.abs(c_sup**2 - c_live[None, :] ** 2)
    gap = np.where(present, gap, 0.0)
    c_m = gap.max(axis=0) if gap.shape[0] else np.zeros(gap.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(c_m > 0, 1.0 - gap / c_m, 1.0)
    return _coverage_scaled_sum(terms, present)


def mixed_score(
    s: np.ndarray, s_res: np.ndarray, s_cost: np.ndarray, k: int, params: JiSiParams
) -> np.ndarray:
    """s^flt_i = ε·K·s_i + σ·s^res_i + δ·s^cost_i."""
    return params.eps * k * np.asarray(s, dtype=np.float64) + params.sigma * s_res + params.delta * s_cost


def filter_support(s_flt: np.ndarray, beta: float) -> np.ndarray:
    """Positions (into I) of I^flt: the floor(β·|I|) support queries with the largest s^flt.

    At least one is kept, so a tiny support set still yields a fine score.
    """
    # the epsilon keeps e.g. 0.7 · 90 (62.99999999999999 in floating point) at 63, as Eq. 3 means
    size = max(1, math.floor(beta * len(s_flt) + 1e-9))
    return top_k(s_flt, size)


def fine_scores(
    v_support: np.ndarray, present_support: np.ndarray, s_flt: np.ndarray, kept: np.ndarray
) -> np.ndarray:
    """g^f_j = Σ_{i∈I^flt} v_ij · s^flt_i, for every one of the M models (not only the candidates)."""
    w = np.clip(np.asarray(s_flt, dtype=np.float64)[kept], 0.0, None)
    return masked_weighted_sum(np.asarray(v_support)[kept], np.asarray(present_support)[kept], w)


@dataclass(frozen=True)
class MixedScores:
    s_res: np.ndarray
    s_cost: np.ndarray
    s_flt: np.ndarray
    kept: np.ndarray  # positions into I of I^flt
    gf: np.ndarray  # fine score per model


def mixed_routing(
    s: np.ndarray,
    v_support: np.ndarray,
    present_support: np.ndarray,
    r_sup: np.ndarray,
    c_sup: np.ndarray,
    present_sup_answered: np.ndarray,
    r_live: np.ndarray,
    c_live: np.ndarray,
    params: JiSiParams,
    prior: np.ndarray | None = None,
) -> MixedScores:
    """Eq. 3 end to end for the K candidates that answered (g^f shrunk by λ_f toward `prior`, issue 14)."""
    k = len(r_live)
    if k == 0:
        raise ValueError("mixed routing needs at least one live response")
    s_res = response_similarity(r_sup, r_live, present_sup_answered)
    s_cost = cost_similarity(c_sup, c_live, present_sup_answered)
    s_flt = mixed_score(s, s_res, s_cost, k, params)
    kept = filter_support(s_flt, params.beta)
    gf = shrink(fine_scores(v_support, present_support, s_flt, kept), np.clip(s_flt[kept], 0.0, None),
                params.lam_fine, prior)
    return MixedScores(s_res=s_res, s_cost=s_cost, s_flt=s_flt, kept=kept, gf=gf)
