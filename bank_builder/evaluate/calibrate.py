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
(economy()): on top of the accuracy choice, the cheapest point of ECONOMY_SPACE x the shortcut's thresholds whose
fold accuracy is at least best single's fold accuracy minus a margin (`savings[:MARGIN]` sets it and makes the
economy profile the printed choice; default 0 points).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from app.engine import JiSiParams
from bank_builder.evaluate.replay import MemoryBank, Queries, ReplayResult, cascade_stop, chosen, replay_queries
from bank_builder.evaluate.baselines import best_single_choice
from bank_builder.evaluate.scores import calls_cost, single_call_cost

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


# the economy profile's search, on top of the accuracy choice: the cost weight alpha (Avengers-Pro's trade-off),
# K (K = 1: one call, the cost-weighted coarse leader) and where the final choice comes from; every point also
# with each of the shortcut's thresholds (free: one replay records every query's leader probability)
ECONOMY_SPACE: dict[str, list[Any]] = {
    "cost_weight": [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0],
    "k": [1, 2, 3],
    "from_candidates": [False, True],
}
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


def stratified_folds(datasets: Sequence[str], k: int, seed: int) -> list[np.ndarray]:
    """k folds of row positions, each dataset spread evenly (seeded)."""
    labels = np.asarray(datasets)
    k = max(2, min(k, int(min(np.unique(labels, return_counts=True)[1]))))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(labels)), labels)]


@dataclass(frozen=True)
class TrainSet:
    """The train split, embedded: all calibration ever sees."""

    models: list[str]
    datasets: list[str]
    e: np.ndarray  # N x d query embeddings
    r: list[np.ndarray]  # per model, N x d_r response embeddings
    v: np.ndarray  # N x M scores
    present: np.ndarray
    c: np.ndarray  # completion tokens (0 where unknown)
    empty: np.ndarray  # the recorded answer is empty
    prompt_tokens: np.ndarray  # N
    cost: np.ndarray  # N x M recorded (or priced) cost, NaN unknown
    prices: tuple[np.ndarray, np.ndarray]  # per model USD per million input / output tokens (NaN: none), forecast
    recorded: np.ndarray | None = None  # N x M each record's own cost (NaN unknown): unpriced models' forecast


@dataclass
class Fold:
    bank: MemoryBank  # the other folds
    queries: Queries  # this fold's questions, with their recorded answers
    score: np.ndarray
    cost: np.ndarray
    datasets: np.ndarray
    prices: tuple[np.ndarray, np.ndarray]


def make_folds(train: TrainSet, k: int, seed: int) -> list[Fold]:
    folds = []
    for rows in stratified_folds(train.datasets, k, seed):
        rest = np.setdiff1d(np.arange(len(train.datasets)), rows)
        bank = MemoryBank(train.models, train.e[rest], train.v[rest], train.present[rest], train.c[rest],
                          [r[rest] for r in train.r], None if train.recorded is None else train.recorded[rest])
        queries = Queries(e=train.e[rows], r=[r[rows] for r in train.r], c=train.c[rows],
                          present=train.present[rows], empty=train.empty[rows], prompt_tokens=train.prompt_tokens[rows])
        folds.append(Fold(bank, queries, np.where(train.present[rows], train.v[rows], 0.0), train.cost[rows],
                          np.asarray(train.datasets)[rows], train.prices))
    return folds


def _average(correct: np.ndarray, datasets: np.ndarray) -> float:
    return float(np.mean([correct[datasets == d].mean() for d in np.unique(datasets)]))


def path_calls(run: ReplayResult, threshold: float | None,
               cascade: float | None = None) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(the model answering, the models called in call order, whether the shortcut was taken) per query of the
    router-only path, with the shortcut taken where the leader's probability is at least `threshold` (None:
    never), else the cascade with this threshold (None: none; the run must hold the walked cascade). A full
    fan-out calls the candidates, then the fine score's top-1 when it was not one of them; a candidate the
    quorum cancelled answered nothing and is not counted (online it books no usage)."""
    n = len(run.route_choice)
    take = np.zeros(n, bool) if threshold is None else np.nan_to_num(run.confidence, nan=0.0) >= threshold
    choice = np.where(take, run.shortcut_choice, run.route_choice)  # -1: every call failed
    if cascade is not None and len(run.cascade) != n:
        raise ValueError("the replay walked no cascade: replay_queries(..., with_cascade=True)")
    called = []
    for q in range(n):
        if cascade is not None and not take[q]:
            stop = cascade_stop(run.cascade[q], cascade)
            choice[q] = -1 if stop is None else stop.choice
            called.append(np.asarray(stop.calls if stop else (), np.int64))
            continue
        cands = run.candidates[q][run.candidates[q] >= 0]
        extra = [] if run.route_choice[q] in cands or run.route_choice[q] < 0 else [run.route_choice[q]]
        if run.cut and run.cut[q].size:  # failed or cancelled: no answer, no usage booked
            cands = cands[~np.isin(cands, run.cut[q])]
        called.append(run.shortcut_calls[q] if take[q] else np.r_[cands, extra].astype(np.int64))
    return choice, called, take


def path_outcomes(run: ReplayResult, score: np.ndarray, cost: np.ndarray, threshold: float | None,
                  cascade: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(correct, cost, calls, unpriced calls) per query of the router-only path (path_calls)."""
    choice, called, _ = path_calls(run, threshold, cascade)
    usd, calls, unpriced = calls_cost(called, cost)
    correct = chosen(score, choice)  # a failed request: wrong
    return correct, usd, calls, unpriced


def evaluate_setting(folds: list[Fold], params: JiSiParams,
                     thresholds: Sequence[float | None] = (None,)) -> dict[Any, dict[str, Any]]:
    """Per shortcut threshold: the fold-mean accuracy, its spread, cost and calls per query."""
    return {t: result for (t, _), result in evaluate_points(folds, params, thresholds).items()}


def evaluate_points(folds: list[Fold], params: JiSiParams, thresholds: Sequence[float | None] = (None,),
                    cascades: Sequence[float | None] = (None,)) -> dict[tuple[Any, Any], dict[str, Any]]:
    """Per (shortcut threshold, cascade threshold), from one replay per fold: the fold-mean accuracy, its spread,
    cost and calls per query."""
    per: dict[Any, list[tuple[float, float, float]]] = {(t, c): [] for t in thresholds for c in cascades}
    needs_confidence = any(t is not None for t in thresholds)
    needs_cascade = any(c is not None for c in cascades)
    for fold in folds:
        run = replay_queries(fold.bank, fold.queries, params, prices=fold.prices, with_confidence=needs_confidence,
                             with_cascade=needs_cascade)
        for t, c in per:
            correct, usd, calls, _ = path_outcomes(run, fold.score, fold.cost, t, c)
            per[t, c].append((_average(correct, fold.datasets), float(np.nanmean(usd)), float(calls.mean())))
    return {t: {"accuracy": float(np.mean([a for a, _, _ in rows])), "accuracy_std": float(np.std([a for a, _, _ in rows])),
                "folds": [a for a, _, _ in rows], "cost_per_query_usd": float(np.mean([c for _, c, _ in rows])),
                "calls_per_query": float(np.mean([n for _, _, n in rows]))} for t, rows in per.items()}


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


def best_single_on_folds(folds: list[Fold]) -> dict[str, Any]:
    """Best single model as the evaluator chooses it (best accuracy on the fold's bank, the next best where its
    record is missing), scored on each fold's questions: the economy profile's reference."""
    rows = []
    for fold in folds:
        choice = best_single_choice(fold.bank.v, fold.bank.present, fold.queries.present)
        usd, _, _ = single_call_cost(choice, fold.cost)
        rows.append((_average(fold.score[np.arange(choice.size), choice], fold.datasets), float(np.nanmean(usd))))
    return {"accuracy": float(np.mean([a for a, _ in rows])), "folds": [a for a, _ in rows],
            "cost_per_query_usd": float(np.mean([c for _, c in rows])), "calls_per_query": 1.0}


def economy(folds: list[Fold], quality: JiSiParams, margin: float, progress: bool = True) -> dict[str, Any]:
    """The economy profile: the cheapest point (ECONOMY_SPACE x SHORTCUT_THRESHOLDS, on top of the quality choice)
    whose fold accuracy is at least best single's minus `margin` points; ties: the more accurate. When none
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
        cascades = CASCADE_THRESHOLDS if point["k"] > 1 else [None]
        for (threshold, cascade), result in evaluate_points(folds, params, SHORTCUT_THRESHOLDS, cascades).items():
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
    profiles = {"economy": economy(fold_data, params, goal.margin, progress=progress)} if economy_profile else {}
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
        ref, best = cheap["best_single"], cheap["chosen"]
        lines += ["", f"The economy profile ({cheap['objective']}): the cheapest of {len(cheap['points'])} points "
                      f"(cost weight x K x from_candidates x shortcut) at >= best single's fold accuracy "
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
            mark = " **chosen**" if point is best else ""
            lines.append(f"| {st['cost_weight']:g} | {st['k']} | {st['from_candidates']} | {st['shortcut']} | "
                         f"{st['cascade']} | "
                         f"{100 * point['accuracy']:.2f}{mark} | {point['calls_per_query']:.2f} | "
                         f"{point['cost_per_query_usd']:.2e} | {ratio:.2f} |")
        if not cheap["meets_target"]:
            lines += ["", "No point reaches the floor on the folds: the economy profile is the most accurate point."]
        lines += ["", f"Economy: {cheap['params']}"]
    lines += ["", f"Chosen ({calibration.get('choice', 'quality')}): "
                  f"{cheap['params'] if calibration.get('choice') == 'economy' and cheap else calibration['params']}"]
    return "\n".join(lines)

