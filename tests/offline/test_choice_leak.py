"""No choice of `jisi-bank evaluate --calibrate` can read the test labels: the calibrated JiSi parameters, the
shortcut threshold, the cost weight, the economy profile (its cascade included) and every baseline's choice (best
single, best per dataset, the voters, kNN's k, the clusters, the logistic and mf fits) are made on the train split
alone. The proof: the same evaluation on real records and on records whose TEST split's correctness, costs, tokens
and answers are shuffled reports the same `choices`, while its test figures move.

The records are written as LLMRouterBench files with the split "test" everywhere, so the evaluator draws its
seeded random split from (dataset, index, question) alone, which the shuffle leaves as they are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bank_builder.build import embed_responses, embed_unique
from bank_builder.cli import main
from bank_builder.evaluate.split import choose_split
from bank_builder.records import RecordMatrix, load_records
from tests.conftest import PRICES

QUERIES = 30  # per dataset: 63 train and 27 test questions, the subset test_calibration.py evaluates


def _cell(matrix: RecordMatrix, i: int, j: int) -> dict[str, object]:
    number = lambda x: None if np.isnan(x) else float(x)  # noqa: E731
    return {"score": float(matrix.score[i, j]), "prediction": matrix.predictions[i][j],
            "raw_output": matrix.responses[i][j], "prompt_tokens": number(matrix.prompt_tokens[i, j]),
            "completion_tokens": number(matrix.completion_tokens[i, j]), "cost": number(matrix.cost[i, j])}


def split_test_rows(matrix: RecordMatrix) -> np.ndarray:
    """The evaluator's test rows: the seeded per-dataset 70/30 split of run.evaluate."""
    _, test, kind = choose_split(matrix.datasets, matrix.splits, matrix.indices, None, seed=42, train_ratio=0.7,
                                 queries=matrix.queries)
    assert kind == "random"
    return test


def write_records(matrix: RecordMatrix, root: Path, shuffle_test_seed: int | None = None) -> Path:
    """The matrix as results/bench/<dataset>/test/<model>/<file>.json; with a seed, every present test cell's
    correctness, answer, tokens and cost are moved to another present test cell (any question, any model)."""
    cells = {(i, j): _cell(matrix, i, j) for i in range(len(matrix.queries)) for j in range(len(matrix.models))
             if matrix.present[i, j]}
    if shuffle_test_seed is not None:
        test = set(split_test_rows(matrix).tolist())
        slots = [key for key in cells if key[0] in test]
        moved = np.random.default_rng(shuffle_test_seed).permutation(len(slots))
        cells.update({slots[t]: cells[slots[s]] for t, s in enumerate(moved)})
    labels = np.asarray(matrix.datasets)
    for dataset in sorted(set(matrix.datasets)):
        for j, model in enumerate(matrix.models):
            records = [{"index": int(matrix.indices[i]), "origin_query": matrix.queries[i],
                        "prompt": matrix.prompts[i], "ground_truth": matrix.ground_truth[i], **cells[i, j]}
                       for i in np.flatnonzero(labels == dataset).tolist() if (i, j) in cells]
            path = root / "results" / "bench" / dataset / "test" / model / f"{dataset}-test-{model}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"model_name": model, "dataset_name": dataset, "split": "test",
                                        "records": records}))
    return root


def evaluate(records: Path, out: Path, cache: Path) -> dict:
    assert main(["evaluate", "--records", str(records), "--out", str(out), "--cache-dir", str(cache),
                 "--prices", str(PRICES), "--calibrate", "--folds", "3", "--settings", "4", "--no-plots",
                 "--resamples", "50"]) == 0
    return json.loads((out / "results.json").read_text())


def test_no_choice_moves_when_only_the_test_split_is_shuffled(tmp_path, mini_bench, embedding_cache_dir, minilm):
    matrix = load_records([mini_bench], max_queries_per_dataset=QUERIES, seed=42)
    # the shuffle moves texts and makes none: embedded once here and flushed to the cache, both runs read every
    # question and answer from it (the evaluator's own embedder is never closed, and keeps fewer than 1024 new
    # vectors in memory only, so each run would embed them again)
    embed_unique(minilm, matrix.queries, progress=False)
    embed_responses(matrix, minilm, progress=False)
    minilm.close()
    real = write_records(matrix, tmp_path / "real")
    shuffled = write_records(matrix, tmp_path / "shuffled", shuffle_test_seed=7)

    # the shuffle touched the test rows only, and kept which rows are train and which are test
    a, b = load_records([real]), load_records([shuffled])
    test = split_test_rows(a)
    np.testing.assert_array_equal(test, split_test_rows(b))
    train = np.setdiff1d(np.arange(len(a.queries)), test)
    np.testing.assert_array_equal(a.score[train], b.score[train])
    np.testing.assert_array_equal(a.present, b.present)
    assert [a.responses[i] for i in train] == [b.responses[i] for i in train]
    assert not np.array_equal(a.score[test], b.score[test])
    assert [a.responses[i] for i in test] != [b.responses[i] for i in test]

    before = evaluate(real, tmp_path / "out-real", embedding_cache_dir)
    after = evaluate(shuffled, tmp_path / "out-shuffled", embedding_cache_dir)

    choices = before["choices"]
    assert set(choices) == {"best_single", "best_per_dataset", "knn", "cluster", "logistic", "mf", "majority_vote",
                            "majority_vote_per_dataset", "jisi_calibrated", "jisi_cascade", "jisi_economy"}
    assert set(choices["jisi_calibrated"]) == {"params", "shortcut", "cost_weight"}
    assert set(choices["cluster"]) >= {"n_clusters", "centroids_sha256", "best_model"}
    assert set(choices["best_per_dataset"]["models"]) == set(choices["majority_vote_per_dataset"]["voters"]) \
        == set(matrix.datasets)
    for name, chosen in choices.items():
        assert after["choices"][name] == chosen, f"{name}: chosen with the test split's labels"
    assert after["choices"] == choices

    # the shuffle did change what the test split says
    moved = [m for m in ("oracle", "best_single", "random", "majority_vote")
             if before["methods"][m]["average"] != after["methods"][m]["average"]]
    assert moved, "the shuffled test split scored every reference the same"
