"""The response-aware cascade (issue 21): the candidates one at a time, cheapest forecast first, each answer
judged against the bank before the next is paid for.

After each answer the fine score g^f is computed from the answers so far (Eq. 3: the support questions whose
recorded answers look most like the live ones, I^flt, and every model's record on them). An answer that looks
like its model's right answers puts that model ahead on I^flt; one that looks like its wrong answers puts the
models that got those questions right ahead. The cascade stops when the best answered model's g^f is at least
`params.cascade` times the best g^f among the candidates not yet called: ρ = g^f_answered / g^f_waiting >= θ.
An empty answer is no answer (it never stops the cascade and is never chosen while another said something).
The choice is the top of the fine score among the answered models (decide() with the answered as the only
eligible ones). θ is calibrated on the train folds (bank_builder/evaluate/calibrate.py, the economy profile).

The gateway (app/pipeline/prepare.py) and the replay (bank_builder/evaluate/replay.py) both walk the same
steps with these functions; a call that fails (online) or has no record (offline) is skipped.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def cascade_order(candidates: Sequence[int], forecast: np.ndarray) -> list[int]:
    """The candidates cheapest forecast cost first (an unknown forecast last); ties keep the coarse order."""
    cost = np.asarray(forecast, dtype=np.float64)
    rank = {int(j): i for i, j in enumerate(candidates)}
    return sorted((int(j) for j in candidates),
                  key=lambda j: (math.isnan(cost[j]), 0.0 if math.isnan(cost[j]) else cost[j], rank[j]))


def cascade_lead(gf: np.ndarray, said: Sequence[int], waiting: Sequence[int]) -> float:
    """ρ: the best fine score among the answered models that said something over the best among the candidates
    still waiting; +inf with none waiting (or none of them scoring above 0), -inf with no answer yet."""
    if not said:
        return -math.inf
    best = max(float(gf[j]) for j in said)
    rest = max((float(gf[j]) for j in waiting), default=0.0)
    if rest <= 0.0:
        return math.inf
    return best / rest


def cascade_done(lead: float, threshold: float, waiting: Sequence[int]) -> bool:
    """Whether the cascade stops after this answer: ρ >= θ, or no candidate is left to call."""
    return not waiting or lead >= threshold
