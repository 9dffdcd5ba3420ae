"""Statistics a routing result needs before anyone believes it: bootstrap intervals over the test questions,
paired differences against a reference method, and LLMRouterBench's summary metrics (Gain@R, Gain@B, Gap@O,
the accuracy-cost Pareto frontier, ParetoDist, CostSave). The formulas are written out in docs/evaluation.md.

Accuracy throughout is the Table 1 "Avg": the mean over datasets of each dataset's accuracy. The bootstrap
resamples questions within each dataset (stratified), so every resample keeps the datasets' sizes and the
average stays the same statistic; paired differences use the same resampled questions for both methods,
which is what makes a 0.5-point difference between two routers on the same questions measurable at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

N_RESAMPLES = 2000  # the issue asks for >= 1,000; 2,000 keeps the 2.5 % quantiles stable to ~0.1 point
LEVEL = 0.95


class Bootstrap:
    """Seeded stratified resamples of the test questions, shared by every method of one evaluation."""

    def __init__(self, datasets: Sequence[str], n_resamples: int = N_RESAMPLES, seed: int = 42) -> None:
        labels = np.asarray(datasets)
        rng = np.random.default_rng(seed)
        self.n_resamples = n_resamples
        self.groups = [np.flatnonzero(labels == d) for d in sorted(set(labels.tolist()))]
        # per dataset, n_resamples x n_d positions drawn with replacement (the same draws for every method)
        self.draws = [g[rng.integers(0, g.size, size=(n_resamples, g.size))] for g in self.groups]

    def averages(self, values: np.ndarray) -> np.ndarray:
        """The dataset-average of `values` (per question) in every resample: (n_resamples,)."""
        values = np.asarray(values, dtype=np.float64)
        return np.mean([values[d].mean(axis=1) for d in self.draws], axis=0)

    def point(self, values: np.ndarray) -> float:
        values = np.asarray(values, dtype=np.float64)
        return float(np.mean([values[g].mean() for g in self.groups]))

    def interval(self, values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
        """Percentile interval of the dataset-average."""
        low, high = np.quantile(self.averages(values), [(1 - level) / 2, (1 + level) / 2])
        return float(low), float(high)

    def paired(self, values: np.ndarray, reference: np.ndarray, level: float = LEVEL) -> dict[str, Any]:
        """values - reference on the same resampled questions: the mean difference, its interval and the share
        of resamples in which `values` is ahead (ties count half)."""
        diff = self.averages(values) - self.averages(reference)
        low, high = np.quantile(diff, [(1 - level) / 2, (1 + level) / 2])
        return {"mean": self.point(values) - self.point(reference), "ci95": [float(low), float(high)],
                "win_share": float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))}


# ---------------------------------------------------------------- LLMRouterBench's summary metrics


def relative_gain(accuracy: float, baseline: float) -> float | None:
    """Gain@R / Gain@B: (A - A_base) / A_base."""
    return None if not baseline else (accuracy - baseline) / baseline


def gap_to_oracle(accuracy: float, oracle: float) -> float | None:
    """Gap@O: (A_oracle - A) / A_oracle, the share of the reachable accuracy still missing."""
    return None if not oracle else (oracle - accuracy) / oracle


@dataclass(frozen=True)
class Point:
    """One operating point on the accuracy-cost plane: a method, or one setting of a method's knob."""

    method: str
    cost: float  # USD per query
    accuracy: float  # dataset-average
    label: str = ""  # the knob's setting, e.g. "cost_weight=0.3"


def pareto_frontier(points: Sequence[Point]) -> list[Point]:
    """The points no other point dominates (as cheap or cheaper and at least as accurate, one strictly),
    cheapest first. Points without a known cost are left out."""
    known = sorted((p for p in points if np.isfinite(p.cost) and np.isfinite(p.accuracy)),
                   key=lambda p: (p.cost, -p.accuracy))
    frontier: list[Point] = []
    for p in known:
        if not frontier or p.accuracy > frontier[-1].accuracy:
            frontier.append(p)
    return frontier


def pareto_distance(point: Point, frontier: Sequence[Point]) -> float:
    """ParetoDist: how much accuracy the frontier reaches at no more cost than `point`, above `point`'s own
    (0 on the frontier). In accuracy points of the dataset-average."""
    reachable = [f.accuracy for f in frontier if f.cost <= point.cost + 1e-15]
    return max(0.0, max(reachable) - point.accuracy) if reachable else 0.0


def cost_save(points: Sequence[Point], best_single: Point) -> float | None:
    """CostSave: the largest relative cost reduction 1 - cost / cost_best among the operating points whose
    accuracy is at least best single's; None when no point is that accurate (or best single costs nothing)."""
    if not best_single.cost or not np.isfinite(best_single.cost):
        return None
    saves = [1 - p.cost / best_single.cost for p in points if p.accuracy >= best_single.accuracy - 1e-12]
    return max(saves) if saves else None
