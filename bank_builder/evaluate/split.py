"""The paper's train/test split (§4.1): per dataset, rows in ascending record index, a NumPy
shuffle seeded with 42, the first 70 % train (the bank) and the rest test."""

from __future__ import annotations

import numpy as np


def train_test_split(
    datasets: list[str], indices: np.ndarray, *, seed: int = 42, train_ratio: float = 0.7
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the train and test parts, each sorted ascending."""
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
        train.append(rows[:n_train])
        test.append(rows[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
