"""The evidence rule's threshold (app.engine.MIN_EVIDENCE) on the train folds: fold accuracy and calls per query
of the paper's defaults and of a second setting, for each threshold. Reads the train split only.

Usage: python -m bench.min_evidence [--records ../shared/data/zeroeval-bench.tar.xz] [--thresholds 0 0.25 0.5
       0.75 0.9 1] [--folds 5] [--prices ../shared/data/prices.json]

A model is eligible when the support weight of its recorded rows is at least MIN_EVIDENCE of the best covered
model's; 0 is "any record". On records where some models lack answers (zeroeval-bench: 52 models, scattered
gaps) the threshold decides whether a model that answered one neighbour can lead the ranking.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import app.engine as engine
from app.config import EmbedderSettings
from app.engine import JiSiParams
from bank_builder.evaluate import scores as metrics
from bank_builder.evaluate.folds import evaluate_setting, make_folds
from bank_builder.evaluate.calibrate_cli import embedded_train
from bank_builder.evaluate.split import choose_split
from bank_builder.records import load_records

# the paper's defaults, and the setting the full-scale zeroeval calibration chose before the rule existed
# (k 2, N_base 200, gamma 0.9, an even mix, lambda 10): one that trusts its support set more
SETTINGS = {"paper defaults": JiSiParams(),
            "k2 lambda10": JiSiParams(k=2, n_base=200, gamma=0.9, eps=0.34, sigma=0.33, delta=0.33, lam=10.0,
                                      lam_fine=10.0)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=Path, default=Path("../shared/data/zeroeval-bench.tar.xz"))
    parser.add_argument("--prices", type=Path, default=Path("../shared/data/prices.json"))
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    m = load_records([args.records], progress=False)
    train_rows, _, _ = choose_split(m.datasets, m.splits, m.indices, None, seed=args.seed, train_ratio=0.7,
                                    queries=m.queries)
    train = m.subset(train_rows)
    responses = EmbedderSettings(backend="static", max_seq_length=None)  # issue 18: static answers, every token
    data = embedded_train(train, EmbedderSettings(backend="local"), responses, metrics.load_prices(args.prices))
    folds = make_folds(data, args.folds, args.seed)
    print(f"{args.records.name}: {len(train_rows)} train questions, {args.folds} folds; "
          f"fold-mean accuracy in % ± its spread over folds, calls per query")
    print("| MIN_EVIDENCE | " + " | ".join(SETTINGS) + " |")
    print("|---:|" + "---:|" * len(SETTINGS))
    shipped = engine.MIN_EVIDENCE
    try:
        for threshold in args.thresholds:
            engine.MIN_EVIDENCE = threshold  # evidenced() reads it at call time
            cells = []
            for params in SETTINGS.values():
                r = evaluate_setting(folds, params)[None]
                cells.append(f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}, "
                             f"{r['calls_per_query']:.2f} calls")
            print(f"| {threshold:g} | " + " | ".join(cells) + " |", flush=True)
    finally:
        engine.MIN_EVIDENCE = shipped


if __name__ == "__main__":
    main()
