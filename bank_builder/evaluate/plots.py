"""Evaluation figures: accuracy against cost per method, and JiSi's model usage (paper Fig. 6)."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bank_builder.evaluate.replay import FAILED  # noqa: E402

TOP_N = 10  # models shown by name; the rest are one 'other' bar so 50 models stay legible
OTHER = "other"
SWEEP_COLOURS = ("tab:orange", "tab:green", "tab:purple", "tab:brown")  # cycled: a knob line is never dropped


def plot_accuracy_vs_cost(results: Mapping[str, Any], path: str | Path) -> Path:
    """Average accuracy (%) against cost per query: one point per method with its 95 % interval as an error
    bar, the operating points of the methods that have a knob (results["operating_points"]) as lines, and the
    accuracy-cost Pareto frontier as a dashed step. Left: everything; right: the same, zoomed on the routers
    around best single (the full view crowds them into one spot: 20-odd methods within ~3 points).

    The x axis is logarithmic when the positive costs span more than 10x; a zero-cost method (all calls
    unpriced) is then drawn at the smallest positive cost and its label says so.
    """
    names = list(results["methods"])
    cost = np.array([_f(results["methods"][m]["cost_per_query_usd"]) for m in names])
    acc = np.array([_f(results["methods"][m]["average"]) * 100 for m in names])
    ci = [results["methods"][m].get("ci95") for m in names]
    sweeps = results.get("operating_points") or {}
    frontier = results.get("pareto_frontier") or []
    every_cost = np.array([*cost, *(p["cost"] for ps in sweeps.values() for p in ps), *(f["cost"] for f in frontier)],
                          dtype=np.float64)
    positive = every_cost[np.isfinite(every_cost) & (every_cost > 0)]
    log_x = positive.size > 0 and positive.max() / positive.min() > 10
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax, zoom in zip(axes, (False, True)):
        if frontier:
            fx = [max(f["cost"], positive.min()) if log_x else f["cost"] for f in frontier]
            ax.step(fx, [100 * f["accuracy"] for f in frontier], where="post", color="0.6", linestyle="--",
                    linewidth=1, label="Pareto frontier", zorder=1)
        for (label, xs, ys), color in zip(_sweep_lines(results), itertools.cycle(SWEEP_COLOURS)):
            ax.plot(xs, ys, marker=".", linewidth=1, color=color, alpha=0.8, label=label, zorder=2)
        for name, x, y, interval in zip(names, cost, acc, ci):
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            label = name
            if log_x and x <= 0:
                x, label = positive.min(), f"{name} (cost 0/unpriced)"
            color = "tab:red" if name.startswith("jisi") else "tab:blue"
            if interval:
                ax.errorbar([x], [y], yerr=[[y - 100 * interval[0]], [100 * interval[1] - y]], fmt="o", ms=5,
                            color=color, ecolor=color, elinewidth=1, capsize=2, zorder=3)
            else:
                ax.scatter([x], [y], s=30, color=color, zorder=3)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, clip_on=True)
        if log_x:
            ax.set_xscale("log")
        if zoom and "best_single" in names:
            _zoom(ax, names, cost, acc)
        ax.set_xlabel("cost per query (USD" + (", log scale)" if log_x else ")"))
        ax.set_ylabel("average accuracy over datasets (%), 95 % interval")
        ax.set_title("Accuracy vs cost" + (": around best single" if zoom else ""))
        ax.grid(True, alpha=0.3)
        if frontier or sweeps:
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def _sweep_lines(results: Mapping[str, Any]) -> list[tuple[str, list[float], list[float]]]:
    """One line per knob: the shortcut threshold's sweep, and the cost weight α's, one line per shortcut
    setting it was replayed with (from cost_frontier, which names both), each in the order of its knob."""
    lines = []
    for method, points in (results.get("operating_points") or {}).items():
        if method == "jisi_cost" and results.get("cost_frontier"):
            continue
        points = sorted(points, key=lambda p: p["cost"])
        lines.append((f"{method} (sweep)", [p["cost"] for p in points], [100 * p["accuracy"] for p in points]))
    rows = results.get("cost_frontier") or []
    for shortcut in dict.fromkeys(r["shortcut"] for r in rows):
        line = sorted((r for r in rows if r["shortcut"] == shortcut), key=lambda r: r["cost_weight"])
        lines.append((f"cost weight α sweep, shortcut p={shortcut}", [r["cost_per_query_usd"] for r in line],
                      [100 * r["average"] for r in line]))
    return lines


def _zoom(ax: Any, names: list[str], cost: np.ndarray, acc: np.ndarray) -> None:
    """Limits around the methods within 6 points of best single (oracle and random left out)."""
    best = acc[names.index("best_single")]
    near = [i for i, n in enumerate(names) if n not in ("oracle", "random") and np.isfinite(acc[i])
            and abs(acc[i] - best) <= 6 and np.isfinite(cost[i]) and cost[i] > 0]
    if not near:
        return
    xs, ys = cost[near], acc[near]
    ax.set_xlim(xs.min() / 1.6, xs.max() * 1.6)
    ax.set_ylim(ys.min() - 2.5, ys.max() + 2.0)


def _f(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _shares(labels: Sequence[str], keep: list[str]) -> np.ndarray:
    """Share of each kept model (+ 'other' last) among labels."""
    counts = Counter(m if m in keep else OTHER for m in labels)
    total = max(sum(counts.values()), 1)
    return np.array([counts.get(m, 0) / total for m in [*keep, OTHER]])


def plot_model_selection(
    models: Sequence[str],
    datasets_test: Sequence[str],
    route_choice: np.ndarray,
    final_sets: Sequence[np.ndarray],
    path: str | Path,
) -> Path:
    """Paper Fig. 6: per dataset, a stacked bar of JiSi's route choices (left) and of each
    model's share of final-set memberships (right). The TOP_N most used models overall get a
    name and a fixed colour in both panels; the rest are grouped as 'other'."""
    datasets = sorted(set(datasets_test))
    route_names = [models[int(j)] if j >= 0 else FAILED for j in route_choice]
    final_names = [[models[int(j)] for j in fs] for fs in final_sets]
    usage = Counter(route_names) + Counter(m for fs in final_names for m in fs)
    keep = [m for m, _ in usage.most_common(TOP_N)]
    labels = keep + [OTHER]
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(keep))] + [(0.75, 0.75, 0.75, 1.0)]

    rows = {ds: [q for q, d in enumerate(datasets_test) if d == ds] for ds in datasets}
    shape = (len(datasets), len(labels))
    panels = [
        np.array([_shares([route_names[q] for q in rows[ds]], keep) for ds in datasets]).reshape(shape),
        np.array([_shares([m for q in rows[ds] for m in final_names[q]], keep) for ds in datasets]).reshape(shape),
    ]

    height = max(2.5, 0.45 * len(datasets) + 1.8)
    fig, axes = plt.subplots(1, 2, figsize=(13, height), sharey=True)
    titles = ("route choice (router-only top-1 of g^f)", "share in final sets F")
    for ax, data, title in zip(axes, panels, titles):
        left = np.zeros(len(datasets))
        for i, (label, color) in enumerate(zip(labels, colors)):
            ax.barh(datasets, data[:, i] * 100, left=left, color=color, label=label, edgecolor="white")
            left += data[:, i] * 100
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of queries" if ax is axes[0] else "% of final-set members")
        ax.set_title(title, fontsize=10)
    axes[0].invert_yaxis()  # datasets read top to bottom in alphabetical order
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(labels), 4), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.08 + 0.03 * (len(labels) // 4), 1, 1))
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)  # the evaluator may draw many figures in one process
    return out
