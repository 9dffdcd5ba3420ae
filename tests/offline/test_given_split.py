"""Records that come with their own train/test split (LLMRouterBench's results/bench/<dataset>/<split>/...):
`jisi-bank evaluate` uses it without being asked, says so, and refuses `--split given` clearly when a dataset
has only one split. The fixture: mini-bench's real records rewritten into train and test files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bank_builder.cli import main
from bank_builder.records import load_records

TRAIN, TEST = 20, 10  # questions per dataset


def write_split_records(mini_bench: Path, root: Path, datasets_with_test=("crux", "gsm8k", "math-l5")) -> Path:
    matrix = load_records([mini_bench])
    labels = np.asarray(matrix.datasets)
    for dataset in sorted(set(matrix.datasets)):
        rows = np.flatnonzero(labels == dataset)[: TRAIN + TEST]  # rows are sorted by index
        parts = {"train": rows[:TRAIN], "test": rows[TRAIN:]}
        for split, chosen in parts.items():
            if split == "test" and dataset not in datasets_with_test:
                continue
            for j, model in enumerate(matrix.models):
                records = [{"index": int(matrix.indices[i]), "origin_query": matrix.queries[i],
                            "prompt": matrix.prompts[i], "raw_output": matrix.responses[i][j],
                            "score": float(matrix.score[i, j]), "prediction": matrix.predictions[i][j],
                            "ground_truth": matrix.ground_truth[i],
                            "prompt_tokens": float(matrix.prompt_tokens[i, j]),
                            "completion_tokens": float(matrix.completion_tokens[i, j]),
                            "cost": None if np.isnan(matrix.cost[i, j]) else float(matrix.cost[i, j])}
                           for i in chosen]
                path = root / "results" / "bench" / dataset / split / model / f"{dataset}-{split}-{model}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"model_name": model, "dataset_name": dataset, "split": split,
                                            "records": records}))
    return root


def evaluate(records: Path, out: Path, cache: Path, *extra: str) -> int:
    return main(["evaluate", "--records", str(records), "--out", str(out), "--cache-dir", str(cache),
                 "--no-plots", "--resamples", "200", *extra])


def test_records_with_their_own_split_are_evaluated_on_it_without_a_flag(tmp_path, mini_bench, embedding_cache_dir):
    records = write_split_records(mini_bench, tmp_path / "records")
    assert evaluate(records, tmp_path / "out", embedding_cache_dir) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    config = results["config"]
    assert config["split"] == "given" and config["train_ratio"] is None
    assert config["train_queries"] == 3 * TRAIN and config["test_queries"] == 3 * TEST
    bank = json.loads((tmp_path / "out" / "bank" / "manifest.json").read_text())
    assert bank["n_queries"] == 3 * TRAIN and bank["split"]["kind"] == "given"
    assert "Split: given" in (tmp_path / "out" / "results.md").read_text()


def test_build_split_train_keeps_the_records_own_train_part(tmp_path, mini_bench, embedding_cache_dir):
    """`jisi-bank build --split train` takes the evaluator's split (the demo's bank: the replay serves the
    records' own test part, so a train bank of the random split would hold test questions)."""
    records = write_split_records(mini_bench, tmp_path / "records")
    assert main(["build", "--records", str(records), "--split", "train", "--out", str(tmp_path / "bank"),
                 "--cache-dir", str(embedding_cache_dir)]) == 0
    bank = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert bank["n_queries"] == 3 * TRAIN and bank["split"]["kind"] == "given" and bank["split"]["part"] == "train"


def test_a_dataset_with_one_split_is_named_under_split_given(tmp_path, mini_bench, embedding_cache_dir, capsys):
    records = write_split_records(mini_bench, tmp_path / "records", datasets_with_test=("crux", "gsm8k"))
    assert evaluate(records, tmp_path / "out", embedding_cache_dir, "--split", "given") == 2
    assert "math-l5 has only 'train'" in capsys.readouterr().err
    # without the flag the evaluator falls back to the seeded random split, and says which it used
    assert evaluate(records, tmp_path / "out2", embedding_cache_dir) == 0
    assert json.loads((tmp_path / "out2" / "results.json").read_text())["config"]["split"] == "random"


@pytest.mark.parametrize("split", ["random"])
def test_split_random_pools_a_datasets_splits_and_draws_seventy_thirty(tmp_path, mini_bench, embedding_cache_dir,
                                                                       split):
    records = write_split_records(mini_bench, tmp_path / "records")
    assert evaluate(records, tmp_path / "out", embedding_cache_dir, "--split", split) == 0
    config = json.loads((tmp_path / "out" / "results.json").read_text())["config"]
    assert config["split"] == "random" and config["train_queries"] == 3 * int((TRAIN + TEST) * 0.7)
