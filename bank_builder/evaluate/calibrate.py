"""`jisi-bank calibrate`: the hyperparameters chosen by k-fold cross-validation over the TRAIN split only.

Each fold's bank is the other folds (in memory, searched exactly); its queries are replayed through the same
engine and the same per-query path as the gateway (replay.py), and a setting is scored by its mean fold
accuracy (the Table 1 average over datasets). No test question is read here: the caller hands over the train
split alone, and the test that guards it (tests/offline/test_calibration.py) fails if one leaks in.

The search: the paper's defaults, then a seeded random sample of SEARCH_SPACE (documented in
docs/evaluation.md, with what the train-CV research behind it found). The shortcut's threshold is chosen after
the setting, from one replay that records every query's leader probability: the smallest number of calls
whose mean fold accuracy is within SHORTCUT_MAX_LOSS of always fanning out.

Objectives: `accuracy`, or `cost:ALPHA`, which fixes cost_weight at ALPHA (the Avengers-Pro trade-off) and
chooses the rest for accuracy under it. Every calibration also chooses the bank's second profile, `economy`
(economy.py): on top of the accuracy choice, the cheapest point of ECONOMY_SPACE x the shortcut's thresholds whose
fold accuracy is at least best single's fold accuracy minus a margin (`savings[:MARGIN]` sets it and makes the
economy profile the printed choice; default 0 points).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from app.engine import JiSiParams
from bank_builder.evaluate.economy import describe_economy, economy
from bank_builder.evaluate.folds import Fold, TrainSet, evaluate_points, evaluate_setting, make_folds

# ranges set by train-fold research: larger support sets and the priors did most, K and t barely moved anything;
# the test-split ablations agree (docs/evaluation.md, "Why the paper's defaults lost": N_base 200, γ 0.8 +1.3 to +2.1)
SEARCH_SPACE: dict[str, list[Any]] = {
    "n_base": [25, 50, 100, 200],
    "gamma": [0.8, 0.9, 0.95],
    "lam": [0.0, 3.0, 10.0, 30.0, 100.0],
    "lam_fine": [0.0, 10.0, 30.0],
    "beta": [0.25, 0.5, 1.0],
    "mix": [(0.5, 0.3, 0.2), (1.0, 0.0, 0.0), (0.34, 0.33, 0.33), (0.2, 0.6, 0.2)],  # (eps, sigma, delta)
    "k": [2, 3, 4],
    "from_candidates": [False, True],
}
# What the folds score: the router-only path and the shortcut replay every parameter above, the threshold and, with
# `cost:ALPHA`, the cost weight. Nothing else is written as calibrated: `t` is read by the adaptive switch alone,
# whose aggregated answers no record holds, so it stays at its default (it was drawn and shipped unscored before
# issue 18), and so do the caps (max_support, max_aggregate_tokens, min_aggregatees).
SCORED = ("n_base", "gamma", "lam", "lam_fine", "beta", "eps", "sigma", "delta", "k", "from_candidates", "shortcut",
          "cost_weight", "cascade")
SHORTCUT_THRESHOLDS: list[float | None] = [None, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.0]  # 0.0: always the leader
# dataset-average accuracy the shortcut may cost on the folds: 0.35 point, inside the 0.5-point budget of the
# issue so that the optimism of picking one threshold of eight on the same folds still leaves room on test
SHORTCUT_MAX_LOSS = 0.0035


# the cascade's stopping thresholds on rho (app/engine/cascade.py): None (no cascade), stop only well ahead (1.5),
# ahead (1.0), or close behind (0.8)
CASCADE_THRESHOLDS: list[float | None] = [None, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5]
PROFILES = ("quality", "economy")  # a bank's named profiles; quality is the calibration's `params`


def setting_params(base: JiSiParams, setting: dict[str, Any]) -> JiSiParams:
    values = {k: v for k, v in setting.items() if k != "mix"}
    if "mix" in setting:
        values["eps"], values["sigma"], values["delta"] = setting["mix"]
    return base.with_overrides(values)


def sample_settings(n: int, seed: int, space: dict[str, list[Any]] = SEARCH_SPACE) -> list[dict[str, Any]]:
    """The paper's defaults first, then up to n - 1 distinct seeded random draws from the grid."""
    paper = JiSiParams()
    first = {"n_base": paper.n_base, "gamma": paper.gamma, "lam": 0.0, "lam_fine": 0.0, "beta": paper.beta,
             "mix": (paper.eps, paper.sigma, paper.delta), "k": paper.k, "from_candidates": False}
    keys = list(space)
    grid_size = int(np.prod([len(space[k]) for k in keys]))
    rng = np.random.default_rng(seed)
    out, seen = [first], {tuple(first[k] for k in keys)}
    for _ in range(50 * n):
        if len(out) >= min(n, grid_size):
            break
        draw = {k: space[k][rng.integers(len(space[k]))] for k in keys}
        key = tuple(draw[k] for k in keys)
        if key not in seen:
            seen.add(key)
            out.append(draw)
    return out


@dataclass(frozen=True)
class Objective:
    """What a calibration optimises: accuracy (at a fixed cost weight with `cost:ALPHA`), and the economy
    profile's accuracy margin under best single (points; `savings[:MARGIN]` also makes economy the choice)."""

    text: str
    alpha: float | None = None
    margin: float = 0.0
    savings: bool = False


def parse_objective(objective: str) -> Objective:
    """`accuracy`, `cost:ALPHA` (ALPHA in [0, 1]) or `savings[:MARGIN]` (MARGIN points, >= 0)."""
    if objective == "accuracy":
        return Objective(objective)
    kind, sep, value = objective.partition(":")
    if kind == "savings":
        try:
            margin = float(value) if sep else 0.0
        except ValueError:
            margin = -1.0
        if 0.0 <= margin <= 100.0:
            return Objective(objective, margin=margin, savings=True)
    elif kind == "cost":
        try:
            alpha = float(value)
        except ValueError:
            alpha = -1.0
        if 0.0 <= alpha <= 1.0:
            return Objective(objective, alpha=alpha)
    raise ValueError(f"--objective must be accuracy, cost:ALPHA with ALPHA in [0, 1] or savings[:MARGIN] with "
                     f"MARGIN points >= 0, got {objective!r}")


def calibrate(train: TrainSet, base: JiSiParams, *, objective: str = "accuracy", folds: int = 5,
              settings: int = 40, seed: int = 42, progress: bool = True,
              on_fold: Callable[[Fold], None] | None = None, economy_profile: bool = True) -> dict[str, Any]:
    """Choose the hyperparameters on the train split; returns calibration.json's content: the quality profile
    (`params`, the accuracy choice) and the economy profile (`profiles.economy`, economy()); `choice` names the
    profile the objective asked for."""
    goal = parse_objective(objective)
    if goal.savings and not economy_profile:
        raise ValueError("--objective savings chooses the economy profile: it cannot go without it (--no-economy)")
    alpha = goal.alpha
    fold_data = make_folds(train, folds, seed)
    for fold in fold_data:
        if on_fold is not None:
            on_fold(fold)
    drawn = sample_settings(settings, seed)
    tried = []
    bar = tqdm(drawn, desc="calibrating", unit="setting", disable=not progress)
    for setting in bar:
        params = setting_params(base, {**setting, **({"cost_weight": alpha} if alpha is not None else {})})
        result = evaluate_setting(fold_data, params)[None]
        tried.append({"setting": {k: list(v) if isinstance(v, tuple) else v for k, v in setting.items()}, **result})
        bar.set_postfix(best=f"{100 * max(t['accuracy'] for t in tried):.2f}")
    best = max(range(len(tried)), key=lambda i: (tried[i]["accuracy"], -tried[i]["calls_per_query"],
                                                 -tried[i]["cost_per_query_usd"]))
    chosen = setting_params(base, {**drawn[best], **({"cost_weight": alpha} if alpha is not None else {})})
    by_threshold = evaluate_setting(fold_data, chosen, SHORTCUT_THRESHOLDS)
    full = by_threshold[None]
    allowed = [t for t in SHORTCUT_THRESHOLDS if t is not None
               and by_threshold[t]["accuracy"] >= full["accuracy"] - SHORTCUT_MAX_LOSS]
    threshold = min(allowed, key=lambda t: (by_threshold[t]["calls_per_query"], -by_threshold[t]["accuracy"])) \
        if allowed else None
    params = chosen.with_overrides({"shortcut": threshold})
    # jisi_cascade: the quality setting with the cascade in place of the fan-out, at the cheapest threshold whose
    # fold accuracy is within the shortcut's budget of fanning out (reported and servable per request; the quality
    # profile itself keeps fanning out)
    fan_out = chosen.with_overrides({"shortcut": None, "cascade": None})
    by_cascade = {c: r for (_, c), r in evaluate_points(fold_data, fan_out, (None,), CASCADE_THRESHOLDS).items()} \
        if fan_out.k > 1 else {None: full}
    kept = [c for c in by_cascade if c is not None
            and by_cascade[c]["accuracy"] >= by_cascade[None]["accuracy"] - SHORTCUT_MAX_LOSS]
    cascade = min(kept, key=lambda c: (by_cascade[c]["cost_per_query_usd"], -by_cascade[c]["accuracy"])) \
        if kept else None
    ranked = sorted(tried, key=lambda t: -t["accuracy"])
    # the choice against the paper's defaults on the same folds; the best of n settings gains about
    # sqrt(2 ln n) standard errors from noise alone, so a gain below that is not told apart from noise
    # (measured: mini-bench +1.59 against 1.93 and lost 5 points on test; zeroeval +1.43 against 1.30 and
    # mmlupro +1.78 against 0.57 held on test)
    gain = np.asarray(tried[best]["folds"]) - np.asarray(tried[0]["folds"])
    se = float(gain.std(ddof=1) / np.sqrt(gain.size)) if gain.size > 1 else float("inf")
    noise = float(np.sqrt(2 * np.log(max(len(tried), 2))) * se)
    # the economy search takes 4-5x the accuracy search (zeroeval-bench: ~7 against ~2 min on two cores)
    profiles = {"economy": economy(fold_data, params, goal.margin, SHORTCUT_THRESHOLDS, CASCADE_THRESHOLDS,
                                     progress=progress)} if economy_profile else {}
    return {
        "objective": objective, "choice": "economy" if goal.savings else "quality",
        "profiles": profiles, "folds": len(fold_data), "seed": seed, "settings_tried": len(tried),
        "train_queries": len(train.datasets), "search_space": {k: [list(x) if isinstance(x, tuple) else x for x in v]
                                                             for k, v in SEARCH_SPACE.items()},
        "shortcut_thresholds": SHORTCUT_THRESHOLDS, "shortcut_max_loss": SHORTCUT_MAX_LOSS,
        "params": params.__dict__, "chosen": tried[best], "paper": tried[0],
        "shortcut": {str(t): v for t, v in by_threshold.items()}, "top": ranked[:10], "tried": tried,
        "cascade": {"threshold": cascade, "max_loss": SHORTCUT_MAX_LOSS,
                    "by_threshold": {str(c): v for c, v in by_cascade.items()}},
        "gain_over_paper": {"mean": float(gain.mean()), "standard_error": se, "noise_level": noise,
                            "distinguishable": bool(gain.mean() > noise)},
    }


# said when the folds cannot tell the choice from the paper's defaults (see gain_over_paper in calibrate)
NOT_DISTINGUISHABLE = ("WARNING: the gain is within what noise gives: on this few questions the folds cannot tell "
                       "the settings apart, and the choice may be noise. Prefer the paper's defaults (do not pass "
                       "--bank) or more records.")


def describe(calibration: dict[str, Any]) -> str:
    """The report's table: the top settings with their fold spread, the paper's, and the shortcut."""
    def row(t: dict[str, Any]) -> str:
        s = t["setting"]
        return (f"| {s['n_base']} | {s['gamma']} | {s['lam']:g} | {s['lam_fine']:g} | {s['beta']} | "
                f"{'/'.join(f'{x:g}' for x in s['mix'])} | {s['k']} | {s['from_candidates']} | "
                f"{100 * t['accuracy']:.2f} ± {100 * t['accuracy_std']:.2f} | {t['calls_per_query']:.2f} | "
                f"{t['cost_per_query_usd']:.2e} |")
    head = ["| N_base | γ | λ | λ_f | β | ε/σ/δ | K | from cand. | CV accuracy ± fold std | calls | cost/q |",
            "|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|"]
    lines = [f"Objective {calibration['objective']}: {calibration['settings_tried']} settings x "
             f"{calibration['folds']} folds over {calibration['train_queries']} train questions.", "",
             "Top settings:", "", *head, *(row(t) for t in calibration["top"]), "", "The paper's defaults:", "",
             *head, row(calibration["paper"]), "", "The chosen setting with the confident shortcut:", "",
             "| threshold | CV accuracy | calls/q | cost/q |", "|---:|---:|---:|---:|"]
    for t, v in calibration["shortcut"].items():
        lines.append(f"| {t} | {100 * v['accuracy']:.2f} | {v['calls_per_query']:.2f} | "
                     f"{v['cost_per_query_usd']:.2e} |")
    gain = calibration.get("gain_over_paper")
    if gain:
        lines += ["", f"The choice against the paper's defaults on the same folds: {100 * gain['mean']:+.2f} points "
                      f"(standard error {100 * gain['standard_error']:.2f}; the best of "
                      f"{calibration['settings_tried']} settings gains {100 * gain['noise_level']:.2f} from noise alone)."]
        if not gain["distinguishable"]:
            lines += [NOT_DISTINGUISHABLE]
    cascade = calibration.get("cascade")
    if cascade:
        lines += ["", f"The cascade in place of the fan-out (jisi_cascade): threshold {cascade['threshold']}, the "
                      f"cheapest within {100 * cascade['max_loss']:.2f} point of fanning out:", "",
                  "| cascade θ | CV accuracy | calls/q | cost/q |", "|---:|---:|---:|---:|"]
        for c, v in cascade["by_threshold"].items():
            lines.append(f"| {c} | {100 * v['accuracy']:.2f} | {v['calls_per_query']:.2f} | "
                         f"{v['cost_per_query_usd']:.2e} |")
    cheap = calibration.get("profiles", {}).get("economy")
    if cheap:
        lines += ["", *describe_economy(cheap)]
    lines += ["", f"Chosen ({calibration.get('choice', 'quality')}): "
                  f"{cheap['params'] if calibration.get('choice') == 'economy' and cheap else calibration['params']}"]
    return "\n".join(lines)

