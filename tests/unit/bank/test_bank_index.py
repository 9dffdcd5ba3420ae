"""Exact vs approximate bank index: the auto choice, support-set recall of IVF, banks built with it."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import faiss
import numpy as np
import pytest

from app.bank import index as bank_index
from app.bank.reader import Bank
from app.bank.format import BankError
from app.config import BankIndexSettings
from app.engine import JiSiParams
from app.engine.support import support_set
from bank_builder.build import build_bank
from bank_builder.cli import index_settings, parser
from bank_builder.records import load_records

K = JiSiParams().max_support + 1  # what the gateway asks for


def clustered(n: int, d: int = 384, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """Normalised vectors around a few centres, like questions of a handful of datasets and templates."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def support_ids(index: faiss.Index, queries: np.ndarray, settings: BankIndexSettings) -> list[np.ndarray]:
    out = []
    for q in queries:
        sims, ids = bank_index.search(index, q[None], K, settings)
        out.append(support_set(sims[0], ids[0], JiSiParams()).ids)
    return out


def test_auto_is_exact_up_to_the_threshold_and_ivf_above() -> None:
    settings = BankIndexSettings(approximate_above=4000)
    small, large = bank_index.build_index(clustered(4000), settings), bank_index.build_index(clustered(4001), settings)
    assert isinstance(small, faiss.IndexFlatIP) and bank_index.index_type(small) == "flat_ip"
    assert isinstance(large, faiss.IndexIVFFlat) and bank_index.index_type(large) == "ivf_ip"
    assert large.metric_type == faiss.METRIC_INNER_PRODUCT and large.ntotal == 4001
    assert large.nlist == 100  # 4·√N = 253 lists would train on < 40 points each: capped at N / 40
    # an explicit kind wins over the size rule
    assert isinstance(bank_index.build_index(clustered(100), settings.model_copy(update={"kind": "ivf"})),
                      faiss.IndexIVF)
    assert isinstance(bank_index.build_index(clustered(4001), settings.model_copy(update={"kind": "flat"})),
                      faiss.IndexFlat)


def test_ivf_support_set_recall_against_exact() -> None:
    e, queries = clustered(6000, clusters=60), clustered(60, clusters=60, seed=1)
    settings = BankIndexSettings(kind="ivf", nlist=150, nprobe=32)  # scans about a fifth of the bank
    exact = support_ids(bank_index.build_index(e, settings.model_copy(update={"kind": "flat"})), queries, settings)
    index = bank_index.build_index(e, settings)
    index.nprobe = 1  # the stored default must not matter: nprobe comes with each search
    recall = [np.intersect1d(a, x).size / x.size for a, x in zip(support_ids(index, queries, settings), exact)]
    assert np.mean(recall) >= 0.95 and min(recall) >= 0.8


def test_search_pins_openmp_threads_in_the_calling_thread_and_restores_them() -> None:
    seen = []

    class Probe:  # records the OpenMP thread count FAISS would use inside the search
        def search(self, queries, k, params=None):
            seen.append(faiss.omp_get_max_threads())
            return np.zeros((1, k), np.float32), np.zeros((1, k), np.int64)

    before = faiss.omp_get_max_threads()
    bank_index.search(Probe(), np.zeros((1, 4)), 3, BankIndexSettings(search_threads=1))
    assert seen == [1] and faiss.omp_get_max_threads() == before


class HashEmbedder:
    """Deterministic clustered vectors per text (the topic word picks the centre): fast, no model."""

    name, dim = "hash-clusters", 64

    def embed(self, texts, *, progress: bool = False) -> np.ndarray:
        centres = clustered(8, d=self.dim, clusters=8, seed=3)
        out = np.empty((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            rng = np.random.default_rng(zlib.crc32(text.encode()))
            out[i] = centres[len(text.split()) % 8] + 0.5 * rng.standard_normal(self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture()
def records(tmp_path: Path) -> Path:
    rows = [{"dataset": "toy", "index": i, "query": "word " * (i % 11) + f"question {i}", "model": model,
             "response": f"{model} says {i}", "score": float((i + j) % 2), "prompt_tokens": 10,
             "completion_tokens": 20 + i % 7, "cost": 0.001}
            for i in range(1500) for j, model in enumerate(["alpha", "beta"])]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bank_built_with_ivf_loads_and_searches_like_the_exact_one(tmp_path: Path, records: Path) -> None:
    matrix = load_records([records])
    for kind in ("flat", "ivf"):
        build_bank(matrix, HashEmbedder(), tmp_path / kind, params=JiSiParams(), split={},
                   index=BankIndexSettings(kind=kind), progress=False)
    flat, ivf = Bank.load(tmp_path / "flat"), Bank.load(tmp_path / "ivf", index_settings=BankIndexSettings())
    assert flat.manifest.index_type == "flat_ip" and ivf.manifest.index_type == "ivf_ip"
    assert ivf.index.nlist < BankIndexSettings().nprobe  # 1500 rows: 37 lists, all probed, so exact
    for row in range(0, 1500, 50):
        sims, ids = ivf.search(ivf.e[row], K)
        assert ids.size == K and ids.min() >= 0 and np.all(np.diff(sims) <= 1e-6)
        assert ids[0] == row and sims[0] == pytest.approx(1.0, abs=1e-5)
        exact = support_set(*flat.search(flat.e[row], K), JiSiParams())
        assert np.array_equal(np.sort(support_set(sims, ids, JiSiParams()).ids), np.sort(exact.ids))
    # k above what the probed lists hold: FAISS pads with -1, the bank returns only real rows
    one_list = Bank.load(tmp_path / "ivf", index_settings=BankIndexSettings(nprobe=1))
    sims, ids = one_list.search(one_list.e[0], K)
    assert 0 < ids.size < K and ids.min() >= 0 and np.all(np.isfinite(sims)) and ids[0] == 0


def test_old_flat_ip_manifests_load_and_unknown_or_wrong_types_are_refused(tmp_path: Path, records: Path) -> None:
    build_bank(load_records([records]), HashEmbedder(), tmp_path / "bank", params=JiSiParams(), split={},
               index=BankIndexSettings(kind="flat"), progress=False)
    manifest_file = tmp_path / "bank" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    assert manifest["index_type"] == "flat_ip"  # what every bank held before IVF
    del manifest["index_type"]  # a manifest written before the field mattered
    manifest_file.write_text(json.dumps(manifest))
    bank = Bank.load(tmp_path / "bank")
    assert bank.manifest.index_type == "flat_ip" and bank.search(bank.e[3], 5)[1][0] == 3
    manifest_file.write_text(json.dumps({**manifest, "index_type": "ivf_pq"}))
    with pytest.raises(BankError, match="index type 'ivf_pq'"):
        Bank.load(tmp_path / "bank")
    manifest_file.write_text(json.dumps({**manifest, "index_type": "ivf_ip"}))
    with pytest.raises(BankError, match="index is flat_ip"):
        Bank.load(tmp_path / "bank")


def test_cli_index_flags() -> None:
    args = parser().parse_args(["build", "--records", "r", "--out", "o", "--index", "ivf", "--index-threshold", "7",
                                "--nlist", "30"])
    assert index_settings(args) == BankIndexSettings(kind="ivf", approximate_above=7, nlist=30)
    assert index_settings(parser().parse_args(["build", "--records", "r", "--out", "o"])) == BankIndexSettings()
