"""The bank on disk: build, load, validation against the embedder, search, add-model, atomic commits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.bank.reader import Bank
from app.bank.format import BankError, read_manifest
from app.engine import JiSiParams
from app.bank import writer as bank_writer
from bank_builder.build import add_models, build_bank
from bank_builder.records import load_records
from bank_builder.evaluate.split import train_test_split


class CountingEmbedder:
    """Deterministic, fast stand-in: a hashed bag of words, normalised; counts the texts it embeds."""

    def __init__(self, name: str = "bag-of-words", dim: int = 16) -> None:
        self.name, self.dim, self.calls = name, dim, 0

    def embed(self, texts, *, progress: bool = False) -> np.ndarray:
        self.calls += len(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, hash(word) % self.dim] += 1.0
            out[i, 0] += 1e-3  # the empty text still gets a direction
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows_for(model: str, answers: dict[int, tuple[float, int]], dataset: str = "toy") -> list[dict]:
    return [{"dataset": dataset, "index": i, "query": f"question number {i} about topic {i % 3}", "model": model,
             "response": f"{model} says {i}", "score": s, "prompt_tokens": 10, "completion_tokens": c,
             "cost": 0.001} for i, (s, c) in answers.items()]


@pytest.fixture()
def toy_records(tmp_path: Path) -> Path:
    rows = rows_for("alpha", {i: (1.0, 100 + i) for i in range(10)})
    rows += rows_for("beta", {i: (float(i % 2), 50) for i in range(10) if i != 3})  # beta lacks question 3
    return write_jsonl(tmp_path / "toy.jsonl", rows)


def test_build_writes_a_loadable_bank_with_masks(tmp_path: Path, toy_records: Path) -> None:
    matrix = load_records([toy_records])
    embedder = CountingEmbedder()
    manifest = build_bank(matrix, embedder, tmp_path / "bank", params=JiSiParams(), split={"part": "all"},
                          progress=False)
    bank = Bank.load(tmp_path / "bank", embedder_name="bag-of-words", dim=16)
    assert manifest.models == ["alpha", "beta"] and bank.n_queries == 10
    assert manifest.n_records == 19 and manifest.datasets == {"toy": 10}
    assert not bank.present[3, 1] and bank.present[3, 0]
    assert bank.v[3, 1] == 0 and np.all(bank.r[1][3] == 0)  # the gap holds nothing
    assert bank.c[4, 0] == 104 and bank.v[5, 1] == 1.0
    assert manifest.sources[0].path == str(toy_records) and len(manifest.sources[0].sha256) == 64
    assert bank.query_info(2).text == "question number 2 about topic 2" and bank.query_info(2).dataset == "toy"
    # the exact index returns the query itself first, similarity 1
    sims, ids = bank.search(bank.e[7], 3)
    assert ids[0] == 7 and sims[0] == pytest.approx(1.0, abs=1e-5)
    view = bank.view(np.array([7, 2]), np.array([1]))
    assert view.r.shape == (2, 1, 16) and np.allclose(view.r[0, 0], bank.r[1][7])
    assert view.v.tolist() == [bank.v[7].tolist(), bank.v[2].tolist()]


def test_identical_texts_are_embedded_once(tmp_path: Path, toy_records: Path) -> None:
    matrix = load_records([toy_records])
    embedder = CountingEmbedder()
    build_bank(matrix, embedder, tmp_path / "bank", params=JiSiParams(), split={}, progress=False)
    # 10 queries + 19 distinct responses
    assert embedder.calls == 10 + 19


def test_load_refuses_another_embedder(tmp_path: Path, toy_records: Path) -> None:
    build_bank(load_records([toy_records]), CountingEmbedder(), tmp_path / "bank", params=JiSiParams(),
               split={}, progress=False)
    with pytest.raises(BankError, match="built with embedding model 'bag-of-words'.*'other'"):
        Bank.load(tmp_path / "bank", embedder_name="other", dim=16)
    with pytest.raises(BankError, match="16-dimensional.*produces 384"):
        Bank.load(tmp_path / "bank", embedder_name="bag-of-words", dim=384)
    with pytest.raises(BankError, match="no bank at"):
        Bank.load(tmp_path / "nowhere")


def test_missing_or_corrupt_files_are_clear_errors(tmp_path: Path, toy_records: Path) -> None:
    manifest = build_bank(load_records([toy_records]), CountingEmbedder(), tmp_path / "bank",
                          params=JiSiParams(), split={}, progress=False)
    (tmp_path / "bank" / manifest.files.v).unlink()
    with pytest.raises(BankError, match="missing"):
        Bank.load(tmp_path / "bank")
    (tmp_path / "bank" / "manifest.json").write_text("{not json")
    with pytest.raises(BankError, match="not a valid bank manifest"):
        Bank.load(tmp_path / "bank")


def test_rebuild_is_atomic_and_a_crash_keeps_the_old_bank(tmp_path: Path, toy_records: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bank"
    first = build_bank(load_records([toy_records]), CountingEmbedder(), out, params=JiSiParams(), split={},
                       progress=False)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the index")

    monkeypatch.setattr(bank_writer, "save_index", crash)
    with pytest.raises(KeyboardInterrupt):
        build_bank(load_records([toy_records]), CountingEmbedder(), out, params=JiSiParams(), split={},
                   progress=False)
    assert read_manifest(out).build_id == first.build_id
    assert Bank.load(out).n_queries == 10  # the old bank still loads whole
    monkeypatch.undo()
    second = build_bank(load_records([toy_records]), CountingEmbedder(), out, params=JiSiParams(), split={},
                        progress=False)
    assert second.build_id != first.build_id
    # files of the old build (and of the crashed one) are gone; unrelated files stay
    names = {p.name for p in out.iterdir()}
    assert not any(first.build_id in n for n in names)
    assert all(second.build_id in n for n in names if n != "manifest.json")


def test_add_model_embeds_only_the_new_model(tmp_path: Path, toy_records: Path) -> None:
    out = tmp_path / "bank"
    build_bank(load_records([toy_records]), CountingEmbedder(), out, params=JiSiParams(), split={},
               progress=False)
    before = Bank.load(out)
    old_query_file = before.manifest.files.query_emb
    # gamma answers 6 of the bank's questions, plus one question the bank does not hold
    new_rows = rows_for("gamma", {i: (1.0, 7) for i in (0, 1, 2, 4, 5, 8, 42)})
    embedder = CountingEmbedder()
    manifest = add_models(out, load_records([write_jsonl(tmp_path / "gamma.jsonl", new_rows)]), embedder,
                          progress=False)
    bank = Bank.load(out)
    assert embedder.calls == 6  # only gamma's responses that match bank questions; nothing re-embedded
    assert bank.models == ["alpha", "beta", "gamma"]
    assert manifest.files.query_emb == old_query_file
    assert bank.present[:, 2].tolist() == [i in (0, 1, 2, 4, 5, 8) for i in range(10)]
    assert np.array_equal(bank.v[:, :2], before.v) and np.array_equal(np.asarray(bank.r[0]), np.asarray(before.r[0]))
    assert manifest.n_records == 19 + 6
    with pytest.raises(BankError, match="already in the bank"):
        add_models(out, load_records([write_jsonl(tmp_path / "again.jsonl", new_rows)]), embedder, progress=False)


def test_split_follows_the_paper(mini_bench: Path) -> None:
    matrix = load_records([mini_bench])
    train, test = train_test_split(matrix.datasets, matrix.indices, seed=42, train_ratio=0.7)
    assert len(train) == 3 * 105 and len(test) == 3 * 45
    assert not set(train) & set(test)
    # per dataset: indices in ascending order, numpy's seeded shuffle, the first 70 % train
    rows = [r for r in range(len(matrix.datasets)) if matrix.datasets[r] == "gsm8k"]
    rows.sort(key=lambda r: matrix.indices[r])
    shuffled = np.array(rows)
    np.random.RandomState(42).shuffle(shuffled)
    assert sorted(shuffled[:105].tolist()) == sorted(r for r in train if matrix.datasets[r] == "gsm8k")
    again = train_test_split(matrix.datasets, matrix.indices, seed=42, train_ratio=0.7)
    assert np.array_equal(again[0], train)
    other = train_test_split(matrix.datasets, matrix.indices, seed=7, train_ratio=0.7)
    assert not np.array_equal(other[0], train)
