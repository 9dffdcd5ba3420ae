"""The static backend (model2vec distilled locally from the packaged MiniLM), the response text policies, and
a bank whose queries and responses come from different embedders: recorded in the manifest, and a gateway
configured otherwise is refused with a message that says which side differs and how."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from app.bank.format import BankError, EmbedderInfo, read_manifest
from app.bank.reader import Bank
from app.config import EmbedderSettings
from app.embedding import make_embedder
from app.embedding.cache import StoredPrecision
from app.embedding.static import distilled_model
from app.engine import JiSiParams
from bank_builder.build import build_bank
from bank_builder.records import load_records


def test_the_static_embedder_gives_normalised_deterministic_vectors(static_embedder):
    texts = ["What is 2 + 2?", "def f(x): return x * 2", "What is 2 + 2?", ""]
    v = static_embedder.embed(texts)
    assert v.shape == (4, 256) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v[:3], axis=1), 1.0) and not v[3].any()  # no token: a zero vector
    assert np.array_equal(v[0], v[2]) and v[0] @ v[1] < 0.9
    assert static_embedder.name == "static:all-MiniLM-L6-v2[pca=256]" and len(static_embedder.digest) == 16


def test_the_distilled_model_is_made_once_and_reused(static_embedder):
    started = time.perf_counter()
    folder = distilled_model("all-MiniLM-L6-v2")
    assert time.perf_counter() - started < 1.0  # read from the cache, not distilled again
    assert (folder / "config.json").is_file()
    again = make_embedder(EmbedderSettings(backend="static", max_seq_length=None, cache_dir=None))
    assert again.digest == static_embedder.digest
    assert np.array_equal(again.embed(["same text"]), StoredPrecision(static_embedder).embed(["same text"]))


def test_it_is_much_faster_than_the_transformer(static_embedder, minilm):
    texts = [f"Question {i}: how many apples are left when {i} of {2 * i + 7} are eaten?" for i in range(400)]
    started = time.perf_counter()
    static_embedder.embed(texts)
    static_s = time.perf_counter() - started
    started = time.perf_counter()
    minilm.inner.embed(texts[:40])  # uncached: a tenth of the texts
    minilm_s = (time.perf_counter() - started) * 10
    assert static_s * 10 < minilm_s  # measured ~250x on two cores; 10x leaves room for a busy machine


def test_head_and_tail_keeps_both_ends_of_a_long_answer(minilm):
    from app.embedding.backends import SentenceTransformerEmbedder

    model = SentenceTransformerEmbedder(max_seq_length=16, truncation="head_tail")
    long = "First we read the question carefully. " + "Then we compute many steps. " * 20 + "The answer is 42."
    kept = model.head_and_tail([long, "short text"])
    assert kept[1] == "short text"
    assert kept[0].startswith("First we read") and kept[0].endswith("answer is 42.") and len(kept[0]) < 120
    assert not np.allclose(model.embed([long]), SentenceTransformerEmbedder(max_seq_length=16).embed([long]))


@pytest.fixture(scope="module")
def split_bank(tmp_path_factory, mini_bench, minilm, static_embedder) -> Path:
    """MiniLM for the queries, the static model for the responses."""
    matrix = load_records([mini_bench], max_queries_per_dataset=10, seed=42)
    out = tmp_path_factory.mktemp("split-bank") / "bank"
    build_bank(matrix, minilm, out, params=JiSiParams(), split={"part": "all"}, response_embedder=static_embedder,
               progress=False)
    return out


def test_the_manifest_records_both_embedders(split_bank, minilm, static_embedder):
    manifest = read_manifest(split_bank)
    assert manifest.embedder == EmbedderInfo.of(minilm)
    assert manifest.response_embedder == EmbedderInfo.of(static_embedder)
    bank = Bank.load(split_bank, query_embedder=EmbedderInfo.of(minilm),
                     response_embedder=EmbedderInfo.of(static_embedder))
    assert bank.e.shape[1] == 384 and bank.r[0].shape[1] == 256
    assert bank.view(np.arange(3), np.array([0, 1])).r.shape == (3, 2, 256)


def test_a_gateway_with_another_response_embedder_is_refused_clearly(split_bank, minilm):
    with pytest.raises(BankError) as refused:
        Bank.load(split_bank, query_embedder=EmbedderInfo.of(minilm), response_embedder=EmbedderInfo.of(minilm))
    message = str(refused.value)
    assert "responses" in message and "`response_embedder`" in message
    assert "static:all-MiniLM-L6-v2[pca=256]" in message and "all-MiniLM-L6-v2" in message


@pytest.mark.anyio
async def test_the_app_refuses_to_start_on_a_mismatched_bank(split_bank, minilm, tmp_path):
    from app.config import Settings, UpstreamSettings
    from app.http.app import create_app

    models = read_manifest(split_bank).models
    settings = Settings(bank_path=split_bank, embedder=EmbedderSettings(cache_dir=tmp_path),
                        upstreams=[UpstreamSettings(name=m, base_url="http://127.0.0.1:9/v1") for m in models])
    app = create_app(settings, embedder=minilm)  # no response embedder configured: the query one, MiniLM
    with pytest.raises(BankError, match="embedded its responses with another embedder"):
        async with app.router.lifespan_context(app):
            pass
