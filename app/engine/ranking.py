"""Deterministic top-k, the f2 of the paper (Eq. 2) made total.

Eq. 2 defines f2(α) as the value with exactly α entries at or above it, which does not exist when
scores tie. We rank by score, descending, and break ties by the lower index (bank model order),
so 'the top K' always has exactly K members and the same input always gives the same answer.
"""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k largest scores (ties: lower index first), among eligible entries only."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(scores.size), -scores))
    if eligible is not None:
        order = order[np.asarray(eligible, dtype=bool)[order]]
    return order[: max(k, 0)]
