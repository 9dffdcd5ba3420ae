"""Evaluations of the same split compared question by question: each run's Avg, calls and cost per method,
and its paired difference against a reference run on the same bootstrap resamples (the evaluator's
`Bootstrap.paired`, stratified by dataset, seeded). Used to choose the default embedders (issue 19).

Usage: python -m bench.compare_runs REF_LABEL=DIR LABEL=DIR [LABEL=DIR ...] [--out table.md]

Each DIR is a `jisi-bank evaluate --decisions` output folder; the runs must hold the same test questions
(the same records, seed and split), which is checked.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bank_builder.evaluate.stats import Bootstrap

Key = tuple[str, int]  # (dataset, index)


def read_decisions(folder: Path) -> dict[str, dict[Key, dict]]:
    """method -> (dataset, index) -> its decision row."""
    out: dict[str, dict[Key, dict]] = {}
    with open(folder / "decisions.jsonl") as handle:
        for line in handle:
            row = json.loads(line)
            out.setdefault(row["method"], {})[(row["dataset"], int(row["index"]))] = row
    return out


def compare(runs: dict[str, Path]) -> str:
    """A markdown table: per method and run, Avg [95 %], Δ against the first run [paired 95 %], calls, cost."""
    labels = list(runs)
    decisions = {label: read_decisions(folder) for label, folder in runs.items()}
    reference = decisions[labels[0]]
    lines = [f"| method | run | Avg | 95 % interval | Δ vs {labels[0]} | paired 95 % | ahead | calls | USD/query |",
             "|---|---|---:|---|---:|---|---:|---:|---:|"]
    for method, ref_rows in reference.items():
        keys = sorted(ref_rows)
        boot = Bootstrap([dataset for dataset, _ in keys])
        base = np.array([ref_rows[k]["correct"] for k in keys], dtype=np.float64)
        for label in labels:
            rows = decisions[label].get(method)
            if rows is None:
                continue
            if sorted(rows) != keys:
                raise SystemExit(f"{runs[label]} holds other test questions than {runs[labels[0]]} for {method}")
            correct = np.array([rows[k]["correct"] for k in keys], dtype=np.float64)
            low, high = boot.interval(correct)
            calls = np.mean([len(rows[k]["calls"]) for k in keys])
            cost = np.mean([rows[k]["cost_usd"] for k in keys])
            if label == labels[0]:
                delta = "—", "", ""
            else:
                paired = boot.paired(correct, base)
                delta = (f"{100 * paired['mean']:+.2f}",
                         f"[{100 * paired['ci95'][0]:+.2f}, {100 * paired['ci95'][1]:+.2f}]",
                         f"{100 * paired['win_share']:.0f} %")
            lines.append(f"| {method} | {label} | {100 * boot.point(correct):.2f} "
                         f"| [{100 * low:.2f}, {100 * high:.2f}] "
                         f"| {delta[0]} | {delta[1]} | {delta[2]} | {calls:.2f} | {cost:.5f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=DIR", help="the first is the reference")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep:
            parser.error(f"expected LABEL=DIR, got {item!r}")
        runs[label] = Path(folder)
    table = compare(runs)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
