"""Which records are the bank and which are replayed: the paper's random split (§4.1: per dataset, rows in
ascending record index, a NumPy shuffle seeded with 42, the first 70 % train, the rest test), or the records'
own train/test split when they come with one (LLMRouterBench's results/bench/<dataset>/<split>/...).

The random split keeps identical questions of a dataset together (same text after normalising whitespace and
case, bank_builder/records/text.py): each group goes to the side of its first member in the shuffled order.
Without it, 73 test questions of mmlupro-bench (2 %) had a word-for-word twin in the bank, with the same answers,
which flatters every similarity-based router against best single. Without duplicates the split is the paper's,
row for row."""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from bank_builder.records.text import duplicate_key


def train_test_split(
    datasets: list[str], indices: np.ndarray, *, seed: int = 42, train_ratio: float = 0.7,
    queries: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the train and test parts, each sorted ascending; with `queries`, identical questions of a
    dataset land on the same side."""
    if not 0.0 < train_ratio <= 1.0:
        raise ValueError(f"train ratio must be in (0, 1], got {train_ratio}")
    labels = np.asarray(datasets)
    indices = np.asarray(indices)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for dataset in sorted(set(datasets)):
        rows = np.flatnonzero(labels == dataset)
        rows = rows[np.argsort(indices[rows], kind="stable")]
        # a fresh generator per dataset, as running the paper's recipe once per benchmark would
        np.random.RandomState(seed).shuffle(rows)
        n_train = int(len(rows) * train_ratio)
        in_train = np.arange(len(rows)) < n_train
        if queries is not None:  # a group follows its first member in the shuffled order
            side: dict[str, bool] = {}
            in_train = np.array([side.setdefault(duplicate_key(queries[r]), bool(t)) for r, t in zip(rows, in_train)],
                                dtype=bool)
        train.append(rows[in_train])
        test.append(rows[~in_train])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def duplicate_rows(datasets: Sequence[str], queries: Sequence[str]) -> int:
    """How many rows share their question (normalised) with another row of their dataset: the rows the split
    keeps together."""
    keys = [(d, duplicate_key(q)) for d, q in zip(datasets, queries)]
    counts: dict[tuple[str, str], int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return sum(n for n in counts.values() if n > 1)


SplitKind = Literal["given", "random"]


def given_split(datasets: list[str], splits: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The records' own split: rows of each dataset's `train` split are the bank, its `test` rows are replayed.

    Every dataset must have both (a ValueError names the ones that do not); other splits (dev, ...) are left out.
    """
    labels, parts = np.asarray(datasets), np.asarray(splits)
    missing = {d: sorted(set(parts[labels == d].tolist())) for d in sorted(set(datasets))
               if not {"train", "test"} <= set(parts[labels == d].tolist())}
    if missing:
        raise ValueError("--split given needs a train and a test split for every dataset; "
                         + "; ".join(f"{d} has only {', '.join(repr(s) for s in found)}" for d, found in missing.items()))
    return np.flatnonzero(parts == "train"), np.flatnonzero(parts == "test")


def has_given_split(datasets: list[str], splits: list[str]) -> bool:
    """True when every dataset comes with both a train and a test split."""
    labels, parts = np.asarray(datasets), np.asarray(splits)
    return all({"train", "test"} <= set(parts[labels == d].tolist()) for d in set(datasets))


def choose_split(datasets: list[str], splits: list[str], indices: np.ndarray, kind: SplitKind | None, *,
                 seed: int = 42, train_ratio: float = 0.7,
                 queries: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, SplitKind]:
    """(train rows, test rows, the kind used). None: `given` when every dataset has its own train and test
    split, else `random` (the paper's seeded per-dataset 70/30, identical `queries` kept together)."""
    kind = kind or ("given" if has_given_split(datasets, splits) else "random")
    if kind == "given":
        return (*given_split(datasets, splits), kind)
    return (*train_test_split(datasets, indices, seed=seed, train_ratio=train_ratio, queries=queries), kind)
