"""bank_builder.records: LLMRouterBench / JSONL import, the cross-model join and its error handling."""

from __future__ import annotations

import hashlib
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bank_builder.records import Record, RecordError, iter_records, load_records

from tests.conftest import MINI_BENCH as MINI

MINI_MODELS = sorted([
    "gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "claude-3-5-sonnet-20240620", "claude-3-haiku-20240307",
    "gemini-1_5-flash", "Meta-Llama-3_1-70B-Instruct", "Meta-Llama-3_1-8B-Instruct", "Qwen2-7B-Instruct",
])
# the real data must be there (CI has ../shared beside the repository): a missing file fails, never skips
needs_mini = pytest.mark.usefixtures("mini_bench")


# ---------------------------------------------------------------- fixture helpers


def rec(index: int, score: float = 1.0, **kw: object) -> dict:
    """One LLMRouterBench record; the query text depends only on the index, as in real files."""
    out = {"index": index, "origin_query": f"question {index}", "prompt": f"Q: question {index}",
           "prompt_tokens": 10, "completion_tokens": 20 + index, "cost": 0.001, "score": score,
           "prediction": str(index), "ground_truth": str(index), "raw_output": f"answer {index}",
           "extra_fields": {}}
    out.update(kw)
    return out


def write_result(root: Path, dataset: str, model: str, records: list, split: str = "test",
                 stamp: str = "20240101_000000", **top: object) -> Path:
    path = root / "results" / "bench" / dataset / split / model / f"{dataset}-{split}-{model}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"model_name": model, "dataset_name": dataset, "split": split, "records": records, **top}
    path.write_text(json.dumps(doc))
    return path


def pack(root: Path, out: Path) -> Path:
    """Archive root/results as a tarball (compression from the suffix)."""
    mode = {".gz": "w:gz", ".xz": "w:xz"}[out.suffix]
    with tarfile.open(out, mode) as tf:
        tf.add(root / "results", arcname="results")
    return out


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    """Two datasets, three models; model-c lacks math index 2 and all of toy."""
    root = tmp_path / "bench"
    write_result(root, "toy", "model-a", [rec(3, 1.0), rec(1, 0.0), rec(2, 1.0)])
    write_result(root, "toy", "model-b", [rec(1, 1.0), rec(2, 0.0), rec(3, 0.0, cost=None)])
    write_result(root, "math", "model-a", [rec(1, 1.0), rec(2, 1.0)])
    write_result(root, "math", "model-b", [rec(1, 0.0), rec(2, 0.5)])
    write_result(root, "math", "model-c", [rec(1, 1.0, completion_tokens=None)])
    return root


def row_of(m, dataset: str, index: int) -> int:
    (row,) = [i for i in range(len(m.queries)) if m.key(i) == (dataset, index)]
    return row


def same_matrix(a, b) -> None:
    assert a.models == b.models and a.datasets == b.datasets
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.queries == b.queries and a.prompts == b.prompts and a.ground_truth == b.ground_truth
    assert a.responses == b.responses and a.predictions == b.predictions
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.present, b.present)
    for name in ("prompt_tokens", "completion_tokens", "cost"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))  # nan == nan here


# ---------------------------------------------------------------- the real mini-bench


@needs_mini
def test_mini_bench_shape_and_published_accuracies() -> None:
    m = load_records([MINI])
    assert m.score.shape == (450, 8) and len(m.queries) == 450
    assert m.models == MINI_MODELS
    assert sorted(set(m.datasets)) == ["crux", "gsm8k", "math-l5"]
    assert all(m.datasets.count(d) == 150 for d in ("crux", "gsm8k", "math-l5"))
    assert m.present.all() and m.indices.dtype == np.int64
    assert [m.key(i) for i in range(450)] == sorted(m.key(i) for i in range(450))
    ds = np.asarray(m.datasets)

    def acc(dataset: str, model: str) -> float:
        return float(m.score[ds == dataset, m.models.index(model)].mean())

    # per-model accuracies over all 150 questions of each dataset, as the records hold them
    assert acc("gsm8k", "claude-3-5-sonnet-20240620") == pytest.approx(0.9733, abs=1e-4)
    assert acc("crux", "gpt-4o-2024-08-06") == pytest.approx(0.8533, abs=1e-4)
    assert acc("math-l5", "gpt-4o-2024-08-06") == pytest.approx(0.6267, abs=1e-4)
    assert float(m.score[ds == "math-l5"].max(axis=1).mean()) == pytest.approx(0.7933, abs=1e-4)  # oracle
    assert m.report.files == 24 and m.report.records == 3600 and m.report.duplicates_replaced == 0
    assert m.report.sources == {str(MINI): hashlib.sha256(MINI.read_bytes()).hexdigest()}
    assert np.isfinite(m.completion_tokens).all() and (m.completion_tokens > 0).mean() > 0.99
    assert all(r is not None for row in m.responses for r in row)


@needs_mini
def test_mini_bench_directory_equals_archive(tmp_path: Path) -> None:
    with tarfile.open(MINI) as tf:
        tf.extractall(tmp_path, filter="data")
    from_dir = load_records([tmp_path])
    from_tar = load_records([MINI])
    same_matrix(from_dir, from_tar)
    assert from_dir.report.files == from_tar.report.files == 24
    assert len(from_dir.report.sources[str(tmp_path)]) == 64


@needs_mini
def test_iter_records_streams_archive_members() -> None:
    first = next(iter_records(MINI))
    assert isinstance(first, Record)
    assert first.source.startswith(f"{MINI}:results/bench/{first.dataset}/test/{first.model}/")
    assert first.split == "test" and 0.0 <= first.score <= 1.0 and isinstance(first.index, int)


@needs_mini
def test_filters_on_real_data() -> None:
    m = load_records([MINI], datasets=["gsm8k"], models=["gpt-4o-2024-08-06", "Qwen2-7B-Instruct"])
    assert m.score.shape == (150, 2) and set(m.datasets) == {"gsm8k"}
    assert m.models == ["Qwen2-7B-Instruct", "gpt-4o-2024-08-06"]
    assert m.report.skipped["filtered_dataset"] == 2400
    assert m.report.skipped["filtered_model"] == 150 * 6


@needs_mini
def test_unknown_filter_names_are_errors_listing_what_exists() -> None:
    with pytest.raises(RecordError, match=r"unknown dataset.*'gsm9k'.*available.*'crux'"):
        load_records([MINI], datasets=["gsm8k", "gsm9k"])
    with pytest.raises(RecordError, match=r"unknown model.*'gpt-5'.*available.*'Qwen2-7B-Instruct'"):
        load_records([MINI], models=["gpt-5"])


@needs_mini
def test_max_queries_subset_is_seeded_and_deterministic() -> None:
    full = load_records([MINI], datasets=["gsm8k", "crux"])
    a = load_records([MINI], datasets=["gsm8k", "crux"], max_queries_per_dataset=20, seed=7)
    b = load_records([MINI], datasets=["gsm8k", "crux"], max_queries_per_dataset=20, seed=7)
    c = load_records([MINI], datasets=["gsm8k", "crux"], max_queries_per_dataset=20, seed=8)
    same_matrix(a, b)
    assert len(a.queries) == 40 and a.datasets.count("crux") == a.datasets.count("gsm8k") == 20
    assert list(a.indices) != list(c.indices)
    keys = [a.key(i) for i in range(40)]
    assert keys == sorted(keys)
    for ds in ("crux", "gsm8k"):  # the documented recipe, recomputed
        sorted_idx = np.sort(full.indices[np.asarray(full.datasets) == ds])
        expect = np.sort(sorted_idx[np.random.default_rng(7).permutation(len(sorted_idx))[:20]])
        np.testing.assert_array_equal(a.indices[np.asarray(a.datasets) == ds], expect)
    # the kept rows carry the same data as in the full load
    rows = [full.datasets.index(d) + list(full.indices[np.asarray(full.datasets) == d]).index(i)
            for d, i in keys]
    np.testing.assert_array_equal(a.score, full.score[rows])
    assert a.report.skipped["max_queries_per_dataset"] == (300 - 40) * 8


# ---------------------------------------------------------------- hand-made fixtures: formats


def test_join_across_models_masks_gaps(bench: Path) -> None:
    m = load_records([bench])
    assert m.models == ["model-a", "model-b", "model-c"]
    assert [m.key(i) for i in range(len(m.queries))] == [
        ("math", 1), ("math", 2), ("toy", 1), ("toy", 2), ("toy", 3)]
    np.testing.assert_array_equal(m.score, np.array(
        [[1, 0, 1], [1, 0.5, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=np.float32))
    np.testing.assert_array_equal(m.present[:, 2], [True, False, False, False, False])
    assert m.present[:, :2].all()
    assert m.responses[1][2] is None and m.predictions[1][2] is None and m.responses[4][0] == "answer 3"
    assert math.isnan(m.completion_tokens[1, 2]) and math.isnan(m.prompt_tokens[1, 2]) and math.isnan(m.cost[1, 2])
    assert math.isnan(m.completion_tokens[0, 2])  # null in the file -> nan
    assert m.completion_tokens[4, 0] == 23.0 and m.completion_tokens.dtype == np.float64
    assert math.isnan(m.cost[4, 1]) and m.cost[4, 0] == pytest.approx(0.001)
    assert m.queries[4] == "question 3" and m.prompts[4] == "Q: question 3" and m.ground_truth[4] == "3"
    assert m.report.missing == {"model-a": 0, "model-b": 0, "model-c": 4}
    assert "model-c: 4 queries missing" in m.report.summary()


def test_archives_match_directory(bench: Path, tmp_path: Path) -> None:
    ref = load_records([bench])
    for name in ("b.tar.gz", "b.tar.xz"):
        archive = pack(bench, tmp_path / name)
        got = load_records([archive])
        same_matrix(got, ref)
        assert got.report.sources == {str(archive): hashlib.sha256(archive.read_bytes()).hexdigest()}


def test_jsonl_import(tmp_path: Path) -> None:
    lines = [  # m2 comes first: columns must still be sorted by model name
        {"dataset": "d", "index": 1, "query": "q1", "model": "m2", "response": "x", "score": 0.25,
         "prompt": "full q1", "prediction": "p", "ground_truth": 42},
        {"dataset": "d", "index": 2, "query": "q2", "model": "m1", "response": "r", "score": 1,
         "prompt_tokens": 5, "completion_tokens": 7, "cost": 0.5},
        {"dataset": "d", "index": 1, "query": "q1", "model": "m1", "response": None, "score": 0.0,
         "prompt_tokens": None, "completion_tokens": None, "cost": None, "ground_truth": 42},
    ]
    path = tmp_path / "recs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    m = load_records([path])
    assert m.models == ["m1", "m2"] and [m.key(i) for i in range(2)] == [("d", 1), ("d", 2)]
    assert m.queries == ["q1", "q2"] and m.ground_truth == ["42", None]
    assert m.responses == [["", "x"], ["r", None]]  # null response kept as ""
    np.testing.assert_array_equal(m.score, np.array([[0.0, 0.25], [1.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(m.present, [[True, True], [True, False]])
    assert math.isnan(m.prompt_tokens[0, 0]) and math.isnan(m.cost[0, 1]) and m.cost[1, 0] == 0.5
    assert m.completion_tokens[1, 0] == 7.0
    assert m.report.skipped["blank_line"] == 1 and m.report.records == 3
    recs = list(iter_records(path))
    assert recs[2].cost is None and recs[2].response == "" and recs[0].prompt == "full q1"
    assert m.prompts == ["full q1", None] and m.predictions[0] == [None, "p"]
    assert m.report.skipped["ground_truth_mismatch"] == 0


def test_jsonl_and_results_combine(bench: Path, tmp_path: Path) -> None:
    path = tmp_path / "extra.jsonl"
    path.write_text(json.dumps({"dataset": "toy", "index": 2, "query": "question 2", "model": "model-z",
                                "response": "zz", "score": 1.0}) + "\n")
    m = load_records([bench, path])
    j = m.models.index("model-z")
    assert m.present[:, j].sum() == 1 and m.responses[row_of(m, "toy", 2)][j] == "zz"
    assert set(m.report.sources) == {str(bench), str(path)}


def test_jsonl_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"dataset": "d", "index": 1, "query": "q", "model": "m", "response": "r", "score": 1})
    path.write_text(good + "\n{not json\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl.*line 2"):
        load_records([path])
    path.write_text(json.dumps({"dataset": "d", "index": 1, "model": "m", "response": "r", "score": 1}) + "\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl:1.*'query'"):
        load_records([path])


def test_non_json_and_stray_files_are_counted_skips(bench: Path) -> None:
    (bench / "results" / "bench" / "toy" / "test" / "model-a" / "notes.txt").write_text("hi")
    (bench / "README.md").write_text("readme")
    m = load_records([bench])
    assert m.report.skipped["not_json"] == 1 and m.report.skipped["outside_results_bench"] == 1
    assert m.report.files == 5 and "skipped not_json: 1" in m.report.summary()


# ---------------------------------------------------------------- duplicates and mismatches


def test_duplicate_rows_are_an_error_naming_both_sources(bench: Path) -> None:
    later = write_result(bench, "toy", "model-a", [rec(2, 0.0, raw_output="newer")], stamp="20250101_000000")
    with pytest.raises(RecordError, match=r"duplicate.*'toy'.*index=2.*'model-a'") as err:
        load_records([bench])
    assert "20240101_000000.json" in str(err.value) and later.name in str(err.value)


def test_keep_latest_replaces_and_counts(bench: Path) -> None:
    write_result(bench, "toy", "model-a", [rec(2, 0.0, raw_output="newer")], stamp="20250101_000000")
    m = load_records([bench], keep_latest=True)
    row, col = row_of(m, "toy", 2), m.models.index("model-a")
    assert m.responses[row][col] == "newer" and m.score[row, col] == 0.0
    assert m.report.duplicates_replaced == 1 and "keep_latest" in m.report.summary()


def test_query_text_mismatch_keeps_first_and_counts(bench: Path) -> None:
    write_result(bench, "toy", "model-d", [rec(1, 1.0, origin_query="a different text")])
    m = load_records([bench])
    row = row_of(m, "toy", 1)
    assert m.queries[row] == "question 1" and m.present[row, m.models.index("model-d")]
    assert m.report.skipped["query_text_mismatch"] == 1


def test_two_splits_of_one_dataset_stay_apart(bench: Path) -> None:
    # indices restart per split: toy/dev #1 is another question than toy/test #1, never joined with it
    write_result(bench, "toy", "model-a", [rec(1, 0.0)], split="dev")
    m = load_records([bench])
    toy = [i for i in range(len(m.queries)) if m.datasets[i] == "toy"]
    assert [(m.splits[i], int(m.indices[i])) for i in toy] == [("dev", 1), ("test", 1), ("test", 2), ("test", 3)]
    dev = toy[0]
    assert m.present[dev].tolist() == [True, False, False] and m.score[dev, 0] == 0.0
    assert load_records([bench], datasets=["math"]).report.queries == 2


# ---------------------------------------------------------------- malformed input


def test_malformed_json_names_the_file(bench: Path) -> None:
    bad = bench / "results" / "bench" / "toy" / "test" / "model-x" / "toy-test-model-x.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"model_name": "model-x", "records": [')
    with pytest.raises(RecordError, match=r"toy-test-model-x\.json.*not valid JSON"):
        load_records([bench])


def test_malformed_json_inside_archive_names_member(bench: Path, tmp_path: Path) -> None:
    bad = bench / "results" / "bench" / "toy" / "test" / "model-x" / "broken.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("[1, 2")
    archive = pack(bench, tmp_path / "b.tar.gz")
    with pytest.raises(RecordError, match=r"b\.tar\.gz:results/bench/toy/test/model-x/broken\.json"):
        load_records([archive])


@pytest.mark.parametrize("record, pattern", [
    ({k: v for k, v in rec(5).items() if k != "index"}, r"record 1: field 'index' is missing"),
    ({**rec(5), "index": "five"}, r"record 1: field 'index'.*integer"),
    (rec(5, score="abc"), r"record 1: field 'score'.*number"),
    (rec(5, score=None), r"record 1: field 'score'.*number"),
    (rec(5, score=1.5), r"record 1: field 'score'.*outside \[0, 1"),
    (rec(5, score=-0.1), r"record 1: field 'score'.*outside"),
    (rec(5, completion_tokens="many"), r"record 1: field 'completion_tokens'"),
    (rec(5, raw_output=["not", "text"]), r"record 1: field 'raw_output'.*string"),
    (rec(5, origin_query=None, prompt=None), r"record 1: field 'origin_query'"),
])
def test_bad_record_names_file_position_and_field(tmp_path: Path, record: dict, pattern: str) -> None:
    path = write_result(tmp_path, "toy", "model-a", [rec(4), record])
    with pytest.raises(RecordError, match=pattern) as err:
        load_records([tmp_path])
    assert str(path) in str(err.value)


def test_structural_errors(tmp_path: Path) -> None:
    path = write_result(tmp_path, "toy", "m", [rec(1)])
    path.write_text(json.dumps({"model_name": "m", "dataset_name": "toy"}))
    with pytest.raises(RecordError, match=r"toy-test-m-.*\.json.*'records'"):
        load_records([tmp_path])
    with pytest.raises(RecordError, match="no such file"):
        load_records([tmp_path / "missing.tar.gz"])
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(RecordError, match="unsupported input"):
        load_records([tmp_path / "x.csv"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RecordError, match="no records loaded"):
        load_records([empty])


def test_names_fall_back_to_path_and_null_response_is_kept(tmp_path: Path) -> None:
    path = write_result(tmp_path, "toy", "model-a", [rec(1, 0.0, raw_output=None)])
    doc = json.loads(path.read_text())
    del doc["model_name"], doc["dataset_name"]
    path.write_text(json.dumps(doc))
    m = load_records([tmp_path])
    assert m.models == ["model-a"] and m.datasets == ["toy"] and m.responses == [[""]]


# ---------------------------------------------------------------- helpers


def test_subset_and_select_models(bench: Path) -> None:
    m = load_records([bench])
    sub = m.subset([4, 0])
    assert [sub.key(0), sub.key(1)] == [("toy", 3), ("math", 1)]
    np.testing.assert_array_equal(sub.score, m.score[[4, 0]])
    assert sub.responses == [m.responses[4], m.responses[0]] and sub.queries == [m.queries[4], m.queries[0]]
    masked = m.subset(np.array([True, False, False, False, True]))
    assert [masked.key(i) for i in range(2)] == [("math", 1), ("toy", 3)]

    sel = m.select_models(["model-c", "model-a"])
    assert sel.models == ["model-c", "model-a"] and sel.score.shape == (5, 2)
    np.testing.assert_array_equal(sel.present, m.present[:, [2, 0]])
    np.testing.assert_array_equal(sel.completion_tokens, m.completion_tokens[:, [2, 0]])
    assert sel.responses[0] == [m.responses[0][2], m.responses[0][0]]
    assert m.models == ["model-a", "model-b", "model-c"] and m.score.shape == (5, 3)  # original untouched
    with pytest.raises(ValueError, match="model-q"):
        m.select_models(["model-a", "model-q"])
