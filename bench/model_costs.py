"""What a cost-aware router can save at best single's accuracy, read off the TRAIN split (issue 14, item 1):
each model's dataset-average accuracy and mean cost per question against best single's, the most accurate
model at <= --cap of its cost, per dataset the best model under that cap, and which datasets carry best
single's cost. A router can only save what cheaper models can answer; this says how much that is.

Usage: python -m bench.model_costs --records ../shared/data/zeroeval-bench.tar.xz [--cap 0.6] [--top 10]
(the split is `jisi-bank evaluate`'s: the records' own, else the seeded 70/30 per dataset)
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from bank_builder.evaluate import scores
from bank_builder.evaluate.split import choose_split
from bank_builder.records import RecordMatrix, RecordSelection
from bench.common import REPO

PRICES = REPO.parent / "shared" / "data" / "prices.json"


def per_model(train: RecordMatrix, prices: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(datasets, accuracy (models x datasets, NaN where a model has no record), mean cost per question,
    cost per question and model)."""
    cost, _ = scores.cost_matrix(train.cost, train.prompt_tokens, train.completion_tokens, train.models,
                                 scores.load_prices(prices))
    labels = np.asarray(train.datasets)
    names = sorted(set(train.datasets))
    score = np.where(train.present, train.score, np.nan)
    with warnings.catch_warnings():  # unpriced models: all-NaN costs, NaN is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        acc = np.array([[np.nanmean(score[labels == d, j]) if train.present[labels == d, j].any() else np.nan
                         for d in names] for j in range(len(train.models))])
        mean_cost = np.array([np.nanmean(np.where(train.present[:, j], cost[:, j], np.nan))
                              if train.present[:, j].any() else np.nan for j in range(len(train.models))])
    return names, acc, mean_cost, cost


def report(train: RecordMatrix, prices: Path, cap: float, top: int) -> list[str]:
    names, acc, mean_cost, cost = per_model(train, prices)
    covered = ~np.isnan(acc).any(axis=1)  # Avg is defined only for models with records on every dataset
    avg = np.where(covered, np.nanmean(np.where(covered[:, None], acc, 0.0), axis=1), np.nan)
    b = int(np.nanargmax(avg))
    models, rel = train.models, 100 * mean_cost / mean_cost[b]
    lines = [f"best single on train: {models[b]}, Avg {100 * avg[b]:.2f} %, {mean_cost[b]:.2e} USD per question",
             "", "| model | Avg | " + " | ".join(names) + " | cost % of best |",
             "|---|---:|" + "---:|" * len(names) + "---:|"]
    for j in np.argsort(-np.nan_to_num(avg, nan=-1.0))[:top]:
        lines.append(f"| {models[j]} | {100 * avg[j]:.2f} | " + " | ".join(f"{100 * a:.1f}" for a in acc[j])
                     + f" | {rel[j]:.0f} |")
    cheap = [j for j in range(len(models)) if np.isfinite(rel[j]) and rel[j] <= 100 * cap and j != b]
    full = [j for j in cheap if covered[j]]
    if full:
        j = max(full, key=lambda i: avg[i])
        lines += ["", f"most accurate model at <= {100 * cap:.0f} % of the cost: {models[j]}, Avg {100 * avg[j]:.2f} "
                      f"({100 * (avg[j] - avg[b]):+.2f}), at {rel[j]:.0f} %"]
    labels = np.asarray(train.datasets)
    for i, d in enumerate(names):
        on = [j for j in cheap if np.isfinite(acc[j, i])]
        if on:
            j = max(on, key=lambda k: acc[k, i])
            lines.append(f"- {d}: best single {100 * acc[b, i]:.1f}; best under the cap {models[j]} "
                         f"{100 * acc[j, i]:.1f} at {rel[j]:.0f} %")
    spent = np.array([np.nansum(np.where(train.present[labels == d, b], cost[labels == d, b], 0.0)) for d in names])
    lines.append("\nbest single's cost by dataset: " + ", ".join(
        f"{d} {(labels == d).sum()} questions, {100 * s / spent.sum():.0f} %" for d, s in zip(names, spent)))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=Path, required=True)
    parser.add_argument("--prices", type=Path, default=PRICES)
    parser.add_argument("--cap", type=float, default=0.6, help="cost cap as a share of best single's (0.6)")
    parser.add_argument("--top", type=int, default=10, help="models listed (most accurate first)")
    args = parser.parse_args()
    matrix = RecordSelection(paths=(args.records,)).load()
    train_rows, _, kind = choose_split(matrix.datasets, matrix.splits, matrix.indices, None, seed=42, train_ratio=0.7,
                                     queries=matrix.queries)
    print(f"split: {kind}; {len(train_rows)} train questions")
    print("\n".join(report(matrix.subset(train_rows), args.prices, args.cap, args.top)))


if __name__ == "__main__":
    main()
