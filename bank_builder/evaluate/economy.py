"""The economy profile (issue 21): on top of the accuracy choice, the cheapest point of ECONOMY_SPACE x the
shortcut's thresholds x the cascade's thresholds whose fold accuracy is at least best single's fold accuracy minus
a margin (`jisi-bank calibrate --objective savings[:MARGIN]`, default 0), scored on the same folds as the
calibration (folds.py). The bank serves it as `jisi-economy`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from app.engine import JiSiParams
from bank_builder.evaluate.baselines import best_single_choice
from bank_builder.evaluate.folds import Fold, evaluate_points, fold_average
from bank_builder.evaluate.scores import single_call_cost


# the economy profile's search, on top of the accuracy choice: the cost weight alpha (Avengers-Pro's trade-off),
# K (K = 1: one call, the cost-weighted coarse leader) and where the final choice comes from; every point also
# with each of the shortcut's and the cascade's thresholds (free: one replay per fold records every query's leader
# probability and walks its cascade to the end)
ECONOMY_SPACE: dict[str, list[Any]] = {
    "cost_weight": [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0],
    "k": [1, 2, 3],
    "from_candidates": [False, True],
}


def best_single_on_folds(folds: list[Fold]) -> dict[str, Any]:
    """Best single model as the evaluator chooses it (best accuracy on the fold's bank, the next best where its
    record is missing), scored on each fold's questions: the economy profile's reference."""
    rows = []
    for fold in folds:
        choice = best_single_choice(fold.bank.v, fold.bank.present, fold.queries.present)
        usd, _, _ = single_call_cost(choice, fold.cost)
        rows.append((fold_average(fold.score[np.arange(choice.size), choice], fold.datasets), float(np.nanmean(usd))))
    return {"accuracy": float(np.mean([a for a, _ in rows])), "folds": [a for a, _ in rows],
            "cost_per_query_usd": float(np.mean([c for _, c in rows])), "calls_per_query": 1.0}


def economy(folds: list[Fold], quality: JiSiParams, margin: float, thresholds: Sequence[float | None],
            cascades: Sequence[float | None], progress: bool = True) -> dict[str, Any]:
    """The economy profile: the cheapest point (ECONOMY_SPACE x the shortcut's `thresholds` x the cascade's
    `cascades` where K > 1, on top of the quality choice) whose fold accuracy is at least best single's minus `margin` points; ties: the more accurate. When none
    reaches it, the most accurate point, and `meets_target` says it did not."""
    reference = best_single_on_folds(folds)
    floor = reference["accuracy"] - margin / 100.0
    keys = list(ECONOMY_SPACE)
    points = []
    grid = [dict(zip(keys, values)) for values in np.array(np.meshgrid(*ECONOMY_SPACE.values(), indexing="ij"),
                                                               dtype=object).reshape(len(keys), -1).T]
    for point in tqdm(grid, desc="economy profile", unit="setting", disable=not progress):
        point = {"cost_weight": float(point["cost_weight"]), "k": int(point["k"]),
                 "from_candidates": bool(point["from_candidates"])}
        params = quality.with_overrides({**point, "shortcut": None, "cascade": None})
        # a cascade over one candidate is that candidate alone: the same as K = 1 without one
        ks_cascades = list(cascades) if point["k"] > 1 else [None]
        for (threshold, cascade), result in evaluate_points(folds, params, thresholds, ks_cascades).items():
            points.append({"setting": {**point, "shortcut": threshold, "cascade": cascade}, **result})
    eligible = [p for p in points if p["accuracy"] >= floor]
    meets = bool(eligible)
    best = min(eligible, key=lambda p: (p["cost_per_query_usd"], -p["accuracy"], p["calls_per_query"])) if meets \
        else max(points, key=lambda p: (p["accuracy"], -p["cost_per_query_usd"]))
    params = quality.with_overrides(best["setting"])
    return {"objective": f"savings:{margin:g}", "margin_points": margin, "best_single": reference,
            "floor_accuracy": floor, "meets_target": meets, "params": params.__dict__, "chosen": best,
            "cost_ratio": best["cost_per_query_usd"] / reference["cost_per_query_usd"]
            if reference["cost_per_query_usd"] > 0 else None,
            "space": ECONOMY_SPACE, "points": points}


def describe_economy(cheap: dict[str, Any]) -> list[str]:
    """calibration.md's economy section: the choice and the frontier (the points no cheaper point beats)."""
    ref, best = cheap["best_single"], cheap["chosen"]
    lines = [f"The economy profile ({cheap['objective']}): the cheapest of {len(cheap['points'])} points "
                  f"(cost weight x K x from_candidates x shortcut x cascade) at >= best single's fold accuracy "
                  f"{100 * ref['accuracy']:.2f} minus {cheap['margin_points']:g} points "
                  f"(best single costs {ref['cost_per_query_usd']:.2e}/q):", "",
              "| cost weight | K | from cand. | shortcut | cascade | CV accuracy | calls/q | cost/q "
              "| x best single |",
              "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    frontier = sorted(cheap["points"], key=lambda p: p["cost_per_query_usd"])
    shown, top = [], -1.0
    for point in frontier:  # the points no cheaper point beats on accuracy
        if point["accuracy"] > top:
            shown.append(point)
            top = point["accuracy"]
    for point in shown:
        st = point["setting"]
        base = ref["cost_per_query_usd"]
        ratio = point["cost_per_query_usd"] / base if base else float("nan")
        mark = " **chosen**" if point == best else ""
        lines.append(f"| {st['cost_weight']:g} | {st['k']} | {st['from_candidates']} | {st['shortcut']} | "
                     f"{st['cascade']} | "
                     f"{100 * point['accuracy']:.2f}{mark} | {point['calls_per_query']:.2f} | "
                     f"{point['cost_per_query_usd']:.2e} | {ratio:.2f} |")
    if not cheap["meets_target"]:
        lines += ["", "No point reaches the floor on the folds: the economy profile is the most accurate point."]
    lines += ["", f"Economy: {cheap['params']}"]
    return lines
